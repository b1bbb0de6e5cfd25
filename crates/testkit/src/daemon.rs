//! dfdaemon for tests: a process (`dfget daemon` or `dfdaemon`) or a daemon running inside the
//! test, both configured through [`DaemonBuilder`], which edits the real [`DfdaemonConfig`] and
//! writes it with [`DfdaemonConfig::to_yaml`], so a test config is always one the daemon's own
//! loader reads back.

use crate::bins::bin;
use crate::net::free_port;
use crate::process::KillOnDrop;
use dfdaemon::config::{DfdaemonConfig, MetricsListen, NetAddr, ProxyListen, UploadListen};
use dragonfly_common::config::PortRange;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Which binary runs the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// `dfget daemon --config FILE` (what a node that only has dfget runs).
    DfgetDaemon,
    /// `dfdaemon --config FILE`.
    Dfdaemon,
}

/// A daemon's config and how to run it. Defaults: everything under the directory (`data/`,
/// `log/`, `dfdaemon.sock`), the upload server and the metrics server on 127.0.0.1 on free
/// ports (metrics are on by default: daemons of one test must not share 65003), no proxy, no
/// scheduler, no parents, every other key at the daemon's own default.
pub struct DaemonBuilder {
    dir: PathBuf,
    temp: Option<tempfile::TempDir>,
    config: DfdaemonConfig,
    program: Program,
    env: Vec<(OsString, Option<OsString>)>,
}

impl DaemonBuilder {
    fn new(dir: PathBuf, temp: Option<tempfile::TempDir>) -> Self {
        let mut config = DfdaemonConfig {
            data_dir: dir.join("data"),
            log_dir: dir.join("log"),
            proxy_enabled: false,
            ..DfdaemonConfig::default()
        };
        config.download.unix_listen.socket = dir.join("dfdaemon.sock");
        config.upload.tcp_listen = UploadListen {
            listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: port_range(free_port()),
        };
        config.metrics.tcp_listen = MetricsListen {
            listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: port_range(free_port()),
        };
        DaemonBuilder {
            dir,
            temp,
            config,
            program: Program::DfgetDaemon,
            env: Vec::new(),
        }
    }

    /// Change the config.
    pub fn config(mut self, edit: impl FnOnce(&mut DfdaemonConfig)) -> Self {
        edit(&mut self.config);
        self
    }

    /// The upload server on `ip:port` (a restarted daemon keeps its port, so its children's
    /// `download.parents` still reach it); the metrics server moves to `ip` too.
    pub fn upload(mut self, ip: &str, port: u16) -> Self {
        let ip: IpAddr = ip
            .parse()
            .unwrap_or_else(|e| panic!("upload ip {ip:?}: {e}"));
        self.config.upload.tcp_listen = UploadListen {
            listen: ip,
            port: port_range(port),
        };
        self.config.metrics.tcp_listen.listen = ip;
        self
    }

    /// The upload server on 127.0.0.1:`port`.
    pub fn upload_port(self, port: u16) -> Self {
        self.upload("127.0.0.1", port)
    }

    /// Static parents: the upload servers of daemons on 127.0.0.1 at `ports`.
    pub fn parents(mut self, ports: &[u16]) -> Self {
        self.config.download.parents = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        self
    }

    /// Schedulers at `addrs` (`host:port`).
    pub fn schedulers<S: AsRef<str>>(mut self, addrs: &[S]) -> Self {
        self.config.scheduler.net_addrs = addrs
            .iter()
            .map(|a| NetAddr {
                kind: "tcp".to_owned(),
                addr: a.as_ref().to_owned(),
            })
            .collect();
        self
    }

    /// `storage.multiplex`: hard-link finished tasks to their outputs.
    pub fn multiplex(mut self, on: bool) -> Self {
        self.config.storage.multiplex = on;
        self
    }

    /// Turn the proxy on, listening on 127.0.0.1:`port`, with `section`: YAML keys of the
    /// `proxy:` section as a user writes them (indented two spaces; may be empty), read by the
    /// daemon's own config loader (proxy rules and mirrors are the behaviour under test, in the
    /// shape users write them).
    pub fn proxy(mut self, port: u16, section: &str) -> Self {
        let mut proxy = if section.trim().is_empty() {
            Default::default()
        } else {
            let text = format!("proxy:\n{section}");
            DfdaemonConfig::from_yaml(&text, "the test's proxy section")
                .unwrap_or_else(|e| panic!("proxy section: {e}\n{text}"))
                .value
                .proxy
        };
        proxy.tcp_listen = ProxyListen {
            listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: port_range(port),
        };
        self.config.proxy = proxy;
        self.config.proxy_enabled = true;
        self
    }

    /// Run `dfdaemon` instead of `dfget daemon`.
    pub fn program(mut self, program: Program) -> Self {
        self.program = program;
        self
    }

