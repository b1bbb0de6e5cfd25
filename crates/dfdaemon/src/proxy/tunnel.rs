//! The byte copy of a CONNECT tunnel, with bounded memory.
//!
//! Each direction copies through a buffer of [`MIN_BUFFER`] that doubles while reads fill it,
//! up to [`MAX_BUFFER`], and falls back once nothing came for [`SHRINK_AFTER`]. What buffers
//! hold above
//! [`MIN_BUFFER`] comes from one budget shared by every tunnel ([`GROWTH_BUDGET`]), so a crowd
//! of tunnels whose clients do not read (a full buffer waits on each) holds at most that much
//! more; a tunnel that gets no budget still works, with small buffers. A big buffer is what
//! makes bulk transfers cheap: at tokio's default 8 KiB a tunnelled 448 MiB image pull took
//! 0.31 CPU s, at 256 KiB 0.21.

use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Buffer of a direction at first and when its flow is slow.
pub(crate) const MIN_BUFFER: usize = 16 * 1024;
/// Largest buffer of a direction.
pub(crate) const MAX_BUFFER: usize = 256 * 1024;
/// Bytes above [`MIN_BUFFER`] all tunnels' buffers may hold together: 256 directions at
/// [`MAX_BUFFER`], far more bulk transfers than a node runs at once.
pub(crate) const GROWTH_BUDGET: usize = 64 << 20;
/// A direction that waited this long for bytes gives its big buffer back.
const SHRINK_AFTER: Duration = Duration::from_secs(1);

/// The budget of buffer growth, in KiB permits.
#[derive(Debug, Clone)]
pub(crate) struct Budget(Arc<Semaphore>);

impl Budget {
    /// A budget of `bytes`.
    pub(crate) fn new(bytes: usize) -> Self {
        Self(Arc::new(Semaphore::new(bytes / 1024)))
    }
}

/// Copy both ways between `a` and `b` until both directions ended; a direction that ends
/// (EOF) shuts down the write side of the other end, the other keeps going (half-close). The
/// first error ends both. Returns the bytes copied `a` to `b` and `b` to `a`.
pub(crate) async fn copy<A, B>(a: A, b: B, budget: &Budget) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite,
    B: AsyncRead + AsyncWrite,
{
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    tokio::try_join!(pump(ar, bw, budget.clone()), pump(br, aw, budget.clone()))
}

/// One direction.
async fn pump<R, W>(mut r: R, mut w: W, budget: Budget) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf: Vec<u8> = Vec::with_capacity(MIN_BUFFER);
    // The budget this direction's buffer holds above MIN_BUFFER.
    let mut grant: Option<OwnedSemaphorePermit> = None;
    let mut total = 0u64;
    loop {
        buf.clear();
        let n = if buf.capacity() > MIN_BUFFER {
            // Reading into the big buffer is cancel-safe: bytes only land when the read is done.
            match tokio::time::timeout(SHRINK_AFTER, r.read_buf(&mut buf)).await {
                Ok(n) => n?,
                Err(_idle) => {
                    buf = Vec::with_capacity(MIN_BUFFER);
                    grant = None;
                    r.read_buf(&mut buf).await?
                }
            }
        } else {
            r.read_buf(&mut buf).await?
        };
        if n == 0 {
            w.shutdown().await?;
            return Ok(total);
        }
        w.write_all(&buf).await?;
        total += n as u64;
        let cap = buf.capacity();
        if n == cap && cap < MAX_BUFFER {
            let next = (cap * 2).min(MAX_BUFFER);
            let held = grant.as_ref().map_or(0, |g| g.num_permits());
            let more = ((next - MIN_BUFFER) / 1024).saturating_sub(held);
            if let Ok(p) = budget.0.clone().try_acquire_many_owned(more as u32) {
                match &mut grant {
                    Some(g) => g.merge(p),
                    None => grant = Some(p),
                }
                buf = Vec::with_capacity(next);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn roundtrip(budget: &Budget, size: usize) {
        let (client, proxy_side) = tokio::io::duplex(64 * 1024);
        let (upstream_side, server) = tokio::io::duplex(64 * 1024);
        let b = budget.clone();
        let tunnel = tokio::spawn(async move { copy(proxy_side, upstream_side, &b).await });
        // The server echoes everything back, then closes after the client did.
        let echo = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(server);
            let n = tokio::io::copy(&mut r, &mut w).await.unwrap();
            w.shutdown().await.unwrap();
            n
        });
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let (mut cr, mut cw) = tokio::io::split(client);
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            cw.write_all(&sent).await.unwrap();
            cw.shutdown().await.unwrap();
        });
        let mut back = Vec::new();
        cr.read_to_end(&mut back).await.unwrap();
        writer.await.unwrap();
        assert!(back == data, "the bytes came back unchanged");
        assert_eq!(echo.await.unwrap(), size as u64);
        assert_eq!(
            tunnel.await.unwrap().unwrap(),
            (size as u64, size as u64),
            "both directions counted"
        );
    }

    #[tokio::test]
    async fn bytes_go_both_ways_with_and_without_budget() {
        let budget = Budget::new(GROWTH_BUDGET);
        roundtrip(&budget, 5 << 20).await;
        assert_eq!(
            budget.0.available_permits(),
            GROWTH_BUDGET / 1024,
            "the budget is back after the tunnel"
        );
        roundtrip(&Budget::new(0), 3 << 20).await;
        roundtrip(&budget, 0).await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_direction_gives_its_big_buffer_back() {
        let budget = Budget::new(GROWTH_BUDGET);
        let (mut client, proxy_side) = tokio::io::duplex(1 << 20);
        let (upstream_side, mut server) = tokio::io::duplex(1 << 20);
        let b = budget.clone();
        let _tunnel = tokio::spawn(async move { copy(proxy_side, upstream_side, &b).await });
        // A burst: the direction grows.
        server.write_all(&vec![1u8; 1 << 20]).await.unwrap();
        let mut got = vec![0u8; 1 << 20];
        client.read_exact(&mut got).await.unwrap();
        let full = GROWTH_BUDGET / 1024;
        assert!(budget.0.available_permits() < full, "grew during the burst");
        // Then nothing: the budget comes back.
        tokio::time::sleep(SHRINK_AFTER * 2).await;
        assert_eq!(budget.0.available_permits(), full);
    }

    #[tokio::test]
    async fn a_stalled_reader_holds_at_most_the_budget() {
        // Upstream sends a lot, the client never reads: the direction grows only as far as
        // the (tiny) budget allows (16 + 32 KiB: a 64 KiB buffer), then waits with it.
        let budget = Budget::new(48 * 1024);
        let (_client, proxy_side) = tokio::io::duplex(512 * 1024);
        let (upstream_side, mut server) = tokio::io::duplex(1 << 20);
        let b = budget.clone();
        let tunnel = tokio::spawn(async move { copy(proxy_side, upstream_side, &b).await });
        server.write_all(&vec![1u8; 1 << 20]).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!tunnel.is_finished());
        assert_eq!(budget.0.available_permits(), 0, "took the whole budget");
        tunnel.abort();
        let _ = tunnel.await;
        assert_eq!(budget.0.available_permits(), 48, "and gave it back");
    }
}
