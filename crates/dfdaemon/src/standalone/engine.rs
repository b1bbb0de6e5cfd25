//! The standalone engine: one process, the origin as the only source.

use super::output::{TempOutput, prepare_output, validate_url};
use crate::source::error::DownloadError;
use crate::source::http::{content_length, content_range, validator_of};
use crate::source::{HttpSource, Probe, SourceOptions};
use dragonfly_common::digest::{Algorithm, Digest};
use dragonfly_common::piece::{PieceLayout, PieceRange};
use dragonfly_common::validator::SourceValidator;
use http::{HeaderMap, StatusCode};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Bytes buffered per piece before they are written out.
const WRITE_BUFFER: usize = 1 << 20;
/// Attempts per piece for errors that may pass (connection reset, 5xx, short body).
const PIECE_ATTEMPTS: u32 = 3;

/// What to download and where.
#[derive(Debug, Clone)]
pub struct DownloadRequest {
    /// The http(s) URL.
    pub url: String,
    /// Extra request headers sent to the origin.
    pub headers: HeaderMap,
    /// Where the file goes.
    pub output: PathBuf,
    /// Replace an existing output file.
    pub overwrite: bool,
    /// Expected digest of the whole content.
    pub digest: Option<Digest>,
    /// Limit on the whole download.
    pub timeout: Option<Duration>,
    /// Pieces fetched at once.
    pub concurrency: usize,
    /// Piece length; `None` picks it from the content length.
    pub piece_length: Option<u64>,
    /// HTTP client options.
    pub source: SourceOptions,
}

impl DownloadRequest {
    /// A request with default settings.
    pub fn new(url: impl Into<String>, output: impl Into<PathBuf>) -> Self {
        Self {
            url: url.into(),
            headers: HeaderMap::new(),
            output: output.into(),
            overwrite: false,
            digest: None,
            timeout: None,
            concurrency: 8,
            piece_length: None,
            source: SourceOptions::default(),
        }
    }
}

/// How the bytes were fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Parallel ranged requests, one per piece.
    Pieces,
    /// One plain GET (the origin ignores Range or gave no length).
    SingleStream,
    /// Through the local daemon (peer to peer, or its own source fetch).
    Daemon,
}

/// The result of a finished download.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Bytes written.
    pub content_length: u64,
    /// Piece length used (0 in single-stream mode).
    pub piece_length: u64,
    /// crc32 of each piece, in piece order (empty in single-stream mode).
    pub piece_crcs: Vec<u32>,
    /// How the bytes were fetched.
    pub mode: Mode,
    /// The verified digest, when one was asked for.
    pub digest: Option<Digest>,
    /// Wall time.
    pub elapsed: Duration,
}

/// Progress reports from the engine.
pub trait Progress: Send + Sync {
    /// The total length, once known (`None`: unknown).
    fn set_length(&self, length: Option<u64>);
    /// Bytes received so far (may go down when a piece is retried).
    fn set_position(&self, done: u64);
}

impl Progress for () {
    fn set_length(&self, _: Option<u64>) {}
    fn set_position(&self, _: u64) {}
}

