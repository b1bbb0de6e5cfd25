//! Registry credentials (flags, env, `~/.docker/config.json`) and `WWW-Authenticate` challenges.
//!
//! Passwords and tokens never reach a log line or an error message: [`Credentials`] prints as
//! `user:***` and the headers built from them are marked sensitive.

use http::HeaderValue;
use std::fmt;
use std::path::{Path, PathBuf};

/// A user name and password for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    username: String,
    password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}:***)", self.username)
    }
}

/// Take `user:password@` out of `url`, sending it as `Authorization: Basic` in `headers`
/// instead (unless they carry an `Authorization` already). Returns the URL without it, or the
/// URL unchanged when it has none.
pub fn userinfo_to_authorization(url: String, headers: &mut http::HeaderMap) -> String {
    let Some((clean, user, password)) = dragonfly_common::secret::split_userinfo(&url) else {
        return url;
    };
    if !headers.contains_key(http::header::AUTHORIZATION) {
        let creds = Credentials::new(user, password);
        headers.insert(http::header::AUTHORIZATION, creds.basic_header());
    }
    clean
}

impl Credentials {
    /// Credentials for Basic auth and the token exchange.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
        }
    }

    /// The user name (safe to show).
    pub fn username(&self) -> &str {
        &self.username
    }

    /// `Basic base64(user:password)`, marked sensitive so it is never printed.
    pub fn basic_header(&self) -> HeaderValue {
        let raw = format!("{}:{}", self.username, self.password);
        let mut v = HeaderValue::from_str(&format!("Basic {}", base64_encode(raw.as_bytes())))
            .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
        v.set_sensitive(true);
        v
    }

    /// Credentials from an `Authorization: Basic ...` value (what dfget sends the daemon).
    pub fn from_basic_header(value: &HeaderValue) -> Option<Self> {
        let v = value.to_str().ok()?;
        let (scheme, rest) = v.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        Self::from_user_pass(&base64_decode(rest.trim())?)
    }

    /// `user:password` bytes (the decoded `auth` of docker's config).
    fn from_user_pass(raw: &[u8]) -> Option<Self> {
        let s = std::str::from_utf8(raw).ok()?;
        let (u, p) = s.split_once(':')?;
        (!u.is_empty()).then(|| Self::new(u, p))
    }
}

/// Where docker keeps its client config: `$DOCKER_CONFIG/config.json`, else
/// `$HOME/.docker/config.json`.
pub fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(Path::new(&dir).join("config.json"));
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(Path::new(&home).join(".docker/config.json"))
}

/// Credentials for `registry` (`host[:port]`) from the docker config at `path`; `Ok(None)` when
/// the file does not exist or has no entry for the registry. Credential helpers
/// (`credsStore`, `credHelpers`) are not run.
pub fn docker_config_credentials(
    path: &Path,
    registry: &str,
) -> Result<Option<Credentials>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    credentials_in_docker_config(&text, registry).map_err(|e| format!("{}: {e}", path.display()))
}

/// The `auths` entry for `registry` in a docker config.json text.
fn credentials_in_docker_config(text: &str, registry: &str) -> Result<Option<Credentials>, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let Some(auths) = v.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    let want = normalize_registry(registry);
    for (key, entry) in auths {
        if normalize_registry(key) != want {
            continue;
        }
        if let Some(auth) = entry
            .get("auth")
            .and_then(|a| a.as_str())
            .filter(|a| !a.is_empty())
        {
            let creds = base64_decode(auth)
                .as_deref()
                .and_then(Credentials::from_user_pass)
                .ok_or_else(|| format!("auths[{key:?}].auth is not base64 of user:password"))?;
            return Ok(Some(creds));
        }
        let user = entry.get("username").and_then(|u| u.as_str());
        let pass = entry.get("password").and_then(|p| p.as_str());
        if let (Some(u), Some(p)) = (user, pass)
            && !u.is_empty()
        {
            return Ok(Some(Credentials::new(u, p)));
        }
    }
    Ok(None)
}

/// `https://host:port/v1/` and `host:port` are the same registry; Docker Hub has several names.
fn normalize_registry(key: &str) -> String {
    let k = key.trim();
    let k = k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
        .unwrap_or(k);
    let host = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        _ => host,
    }
}

/// A `WWW-Authenticate` challenge we can answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// Get a token from `realm` (with `service` and `scope`), then send `Bearer <token>`.
    Bearer {
        /// Token server URL.
        realm: String,
        /// `service` parameter for the token server.
        service: Option<String>,
        /// `scope` parameter, e.g. `repository:sif/app:pull`.
        scope: Option<String>,
    },
    /// Send `Basic base64(user:password)`.
    Basic,
    /// A scheme we do not speak.
    Other(String),
}

