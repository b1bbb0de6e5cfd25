//! Python tools from PyPI for tests (oras-py, prometheus-client's parser): one venv per name
//! under a directory the caller owns (a test binary passes `CARGO_TARGET_TMPDIR`), created once
//! under a lock so parallel tests and test binaries wait for one installation. Packages are
//! pinned by the caller (`name==version`). A missing `python3`/`venv` or an unreachable PyPI
//! fails the test, naming what to install.

use crate::process::output_ok;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The python of venv `<dir>/<name>-venv` with `packages` installed, made when `import` (a
/// Python statement such as `import oras.client`) does not run in it yet. Panics naming what
/// is missing (test helper).
pub fn venv(dir: &Path, name: &str, packages: &[&str], import: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let venv = dir.join(format!("{name}-venv"));
    let python = venv.join("bin/python");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(format!("{name}-venv.lock")))
        .expect("venv lock file");
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).expect("venv lock");
    let ready = || {
        Command::new(&python)
            .args(["-c", import])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ready() {
        return python;
    }
    let _ = std::fs::remove_dir_all(&venv);
    let system = ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|p| Command::new(p).arg("--version").output().is_ok())
        .expect(
            "python3 is missing: apt-get install python3-venv (see TEST_PACKAGES in the Makefile)",
        );
    output_ok(
        Command::new(system).args(["-m", "venv"]).arg(&venv),
        &format!(
            "python3 -m venv {} failed (apt-get install python3-venv)",
            venv.display()
        ),
    );
    output_ok(
        Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check"])
            .args(packages),
        &format!("pip install {packages:?} failed (PyPI must be reachable)"),
    );
    assert!(
        ready(),
        "{import:?} fails in {} after installing {packages:?}",
        venv.display()
    );
    python
}
