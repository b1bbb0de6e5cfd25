//! Per-client caps of the proxy listener: connections (`proxy.perClientConnectionLimit`) and
//! CONNECT tunnels (`proxy.perClientTunnelLimit`) open at once from one client, so one client
//! cannot take every file descriptor or all the tunnel memory of the daemon.
//!
//! A client is its IPv4 address, or the /64 of its IPv6 address (one host usually holds a
//! whole /64). Loopback clients count like any other: they are usually the node's containerd,
//! whose few concurrent layer fetches stay far below the default caps.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// One refusal log line per kind at most this often (with the count since the last one).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Who a cap counts for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ClientKey(IpAddr);

impl ClientKey {
    /// The client of `ip`: itself, its IPv4 form when mapped, or its /64.
    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V6(a) => {
                let s = a.segments();
                ClientKey(IpAddr::V6(Ipv6Addr::new(
                    s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                )))
            }
            v4 => ClientKey(v4),
        }
    }
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V6(a) => write!(f, "{a}/64"),
            v4 => write!(f, "{v4}"),
        }
    }
}

/// A cap on things open at once per client.
#[derive(Debug)]
pub(crate) struct Cap {
    /// 0: no cap.
    limit: usize,
    /// The config key, for messages.
    key: &'static str,
    /// What is counted, for messages ("connections", "CONNECT tunnels").
    what: &'static str,
    open: Mutex<HashMap<ClientKey, usize>>,
    log: Throttle,
}

/// One thing open, counted until dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    cap: Arc<Cap>,
    client: ClientKey,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.cap.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.client);
            }
        }
    }
}

/// A client at its cap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("client {client} has {open} {what} open, the limit of {key}")]
pub(crate) struct OverCap {
    client: ClientKey,
    open: usize,
    what: &'static str,
    key: &'static str,
}

impl Cap {
    /// A cap of `limit` (0: none) set by `key`, counting `what`.
    pub(crate) fn new(limit: u32, key: &'static str, what: &'static str) -> Arc<Self> {
        Arc::new(Self {
            limit: limit as usize,
            key,
            what,
            open: Mutex::new(HashMap::new()),
            log: Throttle::new(LOG_EVERY),
        })
    }

    /// A slot for `ip`, or why not. A refusal is logged, at most once per [`LOG_EVERY`].
    pub(crate) fn take(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, OverCap> {
        let client = ClientKey::of(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(client).or_insert(0);
        if self.limit > 0 && *n >= self.limit {
            let over = OverCap {
                client,
                open: *n,
                what: self.what,
                key: self.key,
            };
            drop(open);
            if let Some(refused) = self.log.hit(Instant::now()) {
                tracing::warn!(refused, last = %over, "proxy refused clients over their limit (logged once per {LOG_EVERY:?})");
            }
            return Err(over);
        }
        *n += 1;
        Ok(Slot {
            cap: self.clone(),
            client,
        })
    }

    /// How many `ip`'s client has open.
    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&ClientKey::of(ip)).copied().unwrap_or(0)
    }
}

/// Says when to log a recurring event: the first time, then at most once per interval, with
/// how many happened since the last line.
#[derive(Debug)]
pub(crate) struct Throttle {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub(crate) fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// One more event at `now`: `Some(events since the last line, this one included)` when a
    /// line is due.
    pub(crate) fn hit(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.1 += 1;
        let due =
            s.0.is_none_or(|last| now.duration_since(last) >= self.every);
        if !due {
            return None;
        }
        let n = s.1;
        *s = (Some(now), 0);
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_client_gets_its_limit_and_a_slot_back_when_one_closes() {
        let cap = Cap::new(2, "proxy.perClientConnectionLimit", "connections");
        let a = cap.take(ip("127.0.0.1")).unwrap();
        let _b = cap.take(ip("127.0.0.1")).unwrap();
        let e = cap.take(ip("127.0.0.1")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "client 127.0.0.1 has 2 connections open, the limit of proxy.perClientConnectionLimit"
        );
        // Another client is counted apart.
        let _c = cap.take(ip("127.0.0.2")).unwrap();
        drop(a);
        assert_eq!(cap.open(ip("127.0.0.1")), 1);
        let _d = cap.take(ip("127.0.0.1")).unwrap();
        let unlimited = Cap::new(0, "k", "connections");
        let held: Vec<_> = (0..1000)
            .map(|_| unlimited.take(ip("10.0.0.1")).unwrap())
            .collect();
        assert_eq!(unlimited.open(ip("10.0.0.1")), 1000);
        drop(held);
        assert!(unlimited.open.lock().unwrap().is_empty(), "no entry left");
    }

    #[test]
    fn ipv6_clients_are_their_64_and_mapped_v4_is_v4() {
        assert_eq!(
            ClientKey::of(ip("2001:db8:1:2:aaaa::1")),
            ClientKey::of(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(
            ClientKey::of(ip("2001:db8:1:2::1")),
            ClientKey::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            ClientKey::of(ip("::ffff:10.1.2.3")),
            ClientKey::of(ip("10.1.2.3"))
        );
        assert_eq!(
            ClientKey::of(ip("2001:db8:1:2::1")).to_string(),
            "2001:db8:1:2::/64"
        );
    }

    #[test]
    fn throttle_logs_once_per_interval_with_the_count() {
        let t = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.hit(t0), Some(1));
        for i in 1..50 {
            assert_eq!(t.hit(t0 + Duration::from_millis(i * 100)), None);
        }
        assert_eq!(t.hit(t0 + Duration::from_secs(10)), Some(50));
        assert_eq!(t.hit(t0 + Duration::from_secs(11)), None);
    }
}
