//! The `oras` config section as client options: Go `http.Transport` knobs mapped onto reqwest.

use crate::config::OrasConfig;
use crate::source::SourceOptions;
use std::time::Duration;

/// Options of the ORAS registry client (see docs/oras.md for each key's mapping).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrasOptions {
    /// Proxy for every registry and token request (`reqwest::Proxy::all`); `None`: the
    /// environment's `HTTPS_PROXY`/`NO_PROXY`.
    pub proxy: Option<String>,
    /// TCP connect timeout; with `tls_handshake_timeout` it makes reqwest's connect timeout.
    pub dial_timeout: Duration,
    /// TCP keep-alive interval (zero: off).
    pub keep_alive: Duration,
    /// Idle pooled connections per host (Go's is for all hosts; the ORAS client talks to one or two).
    pub max_idle_conns: u32,
    /// An idle pooled connection is closed after this long (zero: never).
    pub idle_conn_timeout: Duration,
    /// Longest wait for response headers (after connecting), and for each read of a body.
    pub response_header_timeout: Duration,
    /// Added to `dial_timeout`: reqwest times connect and TLS handshake together.
    pub tls_handshake_timeout: Duration,
    /// Accepted for compatibility; without effect (ORAS pulls are GETs, no `Expect: 100-continue`).
    pub expect_continue_timeout: Duration,
    /// Skip TLS certificate verification of the registry.
    pub insecure_skip_verify: bool,
}

impl From<&OrasConfig> for OrasOptions {
    fn from(c: &OrasConfig) -> Self {
        Self {
            proxy: c.proxy.clone().filter(|p| !p.trim().is_empty()),
            dial_timeout: c.dial_timeout.get(),
            keep_alive: c.keep_alive.get(),
            max_idle_conns: c.max_idle_conns,
            idle_conn_timeout: c.idle_conn_timeout.get(),
            response_header_timeout: c.response_header_timeout.get(),
            tls_handshake_timeout: c.tls_handshake_timeout.get(),
            expect_continue_timeout: c.expect_continue_timeout.get(),
            insecure_skip_verify: c.insecure_skip_verify,
        }
    }
}

impl Default for OrasOptions {
    fn default() -> Self {
        Self::from(&OrasConfig::default())
    }
}

impl OrasOptions {
    /// reqwest's connect timeout (TCP + TLS); `None` when both parts are zero (no limit).
    pub(super) fn connect_timeout(&self) -> Option<Duration> {
        let t = self.dial_timeout + self.tls_handshake_timeout;
        (!t.is_zero()).then_some(t)
    }

    /// Options for the engine's HTTP source that fetches the blob: the connect and read
    /// timeouts and TLS verification of this section (zero keeps the source's default).
    pub fn source_options(&self) -> SourceOptions {
        let d = SourceOptions::default();
        SourceOptions {
            connect_timeout: self.connect_timeout().unwrap_or(d.connect_timeout),
            read_timeout: if self.response_header_timeout.is_zero() {
                d.read_timeout
            } else {
                self.response_header_timeout
            },
            insecure: self.insecure_skip_verify,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_map_the_config_section() {
        let cfg = OrasConfig {
            proxy: Some("  ".into()),
            dial_timeout: Duration::from_secs(5).into(),
            tls_handshake_timeout: Duration::from_secs(3).into(),
            response_header_timeout: Duration::from_secs(7).into(),
            insecure_skip_verify: true,
            ..OrasConfig::default()
        };
        let o = OrasOptions::from(&cfg);
        assert_eq!(o.proxy, None, "a blank proxy is none");
        assert_eq!(o.connect_timeout(), Some(Duration::from_secs(8)));
        let s = o.source_options();
        assert_eq!(s.connect_timeout, Duration::from_secs(8));
        assert_eq!(s.read_timeout, Duration::from_secs(7));
        assert!(s.insecure);
        let zero = OrasOptions {
            dial_timeout: Duration::ZERO,
            tls_handshake_timeout: Duration::ZERO,
            response_header_timeout: Duration::ZERO,
            ..OrasOptions::default()
        };
        assert_eq!(zero.connect_timeout(), None, "zero is no limit, as in Go");
        assert_eq!(
            zero.source_options().read_timeout,
            SourceOptions::default().read_timeout
        );
    }
}
