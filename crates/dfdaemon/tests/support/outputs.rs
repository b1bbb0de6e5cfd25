//! What the output-path tests share (`#[path = "support/outputs.rs"] mod outputs;`): a daemon
//! process, and the temporary `.part` files of downloads in progress.

// Each test binary uses only some of these.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;
use testkit::daemon::DaemonProcess;

/// Start a daemon in `dir` (no parents, no scheduler) and wait for its socket.
pub fn start_daemon(dir: &Path, multiplex: bool) -> DaemonProcess {
    DaemonProcess::builder(dir).multiplex(multiplex).start()
}

/// The names in `dir` that look like a temporary download file.
pub fn parts_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".part"))
        .collect();
    names.sort();
    names
}

/// Asserts `dir` holds no temporary download file; `what` says what should have removed them.
pub fn assert_no_parts(dir: &Path, what: &str) {
    let parts = parts_in(dir);
    assert!(
        parts.is_empty(),
        "{what}: {parts:?} left in {}",
        dir.display()
    );
}

/// Wait until `dir` holds a temporary download file whose name contains `marker`.
pub async fn wait_part(dir: &Path, marker: &str) -> String {
    for _ in 0..1000 {
        if let Some(p) = parts_in(dir).into_iter().find(|n| n.contains(marker)) {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no {marker} part file appeared in {}", dir.display());
}
