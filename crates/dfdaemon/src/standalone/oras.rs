//! `oras://` without a daemon: resolve the reference with default `oras` settings, then
//! download the artifact's blob like any URL, verified against the blob digest.

use super::engine::{DownloadRequest, Progress, Summary, download_url, within};
use super::output::prepare_output;
use crate::source::error::DownloadError;
use crate::source::oras::{OrasClient, OrasOptions, OrasReference, RegistryAuth};
use std::time::Instant;

/// Resolve `req.url` (`oras://...`) and download its blob to `req.output`.
///
/// `Authorization: Basic` in `req.headers` is taken as the registry credentials (for Basic
/// auth or the token exchange); `req.source.insecure` skips TLS verification of the registry.
pub(crate) async fn download(
    req: &DownloadRequest,
    progress: &dyn Progress,
) -> Result<Summary, DownloadError> {
    let reference = OrasReference::parse(&req.url)?;
    // Output problems show before any registry traffic.
    drop(prepare_output(&req.output, req.overwrite)?);
    let started = Instant::now();
    let client = OrasClient::new(&OrasOptions {
        insecure_skip_verify: req.source.insecure,
        ..OrasOptions::default()
    })?;
    let mut headers = req.headers.clone();
    let auth = RegistryAuth::take_from(&mut headers);
    let artifact = within(req, async {
        Ok(client.resolve(&reference, auth, &headers).await?)
    })
    .await?;
    if let Some(want) = &req.digest
        && *want != artifact.digest
    {
        return Err(DownloadError::BadResponse {
            url: req.url.clone(),
            what: format!(
                "--digest {want} is not the artifact's blob digest {}",
                artifact.digest
            ),
        });
    }
    let mut blob = req.clone();
    blob.url = artifact.blob_url;
    blob.headers = artifact.headers;
    blob.digest = Some(artifact.digest);
    blob.timeout = req.timeout.map(|t| t.saturating_sub(started.elapsed()));
    let mut summary = download_url(&blob, progress).await?;
    summary.elapsed = started.elapsed();
    Ok(summary)
}