/// Download an http(s) `req.url` to `req.output` (an `oras://` URL is resolved to its blob's
/// URL first, then comes here).
///
/// The bytes go to a hidden temporary file beside the output, which is published (see
/// [`super::publish`]) only after every piece arrived and the digest (if any) matched; on any
/// error it is removed.
pub(crate) async fn download_url(
    req: &DownloadRequest,
    progress: &dyn Progress,
) -> Result<Summary, DownloadError> {
    validate_url(&req.url)?;
    let tmp = prepare_output(&req.output, req.overwrite)?;
    let started = Instant::now();
    // An origin whose content changes mid-download is started over once, from its new version.
    let work = async {
        match fetch(req, &tmp, progress).await {
            Err(DownloadError::SourceChanged { why, .. }) => {
                tracing::warn!(url = %req.url, change = %why, "the source changed during the download; starting over");
                let _ = std::fs::remove_file(&tmp.path);
                fetch(req, &tmp, progress).await
            }
            other => other,
        }
    };
    let mut summary = within(req, work).await?;
    if let (Some(expected), Some(actual)) = (&req.digest, &summary.digest)
        && expected != actual
    {
        return Err(DownloadError::DigestMismatch {
            url: req.url.clone(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        });
    }
    // Off the runtime: writing into a FIFO waits for its reader, and a signal must still stop dfget.
    let target = tmp.target.clone();
    tokio::task::spawn_blocking(move || tmp.commit())
        .await
        .map_err(|e| DownloadError::io("writing", target, std::io::Error::other(e)))??;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Run `work` within the request's `--timeout`, if any.
pub(crate) async fn within<T>(
    req: &DownloadRequest,
    work: impl std::future::Future<Output = Result<T, DownloadError>>,
) -> Result<T, DownloadError> {
    match req.timeout {
        Some(limit) => {
            tokio::time::timeout(limit, work)
                .await
                .map_err(|_| DownloadError::Timeout {
                    url: req.url.clone(),
                    after: limit,
                })?
        }
        None => work.await,
    }
}

/// Shared state of one parallel download.
struct Job {
    url: String,
    headers: HeaderMap,
    source: HttpSource,
    file: Arc<File>,
    path: PathBuf,
    received: AtomicU64,
    /// The version every range must be of (`If-Range`).
    version: SourceValidator,
    /// The content length every range's total must match.
    len: u64,
}

async fn fetch(
    req: &DownloadRequest,
    tmp: &TempOutput,
    progress: &dyn Progress,
) -> Result<Summary, DownloadError> {
    let source = HttpSource::new(&req.source)?;
    let algorithm = req.digest.as_ref().map(Digest::algorithm);
    let (len, version) = match source.probe(&req.url, &req.headers).await? {
        Probe::Stream(resp) => return single_stream(resp, req, tmp, algorithm, progress).await,
        Probe::Length {
            content_length,
            validator,
        } => (content_length, validator),
    };
    // A blob named by the digest it is checked against cannot change, and its ranges may be
    // redirected to storage with other ETags than the registry's: no version pinning.
    let by_digest = req.digest.is_some()
        && crate::source::blob_digest(&req.url).as_ref() == req.digest.as_ref();
    let version = if by_digest {
        SourceValidator::default()
    } else {
        version
    };
    progress.set_length(Some(len));
    let layout = match req.piece_length {
        Some(pl) => PieceLayout::new(len, pl).map_err(|source| DownloadError::Layout {
            url: req.url.clone(),
            source,
        })?,
        None => PieceLayout::auto(len),
    };
    let file = create_file(&tmp.path, len)?;
    let Some(first) = layout.piece(0) else {
        // Empty content: nothing to fetch.
        return Ok(Summary {
            content_length: 0,
            piece_length: layout.piece_length(),
            piece_crcs: Vec::new(),
            mode: Mode::Pieces,
            digest: algorithm.map(|a| a.hasher().finish()),
            elapsed: Duration::ZERO,
        });
    };
    // The first piece's answer tells whether the origin honours Range at all (with If-Range,
    // a 200 may also mean the content changed since the probe).
    let resp = get_retrying(
        &source,
        req,
        Some((first.offset, first.end() - 1)),
        &version,
    )
    .await?;
    if let Some(why) = changed(&version, resp.headers(), len) {
        return Err(DownloadError::SourceChanged {
            url: req.url.clone(),
            why,
        });
    }
    let version = match version.is_empty() && !by_digest {
        true => validator_of(resp.headers()),
        false => version,
    };
    if resp.status() == StatusCode::OK {
        drop(file);
        return single_stream(resp, req, tmp, algorithm, progress).await;
    }
    let job = Arc::new(Job {
        url: req.url.clone(),
        headers: req.headers.clone(),
        source,
        file: Arc::new(file),
        path: tmp.path.clone(),
        received: AtomicU64::new(0),
        version,
        len,
    });
    let hasher = algorithm.map(|a| InOrderHasher::spawn(&tmp.path, a, layout));
    let mut crcs = vec![0u32; layout.piece_count() as usize];
    let mut set = JoinSet::new();
    let mut pieces = layout.pieces();
    let mut first_resp = Some((first, resp));
    let concurrency = req.concurrency.max(1);
    loop {
        while set.len() < concurrency {
            let (piece, resp) = match first_resp.take() {
                Some((p, r)) => (p, Some(r)),
                None => match pieces.next() {
                    Some(p) if p.number == 0 => continue,
                    Some(p) => (p, None),
                    None => break,
                },
            };
            set.spawn(fetch_piece(job.clone(), piece, resp));
        }
        let Some(joined) = set.join_next().await else {
            break;
        };
        let (piece, crc) = joined.map_err(|source| DownloadError::PieceTask {
            url: req.url.clone(),
            source,
        })??;
        crcs[piece.number as usize] = crc;
        if let Some(h) = &hasher {
            h.piece_done(piece.number);
        }
        progress.set_position(job.received.load(Ordering::Relaxed));
    }
    let digest = match hasher {
        Some(h) => Some(h.finish(&tmp.path).await?),
        None => None,
    };
    Ok(Summary {
        content_length: len,
        piece_length: layout.piece_length(),
        piece_crcs: crcs,
        mode: Mode::Pieces,
        digest,
        elapsed: Duration::ZERO,
    })
}

/// A GET that retries errors that may pass, like a piece does.
async fn get_retrying(
    source: &HttpSource,
    req: &DownloadRequest,
    range: Option<(u64, u64)>,
    version: &SourceValidator,
) -> Result<reqwest::Response, DownloadError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match source
            .get_version(&req.url, &req.headers, range, Some(version))
            .await
        {
            Err(e) if e.retry().may_help() && attempt < PIECE_ATTEMPTS => {
                tracing::debug!(attempt, error = %dragonfly_common::error::chain(&e), "request failed, retrying");
                tokio::time::sleep(retry_delay(attempt)).await;
            }
            other => return other,
        }
    }
}

