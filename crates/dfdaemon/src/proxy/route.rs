//! Pure request logic of the proxy: hop-by-hop headers, the registry mirror's target, which
//! requests go peer to peer, and `Range` headers.

use crate::config::{ProxyRule, RegistryMirror};
use http::header::{self, HeaderMap, HeaderName};

/// The header containerd's `hosts.toml` sets to name the registry behind a mirror.
pub const REGISTRY_HEADER: &str = "x-dragonfly-registry";

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the
/// proxy's own; they are never forwarded.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Remove hop-by-hop headers, including those `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Headers a task sends to the source: the client's end-to-end headers (auth, accept) without
/// those that would change which bytes come back, since a task fetches whole pieces.
pub fn source_headers(client: &HeaderMap) -> HeaderMap {
    let mut h = client.clone();
    strip_hop_by_hop(&mut h);
    for name in [
        header::HOST,
        header::RANGE,
        header::IF_RANGE,
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_UNMODIFIED_SINCE,
        header::ACCEPT_ENCODING,
        header::CONTENT_LENGTH,
    ] {
        h.remove(name);
    }
    h.remove(REGISTRY_HEADER);
    h
}

/// Why a mirror request cannot be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MirrorError {
    /// `X-Dragonfly-Registry` is not an http(s) URL.
    #[error(
        "X-Dragonfly-Registry {0:?} is not an http(s) URL such as https://registry.example.com"
    )]
    BadHeader(String),
    /// `?ns=` is not a host name.
    #[error("query parameter ns={0:?} is not a registry host such as registry.example.com:5000")]
    BadNs(String),
    /// `registryMirror.url` is not usable.
    #[error(
        "registryMirror.url {0:?} is not an http(s) URL; set it, or use registryMirror.dynamic with X-Dragonfly-Registry"
    )]
    NoUpstream(String),
    /// The path would leave `/v2/` once its dot segments are resolved.
    #[error("mirror path {0:?} has a `.`, `..` or encoded `/` segment; only /v2/... is mirrored")]
    BadPath(String),
}

/// Whether a mirror path stays under `/v2/` as written: no `.` or `..` segment, plain or
/// percent-encoded, and no encoded `/` or `\` (an upstream URL prefix could be left otherwise).
fn path_stays_in_v2(path: &str) -> bool {
    path.split('/').all(|seg| {
        let d = dragonfly_common::secret::percent_decode(seg);
        d != "." && d != ".." && !d.contains('/') && !d.contains('\\')
    })
}

/// Where a mirror request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorTarget {
    /// The absolute URL.
    pub url: String,
    /// Whether the client named the registry (`X-Dragonfly-Registry`, `?ns=`); otherwise it is
    /// `registryMirror.url`.
    pub dynamic: bool,
}

/// The absolute URL a mirror request (`/v2/...` without a host) goes to: the registry named by
/// `X-Dragonfly-Registry` or containerd's `?ns=` when `dynamic`, else `registryMirror.url`.
/// The `ns` parameter is containerd's and is not passed on.
pub fn mirror_target(
    mirror: &RegistryMirror,
    headers: &HeaderMap,
    path: &str,
    query: Option<&str>,
) -> Result<String, MirrorError> {
    mirror_upstream(mirror, headers, path, query).map(|t| t.url)
}

