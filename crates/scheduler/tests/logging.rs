//! The real `scheduler` binary logs to `<server.logDir>/core.log` (JSON lines, like dfdaemon)
//! and to stderr.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn scheduler_writes_core_log_in_log_dir_and_to_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let port = testkit::net::free_port();
    let metrics = testkit::net::free_port();
    let log_dir = dir.path().join("log");
    let cfg = dir.path().join("scheduler.yaml");
    std::fs::write(
        &cfg,
        format!(
            "server:\n  listenIP: 127.0.0.1\n  port: {port}\n  logDir: {}\nmetrics:\n  addr: 127.0.0.1:{metrics}\n",
            log_dir.display()
        ),
    )
    .unwrap();
    let stderr = dir.path().join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_scheduler"))
        .arg("--config")
        .arg(&cfg)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the scheduler did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SIGTERM: the clean exit flushes the log writer.
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "scheduler exited with {status}");

    let core = std::fs::read_to_string(log_dir.join("core.log")).unwrap_or_default();
    let listening = core
        .lines()
        .find(|l| l.contains("\"msg\":\"scheduler listening\""))
        .unwrap_or_else(|| panic!("no 'scheduler listening' line in core.log:\n{core}"));
    assert!(
        listening.starts_with('{') && listening.contains("\"level\":\"info\""),
        "{listening}"
    );
    assert!(core.contains("\"msg\":\"scheduler stopped\""), "{core}");
    // metrics.enable defaults to true: the line names where /metrics is served.
    assert!(
        listening.contains(&format!("\"metrics\":\"127.0.0.1:{metrics}\"")),
        "{listening}"
    );
    let err = std::fs::read_to_string(&stderr).unwrap();
    assert!(err.contains("scheduler listening"), "stderr:\n{err}");
}
