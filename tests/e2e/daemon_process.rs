//! Real daemon processes (`dfget daemon`) and dfget talking to them over the unix socket.

use dragonfly_common::digest::{Algorithm, Digest};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;
use testkit::daemon::DaemonProcess;
use testkit::dfget::{ok, run as dfget};
use testkit::files::content_file as find_content_file;
use testkit::net::free_port;
use testkit::origin::{Behavior, Origin};

const MIB: usize = 1 << 20;

/// A daemon with static `parents` (upload ports); `multiplex` hardlinks outputs.
fn start_daemon(dir: &Path, parents: &[u16], upload_port: u16, multiplex: bool) -> DaemonProcess {
    DaemonProcess::builder(dir)
        .parents(parents)
        .upload_port(upload_port)
        .multiplex(multiplex)
        .start()
}

/// Daemon `a` in `work` (hard-linking outputs if `multiplex`), and daemon `b` with `a` as its
/// static parent.
fn parent_and_child(work: &Path, multiplex: bool) -> (DaemonProcess, DaemonProcess) {
    let a = start_daemon(&work.join("a"), &[], free_port(), multiplex);
    let b = start_daemon(&work.join("b"), &[a.upload_port()], free_port(), false);
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dfget_through_two_daemons_takes_pieces_from_the_parent() {
    let (data, _origin, o) = Origin::random("/file", 21, 40 * MIB + 7).await;
    let digest = Digest::of(Algorithm::Sha256, &data).to_string();
    let url = o.url("/file");
    let work = tempfile::tempdir().unwrap();
    let (a, b) = parent_and_child(work.path(), true);

    let out_a = work.path().join("out-a");
    let s = ok(&dfget(
        &a.socket(),
        &[&url, "-O", out_a.to_str().unwrap(), "--digest", &digest],
    )
    .await);
    assert!(s.contains("through the local daemon"), "{s}");
    assert!(std::fs::read(&out_a).unwrap() == data);
    assert!(
        std::fs::metadata(&out_a).unwrap().nlink() >= 2,
        "with storage.multiplex the output is a hardlink to the stored content"
    );

    let out_b = work.path().join("out-b");
    ok(&dfget(
        &b.socket(),
        &[
            "-u",
            &url,
            "-O",
            out_b.to_str().unwrap(),
            "--digest",
            &digest,
        ],
    )
    .await);
    assert!(std::fs::read(&out_b).unwrap() == data);
    assert_eq!(
        std::fs::metadata(&out_b).unwrap().nlink(),
        1,
        "without multiplex the output is a copy"
    );
    assert_eq!(
        o.served("/file"),
        data.len() as u64,
        "the origin served the file once"
    );

    // Both daemons logged the finished task the way Dragonfly users grep for it.
    for d in [&a, &b] {
        let log = d.log();
        let line = log
            .lines()
            .find(|l| l.contains("peer task done, cost: "))
            .unwrap_or_else(|| panic!("no 'peer task done' in {}:\n{log}", d.dir().display()));
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            v["msg"]
                .as_str()
                .unwrap()
                .starts_with("peer task done, cost: "),
            "{line}"
        );
        assert_eq!(v["task"].as_str().unwrap().len(), 64, "{line}");
        assert!(!v["peer"].as_str().unwrap().is_empty(), "{line}");
    }

    // A second download on A is served from storage (no origin traffic).
    let again = work.path().join("again");
    ok(&dfget(&a.socket(), &[&url, "-O", again.to_str().unwrap()]).await);
    assert!(std::fs::read(&again).unwrap() == data);
    assert_eq!(o.served("/file"), data.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_errors_reach_dfget_and_leave_nothing() {
    let (data, _origin, o) = Origin::random_with("/bad", 22, 5 * MIB, Behavior::corrupt()).await;
    let work = tempfile::tempdir().unwrap();
    let a = start_daemon(&work.path().join("a"), &[], free_port(), false);
    let out = work.path().join("out");
    let digest = Digest::of(Algorithm::Sha256, &data).to_string();
    let r = dfget(
        &a.socket(),
        &[
            &o.url("/bad"),
            "-O",
            out.to_str().unwrap(),
            "--digest",
            &digest,
        ],
    )
    .await;
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("digest mismatch"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(!out.exists());
    let r = dfget(
        &a.socket(),
        &[&o.url("/missing"), "-O", out.to_str().unwrap()],
    )
    .await;
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("404 Not Found"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_daemon_resumes_from_the_pieces_it_has() {
    let slow = Behavior::slow(Duration::from_millis(3));
    let (data, _origin, o) = Origin::random_with("/file", 23, 48 * MIB, slow).await;
    let digest = Digest::of(Algorithm::Sha256, &data).to_string();
    let url = o.url("/file");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("a");
    let port = free_port();
    let mut a = start_daemon(&dir, &[], port, false);
    let out = work.path().join("out");
    let first = tokio::spawn(a.dfget(&[&url, "-O", out.to_str().unwrap()]));
    // Wait until some of the content has been served, then kill -9 the daemon.
    for _ in 0..400 {
        if o.served("/file") > 16 * MIB as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    a.kill();
    let r = first.await.unwrap();
    assert!(!r.status.success(), "dfget must fail when its daemon dies");
    assert!(!out.exists());
    let served_before = o.served("/file");
    assert!(served_before < data.len() as u64, "killed mid-download");
    drop(a);
    let a = start_daemon(&dir, &[], port, false);
    ok(&dfget(
        &a.socket(),
        &[&url, "-O", out.to_str().unwrap(), "--digest", &digest],
    )
    .await);
    assert!(std::fs::read(&out).unwrap() == data);
    let total = o.served("/file");
    assert!(
        total < 2 * data.len() as u64 - 8 * MIB as u64,
        "the restart resumed from stored pieces (origin served {total} bytes for {})",
        data.len()
    );
}

/// Wait until the origin has served more than `bytes` of `path`.
async fn wait_served(o: &testkit::origin::RunningOrigin, path: &str, bytes: u64) {
    for _ in 0..800 {
        if o.served(path) > bytes {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("origin never served {bytes} bytes of {path}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_gets_every_piece_from_a_parent_that_is_still_downloading() {
    let slow = Behavior::slow(Duration::from_millis(4));
    let (data, _origin, o) = Origin::random_with("/big", 24, 256 * MIB, slow).await;
    let digest = Digest::of(Algorithm::Sha256, &data).to_string();
    let url = o.url("/big");
    let work = tempfile::tempdir().unwrap();
    let (a, b) = parent_and_child(work.path(), false);
    let (out_a, out_b) = (work.path().join("out-a"), work.path().join("out-b"));
    let first = tokio::spawn(a.dfget(&[&url, "-O", out_a.to_str().unwrap(), "--digest", &digest]));
    wait_served(&o, "/big", 8 * MIB as u64).await;
    assert!(
        !out_a.exists(),
        "the parent is still downloading when the child starts"
    );
    ok(&dfget(
        &b.socket(),
        &[&url, "-O", out_b.to_str().unwrap(), "--digest", &digest],
    )
    .await);
    ok(&first.await.unwrap());
    assert!(std::fs::read(&out_a).unwrap() == data);
    assert!(std::fs::read(&out_b).unwrap() == data);
    assert_eq!(
        o.served("/big"),
        data.len() as u64,
        "origin served the bytes once: every piece of the child came from the parent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_finishes_from_the_source_when_its_parent_is_killed() {
    let slow = Behavior::slow(Duration::from_millis(4));
    let (data, _origin, o) = Origin::random_with("/big", 25, 96 * MIB, slow).await;
    let digest = Digest::of(Algorithm::Sha256, &data).to_string();
    let url = o.url("/big");
    let work = tempfile::tempdir().unwrap();
    let (mut a, b) = parent_and_child(work.path(), false);
    let out_b = work.path().join("out-b");
    let out_a = work.path().join("out-a");
    let first = tokio::spawn(a.dfget(&[&url, "-O", out_a.to_str().unwrap()]));
    wait_served(&o, "/big", 8 * MIB as u64).await;
    let second = tokio::spawn(b.dfget(&[&url, "-O", out_b.to_str().unwrap(), "--digest", &digest]));
    wait_served(&o, "/big", 24 * MIB as u64).await;
    a.kill(); // kill -9 the parent mid-transfer
    let _ = first.await;
    ok(&second.await.unwrap());
    assert!(
        std::fs::read(&out_b).unwrap() == data,
        "child content is correct"
    );
    let log = b.log();
    assert!(
        log.contains("parent stream failed") || log.contains("parent failed; not asking it again"),
        "the child noticed its parent went away: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_serving_corrupted_pieces_is_detected_and_the_piece_refetched() {
    let (data, _origin, o) = Origin::random("/file", 26, 32 * MIB).await;
    let digest = Digest::of(Algorithm::Sha256, &data).to_string();
    let url = o.url("/file");
    let work = tempfile::tempdir().unwrap();
    let a = start_daemon(&work.path().join("a"), &[], free_port(), false);
    ok(&dfget(
        &a.socket(),
        &[&url, "-O", work.path().join("out-a").to_str().unwrap()],
    )
    .await);
    // Once the parent recorded its content's sha256 (which re-reads the stored pieces), flip
    // bytes inside piece 3 of its stored content; its metadata still has the old crc32.
    for _ in 0..200 {
        if a.log().contains("content digest recorded") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(a.log().contains("content digest recorded"), "{}", a.log());
    let content = find_content_file(&work.path().join("a/data"));
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&content)
            .unwrap();
        f.write_all_at(b"garbage!", 3 * 4 * MIB as u64 + 100)
            .unwrap();
    }
    let b = start_daemon(
        &work.path().join("b"),
        &[a.upload_port()],
        free_port(),
        false,
    );
    let out_b = work.path().join("out-b");
    ok(&dfget(
        &b.socket(),
        &[&url, "-O", out_b.to_str().unwrap(), "--digest", &digest],
    )
    .await);
    assert!(
        std::fs::read(&out_b).unwrap() == data,
        "the corrupted piece never reached the output"
    );
    let log = b.log();
    assert!(
        log.contains("parent failed; not asking it again") && log.contains("crc"),
        "the bad piece was detected: {log}"
    );
    assert!(
        o.served("/file") > data.len() as u64,
        "the bad piece was refetched from the source"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_raises_its_open_files_limit_to_the_hard_limit() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("d");
    // Start an ordinary daemon for its config, then the same config under a low soft limit.
    let mut probe = start_daemon(&dir, &[], free_port(), false);
    probe.kill();
    let _ = std::fs::remove_file(dir.join("dfdaemon.sock"));
    let mut child = std::process::Command::new("prlimit")
        .arg("--nofile=256:4096")
        .arg(testkit::bins::bin("dfget"))
        .args(["daemon", "--config"])
        .arg(dir.join("dfget.yaml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prlimit (util-linux) runs");
    let mut limits = None;
    for _ in 0..200 {
        if dir.join("dfdaemon.sock").exists() {
            limits = testkit::process::open_files_limits(child.id());
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(limits, Some(("4096".into(), "4096".into())), "soft, hard");
}
