//! `DfdaemonDownload` on the local unix socket: dfget asks the daemon to download a task and
//! write it to `-O` (hardlink with `storage.multiplex`, else copy), following its pieces.
//!
//! An `oras://` URL is resolved here with the daemon's ORAS client (the `oras` config section):
//! the artifact's blob becomes the task, keyed by its digest like the proxy's blobs, fetched
//! with the registry auth the resolution obtained (an `Authorization: Basic` request header
//! carries dfget's credentials for the token exchange).

use super::deliver::Delivery;
use super::output::{OutputWriter, PARTS_DIR};
use crate::config::OrasConfig;
use crate::source::HttpSource;
use crate::source::oras::{self, OrasClient, OrasError, OrasOptions, OrasReference, RegistryAuth};
use crate::standalone::publish::inspect;
use crate::standalone::{DownloadError, validate_url};
use crate::task::{Parent, TaskError, TaskErrorKind, TaskManager, TaskRequest};
use dragonfly_common::digest::Digest;
use dragonfly_common::task_id::TaskId;
use dragonfly_proto::DfdaemonDownload;
use dragonfly_proto::common::v1::Task as ProtoTask;
use dragonfly_proto::dfdaemon::v1::{
    DeleteTaskRequest, DownloadTaskRequest, DownloadTaskResponse, StatTaskRequest,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::path::PathBuf;
use std::pin::Pin;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

type Msgs<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// gRPC metadata on a download's answer naming the digest the content is verified against
/// (for `oras://` URLs, the blob digest the daemon resolved).
pub const DIGEST_METADATA: &str = "x-dragonfly-digest";

/// gRPC metadata on a refusal saying the daemon cannot download the URL at all (the origin gives
/// neither a length nor Range support, so it cannot be split into pieces; or the content cannot
/// be stored here, its length being over the storage quota or the disk): dfget downloads it
/// without the daemon.
pub const UNSPLITTABLE_METADATA: &str = "x-dragonfly-unsplittable";

/// The status for a task that failed before its layout was known.
fn layout_status(e: &TaskError) -> Status {
    let mut status = Status::failed_precondition(dragonfly_common::error::chain(e));
    // A source it cannot split, or content it cannot store: dfget downloads it alone.
    if matches!(
        e.kind(),
        TaskErrorKind::Unsplittable | TaskErrorKind::NoRoom
    ) {
        status.metadata_mut().insert(
            UNSPLITTABLE_METADATA,
            tonic::metadata::MetadataValue::from_static("1"),
        );
    }
    status
}

/// The status for an output path that cannot be written as asked.
pub(super) fn output_status(e: DownloadError) -> Status {
    match e {
        DownloadError::OutputExists(_) => Status::already_exists(e.to_string()),
        e => Status::failed_precondition(e.to_string()),
    }
}

/// The local download service.
pub struct DownloadService {
    engine: TaskManager,
    multiplex: bool,
    parents: Vec<Parent>,
    /// The ORAS client and the blob source, or why they could not be built.
    oras: Result<OrasBackend, String>,
}

/// What `oras://` downloads use: the registry client, and the engine source for the blob.
struct OrasBackend {
    client: OrasClient,
    blob_source: HttpSource,
}

impl OrasBackend {
    fn new(opts: &OrasOptions) -> Result<Self, OrasError> {
        let client = OrasClient::new(opts)?;
        // The blob's pieces go through the same client: `oras.proxy`, keep-alive and pool
        // settings apply to them too.
        let blob_source = HttpSource::from_client(client.http().clone());
        Ok(Self {
            client,
            blob_source,
        })
    }
}

impl DownloadService {
    /// A service over `engine`; `multiplex` hardlinks outputs to the stored content;
    /// `parents` are static parents to try before the source. `oras://` URLs use the default
    /// `oras` settings until [`DownloadService::with_oras`].
    pub fn new(engine: TaskManager, multiplex: bool, parents: Vec<Parent>) -> Self {
        Self {
            engine,
            multiplex,
            parents,
            oras: OrasBackend::new(&OrasOptions::default()).map_err(|e| e.to_string()),
        }
    }

    /// Resolve `oras://` URLs with the daemon's `oras` config section.
    pub fn with_oras(mut self, cfg: &OrasConfig) -> Result<Self, OrasError> {
        self.oras = Ok(OrasBackend::new(&OrasOptions::from(cfg))?);
        Ok(self)
    }

    /// The task request for an `oras://` URL: resolve it to its blob, keyed by the digest.
    async fn oras_task(
        &self,
        url: &str,
        mut headers: HeaderMap,
        digest: Option<Digest>,
        base: TaskRequest,
    ) -> Result<(TaskRequest, Digest), Status> {
        let backend = self
            .oras
            .as_ref()
            .map_err(|e| Status::failed_precondition(format!("cannot download {url}: {e}")))?;
        let reference =
            OrasReference::parse(url).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let auth = RegistryAuth::take_from(&mut headers);
        let artifact = backend
            .client
            .resolve(&reference, auth, &headers)
            .await
            .map_err(|e| oras_status(&e))?;
        if let Some(want) = digest
            && want != artifact.digest
        {
            return Err(Status::invalid_argument(format!(
                "{url}: --digest {want} is not the artifact's blob digest {}",
                artifact.digest
            )));
        }
        tracing::info!(
            url = %reference,
            blob = %artifact.digest,
            size = artifact.size,
            media_type = %artifact.media_type,
            manifest = %artifact.manifest_digest,
            "oras artifact resolved"
        );
        let treq = TaskRequest {
            url: artifact.blob_url.clone(),
            headers: artifact.headers,
            digest: Some(artifact.digest.clone()),
            task_id: Some(TaskId::for_blob(&artifact.digest, &artifact.blob_url)),
            source: Some(backend.blob_source.clone()),
            ..base
        };
        Ok((treq, artifact.digest))
    }
}

/// The gRPC status for a resolution error (its message is what dfget prints).
fn oras_status(e: &OrasError) -> Status {
    let msg = dragonfly_common::error::chain(e);
    match e {
        OrasError::InvalidReference { .. } => Status::invalid_argument(msg),
        OrasError::NotFound { .. } => Status::not_found(msg),
        OrasError::NeedsCredentials { .. } | OrasError::CredentialsRefused { .. } => {
            Status::unauthenticated(msg)
        }
        OrasError::Connect { .. }
        | OrasError::Token { .. }
        | OrasError::TokenRealm { .. }
        | OrasError::TokenAnswer { .. } => Status::unavailable(msg),
        OrasError::Timeout { .. } => Status::deadline_exceeded(msg),
        OrasError::Status { code, .. } if *code >= 500 => Status::unavailable(msg),
        OrasError::Client(_) | OrasError::InvalidProxy { .. } => Status::internal(msg),
        _ => Status::failed_precondition(msg),
    }
}

/// The task key of a blob URL (`.../blobs/sha256:<hex>`) asked for with that same digest (a
/// scheduler asking this seed peer for an ORAS or proxy blob): the digest, as the proxy keys it.
fn blob_task_id(url: &str, digest: Option<&Digest>) -> Option<TaskId> {
    let d = crate::source::blob_digest(url)?;
    (Some(&d) == digest).then(|| TaskId::for_blob(&d, url))
}

fn headers(raw: &std::collections::HashMap<String, String>) -> Result<HeaderMap, Status> {
    let mut map = HeaderMap::new();
    for (k, v) in raw {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
            Status::invalid_argument(format!("request header name {k:?} is not valid"))
        })?;
        let value = HeaderValue::from_str(v).map_err(|_| {
            Status::invalid_argument(format!("request header {k:?} has an invalid value"))
        })?;
        map.append(name, value);
    }
    Ok(map)
}

