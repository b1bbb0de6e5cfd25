//! A real CNCF distribution registry (`docker-registry serve`) on a free port, with TLS, optional
//! htpasswd auth and an access log that tests read to count what the origin served.

use super::access_log::{LoggedRequest, parse_access_log};
use super::error::{Error, Result};
use super::hosts::ensure_test_hosts;
use super::pki::Pki;
use super::process::{Guarded, log_tail, work_dir};
use super::push::RegistryClient;
use super::{DEFAULT_HOST, clients::package_for};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Registry binary in Debian's `docker-registry` package (upstream calls it `registry`).
const REGISTRY_BIN: &str = "docker-registry";
/// Ports tried when another process grabs the free port between our probe and the bind.
const PORT_ATTEMPTS: usize = 5;

/// How to start a [`Registry`]. Build with [`RegistryOptions::new`] and the setters.
#[derive(Debug, Clone)]
pub struct RegistryOptions<'a> {
    /// Host name clients use; mapped to 127.0.0.1 with [`ensure_test_hosts`] and must be in the
    /// server certificate of `pki`. Default `registry.test`.
    pub host: String,
    /// Require HTTP Basic auth with this user and password (htpasswd, bcrypt).
    pub auth: Option<(String, String)>,
    /// Certificates: the registry serves `pki.server_cert()`.
    pub pki: &'a Pki,
    /// Where config, htpasswd and logs go. Default: a temp dir removed on drop.
    pub dir: Option<PathBuf>,
    /// Filesystem storage root. Default `<dir>/storage`. Give two registries the same storage to
    /// serve the same content anonymously and with auth.
    pub storage: Option<PathBuf>,
    /// YAML appended to the config (top-level keys, e.g. `proxy: {remoteurl: ...}`).
    pub extra_config: String,
    /// Extra environment for the registry process (e.g. `SSL_CERT_FILE` for a pull-through cache).
    pub env: Vec<(String, String)>,
    /// How long to wait for `/v2/` to answer.
    pub start_timeout: Duration,
}

impl<'a> RegistryOptions<'a> {
    /// Anonymous registry `registry.test` with its own temp dir and storage.
    pub fn new(pki: &'a Pki) -> Self {
        Self {
            host: DEFAULT_HOST.to_string(),
            auth: None,
            pki,
            dir: None,
            storage: None,
            extra_config: String::new(),
            env: Vec::new(),
            start_timeout: Duration::from_secs(30),
        }
    }

    /// Another host name (must be in the server certificate).
    pub fn host(mut self, host: &str) -> Self {
        self.host = host.to_string();
        self
    }

    /// Require Basic auth.
    pub fn auth(mut self, user: &str, password: &str) -> Self {
        self.auth = Some((user.to_string(), password.to_string()));
        self
    }

    /// Keep config and logs in `dir`.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Use this storage root (share it with another registry: see [`Registry::storage_dir`]).
    pub fn storage(mut self, storage: impl Into<PathBuf>) -> Self {
        self.storage = Some(storage.into());
        self
    }

    /// Append YAML to the config.
    pub fn extra_config(mut self, yaml: &str) -> Self {
        self.extra_config = yaml.to_string();
        self
    }

    /// Set an environment variable for the registry process.
    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.env.push((
            key.to_string(),
            value.as_ref().to_string_lossy().into_owned(),
        ));
        self
    }
}

