//! Test host names for 127.0.0.1 in `/etc/hosts`, shared safely by concurrent test processes.

use super::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Comment that marks the one `/etc/hosts` line this module owns.
pub const HOSTS_MARKER: &str = "# dragonfly-tests";
const HOSTS: &str = "/etc/hosts";
const LOCK: &str = "/tmp/dragonfly-tests-hosts.lock";

/// Make `/etc/hosts` map every name in `names` to 127.0.0.1.
///
/// The names go on one line ending in [`HOSTS_MARKER`]; names already there stay, so tests asking
/// for different names do not undo each other. Nothing is written when every name is already on
/// that line, so only the first call needs root. The file is rewritten in place (it may be a bind
/// mount) under an exclusive `flock` on `/tmp/dragonfly-tests-hosts.lock`.
pub fn ensure_test_hosts(names: &[&str]) -> Result<()> {
    for n in names {
        if n.is_empty() || n.contains(char::is_whitespace) || n.contains('#') {
            return Err(Error::Invalid(format!("not a host name: {n:?}")));
        }
    }
    let hosts = Path::new(HOSTS);
    let current = std::fs::read_to_string(hosts).map_err(Error::io("read", hosts))?;
    if merged_hosts(&current, names).is_none() {
        return Ok(());
    }
    if !rustix::process::geteuid().is_root() {
        return Err(Error::Invalid(format!(
            "need root to add {names:?} to {HOSTS}; run the tests as root or add this line yourself: \
             127.0.0.1 {} {HOSTS_MARKER}",
            names.join(" ")
        )));
    }
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK)
        .map_err(Error::io("open", LOCK))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| Error::io("lock", LOCK)(e.into()))?;
    // Re-read under the lock: another process may have written meanwhile.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(hosts)
        .map_err(Error::io("open for writing", hosts))?;
    let mut current = String::new();
    file.read_to_string(&mut current)
        .map_err(Error::io("read", hosts))?;
    if let Some(new) = merged_hosts(&current, names) {
        rewrite_in_place(&mut file, new.as_bytes()).map_err(Error::io("write", hosts))?;
    }
    Ok(())
    // `lock` drops here and releases the flock.
}

/// Overwrite from offset 0, then cut. Our line is kept last, so the bytes before it are rewritten
/// unchanged and a concurrent reader never misses the other lines.
fn rewrite_in_place(file: &mut File, new: &[u8]) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    file.write_all(new)?;
    file.set_len(new.len() as u64)?;
    file.flush()
}

/// The new `/etc/hosts` text with `names` on the marked line, or `None` when nothing changes.
fn merged_hosts(current: &str, names: &[&str]) -> Option<String> {
    let marked = |l: &str| l.trim_end().ends_with(HOSTS_MARKER);
    let mut have: Vec<String> = current
        .lines()
        .filter(|l| marked(l))
        .flat_map(|l| {
            let body = l.trim_end().trim_end_matches(HOSTS_MARKER);
            body.split_whitespace()
                .skip(1)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    let marked_lines = current.lines().filter(|l| marked(l)).count();
    let last_is_marked = current.lines().last().is_some_and(marked);
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !have.iter().any(|h| h == n))
        .collect();
    if missing.is_empty() && marked_lines == 1 && last_is_marked {
        return None;
    }
    if missing.is_empty() && marked_lines == 0 {
        return None; // asked for no names, none there
    }
    have.extend(missing.into_iter().map(str::to_string));
    let mut seen = std::collections::HashSet::new();
    have.retain(|h| seen.insert(h.clone()));
    let mut out = String::with_capacity(current.len() + 64);
    for line in current.lines().filter(|l| !marked(l)) {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&format!("127.0.0.1 {} {HOSTS_MARKER}\n", have.join(" ")));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::merged_hosts;

    const BASE: &str = "127.0.0.1 localhost\n::1 localhost\n";

    #[test]
    fn adds_one_marked_line_at_the_end() {
        let out = merged_hosts(BASE, &["registry.test", "other.test"]).unwrap();
        assert_eq!(
            out,
            format!("{BASE}127.0.0.1 registry.test other.test # dragonfly-tests\n")
        );
        assert_eq!(merged_hosts(&out, &["registry.test"]), None, "idempotent");
        assert_eq!(merged_hosts(&out, &["other.test", "registry.test"]), None);
    }

    #[test]
    fn keeps_names_of_other_callers_and_stays_a_prefix() {
        let first = merged_hosts(BASE, &["a.test"]).unwrap();
        let second = merged_hosts(&first, &["b.test"]).unwrap();
        assert!(
            second.ends_with("127.0.0.1 a.test b.test # dragonfly-tests\n"),
            "{second}"
        );
        assert!(second.starts_with(BASE));
        assert_eq!(
            second
                .lines()
                .filter(|l| l.contains("dragonfly-tests"))
                .count(),
            1
        );
    }

    #[test]
    fn moves_a_marked_line_in_the_middle_to_the_end_and_merges_duplicates() {
        let messy =
            "127.0.0.1 a.test # dragonfly-tests\n10.0.0.1 x\n127.0.0.1 b.test # dragonfly-tests";
        let out = merged_hosts(messy, &["a.test"]).unwrap();
        assert_eq!(
            out,
            "10.0.0.1 x\n127.0.0.1 a.test b.test # dragonfly-tests\n"
        );
    }

    #[test]
    fn leaves_other_markers_alone() {
        let other = format!("{BASE}127.0.0.1 registry.test # p2p-harness\n");
        let out = merged_hosts(&other, &["registry.test"]).unwrap();
        assert!(out.contains("# p2p-harness\n"));
        assert!(out.ends_with("127.0.0.1 registry.test # dragonfly-tests\n"));
    }
}
