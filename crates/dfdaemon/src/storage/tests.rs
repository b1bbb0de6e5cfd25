//! Unit tests of the parts integration tests cannot reach: throttling, writer races, GC with a
//! fake filesystem.

use super::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

fn id(n: u32) -> TaskId {
    TaskId::for_url(&format!("https://origin/{n}"), "", "", None, &[])
}

fn new_task(id: &TaskId, len: u64, piece_length: u64) -> NewTask {
    NewTask {
        id: id.clone(),
        url: format!("https://origin/{id}"),
        content_length: len,
        piece_length,
        digest: None,
        validator: None,
    }
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn open_at(dir: &Path, start_ms: u64) -> (Storage, Arc<AtomicU64>) {
    let now = Arc::new(AtomicU64::new(start_ms));
    let n = now.clone();
    let storage =
        Storage::open_with_clock(dir, Arc::new(move || n.load(Ordering::SeqCst))).unwrap();
    (storage, now)
}

fn write(storage: &Storage, id: &TaskId, number: u32, data: &[u8]) -> Result<PieceRecord> {
    let mut w = storage.piece_writer(id, number)?;
    w.write(data)?;
    w.commit(None, Some(""))
}

#[test]
fn storage_is_shareable() {
    fn check<T: Clone + Send + Sync + 'static>() {}
    check::<Storage>();
    fn check_send<T: Send>() {}
    check_send::<PieceWriter>();
}

#[test]
fn touch_writes_at_most_once_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let (s, now) = open_at(dir.path(), 0);
    let t = id(1);
    s.create_task(new_task(&t, 10, 4)).unwrap();
    now.store(500, Ordering::SeqCst);
    s.touch(&t).unwrap();
    assert_eq!(s.task(&t).unwrap().unwrap().last_access, 500);
    now.store(900, Ordering::SeqCst);
    s.touch(&t).unwrap();
    assert_eq!(s.task(&t).unwrap().unwrap().last_access, 500);
    now.store(1600, Ordering::SeqCst);
    s.touch(&t).unwrap();
    assert_eq!(s.task(&t).unwrap().unwrap().last_access, 1600);
    // Touching a task that is not there is not an error, and is not remembered.
    s.touch(&id(2)).unwrap();
    assert!(!lock(&s.inner.touched).contains_key(&id(2)));
}

#[test]
fn writer_buffers_large_pieces_in_any_chunking() {
    const MIB: usize = 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open_at(dir.path(), 0);
    let t = id(1);
    let len = 3 * MIB + 12345;
    s.create_task(new_task(&t, 4 * len as u64, len as u64))
        .unwrap();
    let data = bytes(len, 7);
    // Mixed: a small chunk (buffered), then a large one while the buffer is not empty (buffered
    // too), then a large one after a flush (written directly), then the tail.
    let mut w = s.piece_writer(&t, 3).unwrap();
    let cuts = [0, 10, 10 + 2 * MIB, 10 + 2 * MIB + 10 + MIB / 2, len];
    for pair in cuts.windows(2) {
        w.write(&data[pair[0]..pair[1]]).unwrap();
    }
    assert_eq!(w.written(), len as u64);
    w.commit(Some(crc32fast::hash(&data)), None).unwrap();
    assert_eq!(s.read_piece(&t, 3, true).unwrap(), data);
    // Tiny chunks, chunks that straddle the 1 MiB buffer, chunks bigger than it.
    for (number, chunk) in [(0u32, 17usize), (1, 700_001), (2, 1_500_000)] {
        let mut w = s.piece_writer(&t, number).unwrap();
        for c in data.chunks(chunk) {
            w.write(c).unwrap();
        }
        assert_eq!(w.written(), len as u64);
        let rec = w.commit(Some(crc32fast::hash(&data)), None).unwrap();
        assert_eq!(rec.parent_id, None);
        assert_eq!(s.read_piece(&t, number, true).unwrap(), data);
    }
}

#[test]
fn commit_into_a_recreated_task_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open_at(dir.path(), 0);
    let t = id(1);
    s.create_task(new_task(&t, 8, 4)).unwrap();
    let mut w = s.piece_writer(&t, 0).unwrap();
    w.write(b"abcd").unwrap();
    s.delete_task(&t).unwrap();
    s.create_task(new_task(&t, 8, 4)).unwrap();
    let err = w.commit(None, None).unwrap_err();
    assert!(
        matches!(err, StorageError::TaskChanged { piece: 0, .. }),
        "{err}"
    );
    assert!(!s.has_piece(&t, 0).unwrap());

    // Deleted and not re-created: refused as well.
    let mut w = s.piece_writer(&t, 1).unwrap();
    w.write(b"efgh").unwrap();
    s.delete_task(&t).unwrap();
    assert!(matches!(
        w.commit(None, None),
        Err(StorageError::TaskChanged { .. })
    ));
    assert!(s.pieces(&t).unwrap().is_empty());
}

