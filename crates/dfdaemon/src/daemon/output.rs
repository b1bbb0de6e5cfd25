//! Writing a task's content to dfget's `-O` path while its pieces land.
//!
//! With `storage.multiplex` and the same file system the output is a hardlink to the stored
//! content (no bytes copied). Otherwise each piece is copied in the kernel
//! (`copy_file_range`) into a temporary file beside the output as soon as it is stored, so
//! when the last piece lands only that piece is left to copy. The temporary file is renamed to
//! the output at the end and removed on failure: the output never holds a partial file.

use std::fs::File;
use std::path::{Path, PathBuf};

/// How the output was produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// A hardlink to the stored content.
    Hardlink,
    /// A copy, piece by piece.
    Copy,
}

/// An output being assembled; removed on drop unless committed.
pub struct OutputWriter {
    tmp: PathBuf,
    out: PathBuf,
    copy: Option<(File, File)>,
    committed: bool,
}

impl OutputWriter {
    /// Start an output for `content` (a file of `len` bytes) at `out`.
    pub fn new(content: &Path, out: &Path, hardlink: bool, len: u64) -> std::io::Result<Self> {
        let dir = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(
            ".{name}.dfdaemon-{:016x}.part",
            rand::random::<u64>()
        ));
        // Built first, so a failure below removes the temporary file (Drop).
        let mut w = Self {
            tmp,
            out: out.to_path_buf(),
            copy: None,
            committed: false,
        };
        if hardlink && std::fs::hard_link(content, &w.tmp).is_ok() {
            return Ok(w);
        }
        let dst = File::create_new(&w.tmp)?;
        dst.set_len(len)?;
        w.copy = Some((File::open(content)?, dst));
        Ok(w)
    }

    /// How this output is produced.
    pub fn mode(&self) -> OutputMode {
        if self.copy.is_some() {
            OutputMode::Copy
        } else {
            OutputMode::Hardlink
        }
    }

    /// Copy the bytes `[offset, offset + len)` (a stored piece) into the output.
    pub fn piece(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        let Some((src, dst)) = &self.copy else {
            return Ok(());
        };
        let (mut off_in, mut off_out) = (offset, offset);
        let mut left = len;
        while left > 0 {
            let chunk = usize::try_from(left).unwrap_or(usize::MAX);
            let n =
                rustix::fs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), chunk)
                    .map_err(std::io::Error::from)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "content ended at byte {off_in} while copying to {}",
                        self.out.display()
                    ),
                ));
            }
            left -= n as u64;
        }
        Ok(())
    }

    /// Move the finished output into place.
    pub fn commit(mut self) -> std::io::Result<OutputMode> {
        std::fs::rename(&self.tmp, &self.out)?;
        self.committed = true;
        Ok(self.mode())
    }
}

impl Drop for OutputWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_pieces_in_any_order_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let content = dir.path().join("content");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&content, &data).unwrap();
        let out = dir.path().join("out");
        let mut w = OutputWriter::new(&content, &out, false, data.len() as u64).unwrap();
        assert_eq!(w.mode(), OutputMode::Copy);
        w.piece(4096, 4096).unwrap();
        w.piece(8192, 10_000 - 8192).unwrap();
        w.piece(0, 4096).unwrap();
        assert!(!out.exists(), "nothing at the output before commit");
        w.commit().unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), data);

        let linked = dir.path().join("linked");
        let w = OutputWriter::new(&content, &linked, true, data.len() as u64).unwrap();
        assert_eq!(w.mode(), OutputMode::Hardlink);
        drop(w);
        assert!(!linked.exists());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "no temporary files left: {names:?}");
    }
}
