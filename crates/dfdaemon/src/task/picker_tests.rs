//! The picker and its fallback rules, with fake parents and a fake source: which piece came
//! from where, what was asked again, and the bytes stored in the end.

use super::lanes::Gate;
use super::parent::Parent;
use super::parents::Parents;
use super::picker::{Fetch, Picking};
use super::pieces::{Body, ParentPieces, RemoteError, SourceAnswer, SourcePieces};
use super::room::{InUse, Room};
use super::session::Sched;
use super::version::Version;
use super::{Task, TaskError, TaskErrorKind};
use crate::source::error::DownloadError;
use crate::storage::{NewTask, Storage};
use bytes::Bytes;
use dashmap::DashMap;
use dragonfly_common::piece::PieceLayout;
use dragonfly_common::task_id::TaskId;
use dragonfly_common::validator::SourceValidator;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const URL: &str = "http://origin.test/file";
const PIECE: u64 = 1024;
const PIECES: u32 = 8;

/// How a body ends after its bytes.
#[derive(Clone, Copy)]
enum Tail {
    End,
    /// Nothing more comes; after the read timeout the read fails (as reqwest's would).
    Stall,
}

struct FakeBody {
    chunks: VecDeque<Bytes>,
    tail: Tail,
}

impl FakeBody {
    fn new(bytes: &[u8], tail: Tail) -> Self {
        // Two chunks per body, so pieces are written from more than one buffer.
        let mid = bytes.len() / 2;
        let chunks = [&bytes[..mid], &bytes[mid..]]
            .into_iter()
            .filter(|c| !c.is_empty())
            .map(Bytes::copy_from_slice)
            .collect();
        Self { chunks, tail }
    }
}

impl Body for FakeBody {
    async fn chunk(&mut self) -> Result<Option<Bytes>, RemoteError> {
        if let Some(c) = self.chunks.pop_front() {
            return Ok(Some(c));
        }
        match self.tail {
            Tail::End => Ok(None),
            Tail::Stall => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Err(RemoteError::Transfer(Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "read timed out",
                ))))
            }
        }
    }
}

/// How a fake parent behaves.
#[derive(Clone, Copy)]
enum Behaviour {
    Honest,
    /// Sends other bytes than the piece whose crc32 it announced.
    Lies,
    /// Sends half a piece, then nothing.
    Stalls,
    /// Gives this many pieces, then refuses connections.
    GoneAfter(usize),
}

#[derive(Clone)]
struct FakeParents {
    content: Arc<Vec<u8>>,
    behaviour: Arc<BTreeMap<String, Behaviour>>,
    /// (parent, piece) in the order they were asked.
    asked: Arc<Mutex<Vec<(String, u32)>>>,
}

impl FakeParents {
    fn new(content: &Arc<Vec<u8>>, behaviour: &[(&str, Behaviour)]) -> Self {
        Self {
            content: content.clone(),
            behaviour: Arc::new(
                behaviour
                    .iter()
                    .map(|(id, b)| (id.to_string(), *b))
                    .collect(),
            ),
            asked: Arc::default(),
        }
    }

    fn asked_of(&self, parent: &str) -> Vec<u32> {
        let asked = self.asked.lock().unwrap();
        asked
            .iter()
            .filter(|(p, _)| p == parent)
            .map(|(_, n)| *n)
            .collect()
    }
}

impl ParentPieces for FakeParents {
    type Body = FakeBody;

    async fn fetch(
        &self,
        parent: &Parent,
        _: &TaskId,
        number: u32,
    ) -> Result<FakeBody, RemoteError> {
        let before = {
            let mut asked = self.asked.lock().unwrap();
            let before = asked.iter().filter(|(p, _)| p == &parent.id).count();
            asked.push((parent.id.clone(), number));
            before
        };
        let piece = piece_bytes(&self.content, number);
        match self.behaviour[&parent.id] {
            Behaviour::Honest => Ok(FakeBody::new(piece, Tail::End)),
            Behaviour::Lies => {
                let wrong: Vec<u8> = piece.iter().map(|b| b ^ 0xff).collect();
                Ok(FakeBody::new(&wrong, Tail::End))
            }
            Behaviour::Stalls => Ok(FakeBody::new(&piece[..piece.len() / 2], Tail::Stall)),
            Behaviour::GoneAfter(k) if before < k => Ok(FakeBody::new(piece, Tail::End)),
            Behaviour::GoneAfter(_) => Err(RemoteError::Parent {
                id: parent.id.clone(),
                addr: parent.addr,
                reason: "connection refused".into(),
            }),
        }
    }
}

