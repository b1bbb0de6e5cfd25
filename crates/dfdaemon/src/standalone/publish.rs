//! Putting a finished download at `-O`, shared by standalone dfget and the daemon.
//!
//! - What is at the output decides how it is written ([`inspect`]): nothing, a regular file or
//!   a symlink is replaced by renaming a temporary file over it (a symlink is replaced itself,
//!   never followed); a FIFO or character device is written into in place, never renamed over;
//!   anything else is refused. Anything there (a dangling symlink too) needs `--overwrite`.
//! - Without `--overwrite` the rename is `renameat2(RENAME_NOREPLACE)` (or `link()` + `unlink()`
//!   where the file system refuses the flag), so of two runs racing for one output the second
//!   fails instead of silently replacing the first.
//! - Temporary files are named `.NAME.<owner>-<pid>-<rand>.part`, so a later run can tell the
//!   ones whose process is gone ([`remove_stale_parts`]).

use crate::source::error::DownloadError;
use rustix::io::Errno;
use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;

/// Bytes copied per read/write when the kernel cannot copy for us.
const COPY_BUFFER: usize = 1 << 20;

/// How an output path is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// Nothing there, or a regular file or symlink: a temporary file is renamed over it.
    Replace,
    /// A FIFO or character device: the verified bytes are written into it, in order.
    InPlace,
}

/// Decide how `output` is written: fails when it exists (a dangling symlink counts) and
/// `overwrite` is false, when it is (or points to) a directory, or when it is a block device or
/// socket.
pub fn inspect(output: &Path, overwrite: bool) -> Result<OutputKind, DownloadError> {
    let meta = match std::fs::symlink_metadata(output) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(OutputKind::Replace),
        Err(e) => return Err(DownloadError::io("inspecting", output, e)),
    };
    let ft = meta.file_type();
    if ft.is_dir() || (ft.is_symlink() && output.is_dir()) {
        return Err(DownloadError::OutputIsDir(output.to_path_buf()));
    }
    let kind = if ft.is_file() || ft.is_symlink() {
        OutputKind::Replace
    } else if ft.is_fifo() || ft.is_char_device() {
        OutputKind::InPlace
    } else {
        let what = if ft.is_block_device() {
            "a block device"
        } else {
            "a socket"
        };
        return Err(DownloadError::OutputNotWritable {
            path: output.to_path_buf(),
            what,
        });
    };
    if !overwrite {
        return Err(DownloadError::OutputExists(output.to_path_buf()));
    }
    Ok(kind)
}

/// Rename the finished `tmp` to `out`; without `overwrite` an existing `out` (even one created
/// meanwhile) fails with [`std::io::ErrorKind::AlreadyExists`] and `tmp` stays.
pub fn publish(tmp: &Path, out: &Path, overwrite: bool) -> std::io::Result<()> {
    if overwrite {
        return std::fs::rename(tmp, out);
    }
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    match renameat_with(CWD, tmp, CWD, out, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        // Some file systems (and old kernels) refuse the flag: link() also fails on an existing name.
        Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
            std::fs::hard_link(tmp, out)?;
            std::fs::remove_file(tmp)
        }
        Err(e) => Err(e.into()),
    }
}