/// [`mirror_target`], saying whether the client chose the registry.
pub fn mirror_upstream(
    mirror: &RegistryMirror,
    headers: &HeaderMap,
    path: &str,
    query: Option<&str>,
) -> Result<MirrorTarget, MirrorError> {
    if !path_stays_in_v2(path) {
        return Err(MirrorError::BadPath(path.to_string()));
    }
    let mut ns: Option<&str> = None;
    let mut rest: Vec<&str> = Vec::new();
    for p in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match p.strip_prefix("ns=") {
            Some(v) => ns = Some(v),
            None => rest.push(p),
        }
    }
    let (base, dynamic) = match headers
        .get(REGISTRY_HEADER)
        .filter(|_| mirror.dynamic)
        .map(|v| v.to_str().map(str::trim))
    {
        Some(Ok(v)) => {
            let u = url::Url::parse(v).map_err(|_| MirrorError::BadHeader(v.to_string()))?;
            if !matches!(u.scheme(), "http" | "https") || !u.has_host() {
                return Err(MirrorError::BadHeader(v.to_string()));
            }
            (v.trim_end_matches('/').to_string(), true)
        }
        Some(Err(_)) => return Err(MirrorError::BadHeader("(not text)".into())),
        None => match ns.filter(|_| mirror.dynamic) {
            Some(ns) => {
                let host = dragonfly_common::secret::percent_decode(ns);
                let ok = !host.is_empty()
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".-:[]_".contains(c));
                if !ok {
                    return Err(MirrorError::BadNs(host));
                }
                (format!("https://{host}"), true)
            }
            None => {
                let u = mirror.url.trim();
                match url::Url::parse(u) {
                    Ok(p) if matches!(p.scheme(), "http" | "https") && p.has_host() => {
                        (u.trim_end_matches('/').to_string(), false)
                    }
                    _ => return Err(MirrorError::NoUpstream(u.to_string())),
                }
            }
        },
    };
    let mut url = format!("{base}{path}");
    if !rest.is_empty() {
        url.push('?');
        url.push_str(&rest.join("&"));
    }
    Ok(MirrorTarget { url, dynamic })
}

pub use crate::source::blob_digest;

/// How a request is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// As a P2P task for this URL (rules may have rewritten it).
    P2p(String),
    /// Passed through to the upstream as is.
    Direct,
}

/// Which rule applies to `url`: the first `proxies` rule that matches decides. A mirror request
/// goes by `registryMirror`: `direct` passes everything through; otherwise blobs go peer to
/// peer, or the rules decide when `useProxies` is set.
pub fn decide(rules: &[ProxyRule], mirror: Option<&RegistryMirror>, url: &str) -> Decision {
    if let Some(m) = mirror {
        if m.direct {
            return Decision::Direct;
        }
        if !m.use_proxies {
            return match blob_digest(url) {
                Some(_) => Decision::P2p(url.to_string()),
                None => Decision::Direct,
            };
        }
    }
    let Some(rule) = rules.iter().find(|r| r.regx.is_match(url)) else {
        return Decision::Direct;
    };
    if rule.direct {
        return Decision::Direct;
    }
    let mut target = url.to_string();
    if rule.use_https && target.starts_with("http://") {
        target = format!("https://{}", &target["http://".len()..]);
    }
    if let Some(host) = rule.redirect.as_deref().filter(|h| !h.is_empty())
        && let Ok(mut u) = url::Url::parse(&target)
        && let Ok(to) = url::Url::parse(&format!("http://{host}"))
        && let Some(h) = to.host_str()
        && u.set_host(Some(h)).is_ok()
    {
        let _ = u.set_port(to.port());
        target = u.to_string();
    }
    Decision::P2p(target)
}

/// What a `Range` header asks of a content of length `len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAsk {
    /// The whole content (no header, or one this proxy does not split: multiple ranges).
    Full,
    /// Bytes `[start, end)`.
    Part(u64, u64),
    /// Nothing of the content is in the range: 416.
    Unsatisfiable,
}