struct FakeAnswer {
    status: StatusCode,
    headers: HeaderMap,
    body: FakeBody,
}

impl Body for FakeAnswer {
    async fn chunk(&mut self) -> Result<Option<Bytes>, RemoteError> {
        self.body.chunk().await
    }
}

impl SourceAnswer for FakeAnswer {
    fn status(&self) -> StatusCode {
        self.status
    }
    fn headers(&self) -> &HeaderMap {
        &self.headers
    }
}

#[derive(Clone)]
struct FakeSource {
    content: Arc<Vec<u8>>,
    /// Answers 200 with the whole content to every ranged GET.
    ignores_range: bool,
    /// The first GETs fail with these (then it answers).
    failures: Arc<Mutex<VecDeque<DownloadError>>>,
    /// Ranges asked, in order.
    asked: Arc<Mutex<Vec<(u64, u64)>>>,
}

impl FakeSource {
    fn new(content: &Arc<Vec<u8>>) -> Self {
        Self {
            content: content.clone(),
            ignores_range: false,
            failures: Arc::default(),
            asked: Arc::default(),
        }
    }

    fn asked(&self) -> Vec<(u64, u64)> {
        self.asked.lock().unwrap().clone()
    }
}

impl SourcePieces for FakeSource {
    type Answer = FakeAnswer;

    async fn get(
        &self,
        first: u64,
        last: u64,
        _: Option<&SourceValidator>,
    ) -> Result<FakeAnswer, DownloadError> {
        self.asked.lock().unwrap().push((first, last));
        if let Some(e) = self.failures.lock().unwrap().pop_front() {
            return Err(e);
        }
        let len = self.content.len();
        let mut headers = HeaderMap::new();
        if self.ignores_range {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            return Ok(FakeAnswer {
                status: StatusCode::OK,
                headers,
                body: FakeBody::new(&self.content, Tail::End),
            });
        }
        let range = format!("bytes {first}-{last}/{len}");
        headers.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&range).unwrap(),
        );
        Ok(FakeAnswer {
            status: StatusCode::PARTIAL_CONTENT,
            headers,
            body: FakeBody::new(&self.content[first as usize..=last as usize], Tail::End),
        })
    }
}

fn piece_bytes(content: &[u8], n: u32) -> &[u8] {
    let start = n as usize * PIECE as usize;
    &content[start..(start + PIECE as usize).min(content.len())]
}

fn parent(id: &str, i: u8) -> Parent {
    Parent {
        id: id.to_string(),
        addr: format!("127.0.0.{i}:65002").parse().unwrap(),
    }
}

/// A task of [`PIECES`] pieces in fresh storage, with the parents given, fetched by the
/// picker from the fakes.
struct Case {
    _dir: tempfile::TempDir,
    storage: Storage,
    task: Arc<Task>,
    content: Arc<Vec<u8>>,
    layout: PieceLayout,
    parents: Parents,
    sched: Sched,
}

