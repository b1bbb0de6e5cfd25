//! A child process that is stopped when its handle drops, with its output in log files.

use super::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a child gets to exit after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);

/// A running child process; dropping it stops it (SIGTERM, then SIGKILL) and reaps it.
#[derive(Debug)]
pub(crate) struct Guarded {
    name: String,
    child: Child,
}

impl Guarded {
    /// Spawn `cmd` with stdin closed, stdout into `stdout` and stderr into `stderr` (appended;
    /// both may be the same file). `package` names the Debian package for the error hint.
    pub(crate) fn spawn(
        mut cmd: Command,
        package: &'static str,
        stdout: &Path,
        stderr: &Path,
    ) -> Result<Self> {
        let open = |p: &Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(Error::io("open log", p))
        };
        let out = open(stdout)?;
        let err = if stdout == stderr {
            out.try_clone().map_err(Error::io("dup log", stderr))?
        } else {
            open(stderr)?
        };
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            program: program.clone(),
            package,
            source,
        })?;
        Ok(Self {
            name: program,
            child,
        })
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(description)` when the process has exited.
    pub(crate) fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!(
                "cannot wait for {} (pid {}): {e}",
                self.name,
                self.child.id()
            )),
        }
    }

    /// Stop the process (SIGTERM, then SIGKILL after a grace period) and reap it.
    pub(crate) fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + TERM_GRACE;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `lines` lines of a log file, for error messages.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let all: Vec<&str> = s.lines().collect();
            let tail = all[all.len().saturating_sub(lines)..].join("\n");
            format!("last lines of {}:\n{tail}", path.display())
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// A fresh temp dir, or `Some(path)` created if missing.
pub(crate) fn work_dir(
    dir: Option<PathBuf>,
    prefix: &str,
) -> Result<(PathBuf, Option<tempfile::TempDir>)> {
    match dir {
        Some(d) => {
            std::fs::create_dir_all(&d).map_err(Error::io("create dir", &d))?;
            Ok((d, None))
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix(prefix)
                .tempdir()
                .map_err(Error::io("create temp dir in", std::env::temp_dir()))?;
            Ok((t.path().to_path_buf(), Some(t)))
        }
    }
}
