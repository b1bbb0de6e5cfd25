//! Where the proxy may connect on a client's behalf.
//!
//! Every forward-proxy request, CONNECT tunnel and mirror request names a host the daemon then
//! connects to. The rules, checked before any connection is made:
//! - `proxy.whiteList`, when not empty, lists the only hosts any request may go to;
//!   `proxy.registryMirror.allow`, when not empty, the only registries a dynamic mirror request
//!   (`X-Dragonfly-Registry`, `?ns=`) may go to;
//! - a host is resolved first, and a host on a loopback, link-local or unspecified address is
//!   refused unless it is listed (by the name the client used) in one of those lists, or is the
//!   host of `registryMirror.url` or of a `proxies[].redirect` (the config's own upstreams);
//! - this daemon's own ports (proxy, upload, metrics) on any address of this host are always
//!   refused, listed or not: a request there loops back into the daemon, or reaches the
//!   peer-facing upload server through the proxy from where it is not meant to be reachable.
//!
//! Names are checked again when a connection is made ([`GuardedResolver`], the DNS resolver of
//! the proxy's HTTP clients, and [`redirect_policy`] for redirects the daemon follows), so a
//! name that resolves elsewhere the second time (DNS rebinding) cannot reach what the first
//! answer was checked against. A CONNECT tunnel connects to the very addresses checked.

use crate::config::{ProxyConfig, WhiteListEntry};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// What asks the proxy to connect somewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ask {
    /// An absolute-URL request, or a request inside a hijacked tunnel.
    Forward,
    /// A CONNECT.
    Tunnel,
    /// A mirror request whose registry the client named (`X-Dragonfly-Registry`, `?ns=`).
    DynamicMirror,
    /// A mirror request to `registryMirror.url`.
    StaticMirror,
}

/// A port this daemon listens on, with the config key that sets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnPort {
    /// The port.
    pub port: u16,
    /// The key that sets it, e.g. `upload.tcpListen.port`.
    pub key: &'static str,
}

/// Why the proxy will not connect to a target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `whiteList` is set and does not list the host.
    #[error("{target} is not in proxy.whiteList")]
    NotWhitelisted {
        /// `host:port`.
        target: String,
    },
    /// `registryMirror.allow` is set and does not list the registry.
    #[error("registry {target} is not in proxy.registryMirror.allow")]
    NotAllowed {
        /// `host:port`.
        target: String,
    },
    /// The host is on a loopback, link-local or unspecified address and is not listed.
    #[error(
        "{target} is on {addr}, a {kind} address; the proxy reaches such hosts only when {keys} lists them"
    )]
    Internal {
        /// `host:port` (or the host alone, when the port is not known).
        target: String,
        /// The address it resolved to.
        addr: IpAddr,
        /// `loopback`, `link-local` or `unspecified`.
        kind: &'static str,
        /// The key(s) that would allow it.
        keys: &'static str,
    },
    /// The target is one of this daemon's own ports.
    #[error("{target} is this daemon's own port ({key}); the proxy never connects to it")]
    OwnPort {
        /// `host:port`.
        target: String,
        /// The key of the port.
        key: &'static str,
    },
}

/// The reach rules of one proxy.
#[derive(Debug, Default)]
pub(crate) struct Reach {
    white_list: Vec<WhiteListEntry>,
    allow: Vec<WhiteListEntry>,
    own: Vec<OwnPort>,
    /// Hosts the config itself sends requests to; they may be on internal addresses.
    configured: Vec<String>,
}

impl Reach {
    /// The rules of `cfg`, with the daemon's `own` ports.
    pub(crate) fn new(cfg: &ProxyConfig, own: Vec<OwnPort>) -> Self {
        let mut configured: Vec<String> = Vec::new();
        if let Ok(u) = url::Url::parse(cfg.registry_mirror.url.trim())
            && let Some(h) = u.host_str()
        {
            configured.push(h.to_ascii_lowercase());
        }
        for rule in &cfg.proxies {
            if let Some(r) = rule.redirect.as_deref().filter(|r| !r.is_empty())
                && let Ok(u) = url::Url::parse(&format!("http://{r}"))
                && let Some(h) = u.host_str()
            {
                configured.push(h.to_ascii_lowercase());
            }
        }
        Self {
            white_list: cfg.white_list.clone(),
            allow: cfg.registry_mirror.allow.clone(),
            own,
            configured,
        }
    }

