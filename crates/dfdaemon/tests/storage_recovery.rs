//! Storage: what a reopen keeps, resumes, drops and removes.

use dfdaemon::storage::{Storage, TaskState};
use dragonfly_common::task_id::TaskId;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use testkit::storage::{new_task, put_piece, task_id as id};

fn piece_bytes(n: u32) -> Vec<u8> {
    format!("p{n:03}").into_bytes() // 4 bytes
}

fn write(s: &Storage, t: &TaskId, n: u32) {
    put_piece(s, t, n, &piece_bytes(n), Some(""));
}

fn corrupt(path: &Path, offset: u64) {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(b"#", offset).unwrap();
}

#[test]
fn reopen_keeps_finished_and_resumes_unfinished_with_exactly_the_committed_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let (done, running, pending) = (id(1), id(2), id(3));
    {
        let s = Storage::open(dir.path()).unwrap();
        s.create_task(new_task(&done, 12, 4)).unwrap();
        for n in 0..3 {
            write(&s, &done, n);
        }
        s.finish_task(&done).unwrap();

        s.create_task(new_task(&running, 40, 4)).unwrap();
        s.start_task(&running).unwrap();
        for n in [7, 1, 4] {
            write(&s, &running, n);
        }
        // Written but never committed: must not come back.
        let mut w = s.piece_writer(&running, 5).unwrap();
        w.write(&piece_bytes(5)).unwrap();
        drop(w);
        // Half written: must not come back either.
        let mut w = s.piece_writer(&running, 6).unwrap();
        w.write(b"p0").unwrap();
        drop(w);

        s.create_task(new_task(&pending, 8, 4)).unwrap();
    }
    let s = Storage::open(dir.path()).unwrap();
    let report = s.recovery_report();
    assert_eq!(report.finished_tasks, 1);
    assert_eq!(report.unfinished_tasks, 2);
    assert_eq!(report.resumed, vec![running.clone()]);
    assert!(report.dropped_pieces.is_empty(), "{report:?}");
    assert!(report.dropped_tasks.is_empty());
    assert!(report.orphan_files_removed.is_empty());
    assert_eq!(
        report.pieces_verified, 3,
        "only the unfinished task's pieces are re-read"
    );

    let d = s.task(&done).unwrap().unwrap();
    assert_eq!(d.state, TaskState::Finished);
    for n in 0..3 {
        assert_eq!(s.read_piece(&done, n, true).unwrap(), piece_bytes(n));
    }
    let r = s.task(&running).unwrap().unwrap();
    assert_eq!(r.state, TaskState::Pending);
    assert_eq!(r.finished_pieces, 3);
    let numbers: Vec<u32> = s
        .pieces(&running)
        .unwrap()
        .iter()
        .map(|p| p.number)
        .collect();
    assert_eq!(numbers, [1, 4, 7]);
    // Resuming: the missing pieces go in and the task finishes.
    s.start_task(&running).unwrap();
    for n in (0..10).filter(|n| !numbers.contains(n)) {
        write(&s, &running, n);
    }
    assert_eq!(s.finish_task(&running).unwrap().state, TaskState::Finished);
    assert_eq!(s.task(&pending).unwrap().unwrap().state, TaskState::Pending);

    // A clean reopen reports nothing.
    drop(s);
    let s = Storage::open(dir.path()).unwrap();
    assert!(s.recovery_report().is_clean(), "{:?}", s.recovery_report());
}

#[test]
fn corrupt_piece_of_an_unfinished_task_is_dropped_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (t, done) = (id(1), id(2));
    let path;
    {
        let s = Storage::open(dir.path()).unwrap();
        s.create_task(new_task(&t, 16, 4)).unwrap();
        for n in 0..3 {
            write(&s, &t, n);
        }
        s.create_task(new_task(&done, 8, 4)).unwrap();
        write(&s, &done, 0);
        write(&s, &done, 1);
        s.finish_task(&done).unwrap();
        path = s.content_path(&t);
        corrupt(&path, 6); // inside piece 1
        corrupt(&s.content_path(&done), 0);
    }
    let s = Storage::open(dir.path()).unwrap();
    let report = s.recovery_report();
    assert_eq!(report.dropped_pieces.len(), 1, "{report:?}");
    assert_eq!(report.dropped_pieces[0].task, t.to_string());
    assert_eq!(report.dropped_pieces[0].number, 1);
    assert!(
        report.dropped_pieces[0].reason.contains("crc32"),
        "{report:?}"
    );
    assert!(!s.has_piece(&t, 1).unwrap());
    assert_eq!(s.task(&t).unwrap().unwrap().finished_pieces, 2);
    assert_eq!(s.read_piece(&t, 0, true).unwrap(), piece_bytes(0));
    assert_eq!(s.read_piece(&t, 2, true).unwrap(), piece_bytes(2));

    // The finished task is kept as is (not re-read on open); a verified read catches it.
    assert_eq!(s.task(&done).unwrap().unwrap().state, TaskState::Finished);
    assert!(s.read_piece(&done, 0, true).is_err());
    assert_eq!(s.task(&done).unwrap().unwrap().state, TaskState::Pending);
}

#[test]
fn orphan_files_are_removed_and_records_without_files_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (kept, missing, resized) = (id(1), id(2), id(3));
    let orphan = id(4);
    {
        let s = Storage::open(dir.path()).unwrap();
        for t in [&kept, &missing, &resized] {
            s.create_task(new_task(t, 8, 4)).unwrap();
            write(&s, t, 0);
        }
        fs::remove_file(s.content_path(&missing)).unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(s.content_path(&resized))
            .unwrap()
            .set_len(3)
            .unwrap();
        let orphan_path = s.content_path(&orphan);
        fs::create_dir_all(orphan_path.parent().unwrap()).unwrap();
        fs::write(&orphan_path, b"left over").unwrap();
    }
    let content = dir.path().join("content");
    // A valid id in the wrong shard directory, a junk name, a file at the top level.
    let wrong_shard = if kept.shard() == "00" { "01" } else { "00" };
    fs::create_dir_all(content.join(wrong_shard)).unwrap();
    fs::write(content.join(wrong_shard).join(kept.as_str()), b"x").unwrap();
    fs::write(content.join(kept.shard()).join("junk.tmp"), b"x").unwrap();
    fs::write(content.join("stray"), b"x").unwrap();
    // Directories that are not ours are left alone.
    fs::create_dir_all(content.join("lost+found")).unwrap();

    let s = Storage::open(dir.path()).unwrap();
    let report = s.recovery_report().clone();
    let mut dropped: Vec<_> = report.dropped_tasks.iter().map(|d| d.key.clone()).collect();
    dropped.sort();
    let mut expected = vec![missing.to_string(), resized.to_string()];
    expected.sort();
    assert_eq!(dropped, expected);
    assert!(
        report
            .dropped_tasks
            .iter()
            .any(|d| d.reason.contains("missing"))
    );
    assert!(
        report
            .dropped_tasks
            .iter()
            .any(|d| d.reason.contains("3 bytes, expected 8"))
    );
    assert_eq!(report.orphan_files_removed.len(), 5, "{report:?}"); // orphan, resized, 3 strays
    assert!(!s.content_path(&orphan).exists());
    assert!(!s.content_path(&resized).exists());
    assert!(!content.join("stray").exists());
    assert!(content.join("lost+found").exists());
    assert_eq!(s.tasks().unwrap().len(), 1);
    assert!(s.pieces(&missing).unwrap().is_empty());
    assert_eq!(s.read_piece(&kept, 0, true).unwrap(), piece_bytes(0));
}
