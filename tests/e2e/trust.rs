//! The right bytes at the output: every caller's `--digest` is checked whatever state the task
//! is in, stored pieces are re-checked when they go to a local output, a parent that lies
//! consistently is caught by the content digest, and an origin that changes mid-download never
//! yields a file mixed of two versions. Real daemon processes, real dfget, a real origin.

use dragonfly_common::digest::{Algorithm, Digest};
use dragonfly_common::task_id::TaskId;
use std::path::Path;
use std::time::Duration;
use testkit::daemon::DaemonProcess;
use testkit::data::random_bytes;
use testkit::dfget::{failed, ok, standalone};
use testkit::files::{content_file, scribble};
use testkit::net::free_port;
use testkit::origin::{Behavior, Origin, Resource, RunningOrigin};

const MIB: usize = 1 << 20;

fn sha256(data: &[u8]) -> String {
    Digest::of(Algorithm::Sha256, data).to_string()
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_default()
}

/// An origin serving 24 MiB of `seed`'s bytes (v1) at `path` that turns into another 24 MiB
/// (v2, from `seed + 1`, another ETag) after the GETs `behavior.new_version_after_gets` names
/// (2 when it names none), misbehaving otherwise as `behavior` says: v2 and the origin.
async fn changing(path: &str, seed: u64, mut behavior: Behavior) -> (Vec<u8>, RunningOrigin) {
    let v1 = random_bytes(seed, 24 * MIB);
    let v2 = random_bytes(seed + 1, 24 * MIB);
    let after = behavior.new_version_after_gets.map_or(2, |(n, _)| n);
    behavior.new_version_after_gets = Some((after, v2.clone().into()));
    let (_origin, o) = Origin::serving([(path, Resource::bytes(v1).with(behavior))]).await;
    (v2, o)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_digest_is_refused_for_content_the_daemon_already_holds() {
    let (data, _origin, o) = Origin::random("/held", 301, 12 * MIB + 5).await;
    let url = o.url("/held");
    let work = tempfile::tempdir().unwrap();
    let wrong = format!("sha256:{}", "0".repeat(64));
    for (name, multiplex) in [("copy", false), ("hardlink", true)] {
        let d = DaemonProcess::builder(&work.path().join(name))
            .multiplex(multiplex)
            .start();
        let out = |n: &str| work.path().join(format!("{name}-{n}"));
        let first = out("first");
        ok(&d.dfget(&[&url, "-O", first.to_str().unwrap()]).await);
        assert!(read(&first) == data);

        let o2 = out("wrong");
        let err = failed(
            &d.dfget(&[&url, "-O", o2.to_str().unwrap(), "--digest", &wrong])
                .await,
        );
        assert!(err.contains("digest mismatch"), "{name}: {err}");
        assert!(!o2.exists(), "{name}: no output for a wrong digest");

        // Other algorithms are computed once from the stored file, then remembered.
        let sha512 = Digest::of(Algorithm::Sha512, &data).to_string();
        let crc = Digest::of(Algorithm::Crc32, &data).to_string();
        for (n, digest) in [
            ("sha256", sha256(&data)),
            ("sha512", sha512),
            ("crc32", crc),
        ] {
            let p = out(n);
            ok(&d
                .dfget(&[&url, "-O", p.to_str().unwrap(), "--digest", &digest])
                .await);
            assert!(read(&p) == data, "{name}: {n}");
        }
        let wrong512 = format!("sha512:{}", "1".repeat(128));
        let p = out("wrong512");
        let err = failed(
            &d.dfget(&[&url, "-O", p.to_str().unwrap(), "--digest", &wrong512])
                .await,
        );
        assert!(err.contains("digest mismatch"), "{name}: {err}");
        assert!(!p.exists());
        // Still stored and served: a caller's wrong digest does not touch the content.
        let again = out("again");
        ok(&d.dfget(&[&url, "-O", again.to_str().unwrap()]).await);
        assert!(read(&again) == data);
    }
    assert_eq!(
        o.served("/held"),
        2 * data.len() as u64,
        "each daemon fetched the content once; the digest checks read only the stored file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_joining_a_running_download_are_checked_against_their_own_digests() {
    let data = random_bytes(302, 12 * MIB);
    let right = sha256(&data);
    let wrong = format!("sha256:{}", "e".repeat(64));
    let origin = Origin::new();
    // Slow enough (about 2 s a piece) that the later callers join the running task.
    let slow = Behavior::slow(Duration::from_millis(30));
    origin.route("/a", Resource::bytes(data.clone()).with(slow.clone()));
    origin.route("/b", Resource::bytes(data.clone()).with(slow));
    let o = origin.spawn().await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let d = DaemonProcess::builder(&work.path().join("d")).start();
    let out = |n: &str| work.path().join(n).to_str().unwrap().to_string();

    // The first caller's digest is wrong; a joiner with the right one gets its file, one
    // without a digest too.
    let url = o.url("/a");
    let (a1, a2, a3) = (out("a1"), out("a2"), out("a3"));
    let first = d.dfget(&[&url, "-O", &a1, "--digest", &wrong]);
    let joiners = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        tokio::join!(
            d.dfget(&[&url, "-O", &a2, "--digest", &right]),
            d.dfget(&[&url, "-O", &a3])
        )
    };
    let (first, (right_joiner, plain_joiner)) = tokio::join!(first, joiners);
    assert!(failed(&first).contains("digest mismatch"));
    ok(&right_joiner);
    ok(&plain_joiner);
    assert!(read(Path::new(&a2)) == data && read(Path::new(&a3)) == data);
    assert!(!Path::new(&a1).exists());

    // The first caller is right; a joiner with a wrong digest fails, alone.
    let url = o.url("/b");
    let (b1, b2) = (out("b1"), out("b2"));
    let first = d.dfget(&[&url, "-O", &b1, "--digest", &right]);
    let joiner = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        d.dfget(&[&url, "-O", &b2, "--digest", &wrong]).await
    };
    let (first, joiner) = tokio::join!(first, joiner);
    ok(&first);
    assert!(read(Path::new(&b1)) == data);
    assert!(failed(&joiner).contains("digest mismatch"));
    assert!(!Path::new(&b2).exists());
    for p in ["/a", "/b"] {
        assert_eq!(
            o.served(p),
            data.len() as u64,
            "{p}: one download for every caller"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_piece_damaged_on_disk_is_fetched_again_before_it_reaches_an_output() {
    let (data, _origin, o) = Origin::random("/f", 303, 24 * MIB).await;
    let url = o.url("/f");
    let work = tempfile::tempdir().unwrap();
    let d = DaemonProcess::builder(&work.path().join("d")).start();
    let first = work.path().join("first");
    ok(&d.dfget(&[&url, "-O", first.to_str().unwrap()]).await);
    // 8 bytes overwritten inside piece 2 (4 MiB pieces) of the stored content.
    scribble(
        &content_file(&d.data_dir()),
        2 * 4 * MIB as u64 + 100,
        b"garbage!",
    );

    let second = work.path().join("second");
    ok(&d
        .dfget(&[
            &url,
            "-O",
            second.to_str().unwrap(),
            "--digest",
            &sha256(&data),
        ])
        .await);
    assert!(
        read(&second) == data,
        "the damaged piece never reached the output"
    );
    let served = o.served("/f");
    assert!(
        served > data.len() as u64 && served <= (data.len() + 8 * MIB) as u64,
        "only the damaged piece came from the origin again ({served} bytes)"
    );
    assert!(d.log().contains("stored piece is corrupt"), "{}", d.log());
    // Without a digest too: every stored piece is checked on its way to an output.
    scribble(
        &content_file(&d.data_dir()),
        5 * 4 * MIB as u64 + 7,
        b"garbage!",
    );
    let third = work.path().join("third");
    ok(&d.dfget(&[&url, "-O", third.to_str().unwrap()]).await);
    assert!(read(&third) == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_lying_consistently_is_caught_by_the_digest_and_the_source_asked() {
    let (data, _origin, o) = Origin::random("/l", 304, 24 * MIB).await;
    let digest = sha256(&data);
    let url = o.url("/l");
    let id = TaskId::for_url(&url, "", "", None, &[]);
    let work = tempfile::tempdir().unwrap();
    let a_port = free_port();
    let mut a = DaemonProcess::builder(&work.path().join("a"))
        .upload_port(a_port)
        .start();
    ok(&a
        .dfget(&[&url, "-O", work.path().join("out-a").to_str().unwrap()])
        .await);
    a.kill();
    // Make the parent a consistent liar: piece 1 holds garbage and its record the garbage's
    // crc32, so every child's per-piece check passes.
    {
        let rec = {
            let s = dfdaemon::storage::Storage::open(a.data_dir()).unwrap();
            s.piece_record(&id, 1).unwrap().unwrap()
        };
        scribble(&content_file(&a.data_dir()), rec.offset, b"x");
        let s = dfdaemon::storage::Storage::open(a.data_dir()).unwrap();
        assert!(s.read_piece(&id, 1, true).is_err(), "the piece is dropped");
        let mut w = s.piece_writer(&id, 1).unwrap();
        w.write(&vec![0x5a; rec.length as usize]).unwrap();
        w.commit(None, Some("")).unwrap();
        s.finish_task(&id).unwrap();
    }
    let _a = DaemonProcess::builder(&work.path().join("a"))
        .upload_port(a_port)
        .start();
    let b = DaemonProcess::builder(&work.path().join("b"))
        .parents(&[a_port])
        .start();
    let out = work.path().join("out-b");
    ok(&b
        .dfget(&[&url, "-O", out.to_str().unwrap(), "--digest", &digest])
        .await);
    assert!(read(&out) == data);
    assert!(b.log().contains("content failed its digest"), "{}", b.log());
    assert!(
        o.served("/l") > data.len() as u64,
        "the pieces the parent gave were taken from the origin again"
    );
    // Nothing of the lie is kept: the stored content is the origin's.
    let again = work.path().join("again");
    ok(&b.dfget(&[&url, "-O", again.to_str().unwrap()]).await);
    assert!(read(&again) == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_changes_mid_download_never_yields_a_mix() {
    // v1 for the first two GETs, then v2 (another ETag).
    let (v2, o) = changing("/daemon", 305, Behavior::default()).await;
    let work = tempfile::tempdir().unwrap();

    // Through the daemon: the change is seen (If-Range) and the task fails cleanly, keeping
    // nothing; the next run gets v2 whole.
    let d = DaemonProcess::builder(&work.path().join("d")).start();
    let url = o.url("/daemon");
    let out = work.path().join("through-daemon");
    let err = failed(&d.dfget(&[&url, "-O", out.to_str().unwrap()]).await);
    assert!(err.contains("changed during the download"), "{err}");
    assert!(!out.exists());
    ok(&d.dfget(&[&url, "-O", out.to_str().unwrap()]).await);
    assert!(read(&out) == v2, "v2, whole");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_dfget_starts_over_when_the_origin_changes_mid_download() {
    let (v2, o) = changing("/alone", 307, Behavior::default()).await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("standalone");
    ok(&standalone(&[&o.url("/alone"), "-O", out.to_str().unwrap()]).await);
    assert!(read(&out) == v2, "v2, whole");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_resumed_after_a_restart_never_mixes_two_versions() {
    // One range at a time (one GET for all six pieces, about 1.3 s a piece); v2 from the
    // second GET on.
    let slow = Behavior {
        new_version_after_gets: Some((1, Default::default())),
        ..Behavior::slow(Duration::from_millis(20))
    };
    let (v2, o) = changing("/r", 309, slow).await;
    let url = o.url("/r");
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let one_lane = |c: &mut dfdaemon::config::DfdaemonConfig| {
        c.download.concurrent_piece_count = 1;
    };
    let mut d = DaemonProcess::builder(&work.path().join("d"))
        .upload_port(port)
        .config(one_lane)
        .start();
    let out = work.path().join("out");
    let first = tokio::spawn(d.dfget(&[&url, "-O", out.to_str().unwrap()]));
    tokio::time::sleep(Duration::from_millis(3500)).await;
    d.kill(); // killed mid-download, the first pieces of v1 stored
    let _ = first.await;
    assert!(!out.exists());
    let d = DaemonProcess::builder(&work.path().join("d"))
        .upload_port(port)
        .config(one_lane)
        .start();
    // The resumed task asks for ranges of v1 (If-Range); the origin now serves v2.
    assert!(
        d.log().contains("resumed: [TaskId("),
        "the task was resumed: {}",
        d.log()
    );
    let err = failed(&d.dfget(&[&url, "-O", out.to_str().unwrap()]).await);
    assert!(err.contains("changed during the download"), "{err}");
    assert!(!out.exists());
    ok(&d.dfget(&[&url, "-O", out.to_str().unwrap()]).await);
    assert!(read(&out) == v2, "v2 whole");
}
