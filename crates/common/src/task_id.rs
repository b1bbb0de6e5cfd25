//! Task ids: the 64-hex-character name of one piece of content.
//!
//! A [`TaskId`] is always exactly 64 lowercase hex characters. That invariant is checked by
//! [`FromStr`] (and by deserialization), so a `TaskId` is safe to use as a file name and safe to
//! accept from the network: it can never contain `/`, `..` or anything else a path would mind.

use crate::digest::Digest;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest as _;
use std::fmt;
use std::str::FromStr;

/// Length of a task id in hex characters.
pub const TASK_ID_LEN: usize = 64;

/// Domain tag hashed first for ids derived from URLs, so they can never equal a blob id.
const URL_DOMAIN: &[u8] = b"dragonfly-task-url-v1";
/// Domain tag hashed first for ids derived from OCI blob digests.
const BLOB_DOMAIN: &[u8] = b"dragonfly-task-blob-v2";

/// The id of a task: 64 lowercase hex characters (a sha256).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(String);

/// A string that is not a task id.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("task id {value:?} is not {TASK_ID_LEN} lowercase hex characters")]
pub struct TaskIdError {
    /// The rejected value, cut to 80 characters so a hostile peer cannot flood the logs.
    pub value: String,
}

impl TaskId {
    /// The id of the task that downloads `url`.
    ///
    /// The id is a sha256 over the URL with the query parameters named in
    /// `filtered_query_params` removed (other parameters keep their order and spelling), the
    /// `tag`, the `application` and the piece length. Every field is length-prefixed, so fields
    /// cannot run together (`("ab", "c")` and `("a", "bc")` give different ids). A URL that does
    /// not parse is hashed as written.
    pub fn for_url(
        url: &str,
        tag: &str,
        application: &str,
        piece_length: Option<u64>,
        filtered_query_params: &[String],
    ) -> TaskId {
        let url = normalize_url(url, filtered_query_params);
        let mut h = sha2::Sha256::new();
        field(&mut h, URL_DOMAIN);
        field(&mut h, url.as_bytes());
        field(&mut h, tag.as_bytes());
        field(&mut h, application.as_bytes());
        match piece_length {
            // A marker byte keeps `None` apart from every `Some(n)`.
            None => field(&mut h, b"-"),
            Some(n) => field(&mut h, &n.to_be_bytes()),
        }
        TaskId(hex::encode(h.finalize()))
    }

    /// The id of the task for an OCI blob (`/v2/<name>/blobs/sha256:<d>`) fetched from the origin
    /// of `url` (scheme, host and port): the same layer pulled from one registry through any
    /// repository, mirror setting or node is one task.
    ///
    /// The origin is part of the id so that a download in progress, whose length and bytes are
    /// not verified yet, is never shared with a requester who asked another origin: a client
    /// pointing the daemon at an origin it controls cannot capture the layer for everyone else.
    /// Finished content, checked against the digest, is shared across origins by the daemon.
    pub fn for_blob(digest: &Digest, url: &str) -> TaskId {
        let mut h = sha2::Sha256::new();
        field(&mut h, BLOB_DOMAIN);
        field(&mut h, digest.to_string().as_bytes());
        field(&mut h, blob_origin(url).as_bytes());
        TaskId(hex::encode(h.finalize()))
    }

    /// The id blob tasks had before the origin was part of it (the digest alone). Tasks stored
    /// under it by an older daemon finished only when their content matched the digest, so the
    /// daemon still serves them by digest after an upgrade.
    pub fn legacy_blob_v1(digest: &Digest) -> TaskId {
        let mut h = sha2::Sha256::new();
        field(&mut h, b"dragonfly-task-blob-v1");
        field(&mut h, digest.to_string().as_bytes());
        TaskId(hex::encode(h.finalize()))
    }

    /// The id as 64 lowercase hex characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first two hex characters, used to shard content directories.
    pub fn shard(&self) -> &str {
        &self.0[..2]
    }
}

/// Feeds one length-prefixed field to the hasher.
fn field(h: &mut sha2::Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

/// The origin of a blob URL as hashed: `scheme://host:port`, lowercase, the port always
/// written; a URL that does not parse is its own origin.
pub fn blob_origin(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(u) => format!(
            "{}://{}:{}",
            u.scheme(),
            u.host_str().unwrap_or_default().to_ascii_lowercase(),
            u.port_or_known_default().unwrap_or(0)
        ),
        Err(_) => raw.to_string(),
    }
}

