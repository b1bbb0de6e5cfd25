//! Checks on the user's URL and output path, and the temporary file the bytes go to first.

use super::publish::{OutputKind, inspect, part_name, publish, remove_stale_parts, write_in_place};
use crate::source::error::DownloadError;
use std::path::{Path, PathBuf};

/// Parse a download URL; it must be absolute and http or https.
pub fn validate_url(raw: &str) -> Result<url::Url, DownloadError> {
    let url = url::Url::parse(raw).map_err(|source| DownloadError::InvalidUrl {
        url: raw.to_string(),
        source,
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
            // What the parser says of `http:///`; a special scheme without a host.
            source: url::ParseError::EmptyHost,
        });
    }
    Ok(url)
}

/// A temporary output file that is removed unless it was published.
#[derive(Debug)]
pub struct TempOutput {
    /// Where the bytes are written.
    pub path: PathBuf,
    /// Where they go when the download is verified.
    pub target: PathBuf,
    kind: OutputKind,
    overwrite: bool,
    committed: bool,
}

impl TempOutput {
    /// Put the finished file at its final name: renamed there (without `--overwrite`, failing
    /// if something appeared there meanwhile), or copied into a FIFO or character device.
    pub fn commit(mut self) -> Result<(), DownloadError> {
        match self.kind {
            OutputKind::Replace => {
                publish(&self.path, &self.target, self.overwrite).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        DownloadError::OutputExists(self.target.clone())
                    } else {
                        DownloadError::io("renaming the download to", &self.target, e)
                    }
                })?;
                self.committed = true;
            }
            // The temporary file is removed on drop once its bytes are in the target.
            OutputKind::InPlace => {
                write_in_place(&self.path, &self.target, &|| true)
                    .map_err(|e| DownloadError::io("writing the download into", &self.target, e))?;
            }
        }
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

/// Check `output` can be written and pick a hidden temporary name for it (beside it, or in the
/// temp dir for a FIFO or character device), removing the stale temporary files of dfget runs
/// to the same output that were killed.
///
/// Fails when the directory is missing, `output` is a directory, or something is there and
/// `overwrite` is false (see [`inspect`]). Nothing is created yet.
pub fn prepare_output(output: &Path, overwrite: bool) -> Result<TempOutput, DownloadError> {
    let kind = inspect(output, overwrite)?;
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
    // Not beside a device: that is often /dev.
    let tmp_dir = match kind {
        OutputKind::Replace => dir,
        OutputKind::InPlace => std::env::temp_dir(),
    };
    for stale in remove_stale_parts(&tmp_dir, &name, "dfget") {
        tracing::info!(dir = %tmp_dir.display(), file = %stale, "removed the temporary file of a killed dfget");
    }
    Ok(TempOutput {
        path: tmp_dir.join(part_name(&name, "dfget")),
        target: output.to_path_buf(),
        kind,
        overwrite,
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
        let pid = format!("dfget-{}-", std::process::id());
        assert!(
            t.path.to_string_lossy().contains(&pid),
            "{}",
            t.path.display()
        );
        std::fs::write(&t.path, b"new").unwrap();
        let tmp = t.path.clone();
        drop(t);
        assert!(!tmp.exists(), "an uncommitted temp file is removed");
        assert_eq!(std::fs::read(&existing).unwrap(), b"x");
    }

    #[test]
    fn commit_without_overwrite_fails_when_the_output_appeared_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("f");
        let t = prepare_output(&out, false).unwrap();
        std::fs::write(&t.path, b"mine").unwrap();
        std::fs::write(&out, b"theirs").unwrap();
        let tmp = t.path.clone();
        assert!(matches!(t.commit(), Err(DownloadError::OutputExists(p)) if p == out));
        assert_eq!(std::fs::read(&out).unwrap(), b"theirs");
        assert!(!tmp.exists(), "the loser's temporary file is removed");
    }
}
