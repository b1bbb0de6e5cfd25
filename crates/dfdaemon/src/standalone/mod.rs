//! The download engine used by dfget without a daemon: pieces fetched from the source in
//! parallel with `Range` requests, written at their offsets, each with a crc32, and the whole
//! content verified against an expected digest before the output appears under its name.

mod engine;
mod oras;
mod output;
pub mod publish;

pub use crate::source::error::{DownloadError, error_chain};
pub(crate) use engine::within;
pub use engine::{DownloadRequest, Mode, Progress, Summary, download};
pub use output::{prepare_output, validate_url};
