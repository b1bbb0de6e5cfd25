//! What the kernel says about a running process (Linux `/proc`), and signals to it.

/// The soft and hard limits on open files of process `pid`, as `/proc/PID/limits` writes them
/// (`"4096"`, `"unlimited"`); `None` when the process or the line is gone.
pub fn open_files_limits(pid: u32) -> Option<(String, String)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut numbers = line.split_whitespace().skip(3);
    Some((numbers.next()?.to_string(), numbers.next()?.to_string()))
}

/// Run `cmd` to the end and return its output, panicking with `failed` and its stderr when it
/// cannot start or exits non-zero (test helper; `failed` says what to do about it).
pub fn output_ok(cmd: &mut std::process::Command, failed: &str) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{failed}: {:?} does not start: {e}", cmd.get_program()));
    assert!(
        out.status.success(),
        "{failed}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A child process, killed and reaped when dropped.
pub struct KillOnDrop(pub std::process::Child);

impl KillOnDrop {
    /// Its process id.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Kill it (if it still runs) and wait for it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Send `signal` (`TERM`, `KILL`, ...) to process `pid` with kill(1); panics when kill fails
/// (test helper).
pub fn signal(pid: u32, signal: &str) {
    let s = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(s.success(), "kill -{signal} {pid} failed");
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process_limits() {
        let (soft, hard) = super::open_files_limits(std::process::id()).expect("own limits");
        assert!(soft.parse::<u64>().is_ok() || soft == "unlimited", "{soft}");
        assert!(hard.parse::<u64>().is_ok() || hard == "unlimited", "{hard}");
    }
}
