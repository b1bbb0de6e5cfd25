//! The source version a task's bytes are pinned to (its `ETag` / `Last-Modified`): learnt from
//! the probe, the parent the layout came from, or the first ranged response; every later range
//! is asked with `If-Range`, and a response of another version fails the task (never a mix).

use crate::source::http::{content_range, validator_of};
use dragonfly_common::validator::SourceValidator;
use http::StatusCode;
use std::sync::Arc;

/// The source version a task's bytes are from, once known; shared with its source lanes.
pub(super) type Version = Arc<VersionState>;

/// The version a task's bytes are pinned to (`pinned: false`: none, its digest decides).
#[derive(Default)]
pub(super) struct VersionState {
    pub(super) pinned: bool,
    pub(super) known: std::sync::Mutex<Option<SourceValidator>>,
}

pub(super) fn current_version(v: &Version) -> Option<SourceValidator> {
    v.known.lock().ok().and_then(|g| g.clone())
}

/// Adopt `new` as the task's version unless one is known already.
pub(super) fn set_version(v: &Version, new: Option<SourceValidator>) {
    if let (true, Ok(mut g), Some(new)) = (v.pinned, v.known.lock(), new.filter(|n| !n.is_empty()))
        && g.is_none()
    {
        *g = Some(new);
    }
}

/// Why a source response is of another version than the task's: another validator, or
/// another total length. A first response with a validator sets the task's version.
pub(super) fn changed(
    v: &Version,
    status: StatusCode,
    headers: &http::HeaderMap,
    content_length: u64,
) -> Option<String> {
    if let Some((_, _, Some(total))) = content_range(headers)
        && total != content_length
    {
        return Some(format!("length {content_length} -> {total}"));
    }
    if status == StatusCode::OK
        && let Some(len) = crate::source::http::content_length(headers)
        && len != content_length
    {
        return Some(format!("length {content_length} -> {len}"));
    }
    let got = validator_of(headers);
    match current_version(v) {
        Some(known) => known.differs(&got),
        None => {
            set_version(v, Some(got));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut b = http::Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        reqwest::Response::from(b.body(Vec::<u8>::new()).unwrap())
    }

    fn state(pinned: bool) -> Version {
        Arc::new(VersionState {
            pinned,
            known: std::sync::Mutex::new(None),
        })
    }

    #[test]
    fn the_first_version_seen_is_kept_and_another_one_is_a_change() {
        let v = state(true);
        let r1 = resp(
            206,
            &[("etag", "\"v1\""), ("content-range", "bytes 0-9/100")],
        );
        assert_eq!(changed(&v, r1.status(), r1.headers(), 100), None, "adopted");
        assert_eq!(
            current_version(&v).and_then(|v| v.etag),
            Some("\"v1\"".into())
        );
        let r2 = resp(200, &[("etag", "\"v2\""), ("content-length", "100")]);
        assert!(
            changed(&v, r2.status(), r2.headers(), 100)
                .unwrap()
                .contains("ETag")
        );
        let r3 = resp(
            206,
            &[("etag", "\"v1\""), ("content-range", "bytes 0-9/120")],
        );
        assert!(
            changed(&v, r3.status(), r3.headers(), 100)
                .unwrap()
                .contains("length 100 -> 120")
        );
    }

    #[test]
    fn content_named_by_its_digest_is_not_pinned() {
        let v = state(false);
        set_version(
            &v,
            Some(SourceValidator {
                etag: Some("\"a\"".into()),
                last_modified: None,
            }),
        );
        assert_eq!(current_version(&v), None);
        let r = resp(
            206,
            &[("etag", "\"b\""), ("content-range", "bytes 0-9/100")],
        );
        assert_eq!(
            changed(&v, r.status(), r.headers(), 100),
            None,
            "redirected storage's ETag is no change"
        );
    }
}
