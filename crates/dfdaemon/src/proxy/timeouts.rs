//! How long a proxy connection may wait for its client (nginx's `client_header_timeout` and
//! `keepalive_timeout`, Go's `ReadHeaderTimeout` and `IdleTimeout`):
//! - `proxy.readHeaderTimeout`: a request head must arrive whole within this long of its first
//!   byte, and a new connection must bring its first request head within this long;
//! - `proxy.idleTimeout`: between requests of a keep-alive connection, no more than this.
//!
//! While a request is being served (its body read, its response written, however long a P2P
//! download takes) neither applies. A [`Watch`] follows one connection through these phases for
//! both the sendfile path and hyper; [`Watched`] tells it when bytes arrive.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The two limits; `None`: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Timeouts {
    pub(crate) header: Option<Duration>,
    pub(crate) idle: Option<Duration>,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// No request in progress and no byte of the next one yet.
    Waiting { since: Instant, first: bool },
    /// Bytes of a request head have arrived since `since`.
    Head { since: Instant },
    /// Requests in progress.
    Busy { requests: usize },
}

/// The phase of one connection and its deadline.
#[derive(Debug)]
pub(crate) struct Watch {
    t: Timeouts,
    phase: Mutex<Phase>,
    changed: Notify,
}

/// A request in progress; the connection is waiting again once every one is dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Watch>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.set(|p| match p {
            Phase::Busy { requests } if requests > 1 => Phase::Busy {
                requests: requests - 1,
            },
            _ => Phase::Waiting {
                since: Instant::now(),
                first: false,
            },
        });
    }
}

impl Watch {
    /// A new connection's watch: waiting for its first request head.
    pub(crate) fn new(t: Timeouts) -> Arc<Self> {
        Arc::new(Self {
            t,
            phase: Mutex::new(Phase::Waiting {
                since: Instant::now(),
                first: true,
            }),
            changed: Notify::new(),
        })
    }

    fn set(&self, f: impl FnOnce(Phase) -> Phase) {
        let mut p = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        *p = f(*p);
        drop(p);
        self.changed.notify_waiters();
    }

    /// Bytes arrived: a waiting connection now has a request head under way.
    pub(crate) fn bytes_arrived(&self) {
        let mut p = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        if let Phase::Waiting { .. } = *p {
            *p = Phase::Head {
                since: Instant::now(),
            };
            drop(p);
            self.changed.notify_waiters();
        }
    }

    /// A request head arrived whole; the connection is busy until the returned guard drops.
    pub(crate) fn request(self: &Arc<Self>) -> InFlight {
        self.set(|p| match p {
            Phase::Busy { requests } => Phase::Busy {
                requests: requests + 1,
            },
            _ => Phase::Busy { requests: 1 },
        });
        InFlight(self.clone())
    }

    /// When the connection is to be closed if nothing changes, and why.
    fn deadline(&self) -> Option<(Instant, &'static str)> {
        let p = *self.phase.lock().unwrap_or_else(|e| e.into_inner());
        match p {
            Phase::Waiting { since, first: true } => self
                .t
                .header
                .map(|d| (since + d, "no request head within proxy.readHeaderTimeout")),
            Phase::Waiting { since, .. } => self
                .t
                .idle
                .map(|d| (since + d, "idle for proxy.idleTimeout")),
            Phase::Head { since } => self.t.header.map(|d| {
                (
                    since + d,
                    "request head not complete within proxy.readHeaderTimeout",
                )
            }),
            Phase::Busy { .. } => None,
        }
    }

    /// Resolves, with the reason, once a deadline passes.
    pub(crate) async fn expired(&self) -> &'static str {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.deadline() {
                Some((at, why)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {
                            if self.deadline().is_some_and(|(d, _)| d <= Instant::now()) {
                                return why;
                            }
                        }
                        _ = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

/// A response body that keeps its request [`InFlight`] until it is done or dropped.
#[derive(Debug)]
pub(crate) struct Tracked<B> {
    inner: B,
    _busy: InFlight,
}

impl<B> Tracked<B> {
    pub(crate) fn new(inner: B, busy: InFlight) -> Self {
        Self { inner, _busy: busy }
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    // Forwarded, so a known length still goes out as `Content-Length`.
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A connection that tells its [`Watch`] when bytes arrive.
#[derive(Debug)]
pub(crate) struct Watched<T> {
    inner: T,
    watch: Arc<Watch>,
}

impl<T> Watched<T> {
    pub(crate) fn new(inner: T, watch: Arc<Watch>) -> Self {
        Self { inner, watch }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.watch.bytes_arrived();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    write_through_inner!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(header: u64, idle: u64) -> Arc<Watch> {
        Watch::new(Timeouts {
            header: Some(Duration::from_secs(header)),
            idle: Some(Duration::from_secs(idle)),
        })
    }

    /// Seconds until `w` expires (paused time), or None if it did not within 1000 s.
    async fn expires_in(w: &Arc<Watch>) -> Option<(u64, &'static str)> {
        let start = Instant::now();
        let why = tokio::time::timeout(Duration::from_secs(1000), w.expired())
            .await
            .ok()?;
        Some((start.elapsed().as_secs(), why))
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_gets_the_header_timeout() {
        let w = watch(60, 75);
        let (secs, why) = expires_in(&w).await.unwrap();
        assert_eq!(secs, 60);
        assert!(why.contains("readHeaderTimeout"), "{why}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_must_complete_within_the_header_timeout_of_its_first_byte() {
        let w = watch(60, 75);
        tokio::time::sleep(Duration::from_secs(30)).await;
        w.bytes_arrived();
        // More bytes do not extend it.
        tokio::time::sleep(Duration::from_secs(20)).await;
        w.bytes_arrived();
        let (secs, why) = expires_in(&w).await.unwrap();
        assert_eq!(secs, 40);
        assert!(why.contains("not complete"), "{why}");
    }

    #[tokio::test(start_paused = true)]
    async fn busy_connections_never_expire_and_idle_ones_do_after_idle_timeout() {
        let w = watch(60, 75);
        w.bytes_arrived();
        let a = w.request();
        let b = w.request();
        let waiter = {
            let w = w.clone();
            tokio::spawn(async move { expires_in(&w).await })
        };
        tokio::time::sleep(Duration::from_secs(500)).await;
        drop(a);
        tokio::time::sleep(Duration::from_secs(400)).await;
        assert!(!waiter.is_finished(), "one request still in progress");
        drop(b);
        let (secs, why) = waiter.await.unwrap().unwrap();
        assert_eq!(secs, 900 + 75);
        assert!(why.contains("idleTimeout"), "{why}");
    }

    #[tokio::test(start_paused = true)]
    async fn no_limits_no_expiry() {
        let w = Watch::new(Timeouts::default());
        assert!(expires_in(&w).await.is_none());
    }
}
