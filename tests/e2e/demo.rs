//! The README's first command: `scripts/demo.sh` (what `make demo` runs), here with this test's
//! debug binaries, a small file and free ports. The swarm must work as the demo says: the origin
//! serves the file once, the seed takes it from the origin and the peers from other daemons, and
//! each daemon's `/metrics` agrees.

use std::process::Command;
use testkit::bins::bin;
use testkit::cli::{repo_file, text};
use testkit::net::free_port;

#[test]
fn make_demo_runs_a_swarm_where_the_origin_serves_the_file_once() {
    let bin_dir = bin("dfdaemon").parent().expect("bin dir").to_path_buf();
    let out = Command::new("bash")
        .arg(repo_file("scripts/demo.sh"))
        .env("BIN", &bin_dir)
        .env("SIZE_MIB", "16")
        .env("PORT", free_port().to_string())
        .env("SCHED_PORT", free_port().to_string())
        .env("UPLOAD_PORT", free_port().to_string())
        .env("METRICS_PORT", free_port().to_string())
        .output()
        .expect("bash runs scripts/demo.sh");
    let shown = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "the demo failed:\n{shown}");
    let file = (16u64 << 20).to_string();
    assert!(
        shown.contains(&format!(
            "the origin served {file} bytes; the file is {file} bytes: 1.00x"
        )),
        "the origin did not serve the file exactly once:\n{shown}"
    );
    let line = |who: &str| {
        shown
            .lines()
            .find(|l| l.trim_start().starts_with(who) && l.contains("in from origin"))
            .unwrap_or_else(|| panic!("no /metrics line for {who}:\n{shown}"))
            .to_string()
    };
    assert!(
        line("seed").contains(&format!("in from origin {file}, from parents 0")),
        "the seed's /metrics:\n{shown}"
    );
    for peer in ["peer1", "peer2", "peer3"] {
        assert!(
            line(peer).contains(&format!("in from origin 0, from parents {file}")),
            "{peer}'s /metrics:\n{shown}"
        );
    }
}
