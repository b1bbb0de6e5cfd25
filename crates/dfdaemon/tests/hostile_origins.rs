//! Origins a proxy client picks (an absolute URL, `X-Dragonfly-Registry`) cannot capture a layer
//! for others (issue 13 §2) nor make the daemon give up its stored layers for bytes they claim
//! but never send (§1). Real daemon processes, origins on 127.0.0.1.

use dragonfly_common::config::Size;
use dragonfly_common::digest::{Algorithm, Digest};
use std::path::Path;
use std::time::Duration;
use testkit::daemon::DaemonProcess;
use testkit::data::random_bytes;
use testkit::net::free_port;
use testkit::origin::{Behavior, Origin, Resource, RunningOrigin};
use testkit::tmpfs::Tmpfs;

const MIB: usize = 1 << 20;

/// A daemon whose proxy listens on `proxy_port` and may reach origins on 127.0.0.1 (loopback
/// is refused unless listed), with `storage.diskGCThreshold` at `quota`.
fn start(dir: &Path, proxy_port: u16, quota: Size) -> DaemonProcess {
    let d = DaemonProcess::builder(dir)
        .proxy(proxy_port, "  whiteList:\n  - host: 127.0.0.1\n")
        .config(|c| {
            c.keep_storage = true;
            c.storage.disk_gc_threshold = quota;
        })
        .start();
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

/// Other bytes under the same digest path, with a false (short) length, sent slowly.
fn liar(seed: u64) -> Resource {
    Resource::bytes(random_bytes(seed, MIB)).with(Behavior::slow(Duration::from_secs(2)))
}

/// GET `url` through the proxy: the whole body, which must arrive.
async fn fetch(c: &reqwest::Client, url: impl reqwest::IntoUrl) -> bytes::Bytes {
    c.get(url)
        .send()
        .await
        .expect("get")
        .bytes()
        .await
        .expect("the whole body arrives")
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
    let (registry, reg) = Origin::serving([
        (&path, Resource::bytes(data.clone())),
        (&other_path, Resource::bytes(other.clone())),
    ])
    .await;
    let (attacker, evil) = Origin::serving([(&path, liar(1)), (&other_path, liar(2))]).await;
    let port = free_port();
    let d = start(&tmp.path().join("node"), port, Size::ZERO);
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
    let (third, third_run) = Origin::serving([(&path, liar(3))]).await;
    let again = fetch(&c, third_run.url(&path)).await;
    assert!(again == data, "the stored, verified layer is served");
    assert_eq!(
        third.stats().for_path(&path).1,
        0,
        "no body from the third origin"
    );

    // A half-done task from the hostile origin survives a restart; it must not decide the
    // length or bytes the next legitimate client gets.
    let held = hold(&c, evil.url(&other_path));
    asked(&attacker, &other_path).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    d.terminate();
    held.abort();
    let _d = start(&tmp.path().join("node"), port, Size::ZERO);
    let r = c.get(reg.url(&other_path)).send().await.expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_length(), Some(other.len() as u64));
    let body = r.bytes().await.expect("the whole body arrives");
    assert!(body == other, "the bytes are the registry's");
    assert_eq!(Digest::of(Algorithm::Sha256, &body), other_digest);
}

/// A source claiming `len` bytes (a sparse file: zeros), sending 64 KiB every 2 s.
fn claims(dir: &Path, name: &str, len: u64) -> Resource {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(len))
        .expect("sparse file");
    Resource::file(path).with(Behavior::slow(Duration::from_secs(2)))
}

/// Store `blobs` through the proxy, then check they are all still stored: asked again, the
/// registry serves no more bytes.
struct Layers {
    blobs: Vec<(String, Vec<u8>)>,
}

impl Layers {
    fn new(n: u64, len: usize) -> Self {
        let blobs = (0..n)
            .map(|i| {
                let data = random_bytes(100 + i, len);
                (blob(&data).0, data)
            })
            .collect();
        Layers { blobs }
    }

