//! Download errors: each names the thing that was wrong (URL, path, status, digest) and says
//! whether trying again (another parent, another attempt) can help.

use std::path::PathBuf;
use std::time::Duration;

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The URL is not an absolute URL.
    #[error("{url:?} is not an absolute URL (expected e.g. https://host/path): {reason}")]
    InvalidUrl {
        /// What the user gave.
        url: String,
        /// Why it does not parse.
        reason: String,
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
    /// The local daemon cannot download this URL (an origin that gives neither a length nor
    /// Range support); dfget downloads it alone instead.
    #[error("{url}: the daemon cannot download it: {reason}")]
    DaemonCannotSplit {
        /// The URL.
        url: String,
        /// The daemon's message.
        reason: String,
    },
    /// The origin could not be reached or the connection broke.
    #[error("cannot reach {url}: {reason}")]
    Connect {
        /// The URL.
        url: String,
        /// The transport error, flattened with its causes.
        reason: String,
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
    #[error("{url}: {reason}")]
    BadResponse {
        /// The URL.
        url: String,
        /// What was wrong.
        reason: String,
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
    /// Whether retrying the same request (or another parent) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            DownloadError::Connect { .. } => true,
            DownloadError::BadResponse { .. } => true,
            DownloadError::Status { code, .. } => *code >= 500 || *code == 429 || *code == 408,
            _ => false,
        }
    }

    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DownloadError::Io {
            what,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn connect(url: &str, err: &reqwest::Error) -> Self {
        DownloadError::Connect {
            url: url.to_string(),
            reason: error_chain(err),
        }
    }
}

/// An error and its causes on one line: `a: b: c`.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}
