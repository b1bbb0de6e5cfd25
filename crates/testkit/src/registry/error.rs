//! The one error type of the registry test kit: each variant names the thing that failed.

use std::path::PathBuf;
use std::time::Duration;

/// Result of the registry test kit.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong while setting up or driving a real registry, image or client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done ("write", "read", "create dir", ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A program could not be started (usually: not installed).
    #[error(
        "cannot run `{program}`: {source} (install the Debian package `{package}`: apt-get install {package}, or `make test`)"
    )]
    Spawn {
        /// The program.
        program: String,
        /// The Debian package that provides it.
        package: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A program ran and failed, or a process died or misbehaved.
    #[error("{what}: {detail}")]
    Process {
        /// The command or process.
        what: String,
        /// Exit status and the tail of its output.
        detail: String,
    },
    /// Something did not become ready in time.
    #[error("{what} not ready after {after:?}: {detail}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long we waited.
        after: Duration,
        /// The last thing seen (error, status, log tail).
        detail: String,
    },
    /// An HTTP request could not be sent or its body not read.
    #[error("{method} {url}: {source}")]
    Http {
        /// The method.
        method: String,
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// A registry answered with an unexpected status.
    #[error("{method} {url}: HTTP {status}: {body}")]
    Status {
        /// The method.
        method: String,
        /// The URL.
        url: String,
        /// The status.
        status: u16,
        /// The start of the response body.
        body: String,
    },
    /// A certificate or key could not be generated.
    #[error("certificate for {what}: {source}")]
    Cert {
        /// Which certificate.
        what: String,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// A caller passed something unusable, or the machine is not set up as needed.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { what, path, source }
    }

    pub(crate) fn http(method: &str, url: &str) -> impl FnOnce(reqwest::Error) -> Self {
        let (method, url) = (method.to_string(), url.to_string());
        move |source| Self::Http {
            method,
            url,
            source,
        }
    }
}
