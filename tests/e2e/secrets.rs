//! A password written into a URL (`http://user:pw@host/...`, `X-Dragonfly-Registry:
//! https://user:pw@registry`) reaches the origin as `Authorization: Basic`, and nothing else:
//! no log line, no stderr, no dfget output, no metadata file, no scheduler or seed peer. Real
//! processes: a scheduler, a seed peer and a peer, standalone dfget, and the registry mirror.

use crate::support::{MIB, assert_ok, peer, scheduler};
use dfdaemon::source::oras::Credentials;
use dragonfly_common::digest::{Algorithm, Digest};
use std::path::Path;
use testkit::daemon::DaemonProcess;
use testkit::data::random_bytes;
use testkit::dfget::{failed, ok, standalone};
use testkit::files::same;
use testkit::net::free_port;
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
    let data = random_bytes(401, 9 * MIB);
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
    let w = work.path();
    let mut printed = String::new();

    // A swarm: the seed peer fetches for the peer, with the credentials the peer was given.
    let sched = scheduler(&work.path().join("scheduler"), true);
    let _seed = peer(&w.join("seed"), "127.0.7.1", &[sched.addr()], true).start();
    let peer = peer(&w.join("peer"), "127.0.7.2", &[sched.addr()], false).start();
    let out = work.path().join("via-daemon");
    let digest_text = digest.to_string();
    let url = with_password("/private");
    let run = peer
        .dfget(&[&url, "-O", out.to_str().unwrap(), "--digest", &digest_text])
        .await;
    assert_ok(&run, "peer");
    assert!(same(&out, &data));
    assert!(peer.fed().keys().all(|k| k != "source"), "{:?}", peer.fed());
    printed.push_str(&String::from_utf8_lossy(&run.stdout));
    printed.push_str(&String::from_utf8_lossy(&run.stderr));

    // Standalone dfget, and its error line for a wrong digest.
    let out = work.path().join("standalone");
    let run = standalone(&[&with_password("/private"), "-O", out.to_str().unwrap()]).await;
    ok(&run);
    assert!(same(&out, &data));
    printed.push_str(&String::from_utf8_lossy(&run.stdout));
    let wrong = format!("sha256:{}", "0".repeat(64));
    let wrong_out = work.path().join("wrong");
    let run = standalone(&[
        &with_password("/private"),
        "-O",
        wrong_out.to_str().unwrap(),
        "--digest",
        &wrong,
    ])
    .await;
    printed.push_str(&failed(&run));

    // The registry mirror with credentials in X-Dragonfly-Registry.
    let proxy_port = free_port();
    let mirror = DaemonProcess::builder(&work.path().join("mirror"))
        .proxy(
            proxy_port,
            "  registryMirror:\n    dynamic: true\n    allow:\n      - host: 127.0.0.1\n",
        )
        .start();
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
