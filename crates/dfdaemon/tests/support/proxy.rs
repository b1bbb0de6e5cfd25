//! A daemon with its proxy, started in-process on 127.0.0.1 for the proxy tests (testkit's
//! builder), and raw-socket helpers to talk to it.
#![allow(dead_code)] // each test file uses its own subset

use dfdaemon::config::DfdaemonConfig;
use std::net::SocketAddr;
use std::time::Duration;
use testkit::daemon::{DaemonProcess, InProcessDaemon};
use testkit::net::free_port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The test origins run on 127.0.0.1 (and `localhost`): the proxy reaches loopback hosts only
/// when they are listed, as a user would list a registry on the node itself.
pub const LOCAL: &str = "  whiteList:\n    - host: 127.0.0.1\n    - host: localhost\n";

/// A daemon in this process with its proxy on 127.0.0.1 and `section` YAML under `proxy:`.
pub async fn daemon(section: &str) -> InProcessDaemon {
    daemon_with(|_| {}, section).await
}

/// [`daemon`] with `edit` applied to the rest of its config.
pub async fn daemon_with(edit: impl FnOnce(&mut DfdaemonConfig), section: &str) -> InProcessDaemon {
    DaemonProcess::temp()
        .proxy(free_port(), section)
        .config(|c| {
            c.keep_storage = true;
            edit(c);
        })
        .start_in_process()
        .await
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
