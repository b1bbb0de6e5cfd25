//! dfget's side of the local daemon: connect to its unix socket and let it download.

use crate::standalone::{DownloadError, DownloadRequest, Mode, Progress, Summary, prepare_output};
use dragonfly_common::digest::Digest;
use dragonfly_proto::DfdaemonDownloadClient;
use dragonfly_proto::common::v1::Download;
use dragonfly_proto::dfdaemon::v1::{
    DownloadTaskRequest, download_task_response::Response as Event,
};
use hyper_util::rt::TokioIo;
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint, Uri};

/// Connect to the daemon's socket; `Err` says why it is not usable (missing, refused, timeout).
pub async fn connect(socket: &Path) -> Result<DfdaemonDownloadClient<Channel>, String> {
    if !socket.exists() {
        return Err(format!("no daemon socket at {}", socket.display()));
    }
    let path = socket.to_path_buf();
    let connector = tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move {
            Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
        }
    });
    let channel = Endpoint::from_static("http://dfdaemon.local")
        .connect_timeout(Duration::from_secs(2))
        .connect_with_connector(connector)
        .await
        .map_err(|e| {
            format!(
                "daemon socket {}: {}",
                socket.display(),
                dragonfly_common::error::chain(&e)
            )
        })?;
    Ok(DfdaemonDownloadClient::new(channel).max_decoding_message_size(64 << 20))
}

/// Download through the daemon: it fetches (P2P or from the source), verifies, and writes
/// `req.output`; piece events feed `progress`. A URL the daemon cannot split into pieces fails
/// with [`DownloadError::DaemonDeclined`] (the caller downloads it alone).
pub async fn download(
    client: &mut DfdaemonDownloadClient<Channel>,
    req: &DownloadRequest,
    progress: &dyn Progress,
) -> Result<Summary, DownloadError> {
    if crate::source::oras::is_oras_url(&req.url) {
        // The daemon resolves it; a malformed reference fails here, before any output check.
        crate::source::OrasReference::parse(&req.url)?;
    } else {
        crate::standalone::validate_url(&req.url)?;
    }
    // Same checks as standalone; the daemon writes through its own temp name.
    drop(prepare_output(&req.output, req.overwrite)?);
    let output = std::path::absolute(&req.output)
        .map_err(|e| DownloadError::io("resolving", &req.output, e))?;
    let started = Instant::now();
    let download = Download {
        url: req.url.clone(),
        digest: req.digest.as_ref().map(ToString::to_string),
        piece_length: req.piece_length,
        output_path: Some(output.to_string_lossy().into_owned()),
        request_header: req
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect(),
        overwrite: req.overwrite,
        ..Default::default()
    };
    // The daemon's messages often start with the URL already.
    let prefix = format!("{}: ", req.url);
    let daemon_err = |s: tonic::Status| {
        let message = s.message().strip_prefix(&prefix).unwrap_or(s.message());
        if s.metadata()
            .contains_key(crate::daemon::download_service::UNSPLITTABLE_METADATA)
        {
            return DownloadError::DaemonDeclined {
                url: req.url.clone(),
                message: message.to_string(),
            };
        }
        DownloadError::Daemon {
            url: req.url.clone(),
            message: message.to_string(),
        }
    };
    let work = async {
        let resp = client
            .download_task(DownloadTaskRequest {
                download: Some(download),
            })
            .await
            .map_err(daemon_err)?;
        // For oras:// the daemon names the blob digest it verifies against.
        let verified = resp
            .metadata()
            .get(crate::daemon::download_service::DIGEST_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        let mut stream = resp.into_inner();
        let (mut len, mut done) = (0u64, 0u64);
        let mut piece_length = 0;
        while let Some(msg) = stream.message().await.map_err(daemon_err)? {
            match msg.response {
                Some(Event::DownloadTaskStartedResponse(s)) => {
                    len = s.content_length.unwrap_or(0);
                    piece_length = s.piece_length.unwrap_or(0);
                    progress.set_length(s.content_length);
                    done = s.pieces.iter().map(|p| p.length).sum();
                }
                Some(Event::DownloadPieceFinishedResponse(p)) => {
                    done += p.piece.map(|p| p.length).unwrap_or(0);
                }
                None => {}
            }
            progress.set_position(done);
        }
        Ok::<_, DownloadError>((len, piece_length, verified))
    };
    let (len, piece_length, verified) = crate::standalone::within(req, work).await?;
    Ok(Summary {
        content_length: len,
        piece_length,
        piece_crcs: Vec::new(),
        mode: Mode::Daemon,
        digest: verified.or_else(|| req.digest.clone()),
        elapsed: started.elapsed(),
    })
}
