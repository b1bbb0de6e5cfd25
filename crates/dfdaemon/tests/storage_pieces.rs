//! Storage: tasks, piece writes and reads, digests, layout errors.

use dfdaemon::storage::{NewTask, PieceRecord, Storage, StorageError, TaskState};
use dragonfly_common::task_id::TaskId;
use std::io::Read;
use std::os::unix::fs::FileExt;
use testkit::storage::{put_piece, task_id as id};

/// testkit's task, with a content digest.
fn new_task(id: &TaskId, len: u64, piece_length: u64) -> NewTask {
    NewTask {
        digest: Some(format!("sha256:{}", "0".repeat(64))),
        ..testkit::storage::new_task(id, len, piece_length)
    }
}

fn content(len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((i * 2654435761) >> 13) as u8)
        .collect()
}

/// A storage in a new directory holding task 1: 10 bytes in pieces of 4.
fn ten_bytes() -> (tempfile::TempDir, Storage, TaskId) {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path()).unwrap();
    let t = id(1);
    s.create_task(new_task(&t, 10, 4)).unwrap();
    (dir, s, t)
}

/// Writes piece `number` of `data` (laid out in `piece_length` pieces) in uneven chunks.
fn write_piece(
    s: &Storage,
    id: &TaskId,
    data: &[u8],
    piece_length: usize,
    number: u32,
) -> PieceRecord {
    let start = number as usize * piece_length;
    let bytes = &data[start..(start + piece_length).min(data.len())];
    let mut w = s.piece_writer(id, number).unwrap();
    for chunk in bytes.chunks(997) {
        w.write(chunk).unwrap();
    }
    w.commit(Some(crc32fast::hash(bytes)), Some("")).unwrap()
}

#[test]
fn pieces_written_out_of_order_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path()).unwrap();
    assert!(s.recovery_report().is_clean());
    let t = id(1);
    let (len, pl) = (100_000usize, 16_384usize);
    let data = content(len);
    let rec = s.create_task(new_task(&t, len as u64, pl as u64)).unwrap();
    assert_eq!(rec.piece_count, 7);
    assert_eq!(rec.state, TaskState::Pending);
    assert_eq!(
        std::fs::metadata(s.content_path(&t)).unwrap().len(),
        len as u64
    );
    assert!(
        s.content_path(&t)
            .starts_with(dir.path().join("content").join(&t.as_str()[..2]))
    );

    for n in [6, 2, 0, 5, 3, 1, 4] {
        let p = write_piece(&s, &t, &data, pl, n);
        assert_eq!(p.number, n);
        assert_eq!(p.offset, n as u64 * pl as u64);
        assert_eq!(p.parent_id.as_deref(), Some(""));
    }
    let pieces = s.pieces(&t).unwrap();
    assert_eq!(
        pieces.iter().map(|p| p.number).collect::<Vec<_>>(),
        (0..7).collect::<Vec<_>>()
    );
    assert_eq!(pieces[6].length, (len - 6 * pl) as u64);
    assert_eq!(s.task(&t).unwrap().unwrap().finished_pieces, 7);

    let mut whole = Vec::new();
    for n in 0..7 {
        assert!(s.has_piece(&t, n).unwrap());
        whole.extend(s.read_piece(&t, n, true).unwrap());
    }
    assert_eq!(whole, data);

    // Zero-copy access: the file and the record, read by offset and length.
    let (file, rec) = s.content_file(&t, 3).unwrap();
    let mut buf = vec![0; rec.length as usize];
    file.read_exact_at(&mut buf, rec.offset).unwrap();
    assert_eq!(buf, &data[3 * pl..4 * pl]);
    assert_eq!(s.piece_record(&t, 3).unwrap(), Some(rec));

    let done = s.finish_task(&t).unwrap();
    assert_eq!(done.state, TaskState::Finished);
    let mut on_disk = Vec::new();
    std::fs::File::open(s.content_path(&t))
        .unwrap()
        .read_to_end(&mut on_disk)
        .unwrap();
    assert_eq!(on_disk, data);
}

