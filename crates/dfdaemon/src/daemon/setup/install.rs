//! Writing containerd's files so that a second run changes nothing and an uninstall puts back
//! what was there: every file is checked before anything is written, files identical to ours
//! are left alone, a file that is not ours is copied into the backup directory (once) before
//! it is replaced, and a manifest there lists what we wrote (with its sha256) for `--restore`.
//! Writes go through a temp file and a rename, keeping the mode and owner of what they replace.

use super::SetupError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Name of the manifest in the backup directory.
pub const MANIFEST: &str = "manifest.json";

/// What a run did to one file, printed one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Written (created or replaced).
    Wrote(PathBuf),
    /// Already what we would write: not touched.
    Unchanged(PathBuf),
    /// Copied into the backup directory before being replaced.
    BackedUp {
        /// The file.
        path: PathBuf,
        /// Its copy.
        to: PathBuf,
    },
    /// The original put back.
    Restored(PathBuf),
    /// Deleted (there was no original), or a directory we created, now empty.
    Removed(PathBuf),
    /// Not restored: changed since we wrote it.
    Left {
        /// The file.
        path: PathBuf,
        /// What happened to it, and where its original is.
        why: String,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Wrote(p) => write!(f, "wrote {}", p.display()),
            Event::Unchanged(p) => write!(f, "unchanged {}", p.display()),
            Event::BackedUp { path, to } => {
                write!(f, "backed up {} to {}", path.display(), to.display())
            }
            Event::Restored(p) => write!(f, "restored {}", p.display()),
            Event::Removed(p) => write!(f, "removed {}", p.display()),
            Event::Left { path, why } => write!(f, "warning: left {}: {why}", path.display()),
        }
    }
}

/// Which of containerd's files an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// containerd's `config.toml` (a change needs a containerd restart).
    ContainerdConfig,
    /// A registry's `hosts.toml` (read on every pull).
    HostsToml,
}

/// The file that was there before we first wrote ours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Original {
    /// Its copy, relative to the backup directory.
    pub backup: PathBuf,
    /// Its permission bits.
    pub mode: u32,
    /// Its owner.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
}

/// One file we wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Absolute path.
    pub path: PathBuf,
    /// What it is.
    pub kind: Kind,
    /// sha256 (hex) of what we last wrote there.
    pub sha256: String,
    /// What was there before; `None`: nothing (restore deletes the file).
    pub original: Option<Original>,
    /// Directories created for it, deepest first (restore removes them when empty).
    #[serde(default)]
    pub created_dirs: Vec<PathBuf>,
}

/// `manifest.json` in the backup directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version (1).
    pub version: u32,
    /// The files we wrote, in the order first written.
    pub files: Vec<Entry>,
    /// containerd's config changed in a run whose `--on-change` failed: the next run runs it
    /// again, though nothing changes then (a pod restart must not leave containerd unrestarted).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restart_pending: bool,
}

impl Manifest {
    fn entry(&self, path: &Path) -> Option<&Entry> {
        self.files.iter().find(|e| e.path == path)
    }

    /// The manifest in `backup_dir`; `None` when there is none.
    pub fn load(backup_dir: &Path) -> Result<Option<Manifest>, SetupError> {
        let path = backup_dir.join(MANIFEST);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_error(&path, e)),
        };
        let manifest: Manifest =
            serde_json::from_slice(&text).map_err(|e| SetupError::Manifest {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if manifest.version != 1 {
            return Err(SetupError::Manifest {
                path,
                reason: format!("version {} is not 1", manifest.version),
            });
        }
        Ok(Some(manifest))
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }
}

/// Record in the manifest of `backup_dir` whether a containerd restart is still owed.
pub fn set_restart_pending(backup_dir: &Path, pending: bool) -> Result<(), SetupError> {
    let Some(mut manifest) = Manifest::load(backup_dir)? else {
        return Ok(());
    };
    if manifest.restart_pending != pending {
        manifest.restart_pending = pending;
        write_atomic(
            &backup_dir.join(MANIFEST),
            &manifest.to_bytes(),
            0o600,
            None,
        )?;
    }
    Ok(())
}