    /// The name-only checks: `whiteList`, and `registryMirror.allow` for dynamic mirror
    /// requests. No DNS; the sendfile path of stored blobs uses these alone.
    pub(crate) fn check_lists(&self, ask: Ask, host: &str, port: u16) -> Result<(), Refusal> {
        if !self.white_list.is_empty() && !listed(&self.white_list, host, Some(port)) {
            return Err(Refusal::NotWhitelisted {
                target: target(host, port),
            });
        }
        if ask == Ask::DynamicMirror
            && !self.allow.is_empty()
            && !listed(&self.allow, host, Some(port))
        {
            return Err(Refusal::NotAllowed {
                target: target(host, port),
            });
        }
        Ok(())
    }

    /// Every rule for `host:port`: the lists, then the addresses `host` resolves to. Returns
    /// those addresses (a CONNECT connects to exactly them); a name that does not resolve is
    /// `Ok` with none, for the connection to fail as it would have.
    pub(crate) async fn check(
        &self,
        ask: Ask,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, Refusal> {
        self.check_lists(ask, host, port)?;
        let addrs = resolve(host, port).await.unwrap_or_default();
        self.check_addrs(ask, host, port, &addrs)?;
        Ok(addrs)
    }

    /// The address rules for `host:port`, which resolved to `addrs`.
    pub(crate) fn check_addrs(
        &self,
        ask: Ask,
        host: &str,
        port: u16,
        addrs: &[SocketAddr],
    ) -> Result<(), Refusal> {
        if let Some(own) = self.own.iter().find(|o| o.port == port)
            && addrs.iter().any(|a| is_this_host(a.ip()))
        {
            return Err(Refusal::OwnPort {
                target: target(host, port),
                key: own.key,
            });
        }
        if self.may_be_internal(ask, host, port) {
            return Ok(());
        }
        match addrs
            .iter()
            .find_map(|a| internal_kind(a.ip()).map(|k| (a.ip(), k)))
        {
            Some((addr, kind)) => Err(Refusal::Internal {
                target: target(host, port),
                addr,
                kind,
                keys: keys_for(ask),
            }),
            None => Ok(()),
        }
    }

    /// Whether `host` may be on an internal address for this kind of request.
    fn may_be_internal(&self, ask: Ask, host: &str, port: u16) -> bool {
        ask == Ask::StaticMirror
            || self.configured.iter().any(|c| host_eq(c, host))
            || (!self.white_list.is_empty() && listed(&self.white_list, host, Some(port)))
            || (ask == Ask::DynamicMirror && listed(&self.allow, host, Some(port)))
    }

    /// Whether a name may resolve to an internal address, whatever asked (the resolver does not
    /// know; the request was checked precisely before).
    fn name_may_be_internal(&self, host: &str) -> bool {
        self.configured.iter().any(|c| host_eq(c, host))
            || listed(&self.white_list, host, None)
            || listed(&self.allow, host, None)
    }

    /// The rules a followed redirect to `url` must pass without DNS: an IP literal host is
    /// checked as it stands (names are checked by [`GuardedResolver`] when connecting).
    fn check_redirect(&self, url: &url::Url) -> Result<(), Refusal> {
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return Ok(());
        };
        let Some(ip) = literal_ip(host) else {
            return Ok(());
        };
        if let Some(own) = self.own.iter().find(|o| o.port == port)
            && is_this_host(ip)
        {
            return Err(Refusal::OwnPort {
                target: target(host, port),
                key: own.key,
            });
        }
        if self.name_may_be_internal(host) {
            return Ok(());
        }
        match internal_kind(ip) {
            Some(kind) => Err(Refusal::Internal {
                target: target(host, port),
                addr: ip,
                kind,
                keys: "proxy.whiteList or proxy.registryMirror.allow",
            }),
            None => Ok(()),
        }
    }
}

/// The key(s) that let a request of this kind reach an internal address.
fn keys_for(ask: Ask) -> &'static str {
    match ask {
        Ask::DynamicMirror => "proxy.registryMirror.allow or proxy.whiteList",
        _ => "proxy.whiteList",
    }
}

fn target(host: &str, port: u16) -> String {
    format!("{host}:{port}")
}

fn host_eq(a: &str, b: &str) -> bool {
    a.trim_start_matches('[')
        .trim_end_matches(']')
        .eq_ignore_ascii_case(b.trim_start_matches('[').trim_end_matches(']'))
}

/// Whether `entries` list `host` (and `port`, unless `None`), as `whiteList` matches.
fn listed(entries: &[WhiteListEntry], host: &str, port: Option<u16>) -> bool {
    entries.iter().any(|w| {
        let host_ok = (!w.host.is_empty() && host_eq(&w.host, host))
            || w.regx.as_ref().is_some_and(|r| r.is_match(host));
        let port_ok = match port {
            Some(p) => w.ports.is_empty() || w.ports.iter().any(|x| x.get() == p),
            None => true,
        };
        host_ok && port_ok
    })
}

