//! The places a piece comes from, as traits (dragonflyoss/client's `Downloader` and `Backend`
//! split): a parent ([`ParentPieces`]: piece N of a task, whose crc32 the parent announced on
//! its SyncPieces stream) and the source ([`SourcePieces`]: a ranged GET, which may ignore the
//! Range and send everything). The engine's picker works on these, so its rules are tested with
//! fakes; the real ones are the parent HTTP client and the origin client.

use super::parent::{Parent, ParentClient};
use crate::source::HttpSource;
use crate::source::error::DownloadError;
use crate::storage::StorageError;
use bytes::Bytes;
use dragonfly_common::error::Retry;
use dragonfly_common::task_id::TaskId;
use dragonfly_common::validator::SourceValidator;
use http::{HeaderMap, StatusCode};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

/// A response body, read chunk by chunk.
pub(super) trait Body: Send + 'static {
    /// The next bytes; `None` at the end.
    fn chunk(&mut self) -> impl Future<Output = Result<Option<Bytes>, RemoteError>> + Send;
}

/// A source's answer to a ranged GET: its status and headers (to check the range and the
/// version), and its body.
pub(super) trait SourceAnswer: Body {
    /// The status (`200`: the whole content, the Range was ignored; `206`: the range).
    fn status(&self) -> StatusCode;
    /// The headers (`Content-Range`, `Content-Length`, `ETag`, `Last-Modified`).
    fn headers(&self) -> &HeaderMap;
}

/// Where pieces of parents come from.
pub(super) trait ParentPieces: Clone + Send + Sync + 'static {
    /// The body of one piece.
    type Body: Body;
    /// Start fetching piece `number` of `task` from `parent`.
    fn fetch(
        &self,
        parent: &Parent,
        task: &TaskId,
        number: u32,
    ) -> impl Future<Output = Result<Self::Body, RemoteError>> + Send;
}

/// Where the source's bytes come from.
pub(super) trait SourcePieces: Clone + Send + Sync + 'static {
    /// Its answer to a GET.
    type Answer: SourceAnswer;
    /// GET bytes `first..=last` of the version `version` of the content (`If-Range`).
    fn get(
        &self,
        first: u64,
        last: u64,
        version: Option<&SourceValidator>,
    ) -> impl Future<Output = Result<Self::Answer, DownloadError>> + Send;
}

/// Why bytes from a parent or the source could not be had.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The parent could not be asked, or answered with an error status.
    #[error("parent {id} ({addr}): {reason}")]
    Parent {
        /// The parent's id.
        id: String,
        /// Its upload server.
        addr: SocketAddr,
        /// What went wrong (the status, or the transport error with its causes).
        reason: String,
    },
    /// The source could not be asked, or refused.
    #[error("{0}")]
    Source(#[source] DownloadError),
    /// The body broke off.
    #[error("{}", dragonfly_common::error::chain(&**.0))]
    Transfer(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The body ended before the piece's last byte.
    #[error("body ended inside piece {0}")]
    ShortBody(u32),
    /// The body went on after the last piece asked for.
    #[error("the body goes on past the end of piece {0}")]
    LongBody(u32),
    /// The source answered another range than asked.
    #[error("asked for bytes={first}-{last}, got Content-Range {got:?}")]
    WrongRange {
        /// First byte asked.
        first: u64,
        /// Last byte asked.
        last: u64,
        /// The `Content-Range` it sent.
        got: Option<(u64, u64, Option<u64>)>,
    },
    /// The bytes are not the piece: too many, too few, or not matching the announced crc32.
    #[error("{0}")]
    Bytes(#[source] StorageError),
}

impl RemoteError {
    /// The failure as a metrics label.
    pub(super) fn metrics_reason(&self) -> crate::metrics::PieceFailure {
        use crate::metrics::PieceFailure as F;
        match self {
            RemoteError::Parent { .. } => F::Parent,
            RemoteError::Source(_) => F::Origin,
            RemoteError::Transfer(_) => F::Transfer,
            RemoteError::ShortBody(_) => F::ShortBody,
            RemoteError::LongBody(_) => F::LongBody,
            RemoteError::WrongRange { .. } => F::WrongRange,
            RemoteError::Bytes(_) => F::CrcMismatch,
        }
    }
}

/// Why fetching pieces failed.
pub(super) enum PieceError<A> {
    /// The parent or the source failed; whether to try again, and where.
    Remote(RemoteError, Retry),
    /// The source ignored Range: this answer streams the whole content.
    RangeIgnored(A),
    /// The source now serves another version of the content.
    Changed(String),
    /// Local storage failed: the task cannot go on.
    Storage(StorageError),
}

impl<A> From<LaneError> for PieceError<A> {
    fn from(e: LaneError) -> Self {
        match e {
            LaneError::Remote(e, r) => PieceError::Remote(e, r),
            LaneError::Storage(e) => PieceError::Storage(e),
        }
    }
}

/// Why storing a body's pieces failed.
pub(super) enum LaneError {
    /// The body is wrong or broke off.
    Remote(RemoteError, Retry),
    /// Local storage failed.
    Storage(StorageError),
}

impl Body for reqwest::Response {
    async fn chunk(&mut self) -> Result<Option<Bytes>, RemoteError> {
        reqwest::Response::chunk(self)
            .await
            .map_err(|e| RemoteError::Transfer(Box::new(e)))
    }
}

impl SourceAnswer for reqwest::Response {
    fn status(&self) -> StatusCode {
        reqwest::Response::status(self)
    }
    fn headers(&self) -> &HeaderMap {
        reqwest::Response::headers(self)
    }
}

impl ParentPieces for ParentClient {
    type Body = reqwest::Response;

    async fn fetch(
        &self,
        parent: &Parent,
        task: &TaskId,
        number: u32,
    ) -> Result<reqwest::Response, RemoteError> {
        ParentClient::fetch(self, parent, task, number).await
    }
}

/// The origin of one task: its client, URL and headers.
#[derive(Clone)]
pub(super) struct HttpPieces(Arc<(HttpSource, String, HeaderMap)>);

impl HttpPieces {
    pub(super) fn new(source: HttpSource, url: String, headers: HeaderMap) -> Self {
        Self(Arc::new((source, url, headers)))
    }
}

impl SourcePieces for HttpPieces {
    type Answer = reqwest::Response;

    async fn get(
        &self,
        first: u64,
        last: u64,
        version: Option<&SourceValidator>,
    ) -> Result<reqwest::Response, DownloadError> {
        let (source, url, headers) = &*self.0;
        source
            .get_version(url, headers, Some((first, last)), version)
            .await
    }
}