#[test]
fn duplicate_writers_same_bytes_keep_the_piece_different_bytes_drop_it() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open_at(dir.path(), 0);
    let t = id(1);
    s.create_task(new_task(&t, 8, 4)).unwrap();

    let mut a = s.piece_writer(&t, 0).unwrap();
    let mut b = s.piece_writer(&t, 0).unwrap();
    a.write(b"abcd").unwrap();
    b.write(b"abcd").unwrap();
    let first = a.commit(None, Some("p1")).unwrap();
    let second = b.commit(None, Some("p2")).unwrap();
    assert_eq!(first, second, "the first record is kept");
    assert_eq!(s.task(&t).unwrap().unwrap().finished_pieces, 1);

    let mut a = s.piece_writer(&t, 1).unwrap();
    let mut b = s.piece_writer(&t, 1).unwrap();
    a.write(b"efgh").unwrap();
    b.write(b"XXXX").unwrap();
    a.commit(None, None).unwrap();
    let err = b.commit(None, None).unwrap_err();
    assert!(
        matches!(err, StorageError::PieceConflict { piece: 1, .. }),
        "{err}"
    );
    assert!(err.is_corrupt_piece());
    assert!(!s.has_piece(&t, 1).unwrap());
    assert_eq!(s.task(&t).unwrap().unwrap().finished_pieces, 1);
    // A later piece_writer on a stored piece is refused outright.
    assert!(matches!(
        s.piece_writer(&t, 0),
        Err(StorageError::PieceExists { .. })
    ));
}

#[test]
fn verify_failure_on_a_finished_task_makes_it_resumable() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open_at(dir.path(), 0);
    let t = id(1);
    s.create_task(new_task(&t, 8, 4)).unwrap();
    write(&s, &t, 0, b"abcd").unwrap();
    write(&s, &t, 1, b"efgh").unwrap();
    assert_eq!(s.finish_task(&t).unwrap().state, TaskState::Finished);
    std::fs::OpenOptions::new()
        .write(true)
        .open(s.content_path(&t))
        .unwrap()
        .write_all_at(b"Z", 5)
        .unwrap();
    assert!(s.read_piece(&t, 0, true).is_ok());
    assert!(matches!(
        s.read_piece(&t, 1, true),
        Err(StorageError::PieceDigestMismatch { piece: 1, .. })
    ));
    let rec = s.task(&t).unwrap().unwrap();
    assert_eq!(rec.state, TaskState::Pending);
    assert_eq!(rec.finished_pieces, 1);
    write(&s, &t, 1, b"efgh").unwrap();
    assert_eq!(s.finish_task(&t).unwrap().state, TaskState::Finished);
}

/// A fake filesystem of 1000 bytes whose usage is `base` plus the stored tasks.
fn fake_disk(s: &Storage, base: u64) -> impl Fn() -> Result<DiskUsage> + '_ {
    move || {
        let used = base + s.usage_bytes()?;
        Ok(DiskUsage {
            used_bytes: used,
            available_bytes: 1000u64.saturating_sub(used),
        })
    }
}

#[test]
fn gc_meets_the_disk_percent_in_lru_order() {
    let dir = tempfile::tempdir().unwrap();
    let (s, now) = open_at(dir.path(), 0);
    for n in 0..5 {
        now.store(n as u64 * 10, Ordering::SeqCst);
        s.create_task(new_task(&id(n), 100, 50)).unwrap();
        // Stored bytes count, not claimed lengths: each task gets its two pieces.
        s.start_task(&id(n)).unwrap();
        write(&s, &id(n), 0, &[n as u8; 50]).unwrap();
        write(&s, &id(n), 1, &[n as u8; 50]).unwrap();
        s.finish_task(&id(n)).unwrap();
    }
    now.store(100, Ordering::SeqCst);
    s.touch(&id(0)).unwrap(); // id(0) is now the most recent
    let policy = GcPolicy {
        task_ttl: Duration::ZERO,
        quota_bytes: None,
        disk_used_percent: Some(60.0),
    };
    // 300 + 500 = 80% used; 60% needs two tasks gone.
    let report = s
        .gc_with_disk(&policy, &|_| false, 0, &fake_disk(&s, 300))
        .unwrap();
    let evicted: Vec<_> = report.evicted.iter().map(|e| e.id.clone()).collect();
    assert_eq!(evicted, [id(1), id(2)]);
    assert!(
        report
            .evicted
            .iter()
            .all(|e| e.reason == EvictionReason::DiskUsage)
    );
    assert_eq!(report.bytes_freed, 200);
    assert_eq!(report.usage_bytes, 300);
    assert_eq!(report.disk_used_percent, Some(60.0));
    assert!(report.target_reached);

    // Incoming bytes count: 100 more needs one more task gone.
    let report = s
        .gc_with_disk(&policy, &|_| false, 100, &fake_disk(&s, 300))
        .unwrap();
    assert_eq!(report.evicted.len(), 1);
    assert_eq!(report.evicted[0].id, id(3));

    // Nothing evictable left but in-use tasks: target not reached.
    let report = s
        .gc_with_disk(&policy, &|_| true, 500, &fake_disk(&s, 300))
        .unwrap();
    assert!(report.evicted.is_empty());
    assert!(!report.target_reached);
    assert_eq!(report.skipped.len(), 2);
}