/// The challenge we answer among the `WWW-Authenticate` values: Bearer first, then Basic.
pub fn pick_challenge<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Challenge> {
    let all: Vec<Challenge> = values.into_iter().filter_map(parse_challenge).collect();
    all.iter()
        .find(|c| matches!(c, Challenge::Bearer { .. }))
        .or_else(|| all.iter().find(|c| matches!(c, Challenge::Basic)))
        .or_else(|| all.first())
        .cloned()
}

/// Parse one `WWW-Authenticate` value: `Scheme k="v", k2=v2`.
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, rest) = match value.split_once(char::is_whitespace) {
        Some((s, r)) => (s, r),
        None => (value, ""),
    };
    if scheme.is_empty() {
        return None;
    }
    let params = parse_params(rest);
    let get = |k: &str| {
        params
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" => Some(Challenge::Bearer {
            realm: get("realm")?,
            service: get("service"),
            scope: get("scope"),
        }),
        "basic" => Some(Challenge::Basic),
        _ => Some(Challenge::Other(scheme.to_string())),
    }
}

/// `k="v, with commas", k2=v2` into pairs; quoted values may escape with `\`.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() && chars.peek().is_none() {
            return out;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                val.push(n);
                            }
                        }
                        '"' => break,
                        c => val.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    val.push(c);
                    chars.next();
                }
            }
        }
        let key = key.trim().to_string();
        if !key.is_empty() {
            out.push((key, val.trim().to_string()));
        }
        if chars.peek().is_none() {
            return out;
        }
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard (or URL-safe) base64, padding optional; `None` when it is not base64.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim().trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    (bits < 6).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("tester:testpass", "dGVzdGVyOnRlc3RwYXNz"),
        ] {
            assert_eq!(base64_encode(raw.as_bytes()), enc);
            assert_eq!(base64_decode(enc).unwrap(), raw.as_bytes());
        }
        assert_eq!(base64_decode("Zm9v\n").unwrap(), b"foo");
        assert_eq!(base64_decode("Zg").unwrap(), b"f");
        assert!(base64_decode("Z").is_none());
        assert!(base64_decode("**").is_none());
    }

    #[test]
    fn credentials_never_print_the_password() {
        let c = Credentials::new("me", "s3cret");
        assert_eq!(format!("{c:?}"), "Credentials(me:***)");
        let h = c.basic_header();
        assert!(h.is_sensitive());
        assert!(!format!("{h:?}").contains("bWU6czNjcmV0"));
        assert_eq!(Credentials::from_basic_header(&h), Some(c));
        assert_eq!(
            Credentials::from_basic_header(&HeaderValue::from_static("Bearer x")),
            None
        );
    }

    #[test]
    fn docker_config_entries() {
        let cfg = r#"{
            "auths": {
                "https://registry.test:5000/v1/": {"auth": "dGVzdGVyOnRlc3RwYXNz"},
                "other.test": {"username": "u", "password": "p:with:colons"},
                "https://index.docker.io/v1/": {"auth": "aHViOmh1YnBhc3M="},
                "empty.test": {}
            },
            "credsStore": "desktop"
        }"#;
        let get = |r: &str| credentials_in_docker_config(cfg, r).unwrap();
        assert_eq!(
            get("registry.test:5000"),
            Some(Credentials::new("tester", "testpass"))
        );
        assert_eq!(get("registry.test"), None, "the port is part of the key");
        assert_eq!(
            get("other.test"),
            Some(Credentials::new("u", "p:with:colons"))
        );
        assert_eq!(get("docker.io"), Some(Credentials::new("hub", "hubpass")));
        assert_eq!(get("empty.test"), None);
        assert_eq!(get("nowhere.test"), None);
        let bad =
            credentials_in_docker_config(r#"{"auths":{"x":{"auth":"%%"}}}"#, "x").unwrap_err();
        assert!(bad.contains("auths[\"x\"].auth"), "{bad}");
        assert!(credentials_in_docker_config("{", "x").is_err());
        assert_eq!(credentials_in_docker_config("{}", "x").unwrap(), None);
    }

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.test/token",service="registry.test",scope="repository:a/b:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.test/token".into(),
                service: Some("registry.test".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge("bearer realm=http://t/x, service=s"),
            Some(Challenge::Bearer {
                realm: "http://t/x".into(),
                service: Some("s".into()),
                scope: None,
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="dragonfly \"tests\"""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Basic"), Some(Challenge::Basic));
        assert_eq!(
            parse_challenge("Negotiate"),
            Some(Challenge::Other("Negotiate".into()))
        );
        assert_eq!(parse_challenge("Bearer service=x"), None, "no realm");
        assert_eq!(
            pick_challenge(["Basic realm=x", r#"Bearer realm="r""#]),
            Some(Challenge::Bearer {
                realm: "r".into(),
                service: None,
                scope: None
            })
        );
    }
}
