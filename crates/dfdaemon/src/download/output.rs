//! Checks on the user's URL and output path, and the temporary file the bytes go to first.

use super::DownloadError;
use std::path::{Path, PathBuf};

/// Parse a download URL; it must be absolute and http or https.
pub fn validate_url(raw: &str) -> Result<url::Url, DownloadError> {
    let url = url::Url::parse(raw).map_err(|e| DownloadError::InvalidUrl {
        url: raw.to_string(),
        reason: e.to_string(),
    })?;
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(DownloadError::UnsupportedScheme {
                url: raw.to_string(),
                scheme: other.to_string(),
            });
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(DownloadError::InvalidUrl {
            url: raw.to_string(),
            reason: "no host".to_string(),
        });
    }
    Ok(url)
}

/// A temporary output file that is removed unless it was renamed into place.
#[derive(Debug)]
pub struct TempOutput {
    /// Where the bytes are written.
    pub path: PathBuf,
    /// Where they go when the download is verified.
    pub target: PathBuf,
    committed: bool,
}

impl TempOutput {
    /// Move the finished file to its final name.
    pub fn commit(mut self) -> Result<(), DownloadError> {
        std::fs::rename(&self.path, &self.target)
            .map_err(|e| DownloadError::io("renaming the download to", &self.target, e))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for TempOutput {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Check `output` can be written and pick a hidden temporary name beside it.
///
/// Fails when the directory is missing, `output` is a directory, or it exists and
/// `overwrite` is false. Nothing is created yet.
pub fn prepare_output(output: &Path, overwrite: bool) -> Result<TempOutput, DownloadError> {
    if output.is_dir() {
        return Err(DownloadError::OutputIsDir(output.to_path_buf()));
    }
    if output.exists() && !overwrite {
        return Err(DownloadError::OutputExists(output.to_path_buf()));
    }
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(DownloadError::OutputDirMissing(dir));
    }
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| DownloadError::OutputIsDir(output.to_path_buf()))?;
    let tmp = dir.join(format!(".{name}.dfget-{:016x}.part", rand::random::<u64>()));
    Ok(TempOutput {
        path: tmp,
        target: output.to_path_buf(),
        committed: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(validate_url("http://example.com/a").is_ok());
        assert!(matches!(
            validate_url("example.com/a"),
            Err(DownloadError::InvalidUrl { .. })
        ));
        assert!(matches!(
            validate_url("/just/a/path"),
            Err(DownloadError::InvalidUrl { .. })
        ));
        let e = validate_url("ftp://example.com/a").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unsupported scheme \"ftp\" in ftp://example.com/a (supported: http, https, oras)"
        );
    }

    #[test]
    fn output_paths() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope/file");
        assert!(matches!(
            prepare_output(&missing, false),
            Err(DownloadError::OutputDirMissing(p)) if p == dir.path().join("nope")
        ));
        assert!(matches!(
            prepare_output(dir.path(), true),
            Err(DownloadError::OutputIsDir(_))
        ));
        let existing = dir.path().join("f");
        std::fs::write(&existing, b"x").unwrap();
        assert!(matches!(
            prepare_output(&existing, false),
            Err(DownloadError::OutputExists(_))
        ));
        let t = prepare_output(&existing, true).unwrap();
        assert_eq!(t.path.parent(), Some(dir.path()));
        std::fs::write(&t.path, b"new").unwrap();
        let tmp = t.path.clone();
        drop(t);
        assert!(!tmp.exists(), "an uncommitted temp file is removed");
        assert_eq!(std::fs::read(&existing).unwrap(), b"x");
    }
}
