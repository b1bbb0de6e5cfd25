//! Credentials written into a URL (`https://user:password@host/...`): taken out before the URL
//! is logged, stored, sent to a scheduler or made part of a task id.

/// Decode `%XX` escapes (invalid ones are kept as written).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A URL's `user:password@`, taken out: the URL without it, and the decoded user and password.
/// `None` when the URL carries no credentials (or does not parse): use it as it is.
pub fn split_userinfo(raw: &str) -> Option<(String, String, String)> {
    let mut u = url::Url::parse(raw).ok()?;
    if u.username().is_empty() && u.password().is_none() {
        return None;
    }
    let user = percent_decode(u.username());
    let password = percent_decode(u.password().unwrap_or(""));
    u.set_username("").ok()?;
    u.set_password(None).ok()?;
    Some((u.to_string(), user, password))
}

/// The URL as it may be printed: any `user:password@` replaced by `***@`.
pub fn redact(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_password(None);
            let _ = u.set_username("***");
            u.to_string()
        }
        _ => raw.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_out_of_the_url_decoded() {
        let (url, user, pw) = split_userinfo("https://me:p%40ss%3Aw@r.test:5000/a/b?x=1").unwrap();
        assert_eq!(url, "https://r.test:5000/a/b?x=1");
        assert_eq!((user.as_str(), pw.as_str()), ("me", "p@ss:w"));
        assert_eq!(split_userinfo("https://r.test/a"), None);
        assert_eq!(split_userinfo("not a url"), None);
        let (url, user, pw) = split_userinfo("http://token@h/x").unwrap();
        assert_eq!(
            (url.as_str(), user.as_str(), pw.as_str()),
            ("http://h/x", "token", "")
        );
    }

    #[test]
    fn redacted_urls_keep_everything_but_the_secret() {
        assert_eq!(redact("https://me:pw@r.test/a"), "https://***@r.test/a");
        assert_eq!(redact("https://r.test/a"), "https://r.test/a");
        assert_eq!(percent_decode("%41%4"), "A%4");
    }
}
