//! One accept loop for the daemon's TCP servers (upload server, proxy), and their drain.
//!
//! A server accepts on its listener until its [`Drain`] is stopped, spawning each connection on
//! the drain's [`TaskTracker`]. Stopping ends new clients: the listener is closed at once (the
//! kernel refuses new connections), or, for a server given a [`Readmit`] rule, connections
//! from anyone else are closed as they arrive (the upload server lets a child in the middle of a
//! download reconnect). Connections in flight see [`Drain::stopping`] and finish what they are
//! doing: a piece send or a proxied stream runs to its end, a connection idle between requests
//! closes. [`Drain::finish`] waits for them up to a grace period and then cuts the rest (every
//! task spawned through the drain is cut at that point, and the accept loop ends).
//!
//! Models: mini-redis `src/server.rs` + `src/shutdown.rs`, linkerd2-proxy `app/core/src/serve.rs`.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long the loop waits after an accept error that may pass (out of file descriptors, a
/// connection reset before it was accepted) before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Which remote addresses may still connect while a server drains.
pub type Readmit = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// The stop signal and the connections of one server (clones share them).
#[derive(Clone, Debug, Default)]
pub struct Drain {
    /// Stop accepting; idle connections close.
    stop: CancellationToken,
    /// The grace period is over: whatever still runs is dropped.
    cut: CancellationToken,
    tracker: TaskTracker,
}

impl Drain {
    /// A drain that has not stopped.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stop accepting; connections finish their current work (see the module doc).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Whether [`Drain::stop`] was called.
    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Completes once [`Drain::stop`] is called.
    pub async fn stopping(&self) {
        self.stop.cancelled().await
    }

    /// Completes `idle` after the drain stopped: a connection waiting for its next request
    /// gives up then (a client between two requests of one download gets `idle` to send it).
    pub async fn idle_closes(&self, idle: Duration) {
        self.stop.cancelled().await;
        tokio::time::sleep(idle).await;
    }

    /// Run `work` as part of this server: [`Drain::finish`] waits for it, and drops it at the end
    /// of the grace period.
    pub fn spawn<F>(&self, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let cut = self.cut.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = work => {}
                () = cut.cancelled() => {}
            }
        });
    }

    /// How many spawned tasks are still running.
    pub fn in_flight(&self) -> usize {
        self.tracker.len()
    }

    /// Stop (if not yet), wait up to `grace` for the spawned tasks, then cut the rest (and end
    /// the accept loop, if it still readmits). Returns how many were cut.
    pub async fn finish(&self, grace: Duration) -> usize {
        self.stop();
        self.tracker.close();
        let waited = tokio::time::timeout(grace, self.tracker.wait()).await;
        let cut = if waited.is_ok() {
            0
        } else {
            self.tracker.len()
        };
        self.cut.cancel();
        self.tracker.wait().await;
        cut
    }
}

/// Run `served` (a server on `drain`) until it ends or `shutdown` completes; then stop the drain
/// and let the server return (connections in flight go on: nobody waits for them here). An
/// error that broke the listener is logged naming `server`. For callers without a supervisor
/// (tests, embedders); the daemon drains and supervises its servers itself.
pub async fn serve_until(
    server: &'static str,
    drain: Drain,
    served: impl Future<Output = io::Result<()>>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(served);
    let result = tokio::select! {
        r = &mut served => r,
        () = shutdown => {
            drain.stop();
            served.await
        }
    };
    if let Err(e) = result {
        tracing::error!(error = %e, server, "server stopped");
    }
}