    fn routes(&self) -> Vec<(&str, Resource)> {
        self.blobs
            .iter()
            .map(|(p, d)| (p.as_str(), Resource::bytes(d.clone())))
            .collect()
    }

    async fn fetch_all(&self, c: &reqwest::Client, reg: &RunningOrigin) {
        for (p, data) in &self.blobs {
            let body = fetch(c, reg.url(p)).await;
            assert!(body == data[..], "{p}: wrong bytes");
        }
    }

    /// Bytes the registry served for these blobs.
    fn served(&self, registry: &Origin) -> u64 {
        self.blobs
            .iter()
            .map(|(p, _)| registry.stats().for_path(p).1)
            .sum()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_length_that_cannot_fit_evicts_nothing_and_is_passed_through() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let layers = Layers::new(3, 8 * MIB);
    let big = random_bytes(9, 48 * MIB);
    let (big_path, _) = blob(&big);
    let mut routes = layers.routes();
    routes.push((&big_path, Resource::bytes(big.clone())));
    let (registry, reg) = Origin::serving(routes).await;
    let fake = format!("/v2/lib/app/blobs/sha256:{}", "ee".repeat(32));
    let (attacker, evil) = Origin::serving([(&fake, claims(tmp.path(), "tib", 1 << 40))]).await;
    let port = free_port();
    let d = start(&tmp.path().join("node"), port, Size::mib(40));
    let c = client(port);
    layers.fetch_all(&c, &reg).await;
    let first = layers.served(&registry);
    assert_eq!(first, 3 * 8 * MIB as u64);

    // An origin claiming 1 TiB: passed through (the client gets the origin's answer), and not
    // one stored layer is evicted for it.
    let r = c.get(evil.url(&fake)).send().await.expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_length(), Some(1 << 40));
    drop(r);
    assert!(attacker.stats().for_path(&fake).0 >= 1);
    // A real layer over the quota is passed through whole, and not stored.
    let body = fetch(&c, reg.url(&big_path)).await;
    assert!(body == big, "the passed-through layer arrives whole");
    layers.fetch_all(&c, &reg).await;
    assert_eq!(
        layers.served(&registry),
        first,
        "every stored layer was served from storage, none evicted: {}",
        d.log()
    );
    assert!(
        d.log().contains("passed through without storing"),
        "{}",
        d.log()
    );

    // dfget through the daemon downloads what the daemon cannot store without it.
    let out = tmp.path().join("big.out");
    let o = d
        .dfget(&[&reg.url(&big_path), "-O", out.to_str().expect("utf-8")])
        .await;
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("downloading without the daemon"),
        "{stderr}"
    );
    assert!(stderr.contains("storage.diskGCThreshold"), "{stderr}");
    assert!(std::fs::read(&out).expect("output") == big);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_that_claim_much_and_send_little_do_not_empty_the_cache() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let layers = Layers::new(4, 8 * MIB);
    let real = random_bytes(11, 16 * MIB);
    let (real_path, _) = blob(&real);
    let mut routes = layers.routes();
    routes.push((&real_path, Resource::bytes(real.clone())));
    let (registry, reg) = Origin::serving(routes).await;
    let (a, b) = (
        format!("/v2/lib/app/blobs/sha256:{}", "aa".repeat(32)),
        format!("/v2/lib/app/blobs/sha256:{}", "bb".repeat(32)),
    );
    let (attacker, evil) = Origin::serving([
        (&a, claims(tmp.path(), "a", 30 * MIB as u64)),
        (&b, claims(tmp.path(), "b", 24 * MIB as u64)),
    ])
    .await;
    let port = free_port();
    let d = start(&tmp.path().join("node"), port, Size::mib(64));
    let c = client(port);
    layers.fetch_all(&c, &reg).await;
    let first = layers.served(&registry);

    // Two downloads that each fit, claiming 54 MiB together and sending 64 KiB every 2 s.
    let held = [hold(&c, evil.url(&a)), hold(&c, evil.url(&b))];
    asked(&attacker, &a).await;
    asked(&attacker, &b).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A real pull meanwhile gets all its bytes, and the stored layers stay.
    let body = fetch(&c, reg.url(&real_path)).await;
    assert!(body == real);
    layers.fetch_all(&c, &reg).await;
    assert_eq!(
        layers.served(&registry),
        first,
        "the layers stored before are still stored: {}",
        d.log()
    );
    for h in held {
        h.abort();
    }
}

