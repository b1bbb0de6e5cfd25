//! Writing a task's content to dfget's `-O` path while its pieces land.
//!
//! With `storage.multiplex` and the same file system the output is a hardlink to the stored
//! content (no bytes copied). Otherwise each piece is copied in the kernel
//! (`copy_file_range`, which reflinks where the file system can) into a temporary file beside
//! the output as soon as it is stored, so when the last piece lands only that piece is left to
//! copy; across file systems (or where the kernel refuses) the copy falls back to read/write.
//! The temporary file is published at the end (see [`crate::standalone::publish`]: without
//! overwrite it never replaces anything) and removed on failure: the output never holds a
//! partial file. A FIFO or character device at the output is written into at the end instead.
//!
//! Each temporary file is recorded under `<dataDir>/output-parts/` before it is created, so a
//! daemon killed mid-download removes it at its next start ([`remove_recorded_parts`]).

use crate::standalone::publish::{
    OutputKind, copy_range, needs_plain_copy, part_name, publish, write_in_place,
};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The directory under the data dir recording the daemon's temporary output files.
pub const PARTS_DIR: &str = "output-parts";

/// How the output was produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// A hardlink to the stored content.
    Hardlink,
    /// A copy, piece by piece.
    Copy,
    /// Written into a FIFO or character device at the end.
    InPlace,
}

/// A temporary output file and its record; both removed on drop unless published.
struct Part {
    tmp: PathBuf,
    record: PathBuf,
    published: bool,
}

impl Drop for Part {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_file(&self.tmp);
        }
        let _ = std::fs::remove_file(&self.record);
    }
}

/// An output being assembled; its temporary file is removed on drop unless committed.
pub struct OutputWriter {
    out: PathBuf,
    content: PathBuf,
    overwrite: bool,
    part: Option<Part>,
    copy: Option<(File, File)>,
    /// `copy_file_range` failed for this output: copy with read/write.
    plain: bool,
}