/// Accept connections on `listener` until `drain` stops, and run `handle(stream, peer)` for each
/// on the drain (`None`: the handler refused it at once). With `readmit`, the loop goes on while
/// the drain runs, for the addresses it admits only, until [`Drain::finish`] ends. Errors that
/// pass (a reset before the accept, out of descriptors) are logged and retried after a short
/// pause; any other accept error ends the server with it: its listener no longer works.
pub async fn accept_loop<H, F>(
    server: &'static str,
    listener: TcpListener,
    drain: Drain,
    readmit: Option<Readmit>,
    mut handle: H,
) -> io::Result<()>
where
    H: FnMut(TcpStream, SocketAddr) -> Option<F>,
    F: Future<Output = ()> + Send + 'static,
{
    let mut draining = false;
    loop {
        let accepted = tokio::select! {
            biased;
            () = drain.cut.cancelled() => break,
            () = drain.stopping(), if !draining => {
                draining = true;
                tracing::info!(server, in_flight = drain.in_flight(), "stopped accepting; draining");
                if readmit.is_none() {
                    break;
                }
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                if draining && !readmit.as_ref().is_some_and(|r| r(peer.ip())) {
                    continue; // a new client while draining: closed
                }
                let _ = stream.set_nodelay(true);
                if let Some(conn) = handle(stream, peer) {
                    drain.spawn(conn);
                }
            }
            Err(e) if passes(&e) => {
                tracing::warn!(server, error = %e, "accept failed; retrying");
                tokio::select! {
                    () = drain.cut.cancelled() => break,
                    () = drain.stopping(), if !draining => {}
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
            Err(e) => {
                tracing::error!(server, error = %e, "accept failed; the listener no longer works");
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Whether an accept error is about one connection or a passing shortage (the listener still
/// works), as opposed to the listener itself (`EBADF`, `EINVAL`: shut down or not listening).
fn passes(e: &io::Error) -> bool {
    use io::ErrorKind as K;
    if matches!(
        e.kind(),
        K::ConnectionAborted
            | K::ConnectionReset
            | K::ConnectionRefused
            | K::Interrupted
            | K::WouldBlock
            | K::TimedOut
            | K::OutOfMemory
    ) {
        return true;
    }
    // Also about one connection or a shortage, not the listener: EPERM (a firewall refused the
    // connection), ENOMEM, ENFILE, EMFILE, and the errors of a pending connection that Linux
    // passes on to accept(2): EPROTO, ENETDOWN, ENOPROTOOPT, EHOSTDOWN, ENONET, EHOSTUNREACH,
    // EOPNOTSUPP.
    matches!(
        e.raw_os_error(),
        Some(1 | 12 | 23 | 24 | 71 | 100 | 92 | 112 | 64 | 113 | 105)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_server() -> (SocketAddr, Drain, tokio::task::JoinHandle<io::Result<()>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let drain = Drain::new();
        let server = tokio::spawn(accept_loop(
            "echo",
            listener,
            drain.clone(),
            None,
            |mut s, _| {
                Some(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                })
            },
        ));
        (addr, drain, server)
    }

    #[tokio::test]
    async fn a_connection_in_flight_outlives_the_stop_and_new_ones_are_refused() {
        let (addr, drain, server) = echo_server().await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"one").await.unwrap();
        let mut got = [0u8; 3];
        c.read_exact(&mut got).await.unwrap();
        drain.stop();
        assert!(server.await.unwrap().is_ok());
        assert!(TcpStream::connect(addr).await.is_err());
        // The open connection still echoes after the stop.
        c.write_all(b"two").await.unwrap();
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"two");
        drop(c);
        assert_eq!(drain.finish(Duration::from_secs(3600)).await, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn what_outlasts_the_grace_period_is_cut_and_counted() {
        let (addr, drain, server) = echo_server().await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"x").await.unwrap();
        let mut got = [0u8; 1];
        c.read_exact(&mut got).await.unwrap();
        drain.spawn(std::future::pending());
        assert_eq!(drain.finish(Duration::from_secs(5)).await, 2);
        assert!(server.await.unwrap().is_ok());
        // The cut connection is closed.
        assert_eq!(c.read(&mut got).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn while_draining_only_readmitted_addresses_get_in_until_the_end() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let drain = Drain::new();
        let readmit: Readmit = Arc::new(|ip: IpAddr| ip.is_loopback());
        let server = tokio::spawn(accept_loop(
            "t",
            listener,
            drain.clone(),
            Some(readmit),
            |mut s, _| {
                Some(async move {
                    let _ = s.write_all(b"hi").await;
                })
            },
        ));
        drain.stop();
        // 127.0.0.1 is readmitted: served while the drain runs.
        let mut c = TcpStream::connect(addr).await.unwrap();
        let mut got = [0u8; 2];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hi");
        assert_eq!(drain.finish(Duration::from_secs(3600)).await, 0);
        assert!(server.await.unwrap().is_ok());
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn a_listener_shut_down_under_the_loop_ends_it_with_the_error() {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std_listener.try_clone().unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(std_listener).unwrap();
        let drain = Drain::new();
        let server = tokio::spawn(accept_loop("t", listener, drain, None, |_, _| {
            None::<std::future::Ready<()>>
        }));
        rustix::net::shutdown(&other, rustix::net::Shutdown::Read).unwrap();
        let err = server.await.unwrap().unwrap_err();
        assert!(!passes(&err), "{err}");
    }

    #[test]
    fn transient_errors_pass_and_listener_errors_do_not() {
        assert!(passes(&io::Error::from_raw_os_error(24)));
        assert!(passes(&io::ErrorKind::ConnectionAborted.into()));
        assert!(!passes(&io::Error::from_raw_os_error(9)));
        assert!(!passes(&io::Error::from_raw_os_error(22)));
    }
}