/// The seed peer's side of the upload port: the scheduler's `DownloadTask` is this service's.
#[tonic::async_trait]
impl crate::upload::SeedDownload for DownloadService {
    async fn download_task(
        &self,
        req: Request<DownloadTaskRequest>,
    ) -> Result<Response<Msgs<DownloadTaskResponse>>, Status> {
        DfdaemonDownload::download_task(self, req).await
    }
}

#[tonic::async_trait]
impl DfdaemonDownload for DownloadService {
    type DownloadTaskStream = Msgs<DownloadTaskResponse>;

    async fn download_task(
        &self,
        req: Request<DownloadTaskRequest>,
    ) -> Result<Response<Self::DownloadTaskStream>, Status> {
        let d = req
            .into_inner()
            .download
            .ok_or_else(|| Status::invalid_argument("download is missing"))?;
        let is_oras = oras::is_oras_url(&d.url);
        if !is_oras {
            validate_url(&d.url).map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        let digest = d
            .digest
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(str::parse::<Digest>)
            .transpose()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let output = d
            .output_path
            .clone()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        if let Some(out) = &output
            && !out.is_absolute()
        {
            return Err(Status::invalid_argument(format!(
                "output path {} is not absolute",
                out.display()
            )));
        }
        let overwrite = d.overwrite;
        let kind = match &output {
            Some(out) => {
                let o = out.clone();
                let kind = tokio::task::spawn_blocking(move || inspect(&o, overwrite))
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?
                    .map_err(output_status)?;
                Some(kind)
            }
            None => None,
        };
        let treq = TaskRequest {
            url: d.url.clone(),
            headers: headers(&d.request_header)?,
            tag: d.tag.clone(),
            application: d.application.clone(),
            piece_length: d.piece_length,
            task_id: blob_task_id(&d.url, digest.as_ref()),
            digest: digest.clone(),
            filtered_query_params: d.filtered_query_params.clone(),
            parents: self.parents.clone(),
            source: None,
            streaming: false,
        };
        let (treq, verified) = if is_oras {
            let (h, url) = (treq.headers.clone(), d.url.clone());
            let (t, blob) = self.oras_task(&url, h, digest, treq).await?;
            (t, Some(blob))
        } else {
            (treq, digest)
        };
        let task = self
            .engine
            .download(treq.clone())
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let layout = task.layout().await.map_err(|e| layout_status(&e))?;
        let storage = self.engine.storage().clone();
        let (s, i) = (storage.clone(), task.id.clone());
        let stored = tokio::task::spawn_blocking(move || s.pieces(&i))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        let content = storage.content_path(&task.id);
        let parts = storage.dir().join(PARTS_DIR);
        let writer = match (&output, kind) {
            (Some(out), Some(kind)) => {
                let (c, o, len) = (content.clone(), out.clone(), layout.content_length());
                let multiplex = self.multiplex;
                let w = tokio::task::spawn_blocking(move || {
                    OutputWriter::new(&c, &o, kind, overwrite, multiplex, len, &parts)
                })
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
                match w {
                    Ok(w) => Some(w),
                    // The content is gone: a task that failed at once is deleted (digest
                    // mismatch, the source changed); say why it failed.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        let failed = tokio::time::timeout(
                            std::time::Duration::from_secs(5),
                            task.wait_finished(),
                        )
                        .await;
                        return Err(match failed {
                            Ok(Err(t)) => Status::aborted(t.to_string()),
                            _ => Status::internal(format!("writing {}: {e}", out.display())),
                        });
                    }
                    Err(e) => {
                        return Err(Status::internal(format!("writing {}: {e}", out.display())));
                    }
                }
            }
            _ => None,
        };
        let (tx, rx) = mpsc::channel(64);
        let delivery = Delivery {
            engine: self.engine.clone(),
            digest: treq.digest.clone(),
            request: treq,
            task,
            layout,
            stored,
            writer,
            output,
            host_id: self.engine.host_id().to_string(),
            tx,
        };
        tokio::spawn(delivery.run());
        let mut resp = Response::new(Box::pin(ReceiverStream::new(rx)) as Self::DownloadTaskStream);
        if let Some(v) = verified.and_then(|d| d.to_string().parse().ok()) {
            resp.metadata_mut().insert(DIGEST_METADATA, v);
        }
        Ok(resp)
    }

    async fn stat_task(
        &self,
        req: Request<StatTaskRequest>,
    ) -> Result<Response<ProtoTask>, Status> {
        crate::upload::stat_task(self.engine.storage(), &req.into_inner().task_id)
            .await
            .map(Response::new)
    }

    async fn delete_task(&self, req: Request<DeleteTaskRequest>) -> Result<Response<()>, Status> {
        let id: TaskId = req
            .into_inner()
            .task_id
            .parse()
            .map_err(|e| Status::invalid_argument(format!("task_id: {e}")))?;
        if self.engine.is_running(&id) {
            return Err(Status::failed_precondition(format!(
                "task {id} is being downloaded"
            )));
        }
        let s = self.engine.storage().clone();
        tokio::task::spawn_blocking(move || s.delete_task(&id))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_urls_asked_with_their_digest_are_keyed_like_the_proxy_keys_them() {
        let d: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        let other: Digest = format!("sha256:{}", "cd".repeat(32)).parse().unwrap();
        let url = format!("https://r.test/v2/sif/app/blobs/{d}");
        assert_eq!(
            blob_task_id(&url, Some(&d)),
            Some(TaskId::for_blob(&d, &url))
        );
        assert_eq!(blob_task_id(&url, None), None, "no digest: keyed by URL");
        assert_eq!(blob_task_id(&url, Some(&other)), None, "another digest");
        assert_eq!(
            blob_task_id(&format!("https://r.test/files/{d}"), Some(&d)),
            None
        );
    }

    #[test]
    fn only_an_unsplittable_source_is_marked_for_dfget_to_download_alone() {
        let e = TaskError::Unsplittable {
            url: "http://o/x".into(),
        };
        let s = layout_status(&e);
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        assert!(s.message().contains("http://o/x"), "{}", s.message());
        assert!(s.metadata().contains_key(UNSPLITTABLE_METADATA));
        let e = TaskError::Source(std::sync::Arc::new(DownloadError::Status {
            url: "http://o/x".into(),
            status: "503 Service Unavailable".into(),
            code: 503,
            challenge: None,
        }));
        assert!(
            !layout_status(&e)
                .metadata()
                .contains_key(UNSPLITTABLE_METADATA)
        );
    }

    #[test]
    fn resolution_errors_map_to_grpc_codes() {
        let e = OrasError::NeedsCredentials {
            reference: "oras://r/a:b".into(),
            registry: "r".into(),
            scheme: "Basic",
        };
        assert_eq!(oras_status(&e).code(), tonic::Code::Unauthenticated);
        let e = OrasError::NotFound {
            reference: "oras://r/a:b".into(),
            what: "manifest b".into(),
            registry: "r/a".into(),
            detail: String::new(),
        };
        assert_eq!(oras_status(&e).code(), tonic::Code::NotFound);
        assert!(oras_status(&e).message().contains("manifest b not found"));
    }
}
