//! How the task engine fetches from the source: lanes (one ranged GET carrying many pieces,
//! each committed as it completes), a streaming task's single in-order lane, a body that
//! breaks inside a lane, and a source that ignores Range.

mod support;
use support::read_all;

use dfdaemon::storage::Storage;
use dfdaemon::task::{EngineOptions, TaskManager, TaskRequest};
use dragonfly_common::digest::{Algorithm, Digest};
use testkit::data::random_bytes;
use testkit::origin::{Behavior, Origin, Resource, RunningOrigin};

const KIB: u64 = 1024;
/// Small pieces so a test blob has many of them.
const PIECE: u64 = 64 * KIB;
/// 128 pieces.
const LEN: usize = 8 << 20;

struct Setup {
    engine: TaskManager,
    origin: RunningOrigin,
    _dir: tempfile::TempDir,
    data: Vec<u8>,
}

async fn setup(seed: u64, behavior: Behavior) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let engine = TaskManager::new(
        Storage::open(dir.path()).unwrap(),
        EngineOptions {
            host_id: "source-test".into(),
            ..EngineOptions::default()
        },
    )
    .unwrap();
    let data = random_bytes(seed, LEN);
    let (_origin, running) =
        Origin::serving([("/blob", Resource::bytes(data.clone()).with(behavior))]).await;
    Setup {
        engine,
        origin: running,
        _dir: dir,
        data,
    }
}

impl Setup {
    fn request(&self, streaming: bool) -> TaskRequest {
        TaskRequest {
            url: self.origin.url("/blob"),
            digest: Some(Digest::of(Algorithm::Sha256, &self.data)),
            piece_length: Some(PIECE),
            streaming,
            ..TaskRequest::default()
        }
    }

    /// GETs and body bytes the origin served for the blob.
    fn served(&self) -> (u64, u64) {
        self.origin.stats.for_path("/blob")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pieces_come_in_lanes_of_many_pieces_per_request() {
    let s = setup(1, Behavior::default()).await;
    let task = s.engine.download(s.request(false)).await.unwrap();
    task.wait_finished().await.expect("task finishes");
    assert!(read_all(&task).await == s.data, "content differs");
    let (gets, bytes) = s.served();
    // 128 pieces over 16 concurrent lanes: 8 pieces per GET, not one GET per piece.
    assert_eq!(gets, 16, "GETs for 128 pieces with concurrentPieceCount 16");
    assert_eq!(bytes, LEN as u64, "every byte fetched once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_task_reads_the_source_in_order_in_one_lane_at_a_time() {
    let s = setup(2, Behavior::default()).await;
    let task = s.engine.download(s.request(true)).await.unwrap();
    // Pieces land in order: each one seen stored has every piece before it stored too.
    let mut watch = task.watch();
    let mut out_of_order = 0;
    loop {
        let v = watch.borrow_and_update().clone();
        let done = v.done as usize;
        if !v.have.is_empty() && !v.have[..done].iter().all(|h| *h) {
            out_of_order += 1;
        }
        if done == v.have.len() && !v.have.is_empty() {
            break;
        }
        if watch.changed().await.is_err() {
            break;
        }
    }
    task.wait_finished().await.expect("task finishes");
    assert_eq!(out_of_order, 0, "a piece landed before one in front of it");
    assert!(read_all(&task).await == s.data, "content differs");
    // One lane of at most 16 pieces at a time: 128 / 16 GETs.
    assert_eq!(s.served(), (8, LEN as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_breaks_inside_a_lane_is_fetched_again_from_the_missing_piece() {
    // The first GET stops 2.5 pieces in: pieces 0 and 1 are kept, the lane goes on from 2.
    let s = setup(
        3,
        Behavior {
            break_first_gets: 1,
            break_after: 2 * PIECE + PIECE / 2,
            ..Behavior::default()
        },
    )
    .await;
    let task = s.engine.download(s.request(true)).await.unwrap();
    task.wait_finished()
        .await
        .expect("task finishes after the break");
    assert!(read_all(&task).await == s.data, "content differs");
    let (gets, bytes) = s.served();
    // Half a piece was thrown away; the rest of the blob came once.
    assert_eq!(bytes, LEN as u64 + PIECE / 2, "bytes served");
    // The broken GET, then 126 pieces in lanes of 16.
    assert_eq!(gets, 1 + 126u64.div_ceil(16), "GETs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_ignores_range_is_read_as_one_stream() {
    let s = setup(
        4,
        Behavior {
            ignore_range: true,
            ..Behavior::default()
        },
    )
    .await;
    let task = s.engine.download(s.request(false)).await.unwrap();
    task.wait_finished()
        .await
        .expect("task finishes from the whole-content stream");
    assert!(read_all(&task).await == s.data, "content differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_mismatch_is_caught_whether_hashed_inline_or_from_the_file() {
    for (streaming, seed) in [(true, 5), (false, 6)] {
        let s = setup(seed, Behavior::default()).await;
        let mut req = s.request(streaming);
        req.digest = Some(Digest::of(Algorithm::Sha256, b"something else"));
        let task = s.engine.download(req).await.unwrap();
        let err = task.wait_finished().await.expect_err("wrong digest");
        assert!(
            err.to_string().contains("digest"),
            "streaming {streaming}: {err}"
        );
    }
}
