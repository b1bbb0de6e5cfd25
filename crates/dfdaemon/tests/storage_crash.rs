//! Storage under a real process kill: a child process (this test binary, re-executed) writes,
//! reads, finishes, deletes and garbage-collects tasks in a loop on two threads; the parent
//! SIGKILLs it at a varying moment, reopens the storage and checks the invariants.

use dfdaemon::storage::{GcPolicy, NewTask, Storage, StorageError, TaskState};
use dragonfly_common::task_id::TaskId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "STORAGE_CRASH_CHILD";
const ROUNDS: u64 = 6;
const TASKS: u32 = 8;
const PIECE_LENGTH: u64 = 16 * 1024;

fn id(n: u32) -> TaskId {
    TaskId::for_url(&format!("https://origin/crash/{n}"), "", "", None, &[])
}

/// Task `n`'s content length: fixed per task, so every incarnation has one layout.
fn content_length(n: u32) -> u64 {
    u64::from(n) * 37_000 + 5_000
}

/// The bytes of a piece: a function of task and piece, so duplicate writes agree.
fn piece_bytes(n: u32, piece: u32, len: u64) -> Vec<u8> {
    let seed = u64::from(n) << 32 | u64::from(piece);
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random()).collect()
}

/// One writer thread of the child: random operations until killed.
fn child_loop(s: Storage, seed: u64) -> ! {
    let mut rng = StdRng::seed_from_u64(seed);
    loop {
        let n = rng.random_range(0..TASKS);
        let t = id(n);
        let len = content_length(n);
        let op = rng.random_range(0..100);
        let result: Result<(), StorageError> = (|| {
            match op {
                0..5 => s.delete_task(&t),
                5..7 => {
                    let policy = GcPolicy {
                        task_ttl: Duration::ZERO,
                        quota_bytes: Some(150_000),
                        disk_used_percent: None,
                    };
                    s.gc(&policy, &|_| false, 0).map(|_| ())
                }
                7..12 => s.finish_task(&t).map(|_| ()),
                12..20 => {
                    let piece = rng.random_range(0..len.div_ceil(PIECE_LENGTH) as u32);
                    let bytes = s.read_piece(&t, piece, true)?;
                    assert_eq!(
                        bytes,
                        piece_bytes(n, piece, bytes.len() as u64),
                        "wrong bytes read"
                    );
                    Ok(())
                }
                _ => {
                    let rec = s.create_task(NewTask {
                        id: t.clone(),
                        url: format!("https://origin/crash/{n}"),
                        content_length: len,
                        piece_length: PIECE_LENGTH,
                        digest: None,
                        validator: None,
                    })?;
                    if rng.random_bool(0.3) {
                        s.start_task(&t)?;
                    }
                    let piece = rng.random_range(0..rec.piece_count);
                    let range = rec.piece_range(piece)?;
                    let bytes = piece_bytes(n, piece, range.length);
                    let mut w = s.piece_writer(&t, piece)?;
                    let chunk = rng.random_range(1000..20_000);
                    let abandon = rng.random_bool(0.1);
                    for (i, c) in bytes.chunks(chunk).enumerate() {
                        w.write(c)?;
                        if abandon && i == 0 {
                            return Ok(()); // dropped half written
                        }
                    }
                    w.commit(Some(crc32fast::hash(&bytes)), Some(""))
                        .map(|_| ())
                }
            }
        })();
        // Races between the two threads (a task deleted under a writer, a piece already
        // there, a finish with pieces missing) are expected; corruption is not.
        if let Err(e) = result
            && !matches!(
                e,
                StorageError::TaskNotFound(_)
                    | StorageError::PieceExists { .. }
                    | StorageError::PieceNotFound { .. }
                    | StorageError::IncompleteTask { .. }
                    | StorageError::TaskChanged { .. }
            )
        {
            eprintln!("crash child: unexpected error: {e}");
            std::process::exit(3);
        }
    }
}

