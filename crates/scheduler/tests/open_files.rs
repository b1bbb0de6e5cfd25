//! The real `scheduler` binary raises its soft limit on open files to the hard limit at start
//! (issue 13 §4): every peer's stream holds a descriptor, and 1,024 is the usual soft limit.

use std::path::Path;
use testkit::scheduler::SchedulerProcess;

#[test]
fn the_scheduler_raises_its_open_files_limit_to_the_hard_limit() {
    let dir = tempfile::tempdir().unwrap();
    let scheduler = SchedulerProcess::builder(dir.path())
        .bin(Path::new(env!("CARGO_BIN_EXE_scheduler")))
        .wrapped(&["prlimit", "--nofile=256:4096"])
        .start();
    // It listens only after raising the limit.
    let limits = testkit::process::open_files_limits(scheduler.pid());
    assert_eq!(limits, Some(("4096".into(), "4096".into())), "soft, hard");
}
