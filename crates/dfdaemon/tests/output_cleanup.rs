//! Temporary `.part` files of interrupted downloads (dfget signalled or killed, the daemon
//! killed) and an origin the daemon cannot split, as real processes.

#[path = "support/outputs.rs"]
mod outputs;

use outputs::{assert_no_parts, parts_in, start_daemon, wait_part};
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;
use testkit::data::random_bytes;
use testkit::dfget::{command as dfget_cmd, ok, run as dfget, stderr};
use testkit::origin::{Behavior, Origin, Resource};
use testkit::process::signal;

const MIB: usize = 1 << 20;

fn slow() -> Behavior {
    Behavior::slow(Duration::from_millis(20))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dfget_removes_its_part_on_sigint_and_sigterm_and_stale_ones_on_the_next_run() {
    let data = random_bytes(71, 16 * MIB);
    let (_origin, o) = Origin::serving([
        ("/slow", Resource::bytes(data.clone()).with(slow())),
        ("/fast", Resource::bytes(data.clone())),
    ])
    .await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let no_daemon = work.path().join("no-daemon.sock");
    for (sig, code) in [("INT", 130), ("TERM", 143)] {
        let mut child = dfget_cmd(&no_daemon, &[&o.url("/slow"), "-O", out.to_str().unwrap()])
            .spawn()
            .unwrap();
        wait_part(work.path(), ".out.dfget-").await;
        signal(child.id().unwrap(), sig);
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("dfget exits on the signal")
            .unwrap();
        assert_eq!(status.code(), Some(code), "SIG{sig}: {status:?}");
        assert_no_parts(work.path(), &format!("SIG{sig}"));
        assert!(!out.exists());
    }
    // kill -9 leaves the part; the next run to the same output removes it.
    let mut child = dfget_cmd(&no_daemon, &[&o.url("/slow"), "-O", out.to_str().unwrap()])
        .spawn()
        .unwrap();
    let part = wait_part(work.path(), ".out.dfget-").await;
    signal(child.id().unwrap(), "KILL");
    assert_eq!(child.wait().await.unwrap().signal(), Some(9));
    assert_eq!(
        parts_in(work.path()),
        vec![part.clone()],
        "kill -9 cannot clean up"
    );
    ok(&dfget(&no_daemon, &[&o.url("/fast"), "-O", out.to_str().unwrap()]).await);
    assert!(std::fs::read(&out).unwrap() == data);
    assert_no_parts(
        work.path(),
        &format!("the stale {part} of a dead dfget is removed"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_daemons_part_is_removed_when_it_starts_again() {
    let data = random_bytes(72, 16 * MIB);
    let (_origin, o) =
        Origin::serving([("/slow", Resource::bytes(data.clone()).with(slow()))]).await;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("d");
    let outs = work.path().join("outs");
    std::fs::create_dir_all(&outs).unwrap();
    let out = outs.join("out");
    let mut d = start_daemon(&dir, false);
    let first = tokio::spawn(d.dfget(&[&o.url("/slow"), "-O", out.to_str().unwrap()]));
    let part = wait_part(&outs, ".out.dfdaemon-").await;
    d.kill();
    assert!(!first.await.unwrap().status.success(), "its daemon died");
    assert_eq!(
        parts_in(&outs),
        vec![part.clone()],
        "kill -9 cannot clean up"
    );
    drop(d);
    let _d = start_daemon(&dir, false);
    assert_no_parts(&outs, &format!("the restarted daemon removed {part}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_without_length_or_range_is_downloaded_without_the_daemon() {
    let data = random_bytes(73, 2 * MIB + 3);
    let origin = Origin::new();
    let chunked = Behavior {
        ignore_range: true,
        no_length: true,
        ..Behavior::default()
    };
    origin.route("/chunked", Resource::bytes(data.clone()).with(chunked));
    let o = origin.spawn().await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let d = start_daemon(&work.path().join("d"), true);
    let out = work.path().join("out");
    let r = dfget(
        &d.socket(),
        &[&o.url("/chunked"), "-O", out.to_str().unwrap()],
    )
    .await;
    ok(&r);
    assert!(
        stderr(&r).contains("downloading without the daemon")
            && stderr(&r).contains("neither a content length nor Range"),
        "dfget says why: {}",
        stderr(&r)
    );
    assert!(std::fs::read(&out).unwrap() == data);
    assert!(!String::from_utf8_lossy(&r.stdout).contains("through the local daemon"));
}
