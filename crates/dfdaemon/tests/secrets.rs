//! A password written into a URL (`http://user:pw@host/...`, `X-Dragonfly-Registry:
//! https://user:pw@registry`) reaches the origin as `Authorization: Basic`, and nothing else:
//! no log line, no stderr, no dfget output, no metadata file, no scheduler or seed peer. Real
//! processes: a scheduler, a seed peer and a peer, standalone dfget, and the registry mirror.

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/swarm.rs"]
mod swarm;

use dfdaemon::source::oras::Credentials;
use dragonfly_common::digest::{Algorithm, Digest};
use std::path::Path;
use testkit::data::random_bytes;
use testkit::origin::{Behavior, Origin, Resource};

const SECRET: &str = "s3cr3t-pw";

/// Every file under `dir` that holds `needle` (logs, stderr captures, metadata databases).
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                found.push(p.display().to_string());
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_a_url_is_sent_to_the_origin_and_printed_or_stored_nowhere() {
    let basic = Credentials::new("me", SECRET).basic_header();
    let basic_text = basic.to_str().unwrap().to_string();
    let encoded = basic_text.trim_start_matches("Basic ").to_string();
    let data = random_bytes(401, 9 * swarm::MIB);
    let digest = Digest::of(Algorithm::Sha256, &data);
    let blob = format!("/v2/lib/img/blobs/{digest}");
    let needs_auth = Behavior {
        require_header: Some(("authorization".into(), basic_text.clone())),
        ..Behavior::default()
    };
    let origin = Origin::new();
    origin.route(
        "/private",
        Resource::bytes(data.clone()).with(needs_auth.clone()),
    );
    origin.route(&blob, Resource::bytes(data.clone()).with(needs_auth));
    let o = origin.spawn().await.unwrap();
    let with_password = |path: &str| {
        o.url(path)
            .replacen("http://", &format!("http://me:{SECRET}@"), 1)
    };
    let work = tempfile::tempdir().unwrap();
    let mut printed = String::new();

    // A swarm: the seed peer fetches for the peer, with the credentials the peer was given.
    let sched = swarm::Scheduler::start(&work.path().join("scheduler"), true);
    let _seed = swarm::Daemon::start(
        &work.path().join("seed"),
        "127.0.7.1",
        &[sched.addr()],
        true,
    );
    let peer = swarm::Daemon::start(
        &work.path().join("peer"),
        "127.0.7.2",
        &[sched.addr()],
        false,
    );
    let out = work.path().join("via-daemon");
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_dfget"))
        .args([&with_password("/private"), "-O", out.to_str().unwrap()])
        .arg("--digest")
        .arg(digest.to_string())
        .env("DFGET_DAEMON_SOCK", peer.socket())
        .output()
        .await
        .unwrap();
    swarm::assert_ok(&run, "peer");
    assert!(swarm::same(&out, &data));
    assert!(peer.fed().keys().all(|k| k != "source"), "{:?}", peer.fed());
    printed.push_str(&String::from_utf8_lossy(&run.stdout));
    printed.push_str(&String::from_utf8_lossy(&run.stderr));

    // Standalone dfget, and its error line for a wrong digest.
    let out = work.path().join("standalone");
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_dfget"))
        .args([
            "--standalone",
            &with_password("/private"),
            "-O",
            out.to_str().unwrap(),
        ])
        .output()
        .await
        .unwrap();
    daemon::ok(&run);
    assert!(swarm::same(&out, &data));
    printed.push_str(&String::from_utf8_lossy(&run.stdout));
    let wrong = format!("sha256:{}", "0".repeat(64));
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_dfget"))
        .args(["--standalone", &with_password("/private"), "-O"])
        .arg(work.path().join("wrong"))
        .args(["--digest", &wrong])
        .output()
        .await
        .unwrap();
    printed.push_str(&daemon::failed(&run));

    // The registry mirror with credentials in X-Dragonfly-Registry.
    let proxy_port = daemon::free_port();
    let mirror = daemon::Daemon::start_with(
        &work.path().join("mirror"),
        &[],
        daemon::free_port(),
        &format!(
            "proxy:\n  tcpListen:\n    listen: 127.0.0.1\n    port: {proxy_port}\n  registryMirror:\n    dynamic: true\n    allow:\n      - host: 127.0.0.1\n"
        ),
    );
    let registry = with_password("");
    let body = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{proxy_port}{blob}"))
        .header("x-dragonfly-registry", registry.trim_end_matches('/'))
        .send()
        .await
        .unwrap();
    assert_eq!(body.status(), 200);
    assert!(body.bytes().await.unwrap() == data);
    drop(mirror);

    for needle in [SECRET, encoded.as_str()] {
        assert!(
            !printed.contains(needle),
            "dfget printed {needle:?}: {printed}"
        );
        let found = files_holding(work.path(), needle.as_bytes());
        assert!(found.is_empty(), "{needle:?} found in {found:?}");
    }
    assert!(
        o.stats.for_path("/private").0 >= 2,
        "the origin was asked with the credentials (seed peer and standalone)"
    );
}
