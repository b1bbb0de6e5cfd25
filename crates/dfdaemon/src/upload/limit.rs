//! Upload limits: pieces served at once (in total and per remote address, shared fairly across
//! addresses: see `slots`) and bytes per second.

use super::slots::{FairSlots, Slot};
use crate::rate::RateLimiter;
use dashmap::DashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// How much this node uploads at most.
#[derive(Debug, Clone)]
pub struct UploadLimits {
    /// Pieces being sent at once, all children together.
    pub concurrent_total: usize,
    /// Pieces being sent at once to one remote address.
    pub concurrent_per_peer: usize,
    /// Bytes per second, all children together (`None`: unlimited).
    pub rate_limit: Option<u64>,
    /// Bytes per second to one remote address (`None`: unlimited).
    pub per_peer_rate_limit: Option<u64>,
    /// A transfer that makes no progress this long (a child that stopped reading) is dropped,
    /// so it frees its slot for others.
    pub stall_timeout: Duration,
    /// The same, shorter, while another request waits for the slot: a child that reads nothing
    /// must not keep one that somebody else would use.
    pub contended_stall_timeout: Duration,
}

impl Default for UploadLimits {
    fn default() -> Self {
        Self {
            concurrent_total: 128,
            concurrent_per_peer: 16,
            rate_limit: None,
            per_peer_rate_limit: None,
            // The children's own piece timeout (`download.pieceDownloadTimeout`) is 30 s.
            stall_timeout: Duration::from_secs(30),
            // A reading child's socket takes bytes again within TCP's retransmission backoff
            // (0.2 + 0.4 + 0.8 + 1.6 s after four segments lost in a row); reasoned, not measured.
            // Progress is seen when the kernel frees send-buffer space, in chunks.
            contended_stall_timeout: Duration::from_secs(5),
        }
    }
}

pub(crate) struct Limiter {
    slots: FairSlots,
    rate: Option<Arc<RateLimiter>>,
    per_peer_rate: Option<u64>,
    peer_rates: DashMap<IpAddr, Arc<RateLimiter>>,
    pub(crate) stall_timeout: Duration,
    pub(crate) contended_stall_timeout: Duration,
}

impl Limiter {
    pub(crate) fn new(limits: UploadLimits) -> Self {
        Self {
            slots: FairSlots::new(limits.concurrent_total, limits.concurrent_per_peer),
            rate: limits
                .rate_limit
                .filter(|r| *r > 0)
                .map(|r| Arc::new(RateLimiter::new(r))),
            per_peer_rate: limits.per_peer_rate_limit.filter(|r| *r > 0),
            peer_rates: DashMap::new(),
            stall_timeout: limits.stall_timeout,
            contended_stall_timeout: limits.contended_stall_timeout,
        }
    }

    /// Wait for a slot for `ip` (within its own limit and the total, fairly across addresses).
    pub(crate) async fn acquire(&self, ip: IpAddr) -> Slot {
        self.slots.acquire(ip).await
    }

    /// The byte budgets a transfer to `ip` draws from: the total one and `ip`'s own.
    pub(crate) fn rates(&self, ip: IpAddr) -> Vec<Arc<RateLimiter>> {
        let own = self.per_peer_rate.map(|r| {
            self.peer_rates
                .entry(ip)
                .or_insert_with(|| Arc::new(RateLimiter::new(r)))
                .clone()
        });
        self.rate.iter().cloned().chain(own).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::Instant;

    #[tokio::test]
    async fn per_peer_limit_queues_the_next_request() {
        let l = Limiter::new(UploadLimits {
            concurrent_total: 10,
            concurrent_per_peer: 1,
            rate_limit: None,
            per_peer_rate_limit: None,
            ..UploadLimits::default()
        });
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let first = l.acquire(ip).await;
        let blocked = tokio::time::timeout(Duration::from_millis(50), l.acquire(ip)).await;
        assert!(
            blocked.is_err(),
            "a second piece for the same peer must wait"
        );
        let other = tokio::time::timeout(
            Duration::from_millis(50),
            l.acquire("127.0.0.3".parse().unwrap()),
        )
        .await;
        assert!(other.is_ok(), "another peer is not held up");
        drop(first);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), l.acquire(ip))
                .await
                .is_ok()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn per_peer_rate_applies_to_each_address_apart() {
        let l = Limiter::new(UploadLimits {
            per_peer_rate_limit: Some(1000),
            ..UploadLimits::default()
        });
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        assert_eq!(l.rates(a).len(), 1, "no total limit, one per-peer budget");
        let start = Instant::now();
        for r in l.rates(a) {
            r.take(1000).await;
        }
        for r in l.rates(b) {
            r.take(1000).await; // b has a bucket of its own
        }
        assert!(start.elapsed() < Duration::from_millis(1));
        for r in l.rates(a) {
            r.take(1000).await; // a's bucket is empty: a waits a second
        }
        assert!(start.elapsed() >= Duration::from_millis(999));
    }
}