/// The URL as hashed: parsed and normalized, fragment dropped, filtered query params removed.
fn normalize_url(raw: &str, filtered: &[String]) -> String {
    let Ok(mut url) = url::Url::parse(raw) else {
        return raw.to_string();
    };
    url.set_fragment(None);
    if let Some(query) = url.query() {
        // Work on the raw `k=v` segments so kept params stay byte-for-byte as the user wrote them.
        let kept: Vec<&str> = query
            .split('&')
            .filter(|segment| {
                let key = url::form_urlencoded::parse(segment.as_bytes())
                    .next()
                    .map(|(k, _)| k.into_owned())
                    .unwrap_or_default();
                !filtered.contains(&key)
            })
            .collect();
        let kept = kept.join("&");
        url.set_query(if kept.is_empty() { None } else { Some(&kept) });
    }
    url.into()
}

impl FromStr for TaskId {
    type Err = TaskIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() == TASK_ID_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(TaskId(s.to_string()))
        } else {
            Err(TaskIdError {
                value: s.chars().take(80).collect(),
            })
        }
    }
}

impl TryFrom<String> for TaskId {
    type Error = TaskIdError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskId({})", self.0)
    }
}

impl AsRef<str> for TaskId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for TaskId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TaskId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(url: &str) -> TaskId {
        TaskId::for_url(url, "", "", None, &[])
    }

    #[test]
    fn ids_are_64_lowercase_hex() {
        let t = TaskId::for_url("https://example.com/a.bin", "t", "app", Some(4 << 20), &[]);
        assert_eq!(t.as_str().len(), 64);
        assert_eq!(t.as_str().parse::<TaskId>().unwrap(), t);
        assert_eq!(t.shard(), &t.as_str()[..2]);
    }

    #[test]
    fn rejects_what_is_not_an_id() {
        let good = "a".repeat(64);
        assert!(good.parse::<TaskId>().is_ok());
        for bad in [
            "../x".to_string(),
            format!("../{}", &good[3..]),
            format!("{}/..", &good[3..]),
            "A".repeat(64),
            "a".repeat(63),
            "a".repeat(65),
            "g".repeat(64),
            String::new(),
            format!("{}\0", &good[1..]),
            format!(" {}", &good[1..]),
        ] {
            assert!(bad.parse::<TaskId>().is_err(), "{bad:?} accepted");
        }
        let e = "../x".parse::<TaskId>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "task id \"../x\" is not 64 lowercase hex characters"
        );
        assert_eq!(
            "x".repeat(1000).parse::<TaskId>().unwrap_err().value.len(),
            80
        );
    }

    #[test]
    fn deserialization_validates() {
        let t = id("http://a/b");
        let back: TaskId = yaml_serde::from_str(&format!("\"{t}\"")).unwrap();
        assert_eq!(back, t);
        assert!(yaml_serde::from_str::<TaskId>("\"../etc/passwd\"").is_err());
    }

    #[test]
    fn filtered_params_are_ignored_and_order_kept() {
        let f = vec!["X-Amz-Signature".to_string(), "Expires".to_string()];
        let a = TaskId::for_url(
            "https://h/o?a=1&X-Amz-Signature=abc&b=2&Expires=9",
            "",
            "",
            None,
            &f,
        );
        let b = TaskId::for_url("https://h/o?a=1&b=2&X-Amz-Signature=zzz", "", "", None, &f);
        let c = TaskId::for_url("https://h/o?a=1&b=2", "", "", None, &[]);
        assert_eq!(a, b);
        assert_eq!(a, c);
        // Order of the kept params matters.
        assert_ne!(c, id("https://h/o?b=2&a=1"));
        // Only filtered everything: same as no query.
        let only = TaskId::for_url("https://h/o?Expires=1", "", "", None, &f);
        assert_eq!(only, id("https://h/o"));
        // Kept params are not re-encoded.
        assert_eq!(
            normalize_url("https://h/o?a=b%20c&Expires=1", &f),
            "https://h/o?a=b%20c"
        );
        assert_eq!(normalize_url("HTTPS://H:443/o#frag", &[]), "https://h/o");
    }

    #[test]
    fn fields_cannot_run_together() {
        assert_ne!(
            TaskId::for_url("http://h/a", "ab", "c", None, &[]),
            TaskId::for_url("http://h/a", "a", "bc", None, &[])
        );
        assert_ne!(
            TaskId::for_url("http://h/a", "", "", None, &[]),
            TaskId::for_url("http://h/a", "", "", Some(0), &[])
        );
        assert_ne!(
            TaskId::for_url("not a url", "", "", None, &[]),
            TaskId::for_url("not a ur", "l", "", None, &[])
        );
    }

    #[test]
    fn blob_ids_depend_on_the_digest_and_the_origin_only() {
        let d1: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        let d2: Digest = format!("sha256:{}", "cd".repeat(32)).parse().unwrap();
        let at =
            |d: &Digest, origin: &str| TaskId::for_blob(d, &format!("{origin}/v2/x/blobs/{d}"));
        // Any repository on one registry, default port written or not, any case: one task.
        assert_eq!(
            at(&d1, "https://r.test"),
            TaskId::for_blob(&d1, &format!("https://R.test:443/v2/other/repo/blobs/{d1}"))
        );
        assert_ne!(at(&d1, "https://r.test"), at(&d2, "https://r.test"));
        // Another host, port or scheme is another origin.
        assert_ne!(at(&d1, "https://r.test"), at(&d1, "https://evil.test"));
        assert_ne!(at(&d1, "https://r.test"), at(&d1, "https://r.test:5000"));
        assert_ne!(at(&d1, "https://r.test"), at(&d1, "http://r.test"));
        // A blob id never equals the id of a URL spelling the digest.
        assert_ne!(at(&d1, "https://r.test"), id(&d1.to_string()));
        assert_eq!(blob_origin("HTTP://Reg.Test/v2/"), "http://reg.test:80");
        // The id older daemons stored blobs under: the digest alone, as hashed then (value
        // computed apart from this code: sha256 of the length-prefixed domain and digest).
        assert_eq!(
            TaskId::legacy_blob_v1(&d1).as_str(),
            "f9c93c4027c7ccaf04eb52e73c189c448f1c6dc6166f990e1402ab72cd312e91"
        );
    }

    proptest! {
        #[test]
        fn parse_round_trip(bytes in proptest::array::uniform32(any::<u8>())) {
            let s = hex::encode(bytes);
            let t: TaskId = s.parse().unwrap();
            prop_assert_eq!(t.to_string(), s.clone());
            prop_assert_eq!(t.as_str().parse::<TaskId>().unwrap(), t);
        }

        #[test]
        fn arbitrary_strings_parse_only_when_valid(s in ".{0,80}") {
            let valid = s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            prop_assert_eq!(s.parse::<TaskId>().is_ok(), valid);
        }

        #[test]
        fn different_inputs_give_different_ids(
            p1 in "[a-z]{1,8}", p2 in "[a-z]{1,8}",
            tag1 in "[a-z]{0,4}", tag2 in "[a-z]{0,4}",
            app1 in "[a-z]{0,4}", app2 in "[a-z]{0,4}",
            pl1 in proptest::option::of(1u64..1 << 30), pl2 in proptest::option::of(1u64..1 << 30),
        ) {
            let a = TaskId::for_url(&format!("https://h/{p1}"), &tag1, &app1, pl1, &[]);
            let b = TaskId::for_url(&format!("https://h/{p2}"), &tag2, &app2, pl2, &[]);
            let same_input = p1 == p2 && tag1 == tag2 && app1 == app2 && pl1 == pl2;
            prop_assert_eq!(a == b, same_input);
        }

        #[test]
        fn filtered_param_values_never_matter(v1 in "[a-zA-Z0-9%]{0,12}", v2 in "[a-zA-Z0-9%]{0,12}", keep in "[a-z0-9]{0,6}") {
            let f = vec!["sig".to_string()];
            let a = TaskId::for_url(&format!("https://h/o?k={keep}&sig={v1}"), "", "", None, &f);
            let b = TaskId::for_url(&format!("https://h/o?sig={v2}&k={keep}"), "", "", None, &f);
            prop_assert_eq!(a, b);
        }
    }
}