fn retry_delay(attempt: u32) -> Duration {
    Duration::from_millis(200 * u64::from(attempt))
}

fn create_file(path: &Path, len: u64) -> Result<File, DownloadError> {
    let file = File::create_new(path).map_err(|e| DownloadError::io("creating", path, e))?;
    file.set_len(len)
        .map_err(|e| DownloadError::io("allocating", path, e))?;
    Ok(file)
}

/// Fetch one piece, retrying errors that may pass; returns its crc32.
async fn fetch_piece(
    job: Arc<Job>,
    piece: PieceRange,
    mut resp: Option<reqwest::Response>,
) -> Result<(PieceRange, u32), DownloadError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = match resp.take() {
            Some(r) => receive_piece(&job, piece, r).await,
            None => match job
                .source
                .get_version(
                    &job.url,
                    &job.headers,
                    Some((piece.offset, piece.end() - 1)),
                    Some(&job.version),
                )
                .await
            {
                Ok(r) => receive_piece(&job, piece, r).await,
                Err(e) => Err((e, 0)),
            },
        };
        match result {
            Ok(crc) => return Ok((piece, crc)),
            Err((e, counted)) => {
                job.received.fetch_sub(counted, Ordering::Relaxed);
                if !e.retry().may_help() || attempt >= PIECE_ATTEMPTS {
                    return Err(e);
                }
                tracing::debug!(piece = piece.number, attempt, error = %dragonfly_common::error::chain(&e), "piece failed, retrying");
                tokio::time::sleep(retry_delay(attempt)).await;
            }
        }
    }
}

/// Read a ranged response into the file at the piece's offset; errors carry the bytes counted.
async fn receive_piece(
    job: &Job,
    piece: PieceRange,
    mut resp: reqwest::Response,
) -> Result<u32, (DownloadError, u64)> {
    let bad = |what: String| DownloadError::BadResponse {
        url: job.url.clone(),
        what,
    };
    if let Some(why) = changed(&job.version, resp.headers(), job.len) {
        return Err((
            DownloadError::SourceChanged {
                url: job.url.clone(),
                why,
            },
            0,
        ));
    }
    if resp.status() != StatusCode::PARTIAL_CONTENT {
        return Err((
            bad(format!(
                "piece {}: expected 206, got {}",
                piece.number,
                resp.status()
            )),
            0,
        ));
    }
    match content_range(resp.headers()) {
        Some((a, b, _)) if a == piece.offset && b + 1 == piece.end() => {}
        other => {
            return Err((
                bad(format!(
                    "piece {}: asked for {}, got Content-Range {other:?}",
                    piece.number,
                    piece.http_range()
                )),
                0,
            ));
        }
    }
    let mut crc = crc32fast::Hasher::new();
    let mut buf = Vec::with_capacity(WRITE_BUFFER.min(piece.length as usize));
    let mut written = 0u64;
    let mut counted = 0u64;
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => return Err((DownloadError::connect(&job.url, e), counted)),
        };
        if written + buf.len() as u64 + chunk.len() as u64 > piece.length {
            return Err((
                bad(format!(
                    "piece {}: more than {} bytes",
                    piece.number, piece.length
                )),
                counted,
            ));
        }
        crc.update(&chunk);
        buf.extend_from_slice(&chunk);
        counted += chunk.len() as u64;
        job.received
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        if buf.len() >= WRITE_BUFFER {
            let n = buf.len() as u64;
            buf = write_at(job, buf, piece.offset + written)
                .await
                .map_err(|e| (e, counted))?;
            buf.clear();
            written += n;
        }
    }
    if !buf.is_empty() {
        let n = buf.len() as u64;
        write_at(job, buf, piece.offset + written)
            .await
            .map_err(|e| (e, counted))?;
        written += n;
    }
    if written != piece.length {
        return Err((
            bad(format!(
                "piece {}: got {written} of {} bytes",
                piece.number, piece.length
            )),
            counted,
        ));
    }
    Ok(crc.finalize())
}

/// Why a response is of another version than `version` (of `len` bytes): another validator,
/// or another total length.
fn changed(version: &SourceValidator, headers: &HeaderMap, len: u64) -> Option<String> {
    if let Some((_, _, Some(total))) = content_range(headers)
        && total != len
    {
        return Some(format!("length {len} -> {total}"));
    }
    version.differs(&validator_of(headers))
}