/// Runs only when re-executed by `kill_during_writes_keeps_storage_consistent`.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let s = Storage::open(&dir).unwrap();
    let seed: u64 = std::env::var("STORAGE_CRASH_SEED")
        .unwrap()
        .parse()
        .unwrap();
    std::fs::write(Path::new(&dir).join("child-ready"), b"").unwrap();
    let other = s.clone();
    std::thread::spawn(move || child_loop(other, seed.wrapping_mul(31).wrapping_add(7)));
    child_loop(s, seed);
}

/// Recovery had nothing to drop; every recorded piece reads back with its crc32; no file
/// without a record, no record without its right-sized file, nothing left running.
fn check_invariants(dir: &Path, round: u64) -> usize {
    let s = Storage::open(dir).unwrap();
    let r = s.recovery_report();
    eprintln!(
        "round {round}: {} finished, {} unfinished, {} resumed, {} pieces re-verified, dropped {} tasks / {} pieces, {} orphan files",
        r.finished_tasks,
        r.unfinished_tasks,
        r.resumed.len(),
        r.pieces_verified,
        r.dropped_tasks.len(),
        r.dropped_pieces.len(),
        r.orphan_files_removed.len()
    );
    // Bytes go before piece records, files before task records and after their removal: a
    // kill leaves at most orphan files and unfinished tasks, never a record to drop.
    assert!(
        r.dropped_pieces.is_empty(),
        "round {round}: {:?}",
        r.dropped_pieces
    );
    assert!(
        r.dropped_tasks.is_empty(),
        "round {round}: {:?}",
        r.dropped_tasks
    );
    let tasks = s.tasks().unwrap();
    let mut pieces_checked = 0;
    let mut owned = HashSet::new();
    for t in &tasks {
        let n = (0..TASKS)
            .find(|n| id(*n) == t.id)
            .expect("only the child's tasks exist");
        assert_ne!(
            t.state,
            TaskState::Running,
            "round {round}: {} still running",
            t.id
        );
        assert_eq!(t.content_length, content_length(n));
        let path = s.content_path(&t.id);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            t.content_length,
            "round {round}"
        );
        owned.insert(path);
        let pieces = s.pieces(&t.id).unwrap();
        assert_eq!(
            t.finished_pieces as usize,
            pieces.len(),
            "round {round}: {}",
            t.id
        );
        if t.state == TaskState::Finished {
            assert_eq!(
                pieces.len() as u32,
                t.piece_count,
                "round {round}: finished but incomplete"
            );
        }
        for p in pieces {
            let bytes = s
                .read_piece(&t.id, p.number, true)
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(bytes, piece_bytes(n, p.number, p.length), "round {round}");
            pieces_checked += 1;
        }
    }
    let mut files = Vec::new();
    for shard in std::fs::read_dir(dir.join("content")).unwrap() {
        for f in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            files.push(f.unwrap().path());
        }
    }
    for f in &files {
        assert!(
            owned.contains(f),
            "round {round}: orphan file {}",
            f.display()
        );
    }
    pieces_checked
}

#[test]
fn kill_during_writes_keeps_storage_consistent() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = StdRng::seed_from_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    let mut total_pieces = 0;
    for round in 0..ROUNDS {
        let ready = dir.path().join("child-ready");
        let _ = std::fs::remove_file(&ready);
        let seed: u64 = rng.random();
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .env("STORAGE_CRASH_SEED", seed.to_string())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while !ready.exists() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("round {round} (seed {seed}): child exited early: {status}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "child never got ready"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(20..400)));
        if let Some(status) = child.try_wait().unwrap() {
            panic!("round {round} (seed {seed}): child died by itself: {status}");
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        std::fs::remove_file(&ready).unwrap();
        total_pieces += check_invariants(dir.path(), round);
    }
    assert!(total_pieces > 0, "the children never committed a piece");
}
