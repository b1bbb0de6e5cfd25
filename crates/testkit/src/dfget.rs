//! The workspace's `dfget` run by tests, and what they check of its output.

use crate::bins::bin;
use std::path::Path;
use std::process::{Output, Stdio};

/// A dfget command talking to the daemon on `socket` (a missing socket: standalone), its
/// output captured, killed if dropped.
pub fn command(socket: &Path, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(bin("dfget"));
    c.args(args)
        .env("DFGET_DAEMON_SOCK", socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// Run dfget against the daemon on `socket` to the end (the arguments are taken at once, so
/// several runs can be joined).
pub fn run(socket: &Path, args: &[&str]) -> impl Future<Output = Output> + use<> {
    let mut c = command(socket, args);
    async move { c.output().await.expect("run dfget") }
}

/// Run `dfget --standalone ARGS` (no daemon) to the end.
pub async fn standalone(args: &[&str]) -> Output {
    tokio::process::Command::new(bin("dfget"))
        .arg("--standalone")
        .args(args)
        .output()
        .await
        .expect("run dfget")
}

/// dfget's stderr.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// dfget's stdout, after asserting it succeeded.
pub fn ok(o: &Output) -> String {
    assert!(o.status.success(), "dfget failed: {}", stderr(o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// dfget's stderr, after asserting it failed.
pub fn failed(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "dfget succeeded but should have failed: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    stderr(o)
}
