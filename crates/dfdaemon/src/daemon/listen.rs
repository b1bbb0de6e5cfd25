//! The daemon's listeners: bound by the caller (tests bind port 0 first), or from the config.

use super::DaemonError;
use crate::config::DfdaemonConfig;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use tokio::net::{TcpListener, UnixListener};

/// Listeners bound before [`super::start_with`]; each one left `None` is bound from the config
/// as [`super::start`] does. A listener given here wins over its config key
/// (`upload.tcpListen`, `proxy.tcpListen`, `metrics.tcpListen`, `download.unixListen.socket`);
/// the proxy and the metrics server still run only when the config enables them.
#[derive(Debug, Default)]
pub struct Listeners {
    /// The upload server's.
    pub upload: Option<TcpListener>,
    /// The proxy's.
    pub proxy: Option<TcpListener>,
    /// The metrics server's (`/metrics`, `/healthy`).
    pub metrics: Option<TcpListener>,
    /// The local download socket's (bound to a path: the daemon removes it on exit).
    pub socket: Option<UnixListener>,
}

/// `listener` and its address, or the first port of the configured range that binds.
pub(super) async fn tcp(
    given: Option<TcpListener>,
    what: &'static str,
    ip: IpAddr,
    ports: &dragonfly_common::config::PortRange,
) -> Result<(TcpListener, SocketAddr), DaemonError> {
    if let Some(l) = given {
        let addr = l.local_addr().map_err(|e| DaemonError::Listen {
            what,
            addr: "the given listener".into(),
            reason: e.to_string(),
        })?;
        return Ok((l, addr));
    }
    let mut last_err = String::new();
    for port in ports.ports() {
        match TcpListener::bind((ip, port)).await {
            Ok(l) => {
                let addr = l.local_addr().map_err(|e| DaemonError::Listen {
                    what,
                    addr: format!("{ip}:{port}"),
                    reason: e.to_string(),
                })?;
                return Ok((l, addr));
            }
            // One port: the address is already in the message; a range: say which was last.
            Err(e) if ports.ports().count() == 1 => last_err = e.to_string(),
            Err(e) => last_err = format!("last tried {ip}:{port}: {e}"),
        }
    }
    Err(DaemonError::Listen {
        what,
        addr: format!("{ip}:{ports}"),
        reason: last_err,
    })
}

/// The local download socket and its path: `given`, or bound at `download.unixListen.socket`
/// (a socket file left by a killed daemon is replaced; a live daemon's is not).
pub(super) fn unix(
    given: Option<UnixListener>,
    cfg: &DfdaemonConfig,
) -> Result<(UnixListener, PathBuf), DaemonError> {
    const WHAT: &str = "download.unixListen.socket";
    if let Some(l) = given {
        let path = l
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Path::to_path_buf))
            .ok_or_else(|| DaemonError::Listen {
                what: WHAT,
                addr: "the given listener".into(),
                reason: "it is not bound to a path".into(),
            })?;
        return Ok((l, path));
    }
    let socket = cfg.download.unix_listen.socket.clone();
    let listen_err = |e: std::io::Error| DaemonError::Listen {
        what: WHAT,
        addr: socket.display().to_string(),
        reason: e.to_string(),
    };
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent).map_err(listen_err)?;
    }
    if socket.exists() {
        // A socket left by a daemon that was killed; a live one would answer.
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            return Err(listen_err(std::io::Error::other(
                "another daemon is listening there",
            )));
        }
        std::fs::remove_file(&socket).map_err(listen_err)?;
    }
    let unix = UnixListener::bind(&socket).map_err(listen_err)?;
    Ok((unix, socket))
}
