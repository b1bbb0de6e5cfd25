//! Where `-O` lands, as real processes: another file system than the daemon's data dir, FIFOs,
//! character devices and dangling symlinks at the output, and two runs racing for one output.

#[path = "support/outputs.rs"]
mod outputs;

use outputs::{assert_no_parts, start_daemon};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use testkit::daemon::DaemonProcess;
use testkit::dfget::{ok, run as dfget, stderr};
use testkit::origin::{Behavior, Origin};
use testkit::tmpfs::Tmpfs;

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_on_another_file_system_than_the_data_dir_is_copied() {
    let (data, _origin, o) = Origin::random("/file", 61, 9 * MIB + 5).await;
    let work = tempfile::tempdir().unwrap();
    let mnt = Tmpfs::mount(&work.path().join("mnt"), "256m");
    let dev = |p: &Path| std::fs::metadata(p).unwrap().dev();
    for multiplex in [true, false] {
        let d = start_daemon(&work.path().join(format!("d-{multiplex}")), multiplex);
        assert_ne!(
            dev(&d.data_dir()),
            dev(&mnt.0),
            "the output is on another fs"
        );
        let out = mnt.0.join(format!("out-{multiplex}"));
        let r = dfget(&d.socket(), &[&o.url("/file"), "-O", out.to_str().unwrap()]).await;
        ok(&r);
        assert!(
            std::fs::read(&out).unwrap() == data,
            "multiplex {multiplex}"
        );
        assert_eq!(std::fs::metadata(&out).unwrap().nlink(), 1);
    }
    assert_no_parts(&mnt.0, "the runs");
}

/// The daemon's socket, or a missing one for a standalone run.
fn modes(work: &Path) -> Vec<(&'static str, PathBuf, Option<DaemonProcess>)> {
    let d = start_daemon(&work.join("daemon"), true);
    vec![
        ("standalone", work.join("no-daemon.sock"), None),
        ("daemon", d.socket(), Some(d)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_writes_into_a_fifo_or_character_device_instead_of_replacing_it() {
    use rustix::fs::{CWD, FileType, Mode, makedev, mknodat};
    let (data, _origin, o) = Origin::random("/file", 62, 3 * MIB + 1).await;
    let work = tempfile::tempdir().unwrap();
    for (mode, socket, _daemon) in modes(work.path()) {
        // A /dev/null of our own: character device 1:3.
        let null = work.path().join(format!("null-{mode}"));
        mknodat(
            CWD,
            &null,
            FileType::CharacterDevice,
            Mode::from(0o666),
            makedev(1, 3),
        )
        .unwrap();
        let r = dfget(&socket, &[&o.url("/file"), "-O", null.to_str().unwrap()]).await;
        assert!(!r.status.success(), "{mode}: no --overwrite: exists");
        assert!(
            stderr(&r).contains("already exists"),
            "{mode}: {}",
            stderr(&r)
        );
        let r = dfget(
            &socket,
            &[&o.url("/file"), "-O", null.to_str().unwrap(), "--overwrite"],
        )
        .await;
        ok(&r);
        let m = std::fs::symlink_metadata(&null).unwrap();
        assert!(m.file_type().is_char_device(), "{mode}: still a device");
        assert_eq!(m.rdev(), makedev(1, 3), "{mode}");

        let fifo = work.path().join(format!("fifo-{mode}"));
        mknodat(CWD, &fifo, FileType::Fifo, Mode::from(0o600), 0).unwrap();
        let reader = std::thread::spawn({
            let fifo = fifo.clone();
            move || std::fs::read(fifo).unwrap()
        });
        let r = dfget(
            &socket,
            &[&o.url("/file"), "-O", fifo.to_str().unwrap(), "--overwrite"],
        )
        .await;
        ok(&r);
        let m = std::fs::symlink_metadata(&fifo).unwrap();
        assert!(m.file_type().is_fifo(), "{mode}: still a FIFO");
        assert!(
            reader.join().unwrap() == data,
            "{mode}: the reader got the bytes"
        );
        assert_no_parts(work.path(), "the runs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dangling_symlink_at_the_output_needs_overwrite_which_replaces_the_link() {
    let (data, _origin, o) = Origin::random("/file", 63, MIB).await;
    let work = tempfile::tempdir().unwrap();
    for (mode, socket, _daemon) in modes(work.path()) {
        let target = work.path().join(format!("nowhere-{mode}"));
        let link = work.path().join(format!("link-{mode}"));
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let r = dfget(&socket, &[&o.url("/file"), "-O", link.to_str().unwrap()]).await;
        assert!(!r.status.success(), "{mode}: a dangling link exists");
        assert!(
            stderr(&r).contains("already exists"),
            "{mode}: {}",
            stderr(&r)
        );
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
        let r = dfget(
            &socket,
            &[&o.url("/file"), "-O", link.to_str().unwrap(), "--overwrite"],
        )
        .await;
        ok(&r);
        assert!(
            std::fs::symlink_metadata(&link).unwrap().is_file(),
            "{mode}"
        );
        assert!(std::fs::read(&link).unwrap() == data, "{mode}");
        assert!(!target.exists(), "{mode}: the link's target is not created");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_to_one_output_without_overwrite_one_fails() {
    let slow = Behavior::slow(Duration::from_millis(10));
    let (data, _origin, o) = Origin::random_with("/file", 64, 4 * MIB, slow).await;
    let work = tempfile::tempdir().unwrap();
    for (mode, socket, _daemon) in modes(work.path()) {
        let out = work.path().join(format!("out-{mode}"));
        let run = || {
            tokio::spawn(dfget(
                &socket,
                &[&o.url("/file"), "-O", out.to_str().unwrap()],
            ))
        };
        let (a, b) = (run(), run());
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        let wins = [&a, &b].iter().filter(|r| r.status.success()).count();
        assert_eq!(
            wins,
            1,
            "{mode}: exactly one run wins: {} / {}",
            stderr(&a),
            stderr(&b)
        );
        let lost = if a.status.success() { &b } else { &a };
        assert!(
            stderr(lost).contains("already exists"),
            "{mode}: {}",
            stderr(lost)
        );
        assert!(std::fs::read(&out).unwrap() == data, "{mode}");
        assert_no_parts(work.path(), "the runs");
    }
}
