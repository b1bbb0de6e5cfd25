//! The workspace's binaries, found next to the running test.

use std::path::PathBuf;

/// The path of workspace binary `name` (`dfget`, `dfdaemon`, `scheduler`) in the target
/// directory the running test was built into.
///
/// `cargo test --workspace` (`make test`) builds every binary of the workspace; a test run on
/// its own (`cargo test -p e2e`) needs `cargo build --workspace --bins` first, and this panics
/// saying so when the binary is missing (test helper).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the path of the running test");
    let mut dir = exe.parent().expect("the test's directory").to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace's binaries (`cargo build --workspace --bins`, or `make test`)",
        path.display()
    );
    path
}