/// A file a run wants on disk.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Absolute path.
    pub path: PathBuf,
    /// Contents.
    pub data: Vec<u8>,
    /// Mode; `None`: keep the existing file's (0644 for a new one).
    pub mode: Option<u32>,
    /// What it is.
    pub kind: Kind,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// One per file (and per directory removed).
    pub events: Vec<Event>,
    /// Whether containerd's config.toml changed on disk.
    pub containerd_config_changed: bool,
}

pub(super) fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn read_error(path: &Path, e: std::io::Error) -> SetupError {
    SetupError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn write_error(path: &Path, e: std::io::Error) -> SetupError {
    SetupError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// The file at `path` with its metadata; `None` when it does not exist.
fn read_existing(path: &Path) -> Result<Option<(Vec<u8>, std::fs::Metadata)>, SetupError> {
    match std::fs::read(path) {
        Ok(data) => {
            let meta = std::fs::metadata(path).map_err(|e| read_error(path, e))?;
            Ok(Some((data, meta)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(read_error(path, e)),
    }
}

/// Where the copy of `path` goes in `backup_dir`: its absolute path below it.
fn backup_relative(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .collect()
}

/// What to do with one planned file, decided before anything is written.
enum Step {
    Unchanged,
    Write {
        backup: Option<Original>,
        mode: u32,
        owner: Option<(u32, u32)>,
    },
}

fn decide(
    file: &Planned,
    manifest: &Manifest,
    backup_dir: Option<&Path>,
    force: bool,
) -> Result<Step, SetupError> {
    let entry = manifest.entry(&file.path);
    let Some((current, meta)) = read_existing(&file.path)? else {
        return Ok(Step::Write {
            backup: None,
            mode: file.mode.unwrap_or(0o644),
            owner: None,
        });
    };
    let current_mode = meta.permissions().mode() & 0o7777;
    let mode = file.mode.unwrap_or(current_mode);
    if current == file.data && current_mode == mode {
        return Ok(Step::Unchanged);
    }
    let owner = Some((meta.uid(), meta.gid()));
    let write = |backup| Step::Write {
        backup,
        mode,
        owner,
    };
    match entry {
        Some(e) if e.sha256 == sha256_hex(&current) => Ok(write(None)),
        // Ours once, edited since: the original stays backed up as it was.
        Some(_) if force => Ok(write(None)),
        Some(_) => Err(SetupError::Changed {
            path: file.path.clone(),
        }),
        None => match backup_dir {
            Some(_) => Ok(write(Some(Original {
                backup: backup_relative(&file.path),
                mode: current_mode,
                uid: meta.uid(),
                gid: meta.gid(),
            }))),
            None if force => Ok(write(None)),
            None => Err(SetupError::Exists {
                path: file.path.clone(),
            }),
        },
    }
}

/// Put `planned` on disk: check every file first, then back up, write, and record them in the
/// manifest of `backup_dir`. Hosts files the manifest lists that are no longer planned are
/// restored (a registry dropped from the list leaves nothing behind).
pub fn apply(
    planned: &[Planned],
    backup_dir: Option<&Path>,
    force: bool,
) -> Result<Outcome, SetupError> {
    let mut manifest = match backup_dir {
        Some(dir) => Manifest::load(dir)?.unwrap_or_default(),
        None => Manifest::default(),
    };
    manifest.version = 1;
    let before = manifest.clone();
    let steps = planned
        .iter()
        .map(|f| decide(f, &manifest, backup_dir, force))
        .collect::<Result<Vec<_>, _>>()?;
    let dropped: Vec<Entry> = manifest
        .files
        .iter()
        .filter(|e| e.kind == Kind::HostsToml && !planned.iter().any(|p| p.path == e.path))
        .cloned()
        .collect();
    let dropped_steps = match backup_dir {
        Some(dir) => dropped
            .iter()
            .map(|e| restore_step(e, dir))
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };

    let mut out = Outcome::default();
    for (file, step) in planned.iter().zip(steps) {
        let Step::Write {
            backup,
            mode,
            owner,
        } = step
        else {
            out.events.push(Event::Unchanged(file.path.clone()));
            continue;
        };
        if let (Some(original), Some(dir)) = (&backup, backup_dir) {
            let to = dir.join(&original.backup);
            // A backup already there is an older original (a run that stopped half-way): kept.
            if to.symlink_metadata().is_err() {
                let data = std::fs::read(&file.path).map_err(|e| read_error(&file.path, e))?;
                make_dirs(&to)?;
                write_atomic(&to, &data, original.mode, None)?;
            }
            out.events.push(Event::BackedUp {
                path: file.path.clone(),
                to,
            });
        }
        let created_dirs = make_dirs(&file.path)?;
        write_atomic(&file.path, &file.data, mode, owner)?;
        out.events.push(Event::Wrote(file.path.clone()));
        if file.kind == Kind::ContainerdConfig {
            out.containerd_config_changed = true;
        }
        let sha256 = sha256_hex(&file.data);
        match manifest.files.iter_mut().find(|e| e.path == file.path) {
            Some(e) => e.sha256 = sha256,
            None => manifest.files.push(Entry {
                path: file.path.clone(),
                kind: file.kind,
                sha256,
                original: backup,
                created_dirs,
            }),
        }
    }
    if let Some(dir) = backup_dir {
        let mut removed_dirs = Vec::new();
        for (entry, step) in dropped.iter().zip(dropped_steps) {
            let done = do_restore(entry, step, dir, &mut out)?;
            if done {
                manifest.files.retain(|e| e.path != entry.path);
                removed_dirs.extend(entry.created_dirs.iter().cloned());
            }
        }
        remove_empty_dirs(removed_dirs, &mut out);
        if manifest != before {
            std::fs::create_dir_all(dir).map_err(|e| write_error(dir, e))?;
            write_atomic(&dir.join(MANIFEST), &manifest.to_bytes(), 0o600, None)?;
        }
    }
    Ok(out)
}

/// What restoring one entry will do, decided before anything is written.
enum RestoreStep {
    /// Put these bytes back (the original), with its metadata.
    PutBack(Vec<u8>, Original),
    /// Delete ours (there was no original).
    Delete,
    /// Already gone, and there was no original.
    Gone,
    /// Changed (or deleted) since we wrote it: left alone.
    Leave(String),
}

fn restore_step(entry: &Entry, backup_dir: &Path) -> Result<RestoreStep, SetupError> {
    let current = read_existing(&entry.path)?;
    let kept = |what: &str| match &entry.original {
        Some(o) => format!(
            "{what} since dfdaemon wrote it; its original is kept at {}",
            backup_dir.join(&o.backup).display()
        ),
        None => format!("{what} since dfdaemon wrote it (there was no original)"),
    };
    Ok(match (current, &entry.original) {
        (Some((data, _)), original) if sha256_hex(&data) == entry.sha256 => match original {
            Some(o) => {
                let from = backup_dir.join(&o.backup);
                let data = std::fs::read(&from).map_err(|e| read_error(&from, e))?;
                RestoreStep::PutBack(data, o.clone())
            }
            None => RestoreStep::Delete,
        },
        (Some(_), _) => RestoreStep::Leave(kept("changed")),
        (None, None) => RestoreStep::Gone,
        (None, Some(_)) => RestoreStep::Leave(kept("deleted")),
    })
}

/// Carry out `step` for `entry`; returns whether the entry is done with (not left behind).
fn do_restore(
    entry: &Entry,
    step: RestoreStep,
    backup_dir: &Path,
    out: &mut Outcome,
) -> Result<bool, SetupError> {
    let config = entry.kind == Kind::ContainerdConfig;
    match step {
        RestoreStep::PutBack(data, original) => {
            write_atomic(
                &entry.path,
                &data,
                original.mode,
                Some((original.uid, original.gid)),
            )?;
            out.events.push(Event::Restored(entry.path.clone()));
            out.containerd_config_changed |= config;
            let copy = backup_dir.join(&original.backup);
            std::fs::remove_file(&copy).map_err(|e| write_error(&copy, e))?;
        }
        RestoreStep::Delete => {
            std::fs::remove_file(&entry.path).map_err(|e| write_error(&entry.path, e))?;
            out.events.push(Event::Removed(entry.path.clone()));
            out.containerd_config_changed |= config;
        }
        RestoreStep::Gone => {}
        RestoreStep::Leave(why) => {
            out.events.push(Event::Left {
                path: entry.path.clone(),
                why,
            });
            return Ok(false);
        }
    }
    Ok(true)
}

/// Remove `dirs` that are empty, deepest first.
fn remove_empty_dirs(mut dirs: Vec<PathBuf>, out: &mut Outcome) {
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    dirs.dedup();
    for dir in dirs {
        // Fails when not empty (or gone): then it stays, as it should.
        if std::fs::remove_dir(&dir).is_ok() {
            out.events.push(Event::Removed(dir));
        }
    }
}

/// Undo everything the manifest in `backup_dir` lists. A file changed since we wrote it is
/// left (with a warning) and keeps its backup; the manifest is then removed. A missing backup
/// directory or manifest is nothing to do (`Ok(None)`).
pub fn restore(backup_dir: &Path) -> Result<Option<Outcome>, SetupError> {
    if !backup_dir.exists() {
        return Ok(None);
    }
    let Some(manifest) = Manifest::load(backup_dir)? else {
        return Ok(None);
    };
    let steps = manifest
        .files
        .iter()
        .map(|e| restore_step(e, backup_dir))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Outcome::default();
    let mut dirs = Vec::new();
    for (entry, step) in manifest.files.iter().zip(steps) {
        if do_restore(entry, step, backup_dir, &mut out)? {
            dirs.extend(entry.created_dirs.iter().cloned());
        }
    }
    remove_empty_dirs(dirs, &mut out);
    let path = backup_dir.join(MANIFEST);
    std::fs::remove_file(&path).map_err(|e| write_error(&path, e))?;
    prune_empty(backup_dir);
    Ok(Some(out))
}

/// Remove the empty directories below `dir` (the backups' parents), not `dir` itself.
fn prune_empty(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            prune_empty(&entry.path());
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

/// Create the missing parents of `path`; returns those created, deepest first.
fn make_dirs(path: &Path) -> Result<Vec<PathBuf>, SetupError> {
    let mut missing = Vec::new();
    let mut cur = path.parent();
    while let Some(dir) = cur {
        if dir.as_os_str().is_empty() || dir.exists() {
            break;
        }
        missing.push(dir.to_path_buf());
        cur = dir.parent();
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| write_error(parent, e))?;
    }
    Ok(missing)
}

/// Write `data` to `path` with exactly `mode` (and `owner`) through a temp file in the same
/// directory and a rename, so containerd never reads half a file.
pub fn write_atomic(
    path: &Path,
    data: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), SetupError> {
    use std::io::Write;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.dfdaemon-tmp"));
    let _ = std::fs::remove_file(&tmp);
    // Created with `mode` (less the umask), never wider for a moment; then set exactly.
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode & 0o777)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(data)?;
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
            }
            f.sync_all()
        });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(write_error(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        write_error(path, e)
    })
}

#[cfg(test)]
#[path = "install_tests.rs"]
mod tests;
