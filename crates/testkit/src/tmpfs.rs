//! A tmpfs of a given size mounted for a test (needs root, as `make test` runs); unmounted
//! when dropped.

use std::path::{Path, PathBuf};

/// A mounted tmpfs; its mount point.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// Mount a tmpfs of `size` (as `mount -o size=` spells it: `256m`) on `dir`.
    pub fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        crate::process::output_ok(
            std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir),
            &format!(
                "this test needs a tmpfs (root): mount -t tmpfs on {} failed",
                dir.display()
            ),
        );
        Self(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}