impl Case {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let content: Arc<Vec<u8>> = Arc::new(
            (0..PIECE * u64::from(PIECES) - 100)
                .map(|i| (i * 7 % 251) as u8)
                .collect(),
        );
        let layout = PieceLayout::new(content.len() as u64, PIECE).unwrap();
        let id = TaskId::for_url(URL, "", "", None, &[]);
        storage
            .create_task(NewTask {
                id: id.clone(),
                url: URL.into(),
                content_length: layout.content_length(),
                piece_length: layout.piece_length(),
                digest: None,
                validator: None,
            })
            .unwrap();
        storage.start_task(&id).unwrap();
        let task = Task::new(id.clone(), "peer".into(), URL.into(), storage.clone());
        task.set_layout(layout);
        let (parents, _events) = Parents::new("host".into(), id);
        Self {
            _dir: dir,
            storage,
            task,
            content,
            layout,
            parents,
            sched: Sched::new(None, Default::default()),
        }
    }

    /// A parent holding every piece (its stream ended: nothing more will come).
    fn parent_with_all(&mut self, p: Parent, seed: bool) -> usize {
        let has: Vec<(u32, u32)> = (0..PIECES)
            .map(|n| (n, crc32fast::hash(piece_bytes(&self.content, n))))
            .collect();
        self.parent_with(p, seed, &has)
    }

    fn parent_with(&mut self, p: Parent, seed: bool, has: &[(u32, u32)]) -> usize {
        let i = self.parents.add_known(p, seed, has);
        self.parents.list[i].open = false;
        i
    }

    async fn fetch(
        &mut self,
        from_parents: &FakeParents,
        source: &FakeSource,
        concurrency: usize,
        stall: Duration,
    ) -> Result<(), TaskError> {
        let in_use = InUse {
            tasks: Arc::new(DashMap::new()),
            pins: Arc::new(DashMap::new()),
        };
        let gate = Gate {
            rate: crate::rate::DownloadLimits::default().for_task(),
            room: Room::new(self.storage.clone(), None, in_use, None),
        };
        let version: Version = Default::default();
        let (_tx, mut events) = tokio::sync::mpsc::channel(1);
        Fetch {
            storage: &self.storage,
            task: &self.task,
            layout: self.layout,
            parents: &mut self.parents,
            events: &mut events,
            sched: &mut self.sched,
            version: &version,
            gate: &gate,
            hash: None,
            from_parents,
            source,
            picking: Picking {
                concurrency,
                streaming: false,
                stall,
                random_start: false,
            },
        }
        .run()
        .await
    }

    /// Where each stored piece came from: a parent's id, or "" for the source.
    fn origins(&self) -> Vec<String> {
        let mut pieces = self.storage.pieces(&self.task.id).unwrap();
        pieces.sort_by_key(|p| p.number);
        pieces
            .into_iter()
            .map(|p| p.parent_id.unwrap_or_default())
            .collect()
    }

    fn stored(&self) -> Vec<u8> {
        std::fs::read(self.storage.content_path(&self.task.id)).unwrap()
    }
}

fn all(origin: &str) -> Vec<String> {
    vec![origin.to_string(); PIECES as usize]
}

#[tokio::test]
async fn the_seed_is_asked_only_for_what_no_other_parent_has() {
    let mut c = Case::new();
    let crcs: Vec<(u32, u32)> = (0..PIECES / 2)
        .map(|n| (n, crc32fast::hash(piece_bytes(&c.content, n))))
        .collect();
    c.parent_with_all(parent("seed", 1), true);
    c.parent_with(parent("peer", 2), false, &crcs);
    let fakes = FakeParents::new(
        &c.content,
        &[("seed", Behaviour::Honest), ("peer", Behaviour::Honest)],
    );
    let source = FakeSource::new(&c.content);
    c.fetch(&fakes, &source, 4, Duration::from_secs(30))
        .await
        .unwrap();
    let half = (PIECES / 2) as usize;
    let mut want = vec!["peer".to_string(); half];
    want.extend(vec!["seed".to_string(); half]);
    assert_eq!(c.origins(), want);
    assert_eq!(
        fakes.asked_of("seed"),
        (PIECES / 2..PIECES).collect::<Vec<_>>()
    );
    assert!(source.asked().is_empty(), "the source is not asked");
    assert_eq!(c.stored(), *c.content);
}

#[tokio::test]
async fn a_parent_that_lies_is_asked_once_and_its_piece_comes_from_another() {
    let mut c = Case::new();
    let liar = c.parent_with_all(parent("liar", 1), false);
    c.parent_with_all(parent("honest", 2), false);
    let fakes = FakeParents::new(
        &c.content,
        &[("liar", Behaviour::Lies), ("honest", Behaviour::Honest)],
    );
    let source = FakeSource::new(&c.content);
    c.fetch(&fakes, &source, 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        fakes.asked_of("liar"),
        vec![0],
        "asked for the first piece, never again"
    );
    assert_eq!(fakes.asked_of("honest"), (0..PIECES).collect::<Vec<_>>());
    assert!(c.parents.list[liar].bad);
    assert_eq!(c.origins(), all("honest"));
    assert!(source.asked().is_empty());
    assert_eq!(c.stored(), *c.content);
}

