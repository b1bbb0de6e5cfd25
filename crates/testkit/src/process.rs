//! What the kernel says about a running process (Linux `/proc`), and signals to it.

/// The soft and hard limits on open files of process `pid`, as `/proc/PID/limits` writes them
/// (`"4096"`, `"unlimited"`); `None` when the process or the line is gone.
pub fn open_files_limits(pid: u32) -> Option<(String, String)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut numbers = line.split_whitespace().skip(3);
    Some((numbers.next()?.to_string(), numbers.next()?.to_string()))
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
