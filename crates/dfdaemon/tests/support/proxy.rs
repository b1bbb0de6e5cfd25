//! A daemon with its proxy, started in-process on 127.0.0.1 for the proxy tests, and raw-socket
//! helpers to talk to it.
#![allow(dead_code)] // each test file uses its own subset

use dfdaemon::config::DfdaemonConfig;
use dragonfly_common::task_id::TaskId;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The test origins run on 127.0.0.1 (and `localhost`): the proxy reaches loopback hosts only
/// when they are listed, as a user would list a registry on the node itself.
pub const LOCAL: &str = "  whiteList:\n    - host: 127.0.0.1\n    - host: localhost\n";

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A daemon running in this process; stopped on drop.
pub struct Daemon {
    /// The proxy listener.
    pub proxy: SocketAddr,
    /// The upload server.
    pub upload: SocketAddr,
    pub cfg: DfdaemonConfig,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Daemon {
    pub fn url(&self) -> String {
        format!("http://{}", self.proxy)
    }

    /// A client that sends everything through the proxy.
    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .proxy(reqwest::Proxy::all(self.url()).expect("proxy url"))
            .build()
            .expect("client")
    }

    /// Whether any file of this task is on disk.
    pub fn stored(&self, id: &TaskId) -> bool {
        find_file(&self.cfg.data_dir, id.as_str())
    }
}

fn find_file(dir: &std::path::Path, name: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            find_file(&p, name)
        } else {
            p.file_name().is_some_and(|n| n.to_string_lossy() == name)
        }
    })
}

/// A daemon with `extra` YAML under `proxy:`.
pub async fn daemon(extra: &str) -> Daemon {
    daemon_with("", extra).await
}

/// A daemon with `download` YAML under `download:` and `extra` YAML under `proxy:`.
pub async fn daemon_with(download: &str, extra: &str) -> Daemon {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let d = dir.path().display();
    let yaml = format!(
        "dataDir: {d}/data\nlogDir: {d}/log\nkeepStorage: true\n\
         download:\n  unixListen:\n    socket: {d}/sock\n{download}\
         upload:\n  tcpListen:\n    listen: 127.0.0.1\n    port: {up}\n\
         proxy:\n  tcpListen:\n    listen: 127.0.0.1\n    port: {port}\n{extra}",
        up = free_port(),
    );
    let cfg = DfdaemonConfig::from_yaml(&yaml, "test.yaml")
        .unwrap_or_else(|e| panic!("config: {e}\n{yaml}"))
        .value;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (bound, run) = dfdaemon::daemon::start(cfg.clone(), async {
        let _ = rx.await;
    })
    .await
    .expect("daemon starts");
    tokio::spawn(run);
    Daemon {
        proxy: bound.proxy.expect("proxy is on"),
        upload: bound.upload,
        cfg,
        _dir: dir,
        _stop: tx,
    }
}

/// The response head `s` sends next (up to its blank line).
pub async fn read_head(s: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut b).await {
            Ok(1) => buf.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Send `request` on a new connection and read the answer until the proxy closes it (5 s at
/// most).
pub async fn raw(proxy: SocketAddr, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect");
    let _ = s.write_all(request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one HTTP/1.1 response with a content-length body from `s`: (head, body).
pub async fn read_response(s: &mut tokio::net::TcpStream) -> (String, Vec<u8>) {
    let head = read_head(s).await;
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().expect("length"))
        })
        .unwrap_or_else(|| panic!("no content-length in {head}"));
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.expect("body");
    (head, body)
}