/// Fill the file system of `dir` with a file of zeros until it is full (or `limit` is written).
fn fill(path: &Path, limit: usize) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("filler");
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..limit.div_ceil(chunk.len()) {
        if f.write_all(&chunk).and_then(|()| f.flush()).is_err() {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gives_clients_every_byte_or_an_error_and_keeps_the_stored_layers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = tmp.path().join("node");
    let _fs = Tmpfs::mount(&node.join("data"), "64m");
    let layers = Layers::new(2, 8 * MIB);
    let big = random_bytes(21, 40 * MIB);
    let (big_path, _) = blob(&big);
    let slow = random_bytes(22, 24 * MIB);
    let (slow_path, _) = blob(&slow);
    let mut routes = layers.routes();
    routes.push((&big_path, Resource::bytes(big.clone())));
    routes.push((
        &slow_path,
        Resource::bytes(slow.clone()).with(Behavior::slow(Duration::from_millis(40))),
    ));
    let (registry, reg) = Origin::serving(routes).await;
    let port = free_port();
    let d = start(&node, port, Size::ZERO);
    let c = client(port);
    layers.fetch_all(&c, &reg).await;
    let first = layers.served(&registry);
    // Another program takes most of the disk: 16 MiB of layers stored, a few MiB free.
    fill(&node.join("data/filler"), 36 * MIB);

    // 40 MiB cannot fit even with every layer gone: passed through whole, nothing evicted.
    let body = fetch(&c, reg.url(&big_path)).await;
    assert!(body == big);
    layers.fetch_all(&c, &reg).await;
    assert_eq!(
        layers.served(&registry),
        first,
        "the stored layers stay: {}",
        d.log()
    );

    // The disk fills up during a download: the client gets an error, never a short 200.
    std::fs::remove_file(node.join("data/filler")).expect("remove filler");
    let r = c.get(reg.url(&slow_path)).send().await.expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_length(), Some(slow.len() as u64));
    asked(&registry, &slow_path).await;
    fill(&node.join("data/filler"), 64 * MIB);
    match r.bytes().await {
        Ok(body) => assert!(body == slow, "a complete answer has the right bytes"),
        Err(e) => assert!(e.is_body() || e.is_decode(), "{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_stored_by_an_older_daemon_under_the_digest_alone_are_still_served() {
    use dfdaemon::storage::{NewTask, Storage};
    use dragonfly_common::task_id::TaskId;
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = tmp.path().join("node");
    let data = random_bytes(31, 5 * MIB + 3);
    let (path, digest) = blob(&data);
    let (registry, reg) = Origin::serving([(&path, Resource::bytes(data.clone()))]).await;
    {
        // What an older daemon left: the layer finished under its digest-only id.
        let s = Storage::open(node.join("data")).expect("storage");
        let id = TaskId::legacy_blob_v1(&digest);
        s.create_task(NewTask {
            id: id.clone(),
            url: reg.url(&path),
            content_length: data.len() as u64,
            piece_length: 4 * MIB as u64,
            digest: Some(digest.to_string()),
            validator: None,
        })
        .expect("create");
        s.start_task(&id).expect("start");
        for (n, chunk) in data.chunks(4 * MIB).enumerate() {
            let mut w = s.piece_writer(&id, n as u32).expect("writer");
            w.write(chunk).expect("write");
            w.commit(None, None).expect("commit");
        }
        s.finish_task_with(&id, &[digest.to_string()])
            .expect("finish");
    }
    let port = free_port();
    let _d = start(&node, port, Size::ZERO);
    let body = fetch(&client(port), reg.url(&path)).await;
    assert!(body == data);
    assert_eq!(
        registry.stats().for_path(&path).1,
        0,
        "served from the stored layer, not the registry"
    );
}
