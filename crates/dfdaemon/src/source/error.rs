//! Download errors: each names the thing that was wrong (URL, path, status, digest), keeps the
//! error that caused it as its source, and says whether trying again can help ([`Retry`]).
//! Their text with the causes is made at the edges by [`dragonfly_common::error::chain`].

use dragonfly_common::error::{Retry, chain};
use std::path::PathBuf;
use std::time::Duration;

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The URL is not an absolute URL.
    #[error("{url:?} is not an absolute URL (expected e.g. https://host/path)")]
    InvalidUrl {
        /// What the user gave.
        url: String,
        /// Why it does not parse.
        #[source]
        source: url::ParseError,
    },
    /// A scheme we cannot download from.
    #[error("unsupported scheme {scheme:?} in {url} (supported: http, https, oras)")]
    UnsupportedScheme {
        /// The URL.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// `-O` points into a directory that does not exist.
    #[error("output directory {} does not exist", .0.display())]
    OutputDirMissing(PathBuf),
    /// `-O` names an existing file and `--overwrite` was not given.
    #[error("output file {} already exists (use --overwrite to replace it)", .0.display())]
    OutputExists(PathBuf),
    /// `-O` names a directory.
    #[error("output path {} is a directory; give a file name", .0.display())]
    OutputIsDir(PathBuf),
    /// `-O` names something dfget cannot write a download to.
    #[error("output path {} is {what}; dfget writes regular files, FIFOs and character devices", .path.display())]
    OutputNotWritable {
        /// The path.
        path: PathBuf,
        /// What is there (`a block device`, `a socket`).
        what: &'static str,
    },
    /// The local daemon declined the task (an origin that gives neither a length nor Range
    /// support, or no room for it); dfget downloads it alone instead.
    #[error("{url}: the daemon cannot download it: {message}")]
    DaemonDeclined {
        /// The URL.
        url: String,
        /// The daemon's message (text from the gRPC status).
        message: String,
    },
    /// The local daemon failed the download.
    #[error("{url}: the daemon says: {message}")]
    Daemon {
        /// The URL.
        url: String,
        /// The daemon's message (text from the gRPC status).
        message: String,
    },
    /// The HTTP client could not be built (TLS roots, proxy settings).
    #[error("cannot build the HTTP client: {}", chain(.0))]
    Client(#[source] reqwest::Error),
    /// The origin could not be reached or the connection broke.
    ///
    /// The message holds the transport error's causes (the refused name, the certificate
    /// problem) as well as the source: the task engine still keeps only the text of a source
    /// error (`TaskError::Source(String)`); [`chain`] does not repeat them.
    #[error("cannot reach {url}: {}", chain(.source))]
    Connect {
        /// The URL.
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The origin answered with an unexpected HTTP status.
    #[error("{url} answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// Status code and reason phrase, e.g. `404 Not Found`.
        status: String,
        /// Numeric status.
        code: u16,
        /// The `WWW-Authenticate` challenge of a 401, passed on to proxy clients.
        challenge: Option<String>,
    },
    /// The origin sent something other than what was asked for.
    #[error("{url}: {what}")]
    BadResponse {
        /// The URL.
        url: String,
        /// What the answer did wrong (a description: there is no underlying error).
        what: String,
    },
    /// The content cannot be laid out in pieces of the requested length.
    #[error("{url}: cannot split it into pieces")]
    Layout {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: dragonfly_common::piece::LayoutError,
    },
    /// A piece's task panicked or was cancelled.
    #[error("{url}: piece task failed")]
    PieceTask {
        /// The URL.
        url: String,
        /// The join error.
        #[source]
        source: tokio::task::JoinError,
    },
    /// The content does not match the expected digest.
    #[error(
        "digest mismatch for {url}: expected {expected}, got {actual}; the partial output was removed"
    )]
    DigestMismatch {
        /// The URL.
        url: String,
        /// What the user asked for.
        expected: String,
        /// What the bytes hash to.
        actual: String,
    },
    /// The source's content changed during the download (another `ETag`, `Last-Modified` or
    /// length), even after starting over.
    #[error("{url} changed during the download ({why}); the partial output was removed")]
    SourceChanged {
        /// The URL.
        url: String,
        /// What changed.
        why: String,
    },
    /// The whole download took longer than `--timeout`.
    #[error("download of {url} timed out after {}", humantime::format_duration(*.after))]
    Timeout {
        /// The URL.
        url: String,
        /// The limit.
        after: Duration,
    },
    /// An `oras://` reference could not be resolved to its blob.
    #[error(transparent)]
    Oras(#[from] crate::source::OrasError),
    /// A local file operation failed.
    #[error("{what} {}: {source}", .path.display())]
    Io {
        /// What was being done (`writing`, `creating`...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl DownloadError {
    /// Whether retrying the request may succeed: a broken connection or a wrong answer may
    /// pass on the next attempt, a status as [`Retry::for_status`] says, the rest will not.
    pub fn retry(&self) -> Retry {
        match self {
            DownloadError::Connect { .. } | DownloadError::BadResponse { .. } => Retry::Same,
            DownloadError::Status { code, .. } => Retry::for_status(*code),
            _ => Retry::No,
        }
    }

    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DownloadError::Io {
            what,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn connect(url: &str, source: reqwest::Error) -> Self {
        DownloadError::Connect {
            url: url.to_string(),
            source,
        }
    }
}
