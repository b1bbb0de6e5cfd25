//! Origins a proxy client picks (an absolute URL, `X-Dragonfly-Registry`) cannot capture a layer
//! for others (issue 13 §2) nor make the daemon give up its stored layers for bytes they claim
//! but never send (§1). Real daemon processes, origins on 127.0.0.1.

#[path = "support/daemon.rs"]
mod daemon;

use daemon::{Daemon, free_port};
use dragonfly_common::digest::{Algorithm, Digest};
use std::path::Path;
use std::time::Duration;
use testkit::data::random_bytes;
use testkit::origin::{Behavior, Origin, Resource, RunningOrigin};

const MIB: usize = 1 << 20;

/// A daemon whose proxy listens on `proxy_port`; `extra` is appended (top-level YAML).
fn start(dir: &Path, proxy_port: u16, extra: &str) -> Daemon {
    let d = Daemon::start_with(
        dir,
        &[],
        free_port(),
        &format!(
            "keepStorage: true\nproxy:\n  tcpListen:\n    listen: 127.0.0.1\n    port: {proxy_port}\n{extra}"
        ),
    );
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", proxy_port)).is_ok() {
            return d;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("proxy of {} did not listen", dir.display());
}

fn client(proxy_port: u16) -> reqwest::Client {
    reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(format!("http://127.0.0.1:{proxy_port}")).expect("proxy"))
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

fn blob(data: &[u8]) -> (String, Digest) {
    let d = Digest::of(Algorithm::Sha256, data);
    (format!("/v2/lib/app/blobs/{d}"), d)
}

async fn serve(routes: &[(&str, Resource)]) -> (Origin, RunningOrigin) {
    let origin = Origin::new();
    for (p, r) in routes {
        origin.route(p, r.clone());
    }
    let running = origin.spawn().await.expect("origin");
    (origin, running)
}

/// Other bytes under the same digest path, with a false (short) length, sent slowly.
fn liar(seed: u64) -> Resource {
    Resource::bytes(random_bytes(seed, MIB)).with(Behavior {
        frame_delay: Duration::from_secs(2),
        ..Behavior::default()
    })
}

/// Ask through the proxy and keep reading in the background (a client holding the task).
fn hold(c: &reqwest::Client, url: String) -> tokio::task::JoinHandle<()> {
    let c = c.clone();
    tokio::spawn(async move {
        if let Ok(mut r) = c.get(url).send().await {
            while let Ok(Some(_)) = r.chunk().await {}
        }
    })
}

/// Wait until `origin` has been asked for `path` at least once.
async fn asked(origin: &Origin, path: &str) {
    for _ in 0..200 {
        if origin.stats().for_path(path).0 > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{path} was never asked of the origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_asked_first_from_a_hostile_origin_is_not_captured_by_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = random_bytes(7, 8 * MIB + 17);
    let other = random_bytes(8, 3 * MIB + 5);
    let (path, digest) = blob(&data);
    let (other_path, other_digest) = blob(&other);
    let (registry, reg) = serve(&[
        (&path, Resource::bytes(data.clone())),
        (&other_path, Resource::bytes(other.clone())),
    ])
    .await;
    let (attacker, evil) = serve(&[(&path, liar(1)), (&other_path, liar(2))]).await;
    let port = free_port();
    let d = start(&tmp.path().join("node"), port, "");
    let c = client(port);

    // The attacker starts the layer from its own origin and keeps the task busy.
    let held = hold(&c, evil.url(&path));
    asked(&attacker, &path).await;

    // A client asking the real registry gets the real length and bytes, from the registry.
    let r = c.get(reg.url(&path)).send().await.expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.content_length(),
        Some(data.len() as u64),
        "the length comes from the client's own origin"
    );
    assert_eq!(
        r.headers()["docker-content-digest"],
        digest.to_string().as_str()
    );
    let body = r.bytes().await.expect("the whole body arrives");
    assert!(body == data, "the bytes are the registry's");
    assert_eq!(registry.stats().for_path(&path).1, data.len() as u64);
    held.abort();

    // Verified content is shared: asked from yet another origin, the stored layer answers and
    // that origin is not asked for the body.
    let (third, third_run) = serve(&[(&path, liar(3))]).await;
    let again = c
        .get(third_run.url(&path))
        .send()
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert!(again == data, "the stored, verified layer is served");
    assert_eq!(third.stats().for_path(&path).1, 0, "no body from the third origin");

    // A half-done task from the hostile origin survives a restart; it must not decide the
    // length or bytes the next legitimate client gets.
    let held = hold(&c, evil.url(&other_path));
    asked(&attacker, &other_path).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    d.terminate();
    held.abort();
    let _d = start(&tmp.path().join("node"), port, "");
    let r = c.get(reg.url(&other_path)).send().await.expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_length(), Some(other.len() as u64));
    let body = r.bytes().await.expect("the whole body arrives");
    assert!(body == other, "the bytes are the registry's");
    assert_eq!(Digest::of(Algorithm::Sha256, &body), other_digest);
}