impl OutputWriter {
    /// Start an output for `content` (a file of `len` bytes) at `out`, which [`inspect`]
    /// classified as `kind`; `parts` is the directory recording temporary files.
    ///
    /// [`inspect`]: crate::standalone::publish::inspect
    pub fn new(
        content: &Path,
        out: &Path,
        kind: OutputKind,
        overwrite: bool,
        hardlink: bool,
        len: u64,
        parts: &Path,
    ) -> std::io::Result<Self> {
        let mut w = Self {
            out: out.to_path_buf(),
            content: content.to_path_buf(),
            overwrite,
            part: None,
            copy: None,
            plain: false,
        };
        if kind == OutputKind::InPlace {
            return Ok(w);
        }
        let dir = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(part_name(&name, "dfdaemon"));
        let record = parts.join(format!("{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(parts)?;
        std::fs::write(&record, tmp.as_os_str().as_bytes())?;
        // Held from here, so a failure below removes the temporary file and its record (Drop).
        let part = w.part.insert(Part {
            tmp,
            record,
            published: false,
        });
        if hardlink && std::fs::hard_link(content, &part.tmp).is_ok() {
            return Ok(w);
        }
        let dst = File::create_new(&part.tmp)?;
        dst.set_len(len)?;
        w.copy = Some((File::open(content)?, dst));
        Ok(w)
    }

    /// How this output is produced.
    pub fn mode(&self) -> OutputMode {
        match (&self.part, &self.copy) {
            (None, _) => OutputMode::InPlace,
            (Some(_), Some(_)) => OutputMode::Copy,
            (Some(_), None) => OutputMode::Hardlink,
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
            if self.plain {
                return copy_range(src, dst, off_in, left);
            }
            let chunk = usize::try_from(left).unwrap_or(usize::MAX);
            let n = match rustix::fs::copy_file_range(
                src,
                Some(&mut off_in),
                dst,
                Some(&mut off_out),
                chunk,
            ) {
                Ok(n) => n,
                Err(e) if needs_plain_copy(e) => {
                    tracing::debug!(output = %self.out.display(), error = %e, "copy_file_range refused; copying with read/write");
                    self.plain = true;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
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

    /// Put the finished output in place: publish the temporary file (without overwrite,
    /// failing with `AlreadyExists` if something is there by now), or write into the FIFO or
    /// character device (waiting for a FIFO's reader while `still_wanted`).
    pub fn commit(mut self, still_wanted: &dyn Fn() -> bool) -> std::io::Result<OutputMode> {
        let mode = self.mode();
        match &mut self.part {
            Some(part) => {
                publish(&part.tmp, &self.out, self.overwrite)?;
                part.published = true;
            }
            None => {
                write_in_place(&self.content, &self.out, still_wanted)?;
            }
        }
        Ok(mode)
    }
}

/// Remove the temporary output files a previous daemon on this data dir recorded and did not
/// finish (it was killed); returns the paths removed. Only names the daemon makes
/// (`.NAME.dfdaemon-PID-RAND.part`) are removed, whatever a record says.
pub fn remove_recorded_parts(parts: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(parts) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let record = e.path();
        if let Ok(raw) = std::fs::read(&record) {
            let tmp = PathBuf::from(std::ffi::OsStr::from_bytes(&raw));
            let ours = tmp.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with('.') && n.contains(".dfdaemon-") && n.ends_with(".part")
            });
            if ours && std::fs::remove_file(&tmp).is_ok() {
                removed.push(tmp);
            }
        }
        let _ = std::fs::remove_file(&record);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(dir: &Path) -> (PathBuf, Vec<u8>) {
        let path = dir.join("content");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        (path, data)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn copies_pieces_in_any_order_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let parts = dir.path().join(PARTS_DIR);
        let (content, data) = content(dir.path());
        let len = data.len() as u64;
        let out = dir.path().join("out");
        let new = |out: &Path, hardlink| {
            OutputWriter::new(
                &content,
                out,
                OutputKind::Replace,
                false,
                hardlink,
                len,
                &parts,
            )
        };
        let mut w = new(&out, false).unwrap();
        assert_eq!(w.mode(), OutputMode::Copy);
        w.piece(4096, 4096).unwrap();
        // What happens across file systems: the rest is copied with read/write.
        w.plain = true;
        w.piece(8192, 10_000 - 8192).unwrap();
        w.piece(0, 4096).unwrap();
        assert!(!out.exists(), "nothing at the output before commit");
        assert_eq!(names(&parts).len(), 1, "the temporary file is recorded");
        w.commit(&|| true).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), data);
        assert!(names(&parts).is_empty(), "the record goes with the commit");

        let linked = dir.path().join("linked");
        let w = new(&linked, true).unwrap();
        assert_eq!(w.mode(), OutputMode::Hardlink);
        drop(w);
        assert!(!linked.exists());
        assert_eq!(names(dir.path()), ["content", "out", PARTS_DIR]);
        assert!(names(&parts).is_empty());
    }

    #[test]
    fn commit_without_overwrite_never_replaces_and_removes_its_part() {
        let dir = tempfile::tempdir().unwrap();
        let parts = dir.path().join(PARTS_DIR);
        let (content, data) = content(dir.path());
        let out = dir.path().join("out");
        let w =
            OutputWriter::new(&content, &out, OutputKind::Replace, false, true, 0, &parts).unwrap();
        std::fs::write(&out, b"the other run").unwrap();
        let e = w.commit(&|| true).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&out).unwrap(), b"the other run");
        assert_eq!(names(dir.path()), ["content", "out", PARTS_DIR]);
        let w =
            OutputWriter::new(&content, &out, OutputKind::Replace, true, true, 0, &parts).unwrap();
        w.commit(&|| true).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), data);
    }

    #[test]
    fn recorded_parts_of_a_killed_daemon_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let parts = dir.path().join(PARTS_DIR);
        let (content, _) = content(dir.path());
        let out = dir.path().join("out");
        let w = OutputWriter::new(
            &content,
            &out,
            OutputKind::Replace,
            false,
            false,
            10,
            &parts,
        )
        .unwrap();
        std::mem::forget(w); // as if killed: no Drop
        // A record naming anything but a daemon's temporary file is dropped, not followed.
        std::fs::write(
            parts.join("bogus"),
            dir.path().join("content").as_os_str().as_bytes(),
        )
        .unwrap();
        let removed = remove_recorded_parts(&parts);
        assert_eq!(removed.len(), 1, "{removed:?}");
        assert_eq!(names(dir.path()), ["content", PARTS_DIR]);
        assert!(names(&parts).is_empty());
    }
}