/// Parse `Range: bytes=a-b`, `bytes=a-`, `bytes=-n` (RFC 9110 §14.1.2) against `len`.
/// Malformed headers are ignored (the whole content), as the RFC allows.
pub fn parse_range(header: Option<&str>, len: u64) -> RangeAsk {
    let Some(v) = header else {
        return RangeAsk::Full;
    };
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return RangeAsk::Full;
    };
    if spec.contains(',') {
        return RangeAsk::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAsk::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // Suffix: the last n bytes.
        let Ok(n) = b.parse::<u64>() else {
            return RangeAsk::Full;
        };
        if n == 0 || len == 0 {
            return RangeAsk::Unsatisfiable;
        }
        return RangeAsk::Part(len.saturating_sub(n), len);
    }
    let Ok(first) = a.parse::<u64>() else {
        return RangeAsk::Full;
    };
    let last = if b.is_empty() {
        None
    } else {
        match b.parse::<u64>() {
            Ok(l) if l >= first => Some(l),
            _ => return RangeAsk::Full,
        }
    };
    if first >= len {
        return RangeAsk::Unsatisfiable;
    }
    let end = last.map_or(len, |l| l.saturating_add(1).min(len));
    RangeAsk::Part(first, end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dragonfly_common::config::Pattern;
    use proptest::prelude::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn hop_by_hop_headers_go_including_those_connection_names() {
        let mut m = h(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic eA=="),
            ("transfer-encoding", "chunked"),
            ("authorization", "Bearer t"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut m);
        let mut left: Vec<_> = m.keys().map(|k| k.as_str().to_string()).collect();
        left.sort();
        assert_eq!(left, ["accept", "authorization"]);
    }

    #[test]
    fn source_headers_keep_auth_and_drop_range() {
        let m = source_headers(&h(&[
            ("authorization", "Bearer t"),
            ("range", "bytes=0-9"),
            ("host", "x"),
            ("x-dragonfly-registry", "https://r"),
        ]));
        assert_eq!(m.len(), 1);
        assert_eq!(m["authorization"], "Bearer t");
    }

    fn mirror(dynamic: bool, url: &str) -> RegistryMirror {
        RegistryMirror {
            dynamic,
            url: url.into(),
            ..RegistryMirror::default()
        }
    }

    #[test]
    fn mirror_target_prefers_header_then_ns_then_url() {
        let m = mirror(true, "https://fallback.example");
        let hdr = h(&[(REGISTRY_HEADER, "https://registry.test:5443")]);
        assert_eq!(
            mirror_target(
                &m,
                &hdr,
                "/v2/a/b/manifests/latest",
                Some("ns=registry.test%3A5443")
            )
            .unwrap(),
            "https://registry.test:5443/v2/a/b/manifests/latest"
        );
        assert_eq!(
            mirror_target(
                &m,
                &HeaderMap::new(),
                "/v2/",
                Some("ns=registry.test%3A5443&x=1")
            )
            .unwrap(),
            "https://registry.test:5443/v2/?x=1"
        );
        assert_eq!(
            mirror_target(&m, &HeaderMap::new(), "/v2/", None).unwrap(),
            "https://fallback.example/v2/"
        );
        let dynamic = |hdr: &HeaderMap, q| mirror_upstream(&m, hdr, "/v2/", q).unwrap().dynamic;
        assert!(dynamic(&hdr, None));
        assert!(dynamic(&HeaderMap::new(), Some("ns=r.test")));
        assert!(!dynamic(&HeaderMap::new(), None));
        // Not dynamic: header and ns are ignored (ns is still not passed on).
        let s = mirror(false, "https://only.example/");
        assert_eq!(
            mirror_target(&s, &hdr, "/v2/x", Some("ns=other")).unwrap(),
            "https://only.example/v2/x"
        );
        assert!(!mirror_upstream(&s, &hdr, "/v2/x", None).unwrap().dynamic);
    }

    #[test]
    fn mirror_target_errors_name_the_value() {
        let m = mirror(true, "https://x");
        let e = mirror_target(&m, &h(&[(REGISTRY_HEADER, "ftp://r")]), "/v2/", None).unwrap_err();
        assert!(e.to_string().contains("\"ftp://r\""), "{e}");
        let e = mirror_target(&m, &HeaderMap::new(), "/v2/", Some("ns=a/b")).unwrap_err();
        assert!(e.to_string().contains("a/b"), "{e}");
        let e = mirror_target(
            &mirror(false, "<your registry>"),
            &HeaderMap::new(),
            "/v2/",
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("registryMirror.url"), "{e}");
    }

    #[test]
    fn mirror_paths_never_leave_v2_or_the_url_prefix() {
        let m = mirror(false, "https://r.test/some/prefix");
        for bad in [
            "/v2/../not-v2/x",
            "/v2/%2e%2e/%2e%2e/admin",
            "/v2/%2E%2e/x",
            "/v2/./x",
            "/v2/a%2f..%2f..%2fadmin",
            "/v2/a%5c..",
        ] {
            let e = mirror_target(&m, &HeaderMap::new(), bad, None).unwrap_err();
            assert!(matches!(e, MirrorError::BadPath(_)), "{bad}: {e}");
            assert!(e.to_string().contains(bad), "{e}");
        }
        let ok = mirror_target(&m, &HeaderMap::new(), "/v2/lib/a..b/manifests/v1.0", None);
        assert_eq!(
            ok.unwrap(),
            "https://r.test/some/prefix/v2/lib/a..b/manifests/v1.0"
        );
    }

    #[test]
    fn blob_digest_is_found_only_in_blob_urls() {
        let d = blob_digest(&format!("https://r/v2/lib/x/blobs/sha256:{HEX}?ns=r")).unwrap();
        assert_eq!(d.hex(), HEX);
        assert!(blob_digest(&format!("https://r/v2/x/manifests/sha256:{HEX}")).is_none());
        assert!(blob_digest("https://r/v2/x/blobs/uploads/abc").is_none());
        assert!(blob_digest("https://r/v2/x/blobs/sha256:short").is_none());
    }

    fn rule(re: &str) -> ProxyRule {
        ProxyRule::new(Pattern::new(re).unwrap())
    }

    #[test]
    fn first_matching_rule_decides() {
        let blob = format!("http://r/v2/x/blobs/sha256:{HEX}");
        let mut direct = rule("blobs/sha256.*");
        direct.direct = true;
        assert_eq!(decide(&[direct.clone()], None, &blob), Decision::Direct);
        let mut https = rule("blobs/sha256.*");
        https.use_https = true;
        assert_eq!(
            decide(&[https, direct], None, &blob),
            Decision::P2p(format!("https://r/v2/x/blobs/sha256:{HEX}"))
        );
        let mut redirect = rule(".*");
        redirect.redirect = Some("mirror.example:8443".into());
        assert_eq!(
            decide(&[redirect], None, "http://r/file"),
            Decision::P2p("http://mirror.example:8443/file".into())
        );
        assert_eq!(
            decide(
                &[rule("blobs/sha256.*")],
                None,
                "http://r/v2/x/manifests/latest"
            ),
            Decision::Direct
        );
    }

    #[test]
    fn mirror_requests_follow_the_mirror_settings() {
        let blob = format!("https://r/v2/x/blobs/sha256:{HEX}");
        let m = mirror(true, "https://r");
        assert_eq!(decide(&[], Some(&m), &blob), Decision::P2p(blob.clone()));
        assert_eq!(
            decide(&[], Some(&m), "https://r/v2/x/manifests/1"),
            Decision::Direct
        );
        let d = RegistryMirror {
            direct: true,
            ..m.clone()
        };
        assert_eq!(decide(&[], Some(&d), &blob), Decision::Direct);
        let u = RegistryMirror {
            use_proxies: true,
            ..m
        };
        assert_eq!(decide(&[], Some(&u), &blob), Decision::Direct);
        assert_eq!(
            decide(&[rule("blobs")], Some(&u), &blob),
            Decision::P2p(blob.clone())
        );
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), RangeAsk::Full);
        assert_eq!(parse_range(Some("bytes=0-4"), 10), RangeAsk::Part(0, 5));
        assert_eq!(parse_range(Some("bytes=5-"), 10), RangeAsk::Part(5, 10));
        assert_eq!(parse_range(Some("bytes=-3"), 10), RangeAsk::Part(7, 10));
        assert_eq!(parse_range(Some("bytes=-30"), 10), RangeAsk::Part(0, 10));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), RangeAsk::Part(8, 10));
        assert_eq!(parse_range(Some("bytes=10-"), 10), RangeAsk::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), RangeAsk::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=5-2"), 10), RangeAsk::Full);
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10), RangeAsk::Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), RangeAsk::Full);
        assert_eq!(parse_range(Some("bytes=x-1"), 10), RangeAsk::Full);
    }

    proptest! {
        /// Any header gives a range inside the content, or 416 only when it starts past the end.
        #[test]
        fn parsed_ranges_stay_inside(len in 0u64..10_000, a in 0u64..12_000, b in 0u64..12_000, form in 0u8..3) {
            let header = match form {
                0 => format!("bytes={a}-{b}"),
                1 => format!("bytes={a}-"),
                _ => format!("bytes=-{b}"),
            };
            match parse_range(Some(&header), len) {
                RangeAsk::Part(s, e) => {
                    prop_assert!(s < e && e <= len);
                    if form == 0 { prop_assert_eq!(s, a); prop_assert_eq!(e, (b + 1).min(len)); }
                    if form == 2 { prop_assert_eq!(e - s, b.min(len)); }
                }
                RangeAsk::Unsatisfiable => prop_assert!(len == 0 || (form != 2 && a >= len) || (form == 2 && b == 0)),
                RangeAsk::Full => prop_assert!(form == 0 && b < a),
            }
        }
    }
}