/// `host` as an IP address, when it is a literal (`[::1]` included).
fn literal_ip(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok()
}

/// The addresses of `host:port`: the literal itself, or what the system resolver says.
pub(crate) async fn resolve(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    if let Some(ip) = literal_ip(host) {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    Ok(tokio::net::lookup_host((host, port)).await?.collect())
}

/// `loopback`, `link-local` or `unspecified` for such addresses (IPv4-mapped IPv6 included).
pub(crate) fn internal_kind(ip: IpAddr) -> Option<&'static str> {
    match ip.to_canonical() {
        IpAddr::V4(a) if a.is_loopback() => Some("loopback"),
        IpAddr::V4(a) if a.is_link_local() => Some("link-local"),
        // 0.0.0.0/8: "this network"; Linux connects 0.0.0.0 to the local host.
        IpAddr::V4(a) if a.octets()[0] == 0 => Some("unspecified"),
        IpAddr::V6(a) if a.is_loopback() => Some("loopback"),
        IpAddr::V6(a) if a.is_unspecified() => Some("unspecified"),
        IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80 => Some("link-local"),
        _ => None,
    }
}

/// Whether `ip` is this host: loopback, unspecified, or an address of one of its interfaces
/// (binding to it works).
fn is_this_host(ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    ip.is_loopback()
        || ip.is_unspecified()
        || internal_kind(ip) == Some("unspecified")
        || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// The DNS resolver of the proxy's HTTP clients: a name that resolves to an internal address
/// is refused unless it is listed, whenever a connection is made.
#[derive(Debug, Clone)]
pub(crate) struct GuardedResolver(pub(crate) Arc<Reach>);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let reach = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs = resolve(&host, 0).await?;
            if !reach.name_may_be_internal(&host)
                && let Some((addr, kind)) = addrs
                    .iter()
                    .find_map(|a| internal_kind(a.ip()).map(|k| (a.ip(), k)))
            {
                let refusal = Refusal::Internal {
                    target: host,
                    addr,
                    kind,
                    keys: "proxy.whiteList or proxy.registryMirror.allow",
                };
                return Err(Box::new(refusal) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Redirects the daemon follows (to blob storage): at most 10, none to a refused IP literal.
pub(crate) fn redirect_policy(reach: Arc<Reach>) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 10 {
            return attempt.error("more than 10 redirects");
        }
        match reach.check_redirect(attempt.url()) {
            Ok(()) => attempt.follow(),
            Err(r) => attempt.error(r),
        }
    })
}

