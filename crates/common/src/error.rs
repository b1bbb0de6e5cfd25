//! What every error of the workspace shares: whether trying again can help ([`Retry`]), and
//! the text of an error with its causes, made only at the edges (log lines, gRPC statuses,
//! CLI messages) by [`chain`]. Errors keep their cause as a `#[source]`; code that must know
//! what went wrong asks [`is_caused_by`] instead of reading the text.

use std::error::Error;

/// Whether a failed attempt is worth making again, and where (pingora's `RetryType`, with the
/// peer-to-peer case of another holder added).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Retry {
    /// Trying again cannot help: the request itself is wrong (a 404, a digest mismatch, a bad
    /// URL), or the local side failed (storage).
    No,
    /// The same peer or origin may succeed on another attempt (a timeout, a reset connection,
    /// a 503 or 429).
    Same,
    /// This peer cannot give it (it lied about a piece, lost it, or is gone); another holder
    /// or the origin may.
    Other,
}

impl Retry {
    /// Whether any kind of retry may help.
    pub fn may_help(self) -> bool {
        self != Retry::No
    }

    /// The retry class of an HTTP status answered by an origin or a peer: 408, 429 and the 5xx
    /// may pass; the other statuses will not change on a second ask.
    pub fn for_status(code: u16) -> Retry {
        if code >= 500 || code == 429 || code == 408 {
            Retry::Same
        } else {
            Retry::No
        }
    }
}

/// An error and its causes on one line: `a: b: c` (a cause whose text the line already holds
/// is left out, so `#[error("...: {source}")]` variants do not repeat themselves).
pub fn chain(err: &dyn Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

/// Whether `err` or one of its causes is an `E` (linkerd's `is_caused_by`).
pub fn is_caused_by<E: Error + 'static>(err: &(dyn Error + 'static)) -> bool {
    find_cause::<E>(err).is_some()
}

/// The first `E` among `err` and its causes.
pub fn find_cause<'a, E: Error + 'static>(err: &'a (dyn Error + 'static)) -> Option<&'a E> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading {path}")]
    struct Outer {
        path: String,
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn chain_names_every_cause_once() {
        let e = Outer {
            path: "/x".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
        };
        assert_eq!(chain(&e), "reading /x: gone");
        #[derive(Debug, thiserror::Error)]
        #[error("reading {path}: {source}")]
        struct Repeats {
            path: String,
            source: std::io::Error,
        }
        let e = Repeats {
            path: "/y".into(),
            source: std::io::Error::other("denied"),
        };
        assert_eq!(chain(&e), "reading /y: denied");
    }

    #[test]
    fn causes_are_found_by_type_not_text() {
        let e = Outer {
            path: "/x".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
        };
        assert!(is_caused_by::<std::io::Error>(&e));
        assert!(is_caused_by::<Outer>(&e));
        assert!(!is_caused_by::<std::fmt::Error>(&e));
        assert_eq!(
            find_cause::<std::io::Error>(&e).map(|e| e.kind()),
            Some(std::io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn statuses_retry_only_where_a_second_ask_can_differ() {
        assert_eq!(Retry::for_status(503), Retry::Same);
        assert_eq!(Retry::for_status(429), Retry::Same);
        assert_eq!(Retry::for_status(408), Retry::Same);
        assert_eq!(Retry::for_status(404), Retry::No);
        assert_eq!(Retry::for_status(401), Retry::No);
        assert!(!Retry::No.may_help());
        assert!(Retry::Other.may_help());
    }
}