#[test]
fn finished_tasks_are_reverified_only_after_a_reboot() {
    let dir = tempfile::tempdir().unwrap();
    let t = id(77);
    let data = bytes(12, 3);
    {
        let (s, _) = open_at(dir.path(), 0);
        s.create_task(new_task(&t, 12, 4)).unwrap();
        for n in 0..3u32 {
            write(&s, &t, n, &data[n as usize * 4..n as usize * 4 + 4]).unwrap();
        }
        s.finish_task(&t).unwrap();
    }
    // Bytes change under a finished task (as a power loss could leave them).
    {
        use std::os::unix::fs::FileExt;
        let path = dir
            .path()
            .join(CONTENT_DIR)
            .join(t.shard())
            .join(t.as_str());
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .write_all_at(b"XX", 5)
            .unwrap();
    }
    // Same boot: finished tasks are trusted (the page cache cannot have lost them).
    {
        let (s, _) = open_at(dir.path(), 0);
        assert_eq!(s.recovery_report().pieces_verified, 0);
        assert!(s.task(&t).unwrap().unwrap().is_finished());
    }
    // Another boot: everything is re-verified and the bad piece dropped.
    {
        let db = Database::create(dir.path().join(METADATA_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(record::META)
            .unwrap()
            .insert("boot_id", "an-earlier-boot")
            .unwrap();
        txn.commit().unwrap();
    }
    let (s, _) = open_at(dir.path(), 0);
    assert_eq!(s.recovery_report().pieces_verified, 3);
    let dropped: Vec<u32> = s
        .recovery_report()
        .dropped_pieces
        .iter()
        .map(|p| p.number)
        .collect();
    assert_eq!(dropped, [1]);
    assert!(
        !s.task(&t).unwrap().unwrap().is_finished(),
        "resumable again, piece 1 to refetch"
    );
}

#[test]
fn digests_are_taken_with_every_piece_checked_and_damage_drops_the_piece() {
    use dragonfly_common::digest::{Algorithm, Digest};
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open_at(dir.path(), 0);
    let t = id(7);
    let data = bytes(10, 3);
    s.create_task(new_task(&t, 10, 4)).unwrap();
    for (n, chunk) in data.chunks(4).enumerate() {
        write(&s, &t, n as u32, chunk).unwrap();
    }
    s.finish_task_with(&t, &["sha256:00".into()]).unwrap();
    let sha = Algorithm::Sha256;
    let got = s.hash_content(&t, 0, vec![sha.hasher()]).unwrap().unwrap();
    assert_eq!(got, vec![Digest::of(sha, &data)]);
    // From a piece boundary: the first piece is left out.
    let rest = s.hash_content(&t, 4, vec![sha.hasher()]).unwrap().unwrap();
    assert_eq!(rest, vec![Digest::of(sha, &data[4..])]);
    assert_eq!(s.verify_piece(&t, 1).unwrap(), None);
    // One byte of piece 1 changes on disk.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(s.content_path(&t))
        .unwrap();
    f.write_all_at(b"x", 5).unwrap();
    let damaged = s
        .hash_content(&t, 0, vec![sha.hasher()])
        .unwrap()
        .unwrap_err();
    assert_eq!(damaged.number, 1);
    let rec = s.task(&t).unwrap().unwrap();
    assert!(!rec.is_finished(), "a dropped piece unfinishes the task");
    assert!(s.piece_record(&t, 1).unwrap().is_none());
    assert!(matches!(
        s.verify_piece(&t, 1),
        Err(StorageError::PieceNotFound { .. })
    ));
}

#[test]
fn pieces_from_doubted_sources_are_dropped_and_other_digests_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open_at(dir.path(), 0);
    let t = id(8);
    s.create_task(new_task(&t, 12, 4)).unwrap();
    write(&s, &t, 0, &bytes(4, 1)).unwrap();
    for n in 1..3 {
        let mut w = s.piece_writer(&t, n).unwrap();
        w.write(&bytes(4, n as u8)).unwrap();
        w.commit(None, Some("parent-a")).unwrap();
    }
    s.finish_task_with(&t, &["sha256:ab".into()]).unwrap();
    s.add_content_digest(&t, "sha512:cd").unwrap();
    s.add_content_digest(&t, "sha512:ef").unwrap();
    let rec = s.task(&t).unwrap().unwrap();
    assert_eq!(rec.content_digest("sha256"), Some("sha256:ab"));
    assert_eq!(
        rec.content_digest("sha512"),
        Some("sha512:ef"),
        "one per algorithm"
    );
    let dropped = s
        .drop_pieces_where(&t, |p| p.parent_id.as_deref() != Some(""))
        .unwrap();
    assert_eq!(
        dropped.iter().map(|p| p.number).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let rec = s.task(&t).unwrap().unwrap();
    assert!(!rec.is_finished());
    assert!(
        rec.content_digests.is_empty(),
        "digests of the old content are gone"
    );
    assert_eq!(s.pieces(&t).unwrap().len(), 1);
}