    /// Set `key` in the process's environment.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), Some(value.into())));
        self
    }

    /// Remove `key` from the process's environment.
    pub fn env_remove(mut self, key: impl Into<OsString>) -> Self {
        self.env.push((key.into(), None));
        self
    }

    /// The config as it stands.
    pub fn get(&self) -> &DfdaemonConfig {
        &self.config
    }

    /// The config file this builder writes.
    pub fn yaml(&self) -> String {
        self.config
            .to_yaml()
            .unwrap_or_else(|e| panic!("serializing the daemon config: {e}"))
    }

    /// Write the config to `<dir>/dfget.yaml` and return that path.
    pub fn write_config(&self) -> PathBuf {
        std::fs::create_dir_all(&self.dir)
            .unwrap_or_else(|e| panic!("creating {}: {e}", self.dir.display()));
        let cfg = self.dir.join("dfget.yaml");
        std::fs::write(&cfg, self.yaml())
            .unwrap_or_else(|e| panic!("writing {}: {e}", cfg.display()));
        cfg
    }

    /// Write the config ([`Self::write_config`]), start the process and wait until its socket
    /// answers. Panics with the daemon's stderr when it does not (test helper).
    pub fn start(self) -> DaemonProcess {
        let cfg = self.write_config();
        let stderr = std::fs::File::create(self.dir.join("stderr.log")).expect("stderr.log");
        let mut cmd = match self.program {
            Program::DfgetDaemon => {
                let mut c = Command::new(bin("dfget"));
                c.arg("daemon");
                c
            }
            Program::Dfdaemon => Command::new(bin("dfdaemon")),
        };
        cmd.arg("--config")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr));
        for (k, v) in &self.env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting the daemon in {}: {e}", self.dir.display()));
        let d = DaemonProcess {
            child: KillOnDrop(child),
            dir: self.dir,
            _temp: self.temp,
            config: self.config,
        };
        for _ in 0..200 {
            if std::os::unix::net::UnixStream::connect(d.socket()).is_ok() {
                return d;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "daemon in {} did not start: {}",
            d.dir.display(),
            std::fs::read_to_string(d.dir.join("stderr.log")).unwrap_or_default()
        );
    }

    /// Start the daemon inside this test (`dfdaemon::daemon::start`); it stops when the
    /// returned value is dropped.
    pub async fn start_in_process(self) -> InProcessDaemon {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // The test binds the ports itself (port 0): nothing to race for.
        let any = |what: &str| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| {
                    l.set_nonblocking(true)?;
                    tokio::net::TcpListener::from_std(l)
                })
                .unwrap_or_else(|e| panic!("binding the {what} listener: {e}"))
        };
        let listeners = dfdaemon::daemon::Listeners {
            upload: Some(any("upload")),
            proxy: self.config.proxy_enabled.then(|| any("proxy")),
            metrics: self.config.metrics.enable.then(|| any("metrics")),
            socket: None,
        };
        let (bound, run) = dfdaemon::daemon::start_with(self.config.clone(), listeners, async {
            let _ = rx.await;
        })
        .await
        .unwrap_or_else(|e| panic!("the daemon does not start: {e}\n{}", self.yaml()));
        tokio::spawn(run);
        let mut config = self.config;
        config.upload.tcp_listen.port = port_range(bound.upload.port());
        if let Some(proxy) = bound.proxy {
            config.proxy.tcp_listen.port = port_range(proxy.port());
        }
        if let Some(m) = bound.metrics {
            config.metrics.tcp_listen.port = port_range(m.port());
        }
        InProcessDaemon {
            metrics: bound.metrics,
            proxy: bound.proxy,
            upload: bound.upload,
            config,
            _dir: self.temp,
            _stop: tx,
        }
    }
}

fn port_range(port: u16) -> PortRange {
    PortRange::single(
        dragonfly_common::config::Port::new(port)
            .unwrap_or_else(|| panic!("{port} is not a port for a daemon")),
    )
}

/// A daemon process; killed when dropped.
pub struct DaemonProcess {
    child: KillOnDrop,
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    config: DfdaemonConfig,
}

impl DaemonProcess {
    /// A daemon whose files live in `dir`.
    pub fn builder(dir: &Path) -> DaemonBuilder {
        DaemonBuilder::new(dir.to_path_buf(), None)
    }

    /// A daemon whose files live in a new temporary directory, removed with the daemon.
    pub fn temp() -> DaemonBuilder {
        let temp = tempfile::tempdir().expect("tempdir");
        DaemonBuilder::new(temp.path().to_path_buf(), Some(temp))
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its directory: `dfget.yaml`, `stderr.log`, and by default `data/`, `log/`, the socket.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The config it was started with.
    pub fn config(&self) -> &DfdaemonConfig {
        &self.config
    }

    /// Its unix socket (dfget's `DFGET_DAEMON_SOCK`).
    pub fn socket(&self) -> PathBuf {
        self.config.download.unix_listen.socket.clone()
    }

    /// Its data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.config.data_dir.clone()
    }

