//! The proxy against clients that are not what they should be, over real sockets on 127.0.0.x:
//! requests for places the daemon must not reach (loopback, link-local, its own ports), clients
//! that never finish a request or never leave, and clients that open too much. Also the health
//! path, the one page besides `/ca.crt` that needs no credentials.

#[path = "support/proxy.rs"]
mod proxy_daemon;

use dragonfly_common::digest::{Algorithm, Digest};
use proxy_daemon::{LOCAL, daemon, raw, read_head, read_response};
use std::net::SocketAddr;
use std::time::Duration;
use testkit::origin::{Behavior, Origin, Resource};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest a test waits for the daemon to close a connection it should close (the configured
/// timeouts are 1-2 s; the machine is shared and may be slow).
const CLOSE_BOUND: Duration = Duration::from_secs(30);

/// `method target` with these extra header lines, `Connection: close`: the whole answer.
async fn ask(proxy: SocketAddr, method: &str, target: &str, headers: &str) -> String {
    let host = target
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or("x");
    let req =
        format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n");
    raw(proxy, req.as_bytes()).await
}

/// The proxy's answer to `CONNECT target`: its head (the tunnel, if any, is dropped).
async fn connect(proxy: SocketAddr, target: &str) -> String {
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn refused(answer: &str, names: &[&str]) {
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    for n in names {
        assert!(answer.contains(n), "the answer names {n}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlisted_internal_targets_and_the_daemons_own_ports_are_refused() {
    let (origin, running) = Origin::serving([("/file", Resource::bytes(&b"secret"[..]))]).await;
    let port = running.addr.port();
    let d = daemon("  registryMirror:\n    dynamic: true\n").await;
    let upload = d.upload.port();

    // CONNECT to the loopback-only upload port (it used to tunnel).
    let out = connect(d.proxy_addr(), &format!("127.0.0.1:{upload}")).await;
    refused(
        &out,
        &[&format!("127.0.0.1:{upload}"), "upload.tcpListen.port"],
    );
    let out = connect(d.proxy_addr(), &format!("127.0.0.1:{port}")).await;
    refused(&out, &[&format!("127.0.0.1:{port}"), "proxy.whiteList"]);
    // Forward requests: a literal, a name that resolves to loopback, IPv4-mapped, 0.0.0.0,
    // the link-local metadata address (refused before any connection is tried).
    for target in [
        format!("http://127.0.0.1:{port}/file"),
        format!("http://localhost:{port}/file"),
        format!("http://[::ffff:127.0.0.1]:{port}/file"),
        format!("http://0.0.0.0:{port}/file"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
    ] {
        let out = ask(d.proxy_addr(), "GET", &target, "").await;
        refused(&out, &["proxy.whiteList"]);
    }
    let out = ask(
        d.proxy_addr(),
        "GET",
        &format!("http://127.0.0.1:{}/", d.proxy_addr().port()),
        "",
    )
    .await;
    refused(&out, &["proxy.tcpListen.port"]);
    // A dynamic mirror request naming a loopback registry.
    for registry in [
        format!("http://127.0.0.1:{port}"),
        format!("http://127.0.0.1:{upload}"),
    ] {
        let out = ask(
            d.proxy_addr(),
            "GET",
            "/v2/lib/app/manifests/v1",
            &format!("X-Dragonfly-Registry: {registry}\r\n"),
        )
        .await;
        refused(&out, &["127.0.0.1"]);
    }
    let out = ask(
        d.proxy_addr(),
        "GET",
        "/v2/lib/app/manifests/v1?ns=localhost:1",
        "",
    )
    .await;
    refused(&out, &["localhost:1", "proxy.registryMirror.allow"]);
    assert_eq!(origin.stats().requests(), 0, "nothing reached the origin");

    // The static mirror URL is the config's own upstream: reached, loopback or not.
    let d = daemon(&format!(
        "  registryMirror:\n    url: {}\n",
        running.url("").trim_end_matches('/')
    ))
    .await;
    let out = ask(d.proxy_addr(), "GET", "/v2/", "").await;
    assert!(
        out.starts_with("HTTP/1.1 404"),
        "the origin's answer: {out}"
    );
    assert_eq!(origin.stats().requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_hosts_are_reached_but_never_the_daemons_own_ports() {
    let data = vec![7u8; 1000];
    let blob = format!("/v2/lib/app/blobs/{}", Digest::of(Algorithm::Sha256, &data));
    let (origin, running) = Origin::serving([
        ("/file", Resource::bytes(&b"hello"[..])),
        (&blob, Resource::bytes(data.clone())),
    ])
    .await;
    let port = running.addr.port();
    let d = daemon(&format!(
        "{LOCAL}  registryMirror:\n    dynamic: true\n    allow:\n      - host: 127.0.0.1\n        ports: [{port}]\n"
    ))
    .await;
    let out = ask(
        d.proxy_addr(),
        "GET",
        &format!("http://127.0.0.1:{port}/file"),
        "",
    )
    .await;
    assert!(out.ends_with("hello"), "{out}");
    let out = ask(
        d.proxy_addr(),
        "GET",
        &format!("http://localhost:{port}/file"),
        "",
    )
    .await;
    assert!(out.ends_with("hello"), "{out}");
    let out = connect(d.proxy_addr(), &format!("127.0.0.1:{port}")).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let registry = format!("X-Dragonfly-Registry: http://127.0.0.1:{port}\r\n");
    let out = ask(d.proxy_addr(), "GET", &blob, &registry).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    // allow lists 127.0.0.1 on the origin's port only.
    let out = ask(
        d.proxy_addr(),
        "GET",
        &blob,
        "X-Dragonfly-Registry: http://127.0.0.1:1\r\n",
    )
    .await;
    refused(&out, &["127.0.0.1:1", "proxy.registryMirror.allow"]);
    let before = origin.stats().requests();
    // Listed or not, the daemon's own ports are refused.
    let upload = d.upload.port();
    let out = connect(d.proxy_addr(), &format!("127.0.0.1:{upload}")).await;
    refused(&out, &["upload.tcpListen.port"]);
    let out = connect(
        d.proxy_addr(),
        &format!("localhost:{}", d.proxy_addr().port()),
    )
    .await;
    refused(&out, &["proxy.tcpListen.port"]);
    let out = ask(
        d.proxy_addr(),
        "GET",
        &format!("http://127.0.0.1:{upload}/"),
        "",
    )
    .await;
    refused(&out, &["upload.tcpListen.port"]);
    assert_eq!(origin.stats().requests(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_an_unlisted_loopback_name_is_not_followed() {
    // The origin (listed as 127.0.0.1) sends the blob fetch on to `localhost`, which is not
    // listed: the daemon must not follow (the name is checked when it connects, as a name
    // that changed its answer since it was checked would be).
    let data = vec![9u8; 5000];
    let blob = format!("/v2/lib/app/blobs/{}", Digest::of(Algorithm::Sha256, &data));
    let storage = Origin::new();
    storage.route("/storage/blob", Resource::bytes(data.clone()));
    let storage_run = storage.spawn().await.expect("storage");
    let redirect = format!("http://localhost:{}/storage/blob", storage_run.addr.port());
    let (_origin, running) = Origin::serving([(
        &blob,
        Resource::bytes(Vec::new()).with(Behavior {
            redirect_to: Some(redirect),
            ..Behavior::default()
        }),
    )])
    .await;
    let d = daemon("  whiteList:\n    - host: 127.0.0.1\n").await;
    let out = ask(d.proxy_addr(), "GET", &running.url(&blob), "").await;
    assert!(!out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("localhost"), "the error names the host: {out}");
    assert_eq!(
        storage.stats().requests(),
        0,
        "the redirect was not followed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_path_answers_with_and_without_basic_auth() {
    for extra in [
        "",
        "  basicAuth:\n    username: alice\n    password: s3cret\n",
    ] {
        let d = daemon(extra).await;
        for method in ["GET", "HEAD"] {
            let out = ask(d.proxy_addr(), method, "/healthy", "").await;
            assert!(out.starts_with("HTTP/1.1 200"), "{extra}{method}: {out}");
            if method == "GET" {
                assert!(out.ends_with("OK\n"), "{out}");
            }
        }
        // Anything else still needs the credentials.
        if !extra.is_empty() {
            let out = ask(d.proxy_addr(), "GET", "/v2/", "").await;
            assert!(out.starts_with("HTTP/1.1 407"), "{out}");
        }
    }
}

/// Whether the proxy closes `s` (EOF or reset) within [`CLOSE_BOUND`]; what it sent meanwhile.
async fn closed_by_proxy(s: &mut TcpStream) -> (bool, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + CLOSE_BOUND;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (false, got),
            Ok(Ok(0)) | Ok(Err(_)) => return (true, got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_half_sent_and_idle_connections_are_closed() {
    let data = vec![3u8; 4096];
    let blob = format!("/v2/lib/app/blobs/{}", Digest::of(Algorithm::Sha256, &data));
    let (_origin, running) = Origin::serving([(&blob, Resource::bytes(data.clone()))]).await;
    let d = daemon(&format!(
        "  readHeaderTimeout: 1s\n  idleTimeout: 2s\n  registryMirror:\n    url: {}\n",
        running.url("").trim_end_matches('/')
    ))
    .await;
    // No byte at all.
    let mut silent = TcpStream::connect(d.proxy_addr()).await.expect("connect");
    // Half a head (the fast path reads it).
    let mut half = TcpStream::connect(d.proxy_addr()).await.expect("connect");
    half.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    // Half a head after a first request (hyper serves the connection by then).
    let mut half_hyper = TcpStream::connect(d.proxy_addr()).await.expect("connect");
    half_hyper
        .write_all(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let (head, _) = read_response(&mut half_hyper).await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    half_hyper
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    for (name, s) in [
        ("silent", &mut silent),
        ("half a head", &mut half),
        ("half a head, hyper", &mut half_hyper),
    ] {
        let (closed, got) = closed_by_proxy(s).await;
        assert!(closed, "{name}: still open after {CLOSE_BOUND:?}");
        assert!(got.is_empty() || got.starts_with(b"HTTP/1.1 4"), "{name}");
    }

    // Idle after a response: hyper's path (a manifest), then the sendfile path (the blob,
    // stored by then).
    for path in ["/v2/lib/app/manifests/v1", blob.as_str(), blob.as_str()] {
        let mut s = TcpStream::connect(d.proxy_addr()).await.expect("connect");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let head = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 "), "{path}: {head}");
        let (closed, _) = closed_by_proxy(&mut s).await;
        assert!(
            closed,
            "{path}: idle connection still open after {CLOSE_BOUND:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_slower_than_the_timeouts_is_not_cut() {
    let data = vec![5u8; 256 * 1024];
    let (_origin, running) = Origin::serving([(
        "/slow",
        Resource::bytes(data.clone()).with(Behavior {
            header_delay: Duration::from_millis(2500),
            frame_delay: Duration::from_millis(20),
            ..Behavior::default()
        }),
    )])
    .await;
    let d = daemon(&format!(
        "{LOCAL}  readHeaderTimeout: 1s\n  idleTimeout: 1s\n"
    ))
    .await;
    let started = std::time::Instant::now();
    let out = ask(d.proxy_addr(), "GET", &running.url("/slow"), "").await;
    assert!(
        out.starts_with("HTTP/1.1 200"),
        "{}",
        &out[..out.len().min(200)]
    );
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "slower than both timeouts"
    );
    assert!(out.as_bytes().ends_with(&data), "the whole body arrived");
}

/// A connection from `ip` (127.0.0.x) to the proxy.
async fn from(ip: &str, proxy: SocketAddr) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind(format!("{ip}:0").parse().expect("addr"))
        .expect("bind");
    sock.connect(proxy).await.expect("connect")
}

/// Whether the proxy serves a request on `s`.
async fn served(mut s: TcpStream) -> bool {
    let req = b"GET /healthy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    if s.write_all(req).await.is_err() {
        return false;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    out.starts_with(b"HTTP/1.1 200")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gets_its_connection_cap_and_room_again_when_one_closes() {
    let d = daemon("  perClientConnectionLimit: 4\n").await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(from("127.0.0.1", d.proxy_addr()).await);
    }
    // Each held one is accepted and counted before the next connects: the daemon answers.
    let mut extra = from("127.0.0.1", d.proxy_addr()).await;
    let (closed, got) = closed_by_proxy(&mut extra).await;
    assert!(closed, "the fifth connection is closed");
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.is_empty()
            || (got.starts_with("HTTP/1.1 503") && got.contains("proxy.perClientConnectionLimit")),
        "{got}"
    );
    // Another client address is counted apart.
    assert!(served(from("127.0.0.2", d.proxy_addr()).await).await);
    // One closes: a new connection gets its place (once the daemon saw the close).
    drop(held.pop());
    let mut ok = false;
    for _ in 0..100 {
        if served(from("127.0.0.1", d.proxy_addr()).await).await {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "a connection after one closed is served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gets_its_tunnel_cap() {
    let (_origin, running) = Origin::serving([("/f", Resource::bytes(&b"x"[..]))]).await;
    let target = running.addr.to_string();
    let d = daemon(&format!("{LOCAL}  perClientTunnelLimit: 2\n")).await;
    let open = |proxy| {
        let target = target.clone();
        async move {
            let mut s = TcpStream::connect(proxy).await.expect("connect");
            s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
                .await
                .expect("write");
            let head = read_head(&mut s).await;
            (s, head)
        }
    };
    let (t1, h1) = open(d.proxy_addr()).await;
    let (_t2, h2) = open(d.proxy_addr()).await;
    assert!(h1.starts_with("HTTP/1.1 200") && h2.starts_with("HTTP/1.1 200"));
    let (_t3, h3) = open(d.proxy_addr()).await;
    assert!(h3.starts_with("HTTP/1.1 503"), "{h3}");
    drop(t1);
    let mut ok = false;
    for _ in 0..100 {
        let (_t, h) = open(d.proxy_addr()).await;
        if h.starts_with("HTTP/1.1 200") {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "a tunnel after one closed is opened");
}