#[test]
fn crc_mismatch_on_commit_is_rejected_and_not_recorded() {
    let (_dir, s, t) = ten_bytes();
    let mut w = s.piece_writer(&t, 0).unwrap();
    w.write(b"abcd").unwrap();
    let err = w
        .commit(Some(crc32fast::hash(b"abce")), Some("peer-1"))
        .unwrap_err();
    match &err {
        StorageError::PieceDigestMismatch {
            task,
            piece,
            expected,
            actual,
        } => {
            assert_eq!(task, &t);
            assert_eq!(*piece, 0);
            assert_eq!(*expected, crc32fast::hash(b"abce"));
            assert_eq!(*actual, crc32fast::hash(b"abcd"));
        }
        other => panic!("unexpected {other}"),
    }
    assert!(err.to_string().contains(t.as_str()));
    assert!(!s.has_piece(&t, 0).unwrap());
    assert_eq!(s.piece_record(&t, 0).unwrap(), None);
    assert_eq!(s.task(&t).unwrap().unwrap().finished_pieces, 0);
    assert!(matches!(
        s.read_piece(&t, 0, false),
        Err(StorageError::PieceNotFound { .. })
    ));

    // The right bytes then go in.
    let mut w = s.piece_writer(&t, 0).unwrap();
    w.write(b"abcd").unwrap();
    w.commit(Some(crc32fast::hash(b"abcd")), Some("peer-2"))
        .unwrap();
    assert_eq!(s.read_piece(&t, 0, true).unwrap(), b"abcd");
}

#[test]
fn piece_lengths_are_enforced() {
    let (_dir, s, t) = ten_bytes();
    let mut w = s.piece_writer(&t, 2).unwrap(); // the short last piece: 2 bytes
    assert_eq!(w.range().length, 2);
    w.write(b"x").unwrap();
    assert!(matches!(
        w.write(b"yz"),
        Err(StorageError::PieceLength {
            expected: 2,
            actual: 3,
            ..
        })
    ));
    // The refused chunk was not taken: still one byte in, so commit is short.
    assert!(matches!(
        w.commit(None, None),
        Err(StorageError::PieceLength {
            expected: 2,
            actual: 1,
            ..
        })
    ));
    assert!(!s.has_piece(&t, 2).unwrap());
    assert!(matches!(
        s.piece_writer(&t, 3),
        Err(StorageError::PieceOutOfRange {
            piece: 3,
            piece_count: 3,
            ..
        })
    ));
    assert!(matches!(
        s.piece_writer(&id(9), 0),
        Err(StorageError::TaskNotFound(_))
    ));
}

#[test]
fn create_is_idempotent_and_conflicts_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path()).unwrap();
    let t = id(1);
    let first = s.create_task(new_task(&t, 10, 4)).unwrap();
    put_piece(&s, &t, 0, b"abcd", None);
    // Same layout: the stored record, pieces untouched.
    let again = s.create_task(new_task(&t, 10, 4)).unwrap();
    assert_eq!(again.created_at, first.created_at);
    assert_eq!(again.finished_pieces, 1);
    assert_eq!(s.read_piece(&t, 0, true).unwrap(), b"abcd");

    let err = s.create_task(new_task(&t, 11, 4)).unwrap_err();
    assert!(matches!(
        err,
        StorageError::LayoutConflict {
            existing_length: 10,
            content_length: 11,
            ..
        }
    ));
    assert!(err.to_string().contains("content length 10"), "{err}");
    assert!(matches!(
        s.create_task(new_task(&t, 10, 8)),
        Err(StorageError::LayoutConflict { .. })
    ));
    assert!(matches!(
        s.create_task(new_task(&id(2), 10, 0)),
        Err(StorageError::InvalidLayout { .. })
    ));
    assert_eq!(s.tasks().unwrap().len(), 1);
    // Usage is what is stored (one piece of 4 bytes), not the claimed length.
    assert_eq!(s.usage_bytes().unwrap(), 4);
}

