//! Filesystem helpers: content file creation with preallocation, filesystem usage (statvfs).

use super::{Result, StorageError};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Usage of the filesystem holding the data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskUsage {
    /// Bytes in use.
    pub used_bytes: u64,
    /// Bytes available to unprivileged users.
    pub available_bytes: u64,
}

impl DiskUsage {
    /// statvfs of the filesystem holding `path`.
    pub fn of(path: &Path) -> Result<DiskUsage> {
        let st = rustix::fs::statvfs(path).map_err(|e| StorageError::io(path, e.into()))?;
        let frsize = st.f_frsize.max(1);
        Ok(DiskUsage {
            used_bytes: st
                .f_blocks
                .saturating_sub(st.f_bfree)
                .saturating_mul(frsize),
            available_bytes: st.f_bavail.saturating_mul(frsize),
        })
    }

    /// Percent used, as `df` counts it (reserved blocks excluded), were `extra` more bytes used.
    pub fn used_percent_with(&self, extra: u64) -> f64 {
        let used = self
            .used_bytes
            .saturating_add(extra.min(self.available_bytes));
        let total = self.used_bytes.saturating_add(self.available_bytes);
        if total == 0 {
            return 100.0;
        }
        used as f64 * 100.0 / total as f64
    }
}

/// Creates (or truncates) a sparse content file of `len` bytes. Blocks are allocated piece by
/// piece ([`allocate`]) as bytes arrive, so a length claimed by a source (which any proxy client
/// may choose) takes no disk until its bytes do.
pub(super) fn create_content_file(path: &Path, len: u64) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| StorageError::io(parent, e))?;
    }
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| StorageError::io(path, e))?;
    if let Err(e) = file.set_len(len) {
        drop(file);
        let _ = fs::remove_file(path);
        return Err(StorageError::io(path, e));
    }
    Ok(())
}

/// Allocates the blocks of `len` bytes at `offset` when the filesystem can, so a full disk
/// fails before a piece is fetched rather than halfway through writing it.
pub(super) fn allocate(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::KEEP_SIZE, offset, len) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::NOSPC => Err(e.into()),
        // Filesystems without fallocate allocate as the bytes are written.
        Err(_) => Ok(()),
    }
}

/// Whether `path` still names the open `file` (same device and inode).
pub(super) fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// A piece length from a record as a buffer length.
pub(super) fn buf_len(length: u64, path: &Path) -> Result<usize> {
    usize::try_from(length).map_err(|_| {
        StorageError::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("piece of {length} bytes does not fit in memory"),
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent() {
        let d = DiskUsage {
            used_bytes: 50,
            available_bytes: 50,
        };
        assert_eq!(d.used_percent_with(0), 50.0);
        assert_eq!(d.used_percent_with(25), 75.0);
        assert_eq!(d.used_percent_with(1000), 100.0);
        let empty = DiskUsage {
            used_bytes: 0,
            available_bytes: 0,
        };
        assert_eq!(empty.used_percent_with(0), 100.0);
    }

    #[test]
    fn statvfs_of_a_real_dir() {
        let dir = tempfile::tempdir().unwrap();
        let d = DiskUsage::of(dir.path()).unwrap();
        let p = d.used_percent_with(0);
        assert!((0.0..=100.0).contains(&p), "{p}");
    }

    #[test]
    fn content_files_are_sparse_and_pieces_allocated_as_they_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ab").join("f");
        let len = 64 << 20;
        create_content_file(&path, len).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), len);
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "a claimed length takes no disk: {} blocks",
            meta.blocks()
        );
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        allocate(&file, 4 << 20, 4 << 20).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), len, "allocating keeps the size");
        // tmpfs, ext4 and xfs allocate; a filesystem without fallocate writes sparse.
        assert!(meta.blocks() * 512 <= 5 << 20, "{} blocks", meta.blocks());
        create_content_file(&path, 0).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 0);
    }
}
