//! A host: one dfdaemon as last announced.

use tokio::time::Instant;

/// One dfdaemon (normal or seed) as last announced with `AnnounceHost`.
#[derive(Debug, Clone)]
pub struct Host {
    /// What the host announced: id, ip, ports, idc, location, type, upload limits and counts.
    pub info: dragonfly_proto::Host,
    /// When it last announced itself (hosts silent for `scheduler.gc.hostTTL` are dropped).
    pub announced_at: Instant,
    /// Silence after which the host is dropped, from the interval it announces itself at
    /// (3 missed announces); `None` when it did not say (then `hostTTL` alone applies).
    pub expires_after: Option<std::time::Duration>,
}

impl Host {
    /// A host announced `now`.
    pub fn new(info: dragonfly_proto::Host, now: Instant) -> Self {
        Host {
            info,
            announced_at: now,
            expires_after: None,
        }
    }

    /// Whether the host has been silent too long at `now`: `host_ttl`, or 3 of its announce
    /// intervals when that is shorter.
    pub fn expired(&self, now: Instant, host_ttl: std::time::Duration) -> bool {
        let ttl = self.expires_after.map_or(host_ttl, |d| d.min(host_ttl));
        now.saturating_duration_since(self.announced_at) >= ttl
    }

    /// Host id.
    pub fn id(&self) -> &str {
        &self.info.id
    }

    /// Whether this is a seed peer's host.
    pub fn is_seed(&self) -> bool {
        self.info.is_seed()
    }

    /// Whether the host may serve pieces to others right now (shared and with a free upload slot).
    pub fn has_free_upload_slot(&self) -> bool {
        !self.info.disable_shared
            && (self.info.concurrent_upload_limit == 0
                || self.info.concurrent_upload_count < self.info.concurrent_upload_limit)
    }

    /// Free upload slots as a ratio in 0..=1 (1 when the limit is unknown/unlimited).
    pub fn free_upload_ratio(&self) -> f64 {
        let limit = self.info.concurrent_upload_limit;
        if limit == 0 {
            return 1.0;
        }
        let free = limit.saturating_sub(self.info.concurrent_upload_count);
        f64::from(free) / f64::from(limit)
    }

    /// Share of uploads that succeeded, in 0..=1 (1 when it has not uploaded yet).
    pub fn upload_success_ratio(&self) -> f64 {
        let total = self.info.upload_count;
        if total == 0 {
            return 1.0;
        }
        let ok = total.saturating_sub(self.info.upload_failed_count);
        ok as f64 / total as f64
    }
}

/// Affinity of two `|`-separated locations: shared leading levels / the longer one's levels (0..=1).
pub fn location_affinity(a: &str, b: &str) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.split('|').collect(), b.split('|').collect());
    let common = la.iter().zip(&lb).take_while(|(x, y)| x == y).count();
    common as f64 / la.len().max(lb.len()) as f64
}

/// 1 when both idcs are known and equal, else 0.
pub fn idc_affinity(a: &str, b: &str) -> f64 {
    if !a.is_empty() && a == b { 1.0 } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinities() {
        assert_eq!(location_affinity("cn|zj|hz", "cn|zj|nb"), 2.0 / 3.0);
        assert_eq!(location_affinity("cn|zj", "cn|zj|hz"), 2.0 / 3.0);
        assert_eq!(location_affinity("cn", "us"), 0.0);
        assert_eq!(location_affinity("", ""), 0.0);
        assert_eq!(idc_affinity("a", "a"), 1.0);
        assert_eq!(idc_affinity("", ""), 0.0);
    }

    #[test]
    fn upload_slots() {
        let mut h = Host::new(dragonfly_proto::Host::default(), Instant::now());
        assert!(h.has_free_upload_slot());
        assert_eq!(h.free_upload_ratio(), 1.0);
        h.info.concurrent_upload_limit = 4;
        h.info.concurrent_upload_count = 3;
        assert_eq!(h.free_upload_ratio(), 0.25);
        h.info.concurrent_upload_count = 4;
        assert!(!h.has_free_upload_slot());
        h.info.upload_count = 10;
        h.info.upload_failed_count = 1;
        assert!((h.upload_success_ratio() - 0.9).abs() < 1e-9);
    }
}