/// The refusal somewhere in `e`'s chain of causes, if a reach rule made it fail.
pub(crate) fn refusal_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refusal> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<Refusal>() {
            return Some(r);
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use dragonfly_common::config::{Pattern, Port};

    fn entry(host: &str) -> WhiteListEntry {
        WhiteListEntry {
            host: host.into(),
            ..WhiteListEntry::default()
        }
    }

    fn reach(white: &[&str], allow: &[&str]) -> Reach {
        let mut cfg = ProxyConfig {
            white_list: white.iter().map(|h| entry(h)).collect(),
            ..ProxyConfig::default()
        };
        cfg.registry_mirror.allow = allow.iter().map(|h| entry(h)).collect();
        cfg.registry_mirror.url = "http://mirror.internal:5000".into();
        Reach::new(
            &cfg,
            vec![OwnPort {
                port: 65002,
                key: "upload.tcpListen.port",
            }],
        )
    }

    fn sa(s: &str) -> Vec<SocketAddr> {
        vec![s.parse().unwrap()]
    }

    #[test]
    fn internal_addresses_are_told_apart() {
        for (ip, kind) in [
            ("127.0.0.1", Some("loopback")),
            ("127.9.9.9", Some("loopback")),
            ("::1", Some("loopback")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("169.254.169.254", Some("link-local")),
            ("fe80::1", Some("link-local")),
            ("0.0.0.0", Some("unspecified")),
            ("0.1.2.3", Some("unspecified")),
            ("::", Some("unspecified")),
            ("10.0.0.1", None),
            ("192.168.1.1", None),
            ("8.8.8.8", None),
            ("fd00::1", None),
        ] {
            assert_eq!(internal_kind(ip.parse().unwrap()), kind, "{ip}");
        }
    }

    #[test]
    fn loopback_needs_a_listing_and_own_ports_never_pass() {
        let open = reach(&[], &[]);
        let e = open
            .check_addrs(Ask::Forward, "localhost", 80, &sa("127.0.0.1:80"))
            .unwrap_err();
        assert!(
            e.to_string().contains("localhost:80") && e.to_string().contains("proxy.whiteList"),
            "{e}"
        );
        let e = open
            .check_addrs(Ask::DynamicMirror, "r", 5000, &sa("[fe80::1]:5000"))
            .unwrap_err();
        assert!(e.to_string().contains("registryMirror.allow"), "{e}");
        assert!(
            open.check_addrs(Ask::Forward, "pub", 443, &sa("8.8.8.8:443"))
                .is_ok()
        );
        // registryMirror.url's host is the config's own upstream.
        assert!(
            open.check_addrs(
                Ask::StaticMirror,
                "mirror.internal",
                5000,
                &sa("127.0.0.1:5000")
            )
            .is_ok()
        );
        assert!(
            open.check_addrs(Ask::Forward, "mirror.internal", 5000, &sa("127.0.0.1:5000"))
                .is_ok()
        );

        let listed = reach(&["127.0.0.1", "registry.test"], &["localhost"]);
        assert!(
            listed
                .check_addrs(Ask::Tunnel, "127.0.0.1", 8080, &sa("127.0.0.1:8080"))
                .is_ok()
        );
        assert!(
            listed
                .check_addrs(Ask::Forward, "registry.test", 443, &sa("127.0.0.1:443"))
                .is_ok()
        );
        // Listed by another name than the one used: refused.
        assert!(
            listed
                .check_addrs(Ask::Forward, "127.0.0.2", 443, &sa("127.0.0.2:443"))
                .is_err()
        );
        for ask in [Ask::Tunnel, Ask::Forward, Ask::StaticMirror] {
            let e = listed
                .check_addrs(ask, "127.0.0.1", 65002, &sa("127.0.0.1:65002"))
                .unwrap_err();
            assert!(
                matches!(
                    e,
                    Refusal::OwnPort {
                        key: "upload.tcpListen.port",
                        ..
                    }
                ),
                "{e}"
            );
        }
        // The same port on another host is someone else's.
        assert!(
            reach(&[], &[])
                .check_addrs(Ask::Tunnel, "peer", 65002, &sa("8.8.8.8:65002"))
                .is_ok()
        );
    }

    #[test]
    fn lists_restrict_by_name_and_port() {
        let mut cfg = ProxyConfig {
            white_list: vec![WhiteListEntry {
                host: String::new(),
                regx: Some(Pattern::new("^registry\\.").unwrap()),
                ports: vec![Port::new(443).unwrap()],
            }],
            ..ProxyConfig::default()
        };
        cfg.registry_mirror.allow = vec![entry("registry.b")];
        let r = Reach::new(&cfg, Vec::new());
        assert!(r.check_lists(Ask::Forward, "registry.a", 443).is_ok());
        assert!(matches!(
            r.check_lists(Ask::Forward, "registry.a", 80),
            Err(Refusal::NotWhitelisted { .. })
        ));
        assert!(matches!(
            r.check_lists(Ask::DynamicMirror, "registry.a", 443),
            Err(Refusal::NotAllowed { .. })
        ));
        assert!(r.check_lists(Ask::DynamicMirror, "registry.b", 443).is_ok());
        assert!(r.check_lists(Ask::StaticMirror, "registry.a", 443).is_ok());
    }

    #[test]
    fn redirects_to_refused_literals_are_not_followed() {
        let r = reach(&["127.0.0.1"], &[]);
        let url = |s: &str| url::Url::parse(s).unwrap();
        assert!(r.check_redirect(&url("http://127.0.0.1:9000/x")).is_ok());
        assert!(r.check_redirect(&url("http://127.0.0.2:9000/x")).is_err());
        assert!(r.check_redirect(&url("http://[::1]:9000/x")).is_err());
        assert!(r.check_redirect(&url("http://127.0.0.1:65002/x")).is_err());
        // Names are the resolver's.
        assert!(r.check_redirect(&url("http://localhost:9000/x")).is_ok());
    }

    #[tokio::test]
    async fn resolver_refuses_unlisted_names_on_loopback() {
        use reqwest::dns::Resolve;
        let g = GuardedResolver(Arc::new(reach(&[], &["localhost"])));
        assert!(g.resolve("localhost".parse().unwrap()).await.is_ok());
        let g = GuardedResolver(Arc::new(reach(&[], &[])));
        let err = match g.resolve("localhost".parse().unwrap()).await {
            Ok(_) => panic!("localhost resolved"),
            Err(e) => e,
        };
        assert!(refusal_in(err.as_ref()).is_some(), "{err}");
    }
}
