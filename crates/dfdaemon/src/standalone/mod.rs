//! The download engine used by dfget without a daemon: pieces fetched from the source in
//! parallel with `Range` requests, written at their offsets, each with a crc32, and the whole
//! content verified against an expected digest before the output appears under its name.

mod engine;
mod oras;
mod output;
pub mod publish;

pub use crate::source::error::DownloadError;
pub(crate) use engine::within;
pub use engine::{DownloadRequest, Mode, Progress, Summary};
pub use output::{prepare_output, validate_url};

/// Download `req.url` to `req.output`.
///
/// The bytes go to a hidden temporary file beside the output, which is published (see
/// [`publish`]) only after every piece arrived and the digest (if any) matched; on any
/// error it is removed.
/// An `oras://` URL is resolved to its artifact's blob first (docs/oras.md).
pub async fn download(
    req: &DownloadRequest,
    progress: &dyn Progress,
) -> Result<Summary, DownloadError> {
    if crate::source::oras::is_oras_url(&req.url) {
        return oras::download(req, progress).await;
    }
    engine::download_url(req, progress).await
}