/// Write all of `src` into the FIFO or character device at `out`, in order (opened for
/// writing only: never created, truncated or replaced). A FIFO without a reader is waited for,
/// as long as `still_wanted` says the download is still wanted.
pub fn write_in_place(
    src: &Path,
    out: &Path,
    still_wanted: &dyn Fn() -> bool,
) -> std::io::Result<u64> {
    use std::os::unix::fs::OpenOptionsExt;
    let input = File::open(src)?;
    let output = loop {
        // Non-blocking, so a FIFO nobody reads does not hold this thread forever.
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(out)
        {
            Ok(f) => break f,
            Err(e) if e.raw_os_error() == Some(Errno::NXIO.raw_os_error()) && still_wanted() => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    };
    let ft = output.metadata()?.file_type();
    if !(ft.is_fifo() || ft.is_char_device()) {
        // Replaced between the check and the open: writing would edit it without truncating.
        return Err(std::io::Error::other(
            "it is no longer a FIFO or character device",
        ));
    }
    let flags = rustix::fs::fcntl_getfl(&output)?;
    rustix::fs::fcntl_setfl(&output, flags - rustix::fs::OFlags::NONBLOCK)?;
    let (mut reader, mut writer) = (&input, &output);
    std::io::copy(&mut reader, &mut writer)
}

/// Copy `[offset, offset + len)` of `src` to the same offset of `dst` with pread/pwrite, for
/// when `copy_file_range` cannot (across file systems, or unsupported).
pub fn copy_range(src: &File, dst: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; COPY_BUFFER.min(usize::try_from(len).unwrap_or(COPY_BUFFER))];
    let mut done = 0u64;
    while done < len {
        let n = buf
            .len()
            .min(usize::try_from(len - done).unwrap_or(buf.len()));
        src.read_exact_at(&mut buf[..n], offset + done)?;
        dst.write_all_at(&buf[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Whether a `copy_file_range` error means "copy another way" rather than a real failure.
pub fn needs_plain_copy(e: Errno) -> bool {
    matches!(
        e,
        Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP
    )
}

/// The name of a temporary file for output `name` owned by this process: `owner` is `dfget`
/// or `dfdaemon`.
pub fn part_name(name: &str, owner: &str) -> String {
    format!(
        ".{name}.{owner}-{}-{:016x}.part",
        std::process::id(),
        rand::random::<u64>()
    )
}

/// The pid in a temporary file name made by [`part_name`] for `name` and `owner`.
fn part_pid(file_name: &str, name: &str, owner: &str) -> Option<u32> {
    let rest = file_name
        .strip_prefix(&format!(".{name}.{owner}-"))?
        .strip_suffix(".part")?;
    let (pid, rand) = rest.split_once('-')?;
    (rand.len() == 16 && rand.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| pid.parse().ok())
        .flatten()
}

/// Remove the temporary files for output `name` in `dir` left by `owner` processes that are
/// gone (killed before they could clean up); returns the names removed.
pub fn remove_stale_parts(dir: &Path, name: &str, owner: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let file_name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = part_pid(&file_name, name, owner) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if std::fs::remove_file(e.path()).is_ok() {
            removed.push(file_name);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_at_the_output_decides_how_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        assert_eq!(inspect(&p("none"), false).unwrap(), OutputKind::Replace);
        std::fs::write(p("file"), b"x").unwrap();
        assert!(matches!(
            inspect(&p("file"), false),
            Err(DownloadError::OutputExists(_))
        ));
        assert_eq!(inspect(&p("file"), true).unwrap(), OutputKind::Replace);
        std::os::unix::fs::symlink(p("nowhere"), p("dangling")).unwrap();
        assert!(matches!(
            inspect(&p("dangling"), false),
            Err(DownloadError::OutputExists(_))
        ));
        assert_eq!(inspect(&p("dangling"), true).unwrap(), OutputKind::Replace);
        std::os::unix::fs::symlink(dir.path(), p("to-dir")).unwrap();
        assert!(matches!(
            inspect(&p("to-dir"), true),
            Err(DownloadError::OutputIsDir(_))
        ));
        use rustix::fs::{CWD, FileType, Mode, mknodat};
        mknodat(CWD, p("fifo"), FileType::Fifo, Mode::from(0o600), 0).unwrap();
        assert_eq!(inspect(&p("fifo"), true).unwrap(), OutputKind::InPlace);
        assert!(matches!(
            inspect(&p("fifo"), false),
            Err(DownloadError::OutputExists(_))
        ));
        let _sock = std::os::unix::net::UnixListener::bind(p("sock")).unwrap();
        let e = inspect(&p("sock"), true).unwrap_err();
        assert!(e.to_string().contains("is a socket"), "{e}");
    }

    #[test]
    fn a_fifo_without_reader_is_waited_for_only_while_wanted() {
        use rustix::fs::{CWD, FileType, Mode, mknodat};
        let dir = tempfile::tempdir().unwrap();
        let (src, fifo) = (dir.path().join("src"), dir.path().join("fifo"));
        std::fs::write(&src, b"bytes").unwrap();
        mknodat(CWD, &fifo, FileType::Fifo, Mode::from(0o600), 0).unwrap();
        let e = write_in_place(&src, &fifo, &|| false).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(Errno::NXIO.raw_os_error()));
        let reader = std::thread::spawn({
            let fifo = fifo.clone();
            move || {
                std::thread::sleep(std::time::Duration::from_millis(200));
                std::fs::read(fifo).unwrap()
            }
        });
        assert_eq!(write_in_place(&src, &fifo, &|| true).unwrap(), 5);
        assert_eq!(reader.join().unwrap(), b"bytes");
        std::fs::write(dir.path().join("plain"), b"").unwrap();
        let e = write_in_place(&src, &dir.path().join("plain"), &|| true).unwrap_err();
        assert!(e.to_string().contains("no longer a FIFO"), "{e}");
    }

    #[test]
    fn publish_without_overwrite_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let (tmp, out) = (dir.path().join("tmp"), dir.path().join("out"));
        std::fs::write(&tmp, b"first").unwrap();
        publish(&tmp, &out, false).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"first");
        std::fs::write(&tmp, b"second").unwrap();
        let e = publish(&tmp, &out, false).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&out).unwrap(), b"first");
        assert!(tmp.exists(), "the caller removes its temporary file");
        publish(&tmp, &out, true).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"second");
    }

    #[test]
    fn copies_ranges_without_the_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3 * COPY_BUFFER as u32 + 7)
            .map(|i| (i % 253) as u8)
            .collect();
        std::fs::write(dir.path().join("src"), &data).unwrap();
        let src = File::open(dir.path().join("src")).unwrap();
        let dst = File::create(dir.path().join("dst")).unwrap();
        dst.set_len(data.len() as u64).unwrap();
        copy_range(&src, &dst, 5, data.len() as u64 - 5).unwrap();
        copy_range(&src, &dst, 0, 5).unwrap();
        assert!(std::fs::read(dir.path().join("dst")).unwrap() == data);
        let e = copy_range(&src, &dst, data.len() as u64 - 2, 10).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn stale_parts_are_those_of_dead_processes() {
        let dir = tempfile::tempdir().unwrap();
        let mine = part_name("f", "dfget");
        assert_eq!(part_pid(&mine, "f", "dfget"), Some(std::process::id()));
        // Above the kernel's largest pid_max (2^22): no such process.
        let dead = format!(".f.dfget-{}-{:016x}.part", 1u32 << 30, 7);
        let other_output = format!(".g.dfget-{}-{:016x}.part", 1u32 << 30, 7);
        let daemons = format!(".f.dfdaemon-{}-{:016x}.part", 1u32 << 30, 7);
        for n in [&mine, &dead, &other_output, &daemons] {
            std::fs::write(dir.path().join(n), b"").unwrap();
        }
        assert_eq!(remove_stale_parts(dir.path(), "f", "dfget"), vec![dead]);
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want = vec![mine, other_output, daemons];
        want.sort();
        assert_eq!(left, want);
    }
}
