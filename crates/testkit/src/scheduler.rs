//! The workspace's `scheduler` binary as a child process, for tests that need a real one,
//! configured through the real [`SchedulerConfig`] (written with [`SchedulerConfig::to_yaml`]);
//! and [`InProcessScheduler`], the scheduler's server inside the test.

use crate::bins::bin;
use crate::net::free_port;
use crate::process::KillOnDrop;
use dragonfly_common::config::Port;
use dragonfly_proto::SchedulerClient;
use scheduler::SchedulerState;
use scheduler::config::SchedulerConfig;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// A scheduler's config and how to run it. Defaults: listening on 127.0.0.1 on a free port,
/// its metrics server on 127.0.0.1 on another (metrics are on by default: schedulers of one
/// test must not share 8003), logs in the directory, every other key at the scheduler's own
/// default.
pub struct SchedulerBuilder {
    dir: PathBuf,
    bin: Option<PathBuf>,
    wrapper: Vec<String>,
    config: SchedulerConfig,
}

impl SchedulerBuilder {
    /// Listen on 127.0.0.1:`port` (a restarted scheduler keeps its port, so the daemons that
    /// know it reach the new one).
    pub fn port(mut self, port: u16) -> Self {
        self.config.server.port =
            Port::new(port).unwrap_or_else(|| panic!("{port} is not a port for a scheduler"));
        self
    }

    /// `seedPeer.enable`: ask seed peers to fetch new tasks first.
    pub fn seed_peers(mut self, on: bool) -> Self {
        self.config.seed_peer.enable = on;
        self
    }

    /// Change the config.
    pub fn config(mut self, edit: impl FnOnce(&mut SchedulerConfig)) -> Self {
        edit(&mut self.config);
        self
    }

    /// Run this binary instead of the workspace's `scheduler`.
    pub fn bin(mut self, bin: &Path) -> Self {
        self.bin = Some(bin.to_path_buf());
        self
    }

    /// Run it through `wrapper`, a command that runs the rest of its command line in its own
    /// process (`["prlimit", "--nofile=256:4096"]`), so [`SchedulerProcess::pid`] is the
    /// scheduler's.
    pub fn wrapped(mut self, wrapper: &[&str]) -> Self {
        self.wrapper = wrapper.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Write `<dir>/scheduler.yaml`, start the process (its stderr in `<dir>/stderr.log`, at
    /// `RUST_LOG=info`) and wait until it listens. Panics with its stderr when it does not
    /// (test helper).
    pub fn start(self) -> SchedulerProcess {
        let bin = self.bin.unwrap_or_else(|| bin("scheduler"));
        assert!(
            bin.exists(),
            "{} is missing: build the workspace (`cargo test --workspace` or `make test`)",
            bin.display()
        );
        std::fs::create_dir_all(&self.dir)
            .unwrap_or_else(|e| panic!("creating {}: {e}", self.dir.display()));
        let cfg = self.dir.join("scheduler.yaml");
        let yaml = self
            .config
            .to_yaml()
            .unwrap_or_else(|e| panic!("serializing the scheduler config: {e}"));
        std::fs::write(&cfg, yaml).unwrap_or_else(|e| panic!("writing {}: {e}", cfg.display()));
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let stderr = std::fs::File::create(self.dir.join("stderr.log")).expect("stderr.log");
        let child = command
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} ({:?}): {e}", bin.display(), self.wrapper));
        let metrics = self.config.metrics.enable.then(|| {
            let m = &self.config.metrics.addr;
            let ip: IpAddr = m
                .host()
                .parse()
                .unwrap_or_else(|e| panic!("metrics.addr {m}: the test harness wants an IP: {e}"));
            SocketAddr::new(ip, m.port().get())
        });
        let s = SchedulerProcess {
            child: KillOnDrop(child),
            port: self.config.server.port.get(),
            metrics,
            dir: self.dir,
        };
        for _ in 0..600 {
            if std::net::TcpStream::connect(("127.0.0.1", s.port)).is_ok() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "the scheduler did not listen on 127.0.0.1:{}: {}",
            s.port,
            s.log()
        );
    }
}

/// A scheduler process; killed when dropped.
pub struct SchedulerProcess {
    child: KillOnDrop,
    port: u16,
    metrics: Option<SocketAddr>,
    dir: PathBuf,
}

impl SchedulerProcess {
    /// A scheduler whose config and logs live in `dir`.
    pub fn builder(dir: &Path) -> SchedulerBuilder {
        let mut config = SchedulerConfig::default();
        config.server.listen_ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        config.server.log_dir = dir.to_path_buf();
        config.metrics.addr = format!("127.0.0.1:{}", free_port())
            .parse()
            .unwrap_or_else(|e| panic!("metrics.addr: {e}"));
        SchedulerBuilder {
            dir: dir.to_path_buf(),
            bin: None,
            wrapper: Vec::new(),
            config,
        }
        .port(free_port())
    }

    /// A scheduler with the defaults of [`SchedulerProcess::builder`].
    pub fn start(dir: &Path) -> Self {
        Self::builder(dir).start()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The port it serves gRPC on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`, as a daemon's `scheduler.netAddrs` names it.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Where its metrics server (`/metrics`, `/healthy`) listens; panics when `metrics.enable`
    /// is off (test helper).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics.expect("the scheduler's metrics are off")
    }

    /// What it wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// Whether it knows task `task` (its StatTask over gRPC).
    pub async fn knows(&self, task: impl AsRef<str>) -> bool {
        let mut c = dragonfly_proto::SchedulerClient::connect(format!("http://{}", self.addr()))
            .await
            .unwrap_or_else(|e| panic!("connecting to the scheduler at {}: {e}", self.addr()));
        c.stat_task(dragonfly_proto::scheduler::v1::StatTaskRequest {
            task_id: task.as_ref().to_string(),
        })
        .await
        .is_ok()
    }

    /// Kill the process and wait for it.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// Kill it (if it still runs) and return a builder for a new scheduler in `dir` on the same
    /// port: a restart, as far as the daemons that know it can tell.
    pub fn replace(mut self, dir: &Path) -> SchedulerBuilder {
        self.kill();
        Self::builder(dir).port(self.port)
    }
}

/// A scheduler serving gRPC inside the test on 127.0.0.1 (on a port the OS picked: the
/// listener is bound first and handed over), with a client connected to it.
pub struct InProcessScheduler {
    /// Its state, to look into.
    pub state: Arc<SchedulerState>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// A client connected to it.
    pub client: SchedulerClient<Channel>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl InProcessScheduler {
    /// Serve a scheduler with `config`.
    pub async fn start(config: SchedulerConfig) -> Self {
        Self::with_state(SchedulerState::new(config)).await
    }

    /// Serve a scheduler with `state` (e.g. one with a recording seed trigger).
    pub async fn with_state(state: SchedulerState) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind 127.0.0.1:0: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local addr: {e}"));
        let state = Arc::new(state);
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(scheduler::serve(listener, state.clone(), async move {
            let _ = stopped.await;
        }));
        let client = SchedulerClient::connect(format!("http://{addr}"))
            .await
            .unwrap_or_else(|e| panic!("connecting to the scheduler at {addr}: {e}"));
        InProcessScheduler {
            state,
            addr,
            client,
            stop: Some(stop),
            server: Some(server),
        }
    }

    /// Tell it to stop, and return its server task (to see how long stopping takes).
    pub fn stop(&mut self) -> JoinHandle<Result<(), tonic::transport::Error>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.server.take().expect("stopped once")
    }
}

impl Drop for InProcessScheduler {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
