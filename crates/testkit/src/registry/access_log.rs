//! Parsing distribution's access log (gorilla `CombinedLoggingHandler`, written to stdout).
//!
//! One line per finished request, measured with distribution 2.8.2:
//!
//! ```text
//! 127.0.0.1 - - [23/Nov/2026:23:32:12 +0000] "GET /v2/foo/blobs/sha256:2cf2… HTTP/2.0" 206 2 "" "curl/7.88.1"
//! ```
//!
//! The number after the status is the count of body bytes written (0 for HEAD; a Range answer
//! counts what it sent). The user field is always `-`: gorilla logs only a user given in the URL,
//! never the Basic-auth one. The line is written after the handler returns,
//! so it can trail the client's last byte by a moment: see [`super::Registry::wait_for_requests`].

/// One request from the registry's access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    /// HTTP method (`GET`, `HEAD`, ...).
    pub method: String,
    /// Request URI: path and query (`/v2/repo/blobs/sha256:...`).
    pub path: String,
    /// Response status.
    pub status: u16,
    /// Response body bytes written.
    pub bytes: u64,
    /// `User-Agent` header.
    pub user_agent: String,
}

impl LoggedRequest {
    /// The path without its query string.
    pub fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or_default()
    }

    /// The digest of a `/v2/<repo>/blobs/<digest>` request (any method), if it is one.
    pub fn blob_digest(&self) -> Option<&str> {
        let rest = self.path_only().strip_prefix("/v2/")?;
        let (_, digest) = rest.rsplit_once("/blobs/")?;
        (!digest.is_empty() && !digest.contains('/') && digest != "uploads").then_some(digest)
    }

    /// The repository and reference of a `/v2/<repo>/manifests/<ref>` request, if it is one.
    pub fn manifest_ref(&self) -> Option<(&str, &str)> {
        let rest = self.path_only().strip_prefix("/v2/")?;
        let (repo, reference) = rest.rsplit_once("/manifests/")?;
        (!reference.is_empty() && !reference.contains('/')).then_some((repo, reference))
    }

    /// A GET of the blob `digest` that served content (200 or 206).
    pub fn is_blob_get_of(&self, digest: &str) -> bool {
        self.method == "GET"
            && matches!(self.status, 200 | 206)
            && self.blob_digest() == Some(digest)
    }
}

/// Parse every access-log line of `text`; other lines (the registry's own logging) are skipped.
pub fn parse_access_log(text: &str) -> Vec<LoggedRequest> {
    text.lines().filter_map(parse_line).collect()
}

/// `HOST - USER [DATE] "METHOD URI PROTO" STATUS BYTES "REFERER" "UA"`, or `None`.
fn parse_line(line: &str) -> Option<LoggedRequest> {
    let (head, rest) = line.split_once(" [")?;
    // `HOST IDENT USER`
    (head.split(' ').count() == 3).then_some(())?;
    let (_date, rest) = rest.split_once("] \"")?;
    let (request, rest) = rest.split_once("\" ")?;
    let mut req = request.split(' ');
    let method = req.next()?.to_string();
    let path = req.next()?.to_string();
    req.next()?.starts_with("HTTP/").then_some(())?;
    let mut tail = rest.splitn(3, ' ');
    let status = tail.next()?.parse().ok()?;
    let bytes = tail.next()?.parse().ok()?;
    let quoted = tail.next().unwrap_or_default();
    // `"REFERER" "UA"`; the agent is the last quoted field.
    let user_agent = quoted
        .strip_suffix('"')
        .and_then(|s| s.rsplit_once(" \""))
        .map(|(_, ua)| ua.replace("\\\"", "\""))
        .unwrap_or_default();
    Some(LoggedRequest {
        method,
        path,
        status,
        bytes,
        user_agent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn parses_measured_lines_and_skips_app_logs() {
        let log = format!(
            "127.0.0.1 - - [23/Nov/2026:23:32:08 +0000] \"GET /v2/ HTTP/2.0\" 200 2 \"\" \"curl/7.88.1\"\n\
             time=\"2026-11-23T23:32:05Z\" level=info msg=\"listening on 127.0.0.1:15999, tls\"\n\
             127.0.0.1 - tester [23/Nov/2026:23:32:12 +0000] \"GET /v2/foo/bar/blobs/{D} HTTP/1.1\" 206 2 \"\" \"containerd/1.6.20~ds1\"\n\
             127.0.0.1 - - [23/Nov/2026:23:32:12 +0000] \"HEAD /v2/foo/blobs/{D} HTTP/2.0\" 200 0 \"\" \"skopeo \\\"x\\\"\"\n\
             127.0.0.1 - - [23/Nov/2026:23:32:12 +0000] \"PUT /v2/foo/blobs/uploads/u?_state=a%3D&digest={D} HTTP/2.0\" 201 0 \"\" \"\"\n"
        );
        let reqs = parse_access_log(&log);
        assert_eq!(reqs.len(), 4);
        assert_eq!(reqs[0].path, "/v2/");
        assert_eq!((reqs[0].status, reqs[0].bytes), (200, 2));
        assert_eq!(reqs[0].user_agent, "curl/7.88.1");
        assert_eq!(reqs[1].blob_digest(), Some(D));
        assert!(reqs[1].is_blob_get_of(D));
        assert_eq!(reqs[2].user_agent, "skopeo \"x\"");
        assert!(!reqs[2].is_blob_get_of(D), "HEAD is not a GET");
        assert_eq!(reqs[3].blob_digest(), None, "an upload is not a blob fetch");
        assert_eq!(reqs[3].user_agent, "");
    }

    #[test]
    fn manifest_refs() {
        let line = "127.0.0.1 - - [x] \"GET /v2/a/b/manifests/v1 HTTP/1.1\" 200 9 \"\" \"ua\"";
        let r = parse_access_log(line).pop().unwrap();
        assert_eq!(r.manifest_ref(), Some(("a/b", "v1")));
        assert_eq!(r.blob_digest(), None);
    }
}
