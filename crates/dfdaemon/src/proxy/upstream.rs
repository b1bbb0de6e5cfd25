//! The proxy's HTTP clients towards upstreams (one per kind of trust), and the hosts whose
//! HTTPS it intercepts. Every client resolves names with the reach rules' resolver and checks
//! the redirects it follows ([`super::reach`]).

use super::ProxyError;
use super::ca::CertAuthority;
use super::reach::{self, Reach};
use crate::config::HijackHttps;
use crate::source::{HttpSource, SourceOptions};
use dragonfly_common::config::Pattern;
use std::path::PathBuf;
use std::sync::Arc;

/// Clients to one kind of upstream, with its TLS trust.
#[derive(Clone, Debug)]
pub(crate) struct Upstream {
    /// Passes requests through (redirects go back to the client).
    pub forward: HttpSource,
    /// Fetches task pieces (redirects to blob storage are followed).
    pub fetch: HttpSource,
}

impl Upstream {
    /// Clients trusting `certs` too (or nothing, `insecure`), whose connections and followed
    /// redirects pass `reach`.
    pub(super) fn new(
        key: &str,
        insecure: bool,
        certs: &[PathBuf],
        reach: &Arc<Reach>,
    ) -> Result<Self, ProxyError> {
        let mut roots = Vec::new();
        for path in certs {
            let pem = std::fs::read(path).map_err(|source| ProxyError::CertsUnreadable {
                key: key.to_string(),
                path: path.clone(),
                source,
            })?;
            let found = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
                ProxyError::CertsNotPem {
                    key: key.to_string(),
                    path: path.clone(),
                    source,
                }
            })?;
            if found.is_empty() {
                return Err(ProxyError::Certs {
                    key: key.to_string(),
                    path: path.clone(),
                    reason: "no PEM certificate in it",
                });
            }
            roots.extend(found);
        }
        let opts = SourceOptions {
            insecure,
            ..SourceOptions::default()
        };
        let client = |follow: bool| {
            let redirect = if follow {
                reach::redirect_policy(reach.clone())
            } else {
                reqwest::redirect::Policy::none()
            };
            let builder = HttpSource::builder(&opts, roots.clone())
                .dns_resolver(reach::GuardedResolver(reach.clone()))
                .redirect(redirect);
            HttpSource::build(builder).map_err(ProxyError::Client)
        };
        Ok(Self {
            forward: client(false)?,
            fetch: client(true)?,
        })
    }
}

/// A host whose HTTPS is intercepted, with the trust used towards the real host.
pub(super) struct HijackedHost {
    regx: Pattern,
    upstream: Arc<Upstream>,
}

/// TLS interception.
pub(super) struct Hijack {
    pub(super) ca: Arc<CertAuthority>,
    hosts: Vec<HijackedHost>,
}

impl Hijack {
    pub(super) fn new(h: &HijackHttps, reach: &Arc<Reach>) -> Result<Hijack, ProxyError> {
        let ca = match (&h.cert, &h.key) {
            (Some(cert), Some(key)) => CertAuthority::load(cert, key)?,
            (None, None) => {
                tracing::warn!(
                    "proxy.hijackHTTPS has no cert/key: using a CA generated for this run; clients must trust GET /ca.crt again after every restart (make one with `dfdaemon gen-ca`)"
                );
                CertAuthority::generate("dfdaemon ephemeral CA")?
            }
            _ => {
                return Err(ProxyError::Certs {
                    key: "proxy.hijackHTTPS".into(),
                    path: h.cert.clone().or(h.key.clone()).unwrap_or_default(),
                    reason: "cert and key must be set together",
                });
            }
        };
        let mut hosts = Vec::new();
        for (i, host) in h.hosts.iter().enumerate() {
            hosts.push(HijackedHost {
                regx: host.regx.clone(),
                upstream: Arc::new(Upstream::new(
                    &format!("proxy.hijackHTTPS.hosts[{i}].certs"),
                    host.insecure,
                    &host.certs,
                    reach,
                )?),
            });
        }
        Ok(Hijack {
            ca: Arc::new(ca),
            hosts,
        })
    }

    /// The CA and upstream for a CONNECT `authority` (`host:port`), if it is listed.
    pub(super) fn find(&self, authority: &str) -> Option<(Arc<CertAuthority>, Arc<Upstream>)> {
        self.hosts
            .iter()
            .find(|x| x.regx.is_match(authority))
            .map(|x| (self.ca.clone(), x.upstream.clone()))
    }
}
