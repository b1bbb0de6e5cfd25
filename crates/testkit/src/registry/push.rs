//! A small registry API client (distribution spec v2) for pushing test content and reading it back.

use super::error::{Error, Result};
use super::image::{Blob, ImageSpec, TestImage, sha256_digest};
use super::{OCI_CONFIG, OCI_MANIFEST};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use std::path::Path;

/// Manifest media types a pull accepts, newest first.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";
/// Read buffer when streaming a layer file into an upload.
const UPLOAD_CHUNK: usize = 256 * 1024;

/// Registry API client trusting one CA (and nothing else), sending Basic auth on every request
/// when given credentials, and never using a proxy from the environment.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    base: String,
    http: reqwest::Client,
    auth: Option<(String, String)>,
}

impl RegistryClient {
    /// A client for `base_url` (`https://registry.test:PORT`) trusting only the CA in `ca_pem`.
    pub fn new(base_url: &str, ca_pem: &Path, auth: Option<(&str, &str)>) -> Result<Self> {
        let pem = std::fs::read(ca_pem).map_err(Error::io("read CA", ca_pem))?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
            Error::Invalid(format!(
                "CA {} is not a PEM certificate: {e}",
                ca_pem.display()
            ))
        })?;
        let http = reqwest::Client::builder()
            .tls_certs_only([cert])
            .no_proxy()
            .build()
            .map_err(|e| {
                Error::Invalid(format!(
                    "cannot build an HTTP client trusting {}: {e}",
                    ca_pem.display()
                ))
            })?;
        Ok(Self {
            base: base_url.trim_end_matches('/').to_string(),
            http,
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
        })
    }

    /// The registry base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let rb = self.http.request(method, url);
        match &self.auth {
            Some((u, p)) => rb.basic_auth(u, Some(p)),
            None => rb,
        }
    }

    async fn send(
        &self,
        rb: reqwest::RequestBuilder,
        method: &str,
        url: &str,
    ) -> Result<reqwest::Response> {
        rb.send().await.map_err(Error::http(method, url))
    }

    /// Fail with the status and the start of the body unless the status is `want`.
    async fn expect(
        resp: reqwest::Response,
        want: StatusCode,
        method: &str,
        url: &str,
    ) -> Result<reqwest::Response> {
        if resp.status() == want {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        Err(Error::Status {
            method: method.into(),
            url: url.into(),
            status,
            body: body.chars().take(300).collect(),
        })
    }

    /// The status of a GET of `url` (absolute), whatever it is.
    pub async fn status_of(&self, url: &str) -> Result<u16> {
        let resp = self
            .send(self.request(reqwest::Method::GET, url), "GET", url)
            .await?;
        Ok(resp.status().as_u16())
    }

    /// Whether `repo` has blob `digest` (HEAD).
    pub async fn blob_exists(&self, repo: &str, digest: &str) -> Result<bool> {
        let url = format!("{}/v2/{repo}/blobs/{digest}", self.base);
        let resp = self
            .send(self.request(reqwest::Method::HEAD, &url), "HEAD", &url)
            .await?;
        match resp.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Self::expect(resp, StatusCode::OK, "HEAD", &url)
                .await
                .map(|_| false),
        }
    }

    /// Start an upload session; returns the absolute upload URL.
    async fn start_upload(&self, repo: &str) -> Result<String> {
        let url = format!("{}/v2/{repo}/blobs/uploads/", self.base);
        let resp = self
            .send(self.request(reqwest::Method::POST, &url), "POST", &url)
            .await?;
        let resp = Self::expect(resp, StatusCode::ACCEPTED, "POST", &url).await?;
        let location = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Error::Invalid(format!("POST {url}: 202 without a Location header")))?;
        Ok(
            if location.starts_with("http://") || location.starts_with("https://") {
                location.to_string()
            } else {
                format!("{}{location}", self.base)
            },
        )
    }

    /// Finish an upload monolithically with `body` and check the registry stored `digest`.
    async fn finish_upload(
        &self,
        location: &str,
        digest: &str,
        size: u64,
        body: reqwest::Body,
    ) -> Result<()> {
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={digest}");
        // Not form-urlencoded: Go would parse the body as a form and store nothing.
        let rb = self
            .request(reqwest::Method::PUT, &url)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, HeaderValue::from(size))
            .body(body);
        let resp = self.send(rb, "PUT", &url).await?;
        Self::expect(resp, StatusCode::CREATED, "PUT", &url).await?;
        Ok(())
    }

    /// Push `data` as a blob of `repo` (POST then monolithic PUT); returns its descriptor.
    pub async fn push_blob(
        &self,
        repo: &str,
        media_type: &str,
        data: impl Into<Bytes>,
    ) -> Result<Blob> {
        let data: Bytes = data.into();
        let blob = Blob {
            digest: sha256_digest(&data),
            size: data.len() as u64,
            media_type: media_type.to_string(),
            data,
        };
        if !self.blob_exists(repo, &blob.digest).await? {
            let location = self.start_upload(repo).await?;
            self.finish_upload(&location, &blob.digest, blob.size, blob.data.clone().into())
                .await?;
        }
        Ok(blob)
    }

    /// Push the file at `path` as blob `digest` of `repo`, streaming it (large layers never sit
    /// in memory). Skips the upload when the repository already has the blob.
    pub async fn push_blob_file(&self, repo: &str, path: &Path, digest: &str) -> Result<()> {
        if self.blob_exists(repo, digest).await? {
            return Ok(());
        }
        let file = tokio::fs::File::open(path)
            .await
            .map_err(Error::io("open", path))?;
        let size = file
            .metadata()
            .await
            .map_err(Error::io("stat", path))?
            .len();
        let stream = tokio_util::io::ReaderStream::with_capacity(file, UPLOAD_CHUNK);
        let location = self.start_upload(repo).await?;
        self.finish_upload(&location, digest, size, reqwest::Body::wrap_stream(stream))
            .await
    }

    /// PUT a manifest as `repo:reference`; returns the digest the registry reports.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Result<String> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let rb = self
            .request(reqwest::Method::PUT, &url)
            .header(header::CONTENT_TYPE, media_type)
            .body(body.to_vec());
        let resp = self.send(rb, "PUT", &url).await?;
        let resp = Self::expect(resp, StatusCode::CREATED, "PUT", &url).await?;
        Ok(resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| sha256_digest(body)))
    }

    /// Push every layer, the config and the manifest of `image` (tagged `image.tag`).
    pub async fn push_image(&self, image: &TestImage) -> Result<()> {
        for layer in &image.layers {
            self.push_blob_file(&image.repo, &layer.path, &layer.digest)
                .await?;
        }
        self.push_blob(&image.repo, OCI_CONFIG, image.config.data.clone())
            .await?;
        let digest = self
            .put_manifest(&image.repo, &image.tag, OCI_MANIFEST, &image.manifest.data)
            .await?;
        if digest != image.manifest_digest {
            return Err(Error::Invalid(format!(
                "registry {} stored manifest {}:{} as {digest}, expected {}",
                self.base, image.repo, image.tag, image.manifest_digest
            )));
        }
        Ok(())
    }

    /// Build `spec` in `dir` (see [`TestImage::build`]) and push it.
    pub async fn push_new_image(&self, spec: &ImageSpec, dir: &Path) -> Result<TestImage> {
        let spec = spec.clone();
        let dir = dir.to_path_buf();
        // Writing and hashing layers is CPU and disk work; keep it off the async workers.
        let image = tokio::task::spawn_blocking(move || TestImage::build(&spec, &dir))
            .await
            .map_err(|e| Error::Invalid(format!("image build task failed: {e}")))??;
        self.push_image(&image).await?;
        Ok(image)
    }

    /// GET a manifest; returns its content type and body.
    pub async fn get_manifest(&self, repo: &str, reference: &str) -> Result<(String, Bytes)> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let rb = self
            .request(reqwest::Method::GET, &url)
            .header(header::ACCEPT, MANIFEST_ACCEPT);
        let resp = Self::expect(
            self.send(rb, "GET", &url).await?,
            StatusCode::OK,
            "GET",
            &url,
        )
        .await?;
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        Ok((ct, resp.bytes().await.map_err(Error::http("GET", &url))?))
    }

    /// GET a whole blob into memory (small blobs only).
    pub async fn get_blob(&self, repo: &str, digest: &str) -> Result<Bytes> {
        let url = format!("{}/v2/{repo}/blobs/{digest}", self.base);
        let resp = self
            .send(self.request(reqwest::Method::GET, &url), "GET", &url)
            .await?;
        let resp = Self::expect(resp, StatusCode::OK, "GET", &url).await?;
        resp.bytes().await.map_err(Error::http("GET", &url))
    }
}
