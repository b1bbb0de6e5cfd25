//! What tests look for in, and do to, files a daemon wrote.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The one content file under a daemon's data directory.
pub fn content_file(data_dir: &Path) -> PathBuf {
    let mut stack = vec![data_dir.join("content")];
    while let Some(d) = stack.pop() {
        let entries =
            std::fs::read_dir(&d).unwrap_or_else(|e| panic!("reading {}: {e}", d.display()));
        for e in entries {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                return p;
            }
        }
    }
    panic!("no content file under {}", data_dir.display());
}

/// Whether any file under `dir` is named `name`.
pub fn has_file_named(dir: &Path, name: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            has_file_named(&p, name)
        } else {
            p.file_name().is_some_and(|n| n.to_string_lossy() == name)
        }
    })
}

/// Overwrite bytes of a file in place.
pub fn scribble(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    f.write_all_at(bytes, offset)
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// Whether the file at `path` holds exactly `data` (without printing 256 MiB on failure).
pub fn same(path: &Path, data: &[u8]) -> bool {
    std::fs::read(path).map(|b| b == data).unwrap_or(false)
}

/// Wait until `cond` holds, checking every 50 ms for 30 s; panics naming `what` (test helper).
pub async fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    for _ in 0..600 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}
