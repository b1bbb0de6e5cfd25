//! Byte rate limits: a token bucket, and the download limits built on it
//! (`download.totalRateLimit` for the whole daemon, `download.perPeerRateLimit` for each task).
//! The upload server's limits ([`crate::upload::UploadLimits`]) use the same bucket.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// A token bucket of bytes, one second deep.
pub(crate) struct RateLimiter {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub(crate) fn new(bytes_per_sec: u64) -> Self {
        Self {
            rate: bytes_per_sec as f64,
            state: Mutex::new((bytes_per_sec as f64, Instant::now())),
        }
    }

    /// Wait until `n` bytes may be sent. Callers queue on the lock, so they are served in turn.
    pub(crate) async fn take(&self, n: u64) {
        let mut s = self.state.lock().await;
        let now = Instant::now();
        s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.rate).min(self.rate);
        s.1 = now;
        s.0 -= n as f64;
        if s.0 < 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(-s.0 / self.rate)).await;
        }
    }
}

/// How fast this daemon downloads (from parents and the source). Clones share the total
/// budget; [`DownloadLimits::for_task`] makes each task's own. The default is unlimited.
#[derive(Clone, Default)]
pub struct DownloadLimits {
    total: Option<Arc<RateLimiter>>,
    total_rate: Option<u64>,
    per_task: Option<u64>,
}

impl DownloadLimits {
    /// Limits of `total` bytes per second for all tasks together and `per_task` for each
    /// (`None` or 0: no limit).
    pub fn new(total: Option<u64>, per_task: Option<u64>) -> Self {
        let total_rate = total.filter(|r| *r > 0);
        Self {
            total: total_rate.map(|r| Arc::new(RateLimiter::new(r))),
            total_rate,
            per_task: per_task.filter(|r| *r > 0),
        }
    }

    /// The budgets one task draws from: the shared total and a bucket of its own.
    pub fn for_task(&self) -> TaskRate {
        TaskRate {
            total: self.total.clone(),
            own: self.per_task.map(|r| Arc::new(RateLimiter::new(r))),
        }
    }
}

impl std::fmt::Debug for DownloadLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownloadLimits")
            .field("total", &self.total_rate)
            .field("per_task", &self.per_task)
            .finish()
    }
}

/// The byte budgets of one task's download. Clones share them.
#[derive(Clone, Default)]
pub struct TaskRate {
    total: Option<Arc<RateLimiter>>,
    own: Option<Arc<RateLimiter>>,
}

impl TaskRate {
    /// Wait until `n` more bytes may be read: the task's own budget first, then the total.
    pub async fn acquire(&self, n: u64) {
        // Own budget first: a task over its own cap does not hold the shared lock meanwhile.
        if let Some(own) = &self.own {
            own.take(n).await;
        }
        if let Some(total) = &self.total {
            total.take(n).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: u64 = 1000;

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_spaces_out_bytes() {
        let r = RateLimiter::new(K);
        let start = Instant::now();
        r.take(K).await; // the bucket starts full
        assert!(start.elapsed() < Duration::from_millis(1));
        r.take(500).await;
        r.take(500).await;
        let e = start.elapsed();
        assert!(
            e >= Duration::from_millis(999) && e < Duration::from_millis(1100),
            "{e:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_by_default() {
        let t = DownloadLimits::default().for_task();
        let start = Instant::now();
        t.acquire(u64::MAX / 2).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        let t = DownloadLimits::new(Some(0), Some(0)).for_task();
        t.acquire(u64::MAX / 2).await;
        assert_eq!(start.elapsed(), Duration::ZERO, "0 means no limit");
    }

    #[tokio::test(start_paused = true)]
    async fn per_task_budgets_are_apart() {
        let l = DownloadLimits::new(None, Some(K));
        let (a, b) = (l.for_task(), l.for_task());
        let start = Instant::now();
        a.acquire(K).await;
        b.acquire(K).await; // b's bucket is its own, still full
        assert!(start.elapsed() < Duration::from_millis(1));
        a.clone().acquire(K).await; // a clone shares a's empty bucket
        assert!(start.elapsed() >= Duration::from_millis(999));
    }

    #[tokio::test(start_paused = true)]
    async fn the_total_is_shared_by_every_task() {
        let l = DownloadLimits::new(Some(K), Some(10 * K));
        let (a, b) = (l.for_task(), l.clone().for_task());
        let start = Instant::now();
        a.acquire(K).await;
        b.acquire(K).await; // the total bucket is empty after a
        assert!(start.elapsed() >= Duration::from_millis(999));
    }
}
