//! Real pull clients in private temp dirs: containerd + `ctr`, podman (vfs), skopeo.

use super::error::{Error, Result};
use super::process::{Guarded, log_tail, work_dir};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Proxy variables removed from every client command, so an ambient proxy never sneaks in; a
/// test that wants a proxy sets them on the returned command.
pub const PROXY_VARS: [&str; 8] = [
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];
/// Namespace of the tests' containerd images.
const CTR_NAMESPACE: &str = "dragonfly-tests";

/// The Debian package that provides `program` (for "install it" hints).
pub(crate) fn package_for(program: &str) -> &'static str {
    match program.rsplit('/').next().unwrap_or(program) {
        "ctr" | "containerd" => "containerd",
        "htpasswd" => "apache2-utils",
        "docker-registry" => "docker-registry",
        "skopeo" => "skopeo",
        "podman" => "podman",
        "runc" => "runc",
        _ => "the one that provides it",
    }
}

fn client_command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    cmd
}

/// `skopeo` with no proxy variables. Pull with
/// `skopeo copy --src-cert-dir CERTS [--src-creds U:P] docker://HOST:PORT/REPO:TAG dir:OUT`.
pub fn skopeo() -> Command {
    client_command("skopeo")
}

/// Run `cmd` on the tokio runtime (so an in-process proxy on the same runtime keeps serving) and
/// return its stdout; fails with the command, its status and output tails when it exits non-zero.
pub async fn run(cmd: Command) -> Result<String> {
    let line = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let out = cmd.output().await.map_err(|source| Error::Spawn {
        package: package_for(&program),
        program,
        source,
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    let tail = |s: &[u8]| {
        let s = String::from_utf8_lossy(s);
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    };
    Err(Error::Process {
        what: line,
        detail: format!(
            "{}\nstderr:\n{}\nstdout:\n{}",
            out.status,
            tail(&out.stderr),
            tail(&out.stdout)
        ),
    })
}

/// A private containerd (CRI plugin off, overlayfs snapshotter) with root, state, socket and log
/// in a temp dir. Dropping it stops the daemon and removes the dir.
#[derive(Debug)]
pub struct Containerd {
    // Declared first: stopped before the temp dir goes.
    process: Guarded,
    dir: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Containerd {
    /// Start containerd in a fresh temp dir and wait until `ctr version` answers.
    pub async fn start() -> Result<Self> {
        Self::start_in(None).await
    }

    /// Start containerd in `dir` (a temp dir when `None`).
    pub async fn start_in(dir: Option<PathBuf>) -> Result<Self> {
        let (dir, temp) = work_dir(dir, "dragonfly-containerd-")?;
        let socket = dir.join("containerd.sock");
        let log = dir.join("containerd.log");
        let config = dir.join("config.toml");
        std::fs::write(&config, containerd_config(&dir, &socket))
            .map_err(Error::io("write", &config))?;
        let mut cmd = client_command("containerd");
        cmd.arg("--config").arg(&config);
        let process = Guarded::spawn(cmd, package_for("containerd"), &log, &log)?;
        let mut me = Self {
            process,
            dir,
            socket,
            log,
            _temp: temp,
        };
        me.wait_ready(Duration::from_secs(30)).await?;
        Ok(me)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        let mut last = String::from("socket not there yet");
        while started.elapsed() < timeout {
            if let Some(status) = self.process.exited() {
                return Err(Error::Process {
                    what: format!(
                        "containerd --config {}",
                        self.dir.join("config.toml").display()
                    ),
                    detail: format!("exited ({status}); {}", log_tail(&self.log, 20)),
                });
            }
            if self.socket.exists() {
                match run(self.ctr(["version"])).await {
                    Ok(_) => return Ok(()),
                    Err(e) => last = e.to_string(),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Error::Timeout {
            what: format!("containerd at {}", self.socket.display()),
            after: timeout,
            detail: format!("{last}; {}", log_tail(&self.log, 20)),
        })
    }

    /// `ctr --address SOCK -n dragonfly-tests ARGS...`, without proxy variables (ctr pulls in
    /// its own process: set `HTTPS_PROXY` on this command to pull through a proxy).
    pub fn ctr<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = client_command("ctr");
        cmd.arg("--address")
            .arg(&self.socket)
            .args(["-n", CTR_NAMESPACE])
            .args(args);
        cmd
    }

    /// Names of the images in the namespace (`ctr images ls -q`).
    pub async fn images(&self) -> Result<Vec<String>> {
        let out = run(self.ctr(["images", "ls", "-q"])).await?;
        Ok(out
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// The gRPC socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The namespace [`Self::ctr`] uses.
    pub fn namespace(&self) -> &str {
        CTR_NAMESPACE
    }

    /// The directory with root, state, config and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The daemon's log.
    pub fn log(&self) -> &Path {
        &self.log
    }
}

fn containerd_config(dir: &Path, socket: &Path) -> String {
    let q = |p: &Path| serde_json::Value::String(p.to_string_lossy().into_owned()).to_string();
    let ttrpc = socket.with_extension("sock.ttrpc");
    format!(
        "version = 2\n\
         root = {root}\n\
         state = {state}\n\
         disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.snapshotter.v1.btrfs\",\n  \
         \"io.containerd.snapshotter.v1.zfs\", \"io.containerd.snapshotter.v1.devmapper\",\n  \
         \"io.containerd.snapshotter.v1.aufs\"]\n\
         [grpc]\n  address = {sock}\n\
         [ttrpc]\n  address = {ttrpc}\n\
         [debug]\n  level = \"info\"\n\
         [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {opt}\n",
        root = q(&dir.join("root")),
        state = q(&dir.join("state")),
        sock = q(socket),
        ttrpc = q(&ttrpc),
        opt = q(&dir.join("opt")),
    )
}

/// A containerd `hosts.toml` for one registry: the server, the CA to trust, and mirrors tried
/// first (e.g. a Dragonfly proxy with the `X-Dragonfly-Registry` header).
#[derive(Debug, Clone, Default)]
pub struct HostsToml {
    /// `https://registry.test:PORT`.
    pub server: String,
    /// CA file for the server (`ca = "..."`).
    pub ca: Option<PathBuf>,
    /// Mirrors, in order.
    pub mirrors: Vec<MirrorHost>,
}

/// One `[host."URL"]` section of a `hosts.toml`.
#[derive(Debug, Clone, Default)]
pub struct MirrorHost {
    /// `http://127.0.0.1:65001`.
    pub url: String,
    /// Capabilities; empty means `["pull", "resolve"]`.
    pub capabilities: Vec<String>,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// CA file for an HTTPS mirror.
    pub ca: Option<PathBuf>,
    /// Do not verify the mirror's certificate.
    pub skip_verify: bool,
}

impl HostsToml {
    /// Talk to `server` directly, trusting `ca`.
    pub fn direct(server: &str, ca: &Path) -> Self {
        Self {
            server: server.to_string(),
            ca: Some(ca.to_path_buf()),
            mirrors: Vec::new(),
        }
    }

    /// The TOML text.
    pub fn render(&self) -> String {
        let s = |v: &str| serde_json::Value::String(v.to_string()).to_string();
        let p = |v: &Path| s(&v.to_string_lossy());
        let mut out = format!("server = {}\n", s(&self.server));
        if let Some(ca) = &self.ca {
            out.push_str(&format!("ca = {}\n", p(ca)));
        }
        if self.mirrors.is_empty() {
            // containerd 1.6 rejects a hosts.toml without a `host` table ("invalid `host` tree").
            out.push_str("\n[host]\n");
        }
        for m in &self.mirrors {
            let caps = if m.capabilities.is_empty() {
                vec!["pull".to_string(), "resolve".to_string()]
            } else {
                m.capabilities.clone()
            };
            let caps: Vec<String> = caps.iter().map(|c| s(c)).collect();
            out.push_str(&format!(
                "\n[host.{}]\n  capabilities = [{}]\n",
                s(&m.url),
                caps.join(", ")
            ));
            if let Some(ca) = &m.ca {
                out.push_str(&format!("  ca = {}\n", p(ca)));
            }
            if m.skip_verify {
                out.push_str("  skip_verify = true\n");
            }
            if !m.headers.is_empty() {
                out.push_str(&format!("  [host.{}.header]\n", s(&m.url)));
                for (k, v) in &m.headers {
                    out.push_str(&format!("    {} = [{}]\n", s(k), s(v)));
                }
            }
        }
        out
    }

    /// Write `<hosts_dir>/<host_port>/hosts.toml`; pass `hosts_dir` to `ctr images pull
    /// --hosts-dir`. Returns the file.
    pub fn write(&self, hosts_dir: &Path, host_port: &str) -> Result<PathBuf> {
        let dir = hosts_dir.join(host_port);
        std::fs::create_dir_all(&dir).map_err(Error::io("create dir", &dir))?;
        let file = dir.join("hosts.toml");
        std::fs::write(&file, self.render()).map_err(Error::io("write", &file))?;
        Ok(file)
    }
}

/// podman with its own vfs storage in a temp dir (pulling works here; running containers does
/// not: the sandbox lacks CAP_SYS_RESOURCE for rlimits).
#[derive(Debug)]
pub struct Podman {
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Podman {
    /// podman state in a fresh temp dir.
    pub fn new() -> Result<Self> {
        let (dir, temp) = work_dir(None, "dragonfly-podman-")?;
        Ok(Self { dir, _temp: temp })
    }

    /// `podman --root R --runroot RR --tmpdir T --storage-driver vfs --cgroup-manager cgroupfs
    /// --events-backend file ARGS...`, without proxy variables. Pull with
    /// `pull --cert-dir CERTS [--creds U:P] HOST:PORT/REPO:TAG`.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = client_command("podman");
        cmd.arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ])
            .args(args);
        cmd
    }

    /// The directory with podman's storage.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_toml_with_a_mirror_and_header() {
        let h = HostsToml {
            server: "https://registry.test:5443".into(),
            ca: Some("/x/ca.pem".into()),
            mirrors: vec![MirrorHost {
                url: "http://127.0.0.1:65001".into(),
                headers: vec![(
                    "X-Dragonfly-Registry".into(),
                    "https://registry.test:5443".into(),
                )],
                ..Default::default()
            }],
        };
        assert_eq!(
            h.render(),
            "server = \"https://registry.test:5443\"\nca = \"/x/ca.pem\"\n\n\
             [host.\"http://127.0.0.1:65001\"]\n  capabilities = [\"pull\", \"resolve\"]\n  \
             [host.\"http://127.0.0.1:65001\".header]\n    \"X-Dragonfly-Registry\" = [\"https://registry.test:5443\"]\n"
        );
    }

    #[test]
    fn containerd_config_points_everything_into_the_dir() {
        let c = containerd_config(Path::new("/t/c"), Path::new("/t/c/containerd.sock"));
        assert!(c.contains("root = \"/t/c/root\""));
        assert!(c.contains("address = \"/t/c/containerd.sock.ttrpc\""));
        assert!(c.contains("io.containerd.grpc.v1.cri"));
    }
}