/// A running `docker-registry` (distribution 2.8) on `127.0.0.1:<port>`, served over TLS as
/// `https://<host>:<port>`. Dropping it stops the process and removes its temp dir.
#[derive(Debug)]
pub struct Registry {
    // Declared first: dropped (stopped) before the temp dir goes.
    process: Guarded,
    host: String,
    port: u16,
    dir: PathBuf,
    storage: PathBuf,
    ca: PathBuf,
    auth: Option<(String, String)>,
    access_log: PathBuf,
    app_log: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Registry {
    /// Start a registry and wait until `https://<host>:<port>/v2/` answers (200, or 401 with
    /// auth). Maps the host name in `/etc/hosts` first (see [`ensure_test_hosts`]).
    pub async fn start(opts: RegistryOptions<'_>) -> Result<Self> {
        if opts.host != "localhost" && opts.host.parse::<std::net::IpAddr>().is_err() {
            ensure_test_hosts(&[&opts.host])?;
        }
        let (dir, temp) = work_dir(opts.dir.clone(), "dragonfly-registry-")?;
        let storage = opts.storage.clone().unwrap_or_else(|| dir.join("storage"));
        std::fs::create_dir_all(&storage).map_err(Error::io("create dir", &storage))?;
        let htpasswd = match &opts.auth {
            Some((user, pass)) => Some(write_htpasswd(&dir.join("htpasswd"), user, pass)?),
            None => None,
        };
        let access_log = dir.join("access.log");
        let app_log = dir.join("registry.log");
        let client = RegistryClient::new("https://invalid", &opts.pki.ca_cert(), None)?;

        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = crate::net::try_free_port().map_err(Error::io("bind", "127.0.0.1:0"))?;
            for log in [&access_log, &app_log] {
                std::fs::write(log, b"").map_err(Error::io("truncate", log))?;
            }
            let config = dir.join("config.yml");
            let yaml = config_yaml(&opts, port, &storage, htpasswd.as_deref());
            std::fs::write(&config, yaml).map_err(Error::io("write", &config))?;
            let mut cmd = Command::new(REGISTRY_BIN);
            cmd.arg("serve").arg(&config).current_dir(&dir);
            for var in super::clients::PROXY_VARS {
                cmd.env_remove(var);
            }
            cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
            // The access log goes to stdout, the registry's own logging to stderr.
            let process = Guarded::spawn(cmd, package_for(REGISTRY_BIN), &access_log, &app_log)?;
            let mut reg = Self {
                process,
                host: opts.host.clone(),
                port,
                dir: dir.clone(),
                storage: storage.clone(),
                ca: opts.pki.ca_cert(),
                auth: opts.auth.clone(),
                access_log: access_log.clone(),
                app_log: app_log.clone(),
                _temp: None,
            };
            match reg.wait_ready(&client, opts.start_timeout).await {
                Ok(()) => {
                    reg._temp = temp;
                    return Ok(reg);
                }
                Err(WaitError::PortTaken(detail)) => last = detail,
                Err(WaitError::Fatal(e)) => return Err(e),
            }
        }
        Err(Error::Process {
            what: format!("{REGISTRY_BIN} serve {}", dir.join("config.yml").display()),
            detail: format!("no free port after {PORT_ATTEMPTS} attempts; {last}"),
        })
    }

