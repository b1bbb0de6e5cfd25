//! One version of a source's content, as HTTP names it (`ETag`, `Last-Modified`): recorded with
//! a task so its later range requests carry `If-Range` and pieces of two versions never mix.

/// What identifies one version of a source's content: its `ETag` and `Last-Modified`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceValidator {
    /// The `ETag` header, as sent (weak ones keep their `W/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The `Last-Modified` header, as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
}

impl SourceValidator {
    /// Whether it names a version at all.
    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }

    /// Why `other` is another version than this one (`None`: not known to differ). ETags are
    /// compared when both have one, else `Last-Modified`.
    pub fn differs(&self, other: &SourceValidator) -> Option<String> {
        match (&self.etag, &other.etag) {
            (Some(a), Some(b)) if a != b => return Some(format!("ETag {a} -> {b}")),
            (Some(_), Some(_)) => return None,
            _ => {}
        }
        match (&self.last_modified, &other.last_modified) {
            (Some(a), Some(b)) if a != b => Some(format!("Last-Modified {a} -> {b}")),
            _ => None,
        }
    }
}

impl SourceValidator {
    /// The `If-Range` value for a later range of this version: a strong ETag, else the
    /// `Last-Modified` date (a weak ETag may not be used there).
    pub fn if_range(&self) -> Option<&str> {
        match &self.etag {
            Some(e) if !e.starts_with("W/") => Some(e),
            _ => self.last_modified.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(etag: Option<&str>, lm: Option<&str>) -> SourceValidator {
        SourceValidator {
            etag: etag.map(str::to_string),
            last_modified: lm.map(str::to_string),
        }
    }

    #[test]
    fn etags_decide_when_both_have_one_else_last_modified() {
        let a = v(Some("\"1\""), Some("Mon"));
        assert_eq!(a.differs(&v(Some("\"1\""), Some("Tue"))), None);
        assert!(
            a.differs(&v(Some("\"2\""), Some("Mon")))
                .unwrap()
                .contains("ETag")
        );
        assert!(
            a.differs(&v(None, Some("Tue")))
                .unwrap()
                .contains("Last-Modified")
        );
        assert_eq!(a.differs(&v(None, None)), None, "nothing to compare");
        assert!(v(None, None).is_empty());
    }

    #[test]
    fn if_range_prefers_a_strong_etag() {
        assert_eq!(v(Some("\"1\""), Some("Mon")).if_range(), Some("\"1\""));
        assert_eq!(v(Some("W/\"1\""), Some("Mon")).if_range(), Some("Mon"));
        assert_eq!(v(Some("W/\"1\""), None).if_range(), None);
    }
}