    /// The port of its upload server.
    pub fn upload_port(&self) -> u16 {
        self.config.upload.tcp_listen.port.start().get()
    }

    /// `ip:port` of its upload server, as peers and the scheduler name it.
    pub fn upload_addr(&self) -> String {
        format!(
            "{}:{}",
            self.config.upload.tcp_listen.listen,
            self.upload_port()
        )
    }

    /// `ip:port` of its metrics server (`/metrics`, `/healthy`); panics when `metrics.enable`
    /// is off (test helper).
    pub fn metrics_addr(&self) -> SocketAddr {
        assert!(self.config.metrics.enable, "the daemon's metrics are off");
        SocketAddr::new(
            self.config.metrics.tcp_listen.listen,
            self.config.metrics.tcp_listen.port.start().get(),
        )
    }

    /// What it logged so far (`log/core.log`, JSON lines).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.config.log_dir.join("core.log")).unwrap_or_default()
    }

    /// Its log lines whose `msg` starts with `prefix` and whose `task` is `task`.
    pub fn task_lines(&self, prefix: &str, task: impl AsRef<str>) -> Vec<serde_json::Value> {
        let task = task.as_ref();
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| {
                v["msg"].as_str().is_some_and(|m| m.starts_with(prefix))
                    && v["task"].as_str() == Some(task)
            })
            .collect()
    }

    /// Pieces per origin (`source` or a parent's `ip:port`) of the last task it finished.
    ///
    /// The daemon logs a task's end after its last byte reached the client, so this waits (up
    /// to 10 s) until every task it started has logged its end.
    pub fn fed(&self) -> BTreeMap<String, u32> {
        let mut log = self.log();
        for _ in 0..200 {
            let ended = log.matches("peer task done, cost: ").count()
                + log.matches("\"peer task failed\"").count();
            if ended >= log.matches("\"peer task started\"").count() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            log = self.log();
        }
        let line = log
            .lines()
            .rfind(|l| l.contains("peer task done, cost: "))
            .unwrap_or_else(|| panic!("no finished task in {}:\n{log}", self.dir.display()));
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line {line:?} of {}: {e}", self.dir.display()));
        v["from"]
            .as_str()
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|kv| {
                let (k, n) = kv
                    .rsplit_once('=')
                    .unwrap_or_else(|| panic!("{kv:?} in {line}"));
                (
                    k.to_string(),
                    n.parse().unwrap_or_else(|e| panic!("{kv:?}: {e}")),
                )
            })
            .collect()
    }

    /// SIGTERM, then wait for a clean exit (the graceful shutdown).
    pub fn terminate(mut self) {
        crate::process::signal(self.child.id(), "TERM");
        for _ in 0..200 {
            if let Some(code) = self.child.0.try_wait().expect("wait for the daemon") {
                assert!(code.success(), "daemon exited with {code}");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("daemon did not exit within 10 s of SIGTERM");
    }

    /// Send SIGTERM and return at once (see [`Self::wait_exit`]).
    pub fn sigterm(&self) {
        crate::process::signal(self.child.id(), "TERM");
    }

    /// Wait for the process to exit on its own, up to `limit` (a guard against a hang, not a
    /// timing assertion); panics naming the daemon's directory when it does not.
    pub async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let t0 = std::time::Instant::now();
        while t0.elapsed() < limit {
            if let Some(status) = self.child.0.try_wait().expect("wait for the daemon") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "daemon in {} did not exit within {limit:?}",
            self.dir.display()
        );
    }

    /// Kill the process and wait for it.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// Run dfget against this daemon (the arguments are taken at once, so several runs can be
    /// joined).
    pub fn dfget(&self, args: &[&str]) -> impl Future<Output = Output> + 'static {
        crate::dfget::run(&self.socket(), args)
    }
}

/// A daemon running inside the test; stopped when dropped.
pub struct InProcessDaemon {
    /// Where its proxy listens, when it has one.
    pub proxy: Option<SocketAddr>,
    /// Where its upload server listens.
    pub upload: SocketAddr,
    /// Where its metrics server listens, when `metrics.enable` is set.
    pub metrics: Option<SocketAddr>,
    /// Its config.
    pub config: DfdaemonConfig,
    _dir: Option<tempfile::TempDir>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl InProcessDaemon {
    /// Its proxy's address; panics when the proxy is off (test helper).
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy.expect("the daemon's proxy is on")
    }

    /// `http://` and its proxy's address.
    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.proxy_addr())
    }

    /// Whether any file of task `task` is on its disk.
    pub fn stored(&self, task: &str) -> bool {
        crate::files::has_file_named(&self.config.data_dir, task)
    }

    /// A client that sends everything through its proxy.
    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .proxy(reqwest::Proxy::all(self.proxy_url()).expect("proxy url"))
            .build()
            .expect("client")
    }
}