/// Write `buf` at `offset` on a blocking thread; gives the buffer back for reuse.
async fn write_at(job: &Job, buf: Vec<u8>, offset: u64) -> Result<Vec<u8>, DownloadError> {
    let file = job.file.clone();
    let path = job.path.clone();
    tokio::task::spawn_blocking(move || {
        file.write_all_at(&buf, offset)
            .map(|()| buf)
            .map_err(|e| DownloadError::io("writing", path, e))
    })
    .await
    .map_err(|e| DownloadError::io("writing", &job.path, std::io::Error::other(e)))?
}

/// The whole body of one plain GET, written in order and hashed on the way.
async fn single_stream(
    mut resp: reqwest::Response,
    req: &DownloadRequest,
    tmp: &TempOutput,
    algorithm: Option<Algorithm>,
    progress: &dyn Progress,
) -> Result<Summary, DownloadError> {
    use tokio::io::AsyncWriteExt;
    let expected = content_length(resp.headers());
    progress.set_length(expected);
    // Truncates: the piece path may have preallocated this file before learning Range is ignored.
    let std_file =
        File::create(&tmp.path).map_err(|e| DownloadError::io("creating", &tmp.path, e))?;
    let mut out =
        tokio::io::BufWriter::with_capacity(WRITE_BUFFER, tokio::fs::File::from_std(std_file));
    let mut hasher = algorithm.map(Algorithm::hasher);
    let mut n = 0u64;
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => return Err(DownloadError::connect(&req.url, e)),
        };
        if let Some(h) = hasher.as_mut() {
            h.update(&chunk);
        }
        out.write_all(&chunk)
            .await
            .map_err(|e| DownloadError::io("writing", &tmp.path, e))?;
        n += chunk.len() as u64;
        progress.set_position(n);
    }
    out.flush()
        .await
        .map_err(|e| DownloadError::io("writing", &tmp.path, e))?;
    if let Some(len) = expected
        && n != len
    {
        return Err(DownloadError::BadResponse {
            url: req.url.clone(),
            what: format!("body ended after {n} of {len} bytes"),
        });
    }
    Ok(Summary {
        content_length: n,
        piece_length: 0,
        piece_crcs: Vec::new(),
        mode: Mode::SingleStream,
        digest: hasher.map(|h| h.finish()),
        elapsed: Duration::ZERO,
    })
}

/// Hashes the file in order on a blocking thread, following the contiguous prefix of
/// finished pieces, so verification overlaps the download instead of re-reading at the end.
struct InOrderHasher {
    state: Mutex<(Vec<bool>, u32)>,
    layout: PieceLayout,
    tx: mpsc::Sender<u64>,
    handle: tokio::task::JoinHandle<std::io::Result<Digest>>,
}

impl InOrderHasher {
    fn spawn(path: &Path, algorithm: Algorithm, layout: PieceLayout) -> Self {
        let (tx, rx) = mpsc::channel::<u64>();
        let path = path.to_path_buf();
        let len = layout.content_length();
        let handle = tokio::task::spawn_blocking(move || {
            let file = File::open(&path)?;
            let mut hasher = algorithm.hasher();
            let mut buf = vec![0u8; WRITE_BUFFER];
            let mut hashed = 0u64;
            while hashed < len {
                let Ok(mut target) = rx.recv() else {
                    return Err(std::io::Error::other(
                        "download stopped before the digest was complete",
                    ));
                };
                while let Ok(t) = rx.try_recv() {
                    target = target.max(t);
                }
                while hashed < target {
                    let n = (target - hashed).min(buf.len() as u64) as usize;
                    file.read_exact_at(&mut buf[..n], hashed)?;
                    hasher.update(&buf[..n]);
                    hashed += n as u64;
                }
            }
            Ok(hasher.finish())
        });
        Self {
            state: Mutex::new((vec![false; layout.piece_count() as usize], 0)),
            layout,
            tx,
            handle,
        }
    }

    /// Mark a piece written; wake the hasher when the contiguous prefix grows.
    fn piece_done(&self, number: u32) {
        let Ok(mut guard) = self.state.lock() else {
            return;
        };
        let (done, next) = &mut *guard;
        if let Some(slot) = done.get_mut(number as usize) {
            *slot = true;
        }
        let before = *next;
        while done.get(*next as usize).copied().unwrap_or(false) {
            *next += 1;
        }
        if *next != before {
            let end = self.layout.piece(*next - 1).map(|p| p.end()).unwrap_or(0);
            let _ = self.tx.send(end);
        }
    }

    async fn finish(self, path: &Path) -> Result<Digest, DownloadError> {
        drop(self.tx);
        self.handle
            .await
            .map_err(|e| DownloadError::io("hashing", path, std::io::Error::other(e)))?
            .map_err(|e| DownloadError::io("hashing", path, e))
    }
}