    async fn wait_ready(
        &mut self,
        client: &RegistryClient,
        timeout: Duration,
    ) -> Result<(), WaitError> {
        let url = format!("{}/v2/", self.url());
        let started = Instant::now();
        let mut seen = String::from("no answer yet");
        while started.elapsed() < timeout {
            if let Some(status) = self.process.exited() {
                let tail = log_tail(&self.app_log, 15);
                if tail.contains("address already in use") {
                    return Err(WaitError::PortTaken(tail));
                }
                return Err(WaitError::Fatal(Error::Process {
                    what: format!("{REGISTRY_BIN} on port {}", self.port),
                    detail: format!("exited ({status}) before answering {url}; {tail}"),
                }));
            }
            match client.status_of(&url).await {
                Ok(200 | 401) => return Ok(()),
                Ok(s) => seen = format!("HTTP {s}"),
                Err(e) => seen = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(WaitError::Fatal(Error::Timeout {
            what: url,
            after: timeout,
            detail: format!("{seen}; {}", log_tail(&self.app_log, 15)),
        }))
    }

    /// Stop the registry now (SIGTERM, then SIGKILL), e.g. to test an origin that goes away.
    /// Storage and logs stay until the handle drops.
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// `https://<host>:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.host_port())
    }

    /// `<host>:<port>`, as image references want it.
    pub fn host_port(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The host name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id of the registry.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Directory with `config.yml`, `htpasswd` and the logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Filesystem storage root (`<storage>/docker/registry/v2/...`).
    pub fn storage_dir(&self) -> &Path {
        &self.storage
    }

    /// The CA certificate that signed the registry's certificate.
    pub fn ca_cert(&self) -> &Path {
        &self.ca
    }

    /// User and password when Basic auth is required.
    pub fn auth(&self) -> Option<(&str, &str)> {
        self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The access log (one line per request, see [`LoggedRequest`]).
    pub fn access_log(&self) -> &Path {
        &self.access_log
    }

    /// The registry's own log (logrus lines on stderr).
    pub fn app_log(&self) -> &Path {
        &self.app_log
    }

    /// An API client for this registry, trusting its CA and logged in when auth is on.
    pub fn client(&self) -> Result<RegistryClient> {
        RegistryClient::new(&self.url(), &self.ca, self.auth())
    }

    /// Every request logged so far, oldest first. Slice off the first `n` to see only what
    /// happened after an earlier call returned `n` requests.
    pub fn requests(&self) -> Result<Vec<LoggedRequest>> {
        let text = std::fs::read_to_string(&self.access_log)
            .map_err(Error::io("read", &self.access_log))?;
        Ok(parse_access_log(&text))
    }

    /// Poll the log until `done(&requests)` holds, then return the requests. The registry writes
    /// a line after the response finished, so a client may be done a moment before its line.
    pub async fn wait_for_requests(
        &self,
        timeout: Duration,
        done: impl Fn(&[LoggedRequest]) -> bool,
    ) -> Result<Vec<LoggedRequest>> {
        let started = Instant::now();
        loop {
            let reqs = self.requests()?;
            if done(&reqs) {
                return Ok(reqs);
            }
            if started.elapsed() >= timeout {
                let last: Vec<String> = reqs
                    .iter()
                    .rev()
                    .take(10)
                    .map(|r| format!("{} {} {} {}", r.method, r.path, r.status, r.bytes))
                    .collect();
                return Err(Error::Timeout {
                    what: format!("expected requests in {}", self.access_log.display()),
                    after: timeout,
                    detail: format!("{} logged, last: {last:?}", reqs.len()),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// GETs of blob `digest` (any repository) that served content (200 or 206).
    pub fn blob_gets(&self, digest: &str) -> Result<usize> {
        Ok(self
            .requests()?
            .iter()
            .filter(|r| r.is_blob_get_of(digest))
            .count())
    }

    /// Body bytes served for blob `digest` by all its GETs (Range requests add up).
    pub fn blob_bytes_served(&self, digest: &str) -> Result<u64> {
        Ok(self
            .requests()?
            .iter()
            .filter(|r| r.is_blob_get_of(digest))
            .map(|r| r.bytes)
            .sum())
    }

    /// Wait (up to `timeout`) until every layer of `image` was asked for, then assert each
    /// layer's bytes were served exactly once, whole (Range requests add up).
    pub async fn assert_layers_served_once(&self, image: &super::TestImage, timeout: Duration) {
        self.wait_for_requests(timeout, |reqs| {
            image
                .layers
                .iter()
                .all(|l| reqs.iter().any(|r| r.is_blob_get_of(&l.digest)))
        })
        .await
        .expect("the registry saw every layer asked for");
        for l in &image.layers {
            assert_eq!(
                self.blob_bytes_served(&l.digest).expect("access log"),
                l.size,
                "origin bytes for layer {} ({} B)",
                l.digest,
                l.size
            );
        }
    }

    /// Where the registry keeps the bytes of `digest`.
    pub fn blob_data_path(&self, digest: &str) -> Result<PathBuf> {
        blob_data_path(&self.storage, digest)
    }

    /// Flip the first, middle and last stored byte of blob `digest` (length unchanged), so the
    /// registry serves bytes that do not match the digest.
    pub fn corrupt_blob(&self, digest: &str) -> Result<()> {
        let path = self.blob_data_path(digest)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(Error::io("open stored blob", &path))?;
        let len = file.metadata().map_err(Error::io("stat", &path))?.len();
        if len == 0 {
            return Err(Error::Invalid(format!(
                "blob {digest} is empty: nothing to corrupt"
            )));
        }
        let mut offsets = vec![0, len / 2, len.saturating_sub(1)];
        offsets.dedup();
        for off in offsets.into_iter().filter(|&o| o < len) {
            let mut b = [0u8; 1];
            file.read_exact_at(&mut b, off)
                .map_err(Error::io("read stored blob", &path))?;
            b[0] ^= 0xff;
            file.write_all_at(&b, off)
                .map_err(Error::io("write stored blob", &path))?;
        }
        Ok(())
    }

    /// Replace the stored bytes of blob `digest` with `data` (any length). The registry serves
    /// them as they are, with the new length.
    pub fn replace_blob(&self, digest: &str, data: &[u8]) -> Result<()> {
        let path = self.blob_data_path(digest)?;
        std::fs::write(&path, data).map_err(Error::io("write stored blob", &path))
    }
}

enum WaitError {
    PortTaken(String),
    Fatal(Error),
}

/// `<storage>/docker/registry/v2/blobs/sha256/<aa>/<hex>/data`, checked to exist.
pub fn blob_data_path(storage: &Path, digest: &str) -> Result<PathBuf> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| Error::Invalid(format!("not a sha256 digest: {digest:?}")))?;
    let path = storage.join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    if !path.is_file() {
        return Err(Error::Invalid(format!(
            "blob {digest} is not stored in {} (no {})",
            storage.display(),
            path.display()
        )));
    }
    Ok(path)
}

fn write_htpasswd(path: &Path, user: &str, pass: &str) -> Result<PathBuf> {
    let out = Command::new("htpasswd")
        .args(["-Bbn", user, pass])
        .output()
        .map_err(|source| Error::Spawn {
            program: "htpasswd".into(),
            package: package_for("htpasswd"),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Process {
            what: format!("htpasswd -Bbn {user} ***"),
            detail: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr)),
        });
    }
    std::fs::write(path, &out.stdout).map_err(Error::io("write", path))?;
    Ok(path.to_path_buf())
}

/// YAML string literal (JSON strings are valid YAML flow scalars).
fn quoted(p: &Path) -> String {
    serde_json::Value::String(p.to_string_lossy().into_owned()).to_string()
}

fn config_yaml(
    opts: &RegistryOptions<'_>,
    port: u16,
    storage: &Path,
    htpasswd: Option<&Path>,
) -> String {
    let mut y = format!(
        "version: 0.1\n\
         log:\n  level: info\n  accesslog: {{disabled: false}}\n  fields: {{service: dragonfly-tests-registry}}\n\
         storage:\n  filesystem: {{rootdirectory: {storage}}}\n  delete: {{enabled: true}}\n  \
         maintenance: {{uploadpurging: {{enabled: false}}}}\n\
         http:\n  addr: 127.0.0.1:{port}\n  secret: dragonfly-tests-secret\n  \
         tls: {{certificate: {cert}, key: {key}}}\n  headers: {{X-Content-Type-Options: [nosniff]}}\n",
        storage = quoted(storage),
        cert = quoted(&opts.pki.server_cert()),
        key = quoted(&opts.pki.server_key()),
    );
    if let Some(h) = htpasswd {
        y.push_str(&format!(
            "auth:\n  htpasswd: {{realm: dragonfly-tests, path: {}}}\n",
            quoted(h)
        ));
    }
    if !opts.extra_config.is_empty() {
        y.push_str(&opts.extra_config);
        y.push('\n');
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_paths_follow_the_filesystem_driver_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let hex = "ab".repeat(32);
        let d = format!("sha256:{hex}");
        assert!(
            blob_data_path(tmp.path(), &d).is_err(),
            "missing blob is an error"
        );
        let p = tmp
            .path()
            .join(format!("docker/registry/v2/blobs/sha256/ab/{hex}/data"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"x").unwrap();
        assert_eq!(blob_data_path(tmp.path(), &d).unwrap(), p);
        assert!(blob_data_path(tmp.path(), "sha256:zz").is_err());
    }
}