#[test]
fn finish_requires_every_piece() {
    let (_dir, s, t) = ten_bytes();
    put_piece(&s, &t, 1, b"efgh", None);
    let err = s.finish_task(&t).unwrap_err();
    assert!(matches!(
        err,
        StorageError::IncompleteTask {
            missing: 2,
            piece_count: 3,
            ..
        }
    ));
    assert!(
        err.to_string().contains("2 of 3 pieces are missing"),
        "{err}"
    );
    assert_eq!(s.task(&t).unwrap().unwrap().state, TaskState::Pending);

    assert_eq!(s.start_task(&t).unwrap().state, TaskState::Running);
    assert_eq!(s.fail_task(&t).unwrap().state, TaskState::Failed);
    assert!(matches!(
        s.finish_task(&id(7)),
        Err(StorageError::TaskNotFound(_))
    ));

    // An empty task has no pieces and finishes at once.
    let e = id(2);
    s.create_task(new_task(&e, 0, 4)).unwrap();
    assert_eq!(s.finish_task(&e).unwrap().state, TaskState::Finished);
    assert_eq!(s.start_task(&e).unwrap().state, TaskState::Finished);
}

#[test]
fn delete_is_idempotent_and_removes_the_file() {
    let (_dir, s, t) = ten_bytes();
    put_piece(&s, &t, 0, b"abcd", None);
    s.delete_task(&t).unwrap();
    assert_eq!(s.task(&t).unwrap(), None);
    assert!(s.pieces(&t).unwrap().is_empty());
    assert!(!s.content_path(&t).exists());
    s.delete_task(&t).unwrap();
    // Re-created from scratch, no stale pieces.
    let rec = s.create_task(new_task(&t, 10, 4)).unwrap();
    assert_eq!(rec.finished_pieces, 0);
    assert!(!s.has_piece(&t, 0).unwrap());
}

#[test]
fn on_disk_corruption_is_detected_by_verified_reads() {
    let (_dir, s, t) = ten_bytes();
    for (n, b) in [(0u32, &b"abcd"[..]), (1, b"efgh")] {
        put_piece(&s, &t, n, b, None);
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(s.content_path(&t))
        .unwrap();
    file.write_all_at(b"?", 1).unwrap();
    // Without verify the bytes come back as they are.
    assert_eq!(s.read_piece(&t, 0, false).unwrap(), b"a?cd");
    let err = s.read_piece(&t, 0, true).unwrap_err();
    assert!(
        matches!(err, StorageError::PieceDigestMismatch { piece: 0, .. }),
        "{err}"
    );
    assert!(
        !s.has_piece(&t, 0).unwrap(),
        "the bad piece is dropped so it is fetched again"
    );
    assert_eq!(s.read_piece(&t, 1, true).unwrap(), b"efgh");
    assert_eq!(s.task(&t).unwrap().unwrap().finished_pieces, 1);
}

#[test]
fn clones_share_one_storage_across_threads() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path()).unwrap();
    let t = id(1);
    let (len, pl) = (64 * 1024usize, 1024usize);
    let data = content(len);
    s.create_task(new_task(&t, len as u64, pl as u64)).unwrap();
    std::thread::scope(|scope| {
        for k in 0..4u32 {
            let (s, t, data) = (s.clone(), t.clone(), &data);
            scope.spawn(move || {
                for n in (k..64).step_by(4) {
                    write_piece(&s, &t, data, pl, n);
                }
            });
        }
    });
    assert_eq!(s.finish_task(&t).unwrap().finished_pieces, 64);
    for n in 0..64 {
        assert_eq!(
            s.read_piece(&t, n, true).unwrap(),
            &data[n as usize * pl..(n as usize + 1) * pl]
        );
    }
}

#[test]
fn task_ids_that_could_escape_the_data_dir_do_not_parse() {
    for bad in [
        "../x",
        "../../etc/passwd",
        "/etc/passwd",
        "..",
        "ab/cd",
        &"A".repeat(64),
    ] {
        assert!(bad.parse::<TaskId>().is_err(), "{bad:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path()).unwrap();
    let p = s.content_path(&id(3));
    assert!(p.starts_with(dir.path()));
    assert_eq!(p.components().count(), dir.path().components().count() + 3);
}