#[tokio::test(start_paused = true)]
async fn a_parent_that_stalls_is_dropped_and_the_source_gives_the_rest() {
    let mut c = Case::new();
    let slow = c.parent_with_all(parent("slow", 1), false);
    let fakes = FakeParents::new(&c.content, &[("slow", Behaviour::Stalls)]);
    let source = FakeSource::new(&c.content);
    c.fetch(&fakes, &source, 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(fakes.asked_of("slow"), vec![0]);
    assert!(c.parents.list[slow].bad);
    assert_eq!(c.origins(), all(""), "every piece from the source");
    // One lane for the whole content (one source slot), asked once.
    assert_eq!(source.asked(), vec![(0, c.content.len() as u64 - 1)]);
    assert_eq!(c.sched.fed_from("source"), PIECES);
    assert_eq!(c.stored(), *c.content);
}

#[tokio::test]
async fn a_parent_that_disappears_mid_task_leaves_the_rest_to_the_seed() {
    let mut c = Case::new();
    let gone = c.parent_with_all(parent("gone", 1), false);
    c.parent_with_all(parent("seed", 2), true);
    let fakes = FakeParents::new(
        &c.content,
        &[
            ("gone", Behaviour::GoneAfter(3)),
            ("seed", Behaviour::Honest),
        ],
    );
    let source = FakeSource::new(&c.content);
    c.fetch(&fakes, &source, 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        fakes.asked_of("gone"),
        vec![0, 1, 2, 3],
        "asked again until it failed once"
    );
    assert_eq!(fakes.asked_of("seed"), (3..PIECES).collect::<Vec<_>>());
    assert!(c.parents.list[gone].bad);
    let mut want = vec!["gone".to_string(); 3];
    want.extend(vec!["seed".to_string(); PIECES as usize - 3]);
    assert_eq!(c.origins(), want);
    assert!(source.asked().is_empty());
    assert_eq!(c.stored(), *c.content);
}

#[tokio::test]
async fn a_source_that_ignores_range_is_read_as_one_stream() {
    let mut c = Case::new();
    let fakes = FakeParents::new(&c.content, &[]);
    let mut source = FakeSource::new(&c.content);
    source.ignores_range = true;
    c.fetch(&fakes, &source, 4, Duration::from_secs(30))
        .await
        .unwrap();
    let asked = source.asked();
    assert_eq!(
        asked[0],
        (0, 2 * PIECE - 1),
        "the first lane asked two pieces"
    );
    assert_eq!(c.origins(), all(""));
    assert_eq!(
        c.sched.fed_from("source"),
        PIECES,
        "each piece reported once"
    );
    assert_eq!(c.stored(), *c.content);
}

impl FakeSource {
    /// The next `times` asks are answered with status `code`.
    fn fail_with(&self, code: u16, times: usize) {
        let status = http::StatusCode::from_u16(code).expect("a status code");
        for _ in 0..times {
            self.failures
                .lock()
                .unwrap()
                .push_back(DownloadError::Status {
                    url: URL.into(),
                    status: status.to_string(),
                    code,
                    challenge: None,
                });
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_source_is_asked_again_after_errors_that_may_pass() {
    let mut c = Case::new();
    let fakes = FakeParents::new(&c.content, &[]);
    let source = FakeSource::new(&c.content);
    source.fail_with(503, 2);
    c.fetch(&fakes, &source, 1, Duration::from_secs(30))
        .await
        .unwrap();
    let whole = (0, c.content.len() as u64 - 1);
    assert_eq!(
        source.asked(),
        vec![whole; 3],
        "two failures, then the lane"
    );
    assert_eq!(c.origins(), all(""));
    assert_eq!(c.stored(), *c.content);
}

#[tokio::test(start_paused = true)]
async fn the_source_gives_up_after_three_attempts_and_names_the_url() {
    let mut c = Case::new();
    let fakes = FakeParents::new(&c.content, &[]);
    let source = FakeSource::new(&c.content);
    source.fail_with(503, 3);
    let e = c
        .fetch(&fakes, &source, 1, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert_eq!(source.asked().len(), 3);
    assert_eq!(e.kind(), TaskErrorKind::Source);
    assert!(e.to_string().contains(URL), "{e}");
    assert!(
        dragonfly_common::error::is_caused_by::<DownloadError>(&e),
        "the cause is kept"
    );
}

#[tokio::test]
async fn a_refusal_of_the_source_fails_the_task_at_once() {
    let mut c = Case::new();
    let fakes = FakeParents::new(&c.content, &[]);
    let source = FakeSource::new(&c.content);
    source.fail_with(404, 1);
    let e = c
        .fetch(&fakes, &source, 1, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert_eq!(source.asked().len(), 1, "a 404 is not asked again");
    assert!(
        matches!(&e, TaskError::Source(d) if matches!(**d, DownloadError::Status { code: 404, .. })),
        "{e:?}"
    );
    assert_eq!(e.to_string(), format!("{URL} answered 404 Not Found"));
    assert!(c.origins().is_empty());
}
