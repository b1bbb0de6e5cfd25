//! The proxy and registry mirror of a daemon started in-process, against a plain-HTTP origin:
//! forwarding, P2P rules, Range and HEAD, mirror routing, digest checks, auth pass-through,
//! redirects to blob storage, CONNECT tunnels and bad input. The TLS parts (hijacking) run
//! against a real registry and real clients in `tests/e2e/registry.rs` (top-level `tests/`).

#[path = "support/proxy.rs"]
mod proxy_daemon;

use dfdaemon::proxy::SERVED_HEADER;
use dragonfly_common::digest::{Algorithm, Digest};
use dragonfly_common::task_id::TaskId;
use proxy_daemon::{LOCAL, daemon, daemon_with, raw, read_head, read_response};
use std::time::Duration;
use testkit::data::random_bytes;
use testkit::net::free_port;
use testkit::origin::{Behavior, Origin, Resource};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1 << 20;

fn blob_path(data: &[u8]) -> (String, Digest) {
    let d = Digest::of(Algorithm::Sha256, data);
    (format!("/v2/lib/img/blobs/{d}"), d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_blob_is_fetched_once_and_served_with_ranges_and_head() {
    let data = random_bytes(1, 10 * MIB + 123);
    let (path, digest) = blob_path(&data);
    let (origin, running) =
        Origin::serving(vec![(path.clone(), Resource::bytes(data.clone()))]).await;
    let d = daemon(LOCAL).await;
    let c = d.client();
    let url = running.url(&path);

    for _ in 0..2 {
        let r = c.get(&url).send().await.expect("get");
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["docker-content-digest"],
            digest.to_string().as_str()
        );
        assert_eq!(
            r.headers()["x-dragonfly-task"],
            TaskId::for_blob(&digest, &url).as_str()
        );
        assert_eq!(r.bytes().await.expect("body"), data[..]);
    }
    let stats = origin.stats();
    let (_, bytes) = stats.for_path(&path);
    assert_eq!(
        bytes,
        data.len() as u64,
        "the origin served the blob exactly once"
    );

    let len = data.len();
    for (range, status, want, content_range) in [
        ("bytes=5-9", 206, &data[5..10], format!("bytes 5-9/{len}")),
        (
            "bytes=-10",
            206,
            &data[len - 10..],
            format!("bytes {}-{}/{len}", len - 10, len - 1),
        ),
        (
            "bytes=4194300-4194310",
            206,
            &data[4194300..4194311],
            format!("bytes 4194300-4194310/{len}"),
        ),
        (
            "bytes=0-",
            206,
            &data[..],
            format!("bytes 0-{}/{len}", len - 1),
        ),
    ] {
        let r = c
            .get(&url)
            .header("range", range)
            .send()
            .await
            .expect("range");
        assert_eq!(r.status(), status, "{range}");
        assert_eq!(
            r.headers()["content-range"],
            content_range.as_str(),
            "{range}"
        );
        assert_eq!(r.bytes().await.expect("body"), want, "{range}");
    }
    let r = c
        .get(&url)
        .header("range", format!("bytes={len}-"))
        .send()
        .await
        .expect("416");
    assert_eq!(r.status(), 416);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{len}").as_str()
    );

    let before = stats.requests();
    let r = c.head(&url).send().await.expect("head");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], len.to_string().as_str());
    assert_eq!(
        r.headers()["docker-content-digest"],
        digest.to_string().as_str()
    );
    assert_eq!(
        stats.requests(),
        before,
        "HEAD of a stored blob is answered locally"
    );
    assert_eq!(stats.for_path(&path).1, len as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_requests_are_forwarded_without_hop_by_hop_headers() {
    let page = b"manifest-ish".to_vec();
    let (origin, running) = Origin::serving([(
        "/v2/lib/img/manifests/latest",
        Resource::bytes(page.clone()).with(Behavior {
            forbid_header: Some("x-conn-only".into()),
            ..Behavior::default()
        }),
    )])
    .await;
    let d = daemon(LOCAL).await;
    let c = d.client();
    let url = running.url("/v2/lib/img/manifests/latest");
    let r = c
        .get(&url)
        .header("connection", "x-conn-only")
        .header("x-conn-only", "1")
        .send()
        .await
        .expect("get");
    assert_eq!(
        r.status(),
        200,
        "a header named by Connection must not be forwarded"
    );
    assert_eq!(r.bytes().await.expect("body"), page[..]);
    let r = c.get(running.url("/missing")).send().await.expect("get");
    assert_eq!(r.status(), 404, "the origin's status comes back as is");
    assert_eq!(origin.stats().for_path("/v2/lib/img/manifests/latest").0, 1);

    // `Expect: 100-continue` is answered by the proxy itself, not passed on (the origin
    // refuses requests that carry it).
    origin.route(
        "/upload-check",
        Resource::bytes(&b"fine"[..]).with(Behavior {
            forbid_header: Some("expect".into()),
            ..Behavior::default()
        }),
    );
    let answer = raw(
        d.proxy_addr(),
        format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nExpect: 100-continue\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            running.url("/upload-check"),
            running.addr
        )
        .as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("fine"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_requests_go_to_the_registry_in_the_header() {
    let data = random_bytes(2, 3 * MIB);
    let (path, _) = blob_path(&data);
    let (origin, running) = Origin::serving(vec![
        (path.clone(), Resource::bytes(data.clone())),
        (
            "/v2/lib/img/manifests/v1".into(),
            Resource::bytes(&b"{}"[..]),
        ),
    ])
    .await;
    let d = daemon(
        "  registryMirror:\n    dynamic: true\n    url: http://127.0.0.1:1\n    allow:\n      - host: 127.0.0.1\n",
    )
    .await;
    let registry = running.url("");
    let plain = reqwest::Client::new();
    let r = plain
        .get(format!("{}{path}?ns=elsewhere.example", d.proxy_url()))
        .header("X-Dragonfly-Registry", registry.trim_end_matches('/'))
        .send()
        .await
        .expect("mirror get");
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.expect("body"), data[..]);
    let r = plain
        .get(format!("{}/v2/lib/img/manifests/v1", d.proxy_url()))
        .header("X-Dragonfly-Registry", registry.trim_end_matches('/'))
        .send()
        .await
        .expect("manifest");
    assert_eq!(r.text().await.expect("text"), "{}");
    assert_eq!(origin.stats().for_path(&path).1, data.len() as u64);

    // Without the header the mirror's url is used: nothing listens there.
    let r = plain
        .get(format!("{}/v2/", d.proxy_url()))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap_or_default().contains("127.0.0.1:1"));
    let r = plain
        .get(format!("{}/v2/", d.proxy_url()))
        .header("X-Dragonfly-Registry", "ftp://nope")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap_or_default().contains("ftp://nope"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_for_a_digest_fail_the_client_and_are_not_kept() {
    let data = random_bytes(3, 6 * MIB);
    let (path, digest) = blob_path(&data);
    let (origin, running) = Origin::serving(vec![(
        path.clone(),
        Resource::bytes(data.clone()).with(Behavior::corrupt()),
    )])
    .await;
    let d = daemon(LOCAL).await;
    let c = d.client();
    let url = running.url(&path);
    for attempt in 0..2 {
        let r = c.get(&url).send().await.expect("headers arrive");
        assert_eq!(r.status(), 200);
        let body = r.bytes().await;
        assert!(
            body.is_err(),
            "attempt {attempt}: a corrupt blob must not arrive complete"
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !d.stored(TaskId::for_blob(&digest, &url).as_str()),
        "nothing of a wrong content is kept"
    );
    assert_eq!(
        origin.stats().for_path(&path).1,
        2 * data.len() as u64,
        "each attempt went back to the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_challenge_reaches_the_client_and_tokens_reach_the_origin() {
    let data = random_bytes(4, MIB);
    let (path, _) = blob_path(&data);
    let challenge = r#"Bearer realm="http://auth.example/token",service="registry""#;
    let (_origin, running) = Origin::serving(vec![(
        path.clone(),
        Resource::bytes(data.clone()).with(Behavior {
            require_header: Some(("authorization".into(), "Bearer good".into())),
            challenge: Some(challenge.into()),
            ..Behavior::default()
        }),
    )])
    .await;
    let d = daemon(LOCAL).await;
    let c = d.client();
    let url = running.url(&path);
    let r = c.get(&url).send().await.expect("get");
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], challenge);
    let r = c
        .get(&url)
        .header("authorization", "Bearer good")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.expect("body"), data[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_to_blob_storage_is_followed_without_the_token() {
    let data = random_bytes(5, 5 * MIB);
    let (path, digest) = blob_path(&data);
    let (origin, running) = Origin::empty().await;
    // The signed URL is on another host name (localhost vs 127.0.0.1): the token must not go.
    let signed = format!(
        "http://localhost:{}/storage/blob?X-Amz-Signature=abc&Expires=1",
        running.addr.port()
    );
    origin.route(
        &path,
        Resource::bytes(Vec::new()).with(Behavior {
            require_header: Some(("authorization".into(), "Bearer good".into())),
            redirect_to: Some(signed),
            ..Behavior::default()
        }),
    );
    origin.route(
        "/storage/blob",
        Resource::bytes(data.clone()).with(Behavior {
            forbid_header: Some("authorization".into()),
            ..Behavior::default()
        }),
    );
    let d = daemon(LOCAL).await;
    let r = d
        .client()
        .get(running.url(&path))
        .header("authorization", "Bearer good")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-dragonfly-task"],
        TaskId::for_blob(&digest, &running.url(&path)).as_str(),
        "the task is keyed by the digest and the origin, not the signed URL"
    );
    assert_eq!(r.bytes().await.expect("body"), data[..]);
    assert_eq!(
        origin.stats().for_path("/storage/blob").1,
        data.len() as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tunnels_bytes_and_names_a_dead_target() {
    let data = random_bytes(6, 64 * 1024);
    let (_origin, running) = Origin::serving([("/file", Resource::bytes(data.clone()))]).await;
    let d = daemon(LOCAL).await;
    let target = running.addr;
    let mut s = tokio::net::TcpStream::connect(d.proxy_addr())
        .await
        .expect("connect");
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(
        format!("GET /file HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.expect("read");
    assert!(
        rest.ends_with(&data),
        "the tunnel carried the origin's bytes untouched"
    );

    let closed = format!("127.0.0.1:{}", free_port());
    let mut s = tokio::net::TcpStream::connect(d.proxy_addr())
        .await
        .expect("connect");
    s.write_all(format!("CONNECT {closed} HTTP/1.1\r\nHost: {closed}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    assert!(out.contains(&closed), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors() {
    let d = daemon(LOCAL).await;
    let big = format!(
        "GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    // A head that never ends, past the limit: the same answer from the fast path.
    let endless = format!("GET /v2/x HTTP/1.1\r\nX-Big: {}", "a".repeat(70 * 1024));
    // (request, the status line's start, what the one-line body names; "" for nothing)
    let cases: [(&[u8], &str, &str); 8] = [
        (
            b"THIS IS NOT HTTP\r\n\r\n",
            "HTTP/1.1 400",
            "not an HTTP/1.1 request",
        ),
        // Bare-LF heads are answered (they used to wait forever for a CRLF blank line).
        (
            b"GET /index.html HTTP/1.1\nHost: x\nConnection: close\n\n",
            "HTTP/1.1 404",
            "",
        ),
        (big.as_bytes(), "HTTP/1.1 431", "is over the limit"),
        (endless.as_bytes(), "HTTP/1.1 431", "is over the limit"),
        (
            b"GET ftp://example.com/x HTTP/1.1\r\nHost: example.com\r\n\r\n",
            "HTTP/1.1 400",
            "ftp",
        ),
        (
            b"GET /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 404",
            "/index.html",
        ),
        (
            b"GET /ca.crt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 404",
            "hijackHTTPS",
        ),
        // The proxy still works after all that.
        (
            b"GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 502",
            "127.0.0.1:1",
        ),
    ];
    for (request, status, names) in cases {
        let out = raw(d.proxy_addr(), request).await;
        assert!(
            out.starts_with(status) && out.contains(names),
            "{} answered {out:?}, not {status} naming {names:?}",
            String::from_utf8_lossy(&request[..request.len().min(60)])
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_blob_does_not_stop_the_task() {
    let data = random_bytes(7, 12 * MIB);
    let (path, digest) = blob_path(&data);
    let (origin, running) = Origin::serving(vec![(
        path.clone(),
        Resource::bytes(data.clone()).with(Behavior::slow(Duration::from_millis(5))),
    )])
    .await;
    let d = daemon(LOCAL).await;
    let url = running.url(&path);
    {
        let mut r = d.client().get(&url).send().await.expect("get");
        let first = r.chunk().await.expect("first bytes").expect("some");
        assert!(!first.is_empty());
        // Dropped here, mid-blob.
    }
    let id = TaskId::for_blob(&digest, &url);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let r = loop {
        let r = d.client().head(&url).send().await.expect("head");
        if r.headers().contains_key("x-dragonfly-task") || tokio::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        r.headers()["x-dragonfly-task"],
        id.as_str(),
        "the task finished on its own"
    );
    let body = d
        .client()
        .get(&url)
        .send()
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert_eq!(body, data[..]);
    assert_eq!(
        origin.stats().for_path(&path).1,
        data.len() as u64,
        "fetched once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_certificate_is_served_when_hijacking() {
    let d = daemon("  hijackHTTPS:\n    hosts:\n      - regx: registry.test\n").await;
    let r = reqwest::get(format!("{}/ca.crt", d.proxy_url()))
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    let pem = r.text().await.expect("text");
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    assert!(reqwest::Certificate::from_pem(pem.as_bytes()).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_bytes_arrive_before_the_blob_is_fetched() {
    let data = random_bytes(8, 32 * MIB);
    let (path, _) = blob_path(&data);
    let (origin, running) = Origin::serving(vec![(
        path.clone(),
        Resource::bytes(data.clone()).with(Behavior::slow(Duration::from_millis(2))),
    )])
    .await;
    // One piece at a time: eight piece fetches of at least 128 ms each from the origin.
    let d2 = daemon_with(|c| c.download.concurrent_piece_count = 1, LOCAL).await;
    let mut r = d2
        .client()
        .get(running.url(&path))
        .send()
        .await
        .expect("get");
    let first = r.chunk().await.expect("first bytes").expect("some");
    let served = origin.stats().for_path(&path).1;
    assert!(
        served < data.len() as u64,
        "the client had bytes when the origin had served {served} of {} bytes",
        data.len()
    );
    let mut body = first.to_vec();
    while let Some(c) = r.chunk().await.expect("chunk") {
        body.extend_from_slice(&c);
    }
    assert!(body == data, "the streamed bytes are the blob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_basic_auth_is_required_when_configured() {
    let (_origin, running) = Origin::serving([("/page", Resource::bytes(&b"hello"[..]))]).await;
    let d = daemon(&format!(
        "  basicAuth:\n    username: alice\n    password: s3cret\n{LOCAL}"
    ))
    .await;
    let r = d
        .client()
        .get(running.url("/page"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 407);
    assert!(r.headers().contains_key("proxy-authenticate"));
    let authed = reqwest::Client::builder()
        .proxy(
            reqwest::Proxy::all(d.proxy_url())
                .expect("proxy")
                .basic_auth("alice", "s3cret"),
        )
        .build()
        .expect("client");
    let r = authed.get(running.url("/page")).send().await.expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.expect("text"), "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_blobs_go_out_with_sendfile_and_other_requests_share_the_connection() {
    let data = random_bytes(21, 9 * MIB + 17);
    let (path, digest) = blob_path(&data);
    let (origin, running) = Origin::serving(vec![
        (path.clone(), Resource::bytes(data.clone())),
        (
            "/v2/lib/img/manifests/v1".into(),
            Resource::bytes(&b"{\"m\":1}"[..]),
        ),
    ])
    .await;
    let registry = running.url("");
    let d = daemon(&format!(
        "  registryMirror:\n    url: {}\n",
        registry.trim_end_matches('/')
    ))
    .await;
    let get = |p: &str, extra: &str| format!("GET {p} HTTP/1.1\r\nHost: mirror\r\n{extra}\r\n");

    // Not stored yet: the streaming P2P path answers (no sendfile header) and stores it.
    let mut s = tokio::net::TcpStream::connect(d.proxy_addr())
        .await
        .expect("connect");
    s.write_all(get(&path, "").as_bytes()).await.expect("send");
    let (head, body) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(!head.to_ascii_lowercase().contains(SERVED_HEADER), "{head}");
    assert!(body == data, "first answer's bytes differ");
    for _ in 0..100 {
        if d.stored(TaskId::for_blob(&digest, &registry).as_str()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Stored: two pipelined GETs, a manifest (hyper's) and the blob again, on one connection.
    let mut s = tokio::net::TcpStream::connect(d.proxy_addr())
        .await
        .expect("connect");
    let burst = [
        get(&path, ""),
        get(&format!("{path}?ns=ignored.example"), ""),
        get("/v2/lib/img/manifests/v1", ""),
        get(&path, "Connection: close\r\n"),
    ]
    .concat();
    s.write_all(burst.as_bytes()).await.expect("send");
    for i in 0..2 {
        let (head, body) = read_response(&mut s).await;
        let lower = head.to_ascii_lowercase();
        assert!(head.starts_with("HTTP/1.1 200"), "answer {i}: {head}");
        assert!(
            lower.contains(&format!("{SERVED_HEADER}: sendfile")),
            "answer {i}: {head}"
        );
        assert!(
            lower.contains(&format!("docker-content-digest: {digest}")),
            "{head}"
        );
        assert!(body == data, "answer {i}: bytes differ");
    }
    let (head, body) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "manifest: {head}");
    assert_eq!(body, b"{\"m\":1}");
    // After the hand-over hyper serves the rest of the connection, the blob included.
    let (head, body) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body == data, "last answer's bytes differ");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)
        .await
        .expect("closed after Connection: close");
    assert!(rest.is_empty());

    // One range: 206 with sendfile too; past the end: hyper's 416, on the same connection.
    let mut s = tokio::net::TcpStream::connect(d.proxy_addr())
        .await
        .expect("connect");
    let len = data.len();
    let ranged = [
        get(&path, "Range: bytes=5-9\r\n"),
        get(&path, &format!("Range: bytes={}-\r\n", 4 * MIB - 3)),
        get(&path, &format!("Range: bytes={len}-\r\n")),
    ]
    .concat();
    s.write_all(ranged.as_bytes()).await.expect("send");
    let (head, body) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains(&format!("content-range: bytes 5-9/{len}")),
        "{head}"
    );
    assert!(lower.contains(SERVED_HEADER), "{head}");
    assert_eq!(body, &data[5..10]);
    let (head, body) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert!(
        body == data[4 * MIB - 3..],
        "a range across a piece boundary to the end"
    );
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 416"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-range: bytes */{len}")),
        "{head}"
    );
    // A client that tries TLS first on the plain port (skopeo with an `insecure` mirror) is
    // refused at once, so it falls back to plain HTTP without waiting for its handshake timeout.
    let mut s = tokio::net::TcpStream::connect(d.proxy_addr())
        .await
        .expect("connect");
    s.write_all(&[
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ])
    .await
    .expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut answer))
        .await
        .expect("answered and closed within 2 s, not left waiting")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // The origin served the blob once, for the first GET.
    assert_eq!(origin.stats().for_path(&path), (1, data.len() as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_blob_damaged_on_disk_is_never_served_whole() {
    let data = random_bytes(41, 12 * MIB + 9);
    let (path, digest) = blob_path(&data);
    let (origin, running) =
        Origin::serving(vec![(path.clone(), Resource::bytes(data.clone()))]).await;
    let d = daemon(LOCAL).await;
    let c = d.client();
    let url = running.url(&path);
    let body = c
        .get(&url)
        .send()
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert!(body == data);
    // 8 bytes overwritten inside piece 1 (4 MiB pieces) of the stored content.
    let id = TaskId::for_blob(&digest, &url);
    let file = d
        .config
        .data_dir
        .join("content")
        .join(&id.as_str()[..2])
        .join(id.as_str());
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .expect("content file");
        f.write_all_at(b"garbage!", 4 * MIB as u64 + 1000)
            .expect("scribble");
    }
    let r = c.get(&url).send().await.expect("get");
    assert_eq!(r.status(), 200);
    assert!(
        r.bytes().await.is_err(),
        "the response is cut short before the damaged piece's last bytes"
    );
    // The damaged piece was dropped and is fetched again for the next request.
    let body = c
        .get(&url)
        .send()
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert!(body == data);
    let served = origin.stats().for_path(&path).1;
    assert!(
        served > data.len() as u64 && served < 2 * data.len() as u64,
        "only the damaged piece came from the origin again ({served})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_paths_that_would_leave_v2_or_the_prefix_are_refused() {
    let (origin, running) = Origin::serving(vec![
        ("/not-v2/x".to_string(), Resource::bytes(vec![1u8; 10])),
        ("/some/admin".to_string(), Resource::bytes(vec![2u8; 10])),
    ])
    .await;
    let d = daemon(&format!(
        "  registryMirror:\n    url: {}\n",
        running.url("/some/prefix")
    ))
    .await;
    for path in ["/v2/../not-v2/x", "/v2/%2e%2e/%2e%2e/admin"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let out = raw(d.proxy_addr(), req.as_bytes()).await;
        assert!(
            out.starts_with("HTTP/1.1 400") && out.contains(path),
            "{path}: {out}"
        );
    }
    assert_eq!(origin.stats().requests(), 0, "nothing reached the origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_requests_need_the_proxy_credentials_and_a_whitelisted_registry() {
    let data = random_bytes(43, 3 * MIB);
    let (path, _) = blob_path(&data);
    let (origin, running) =
        Origin::serving(vec![(path.clone(), Resource::bytes(data.clone()))]).await;
    let mirror = format!("  registryMirror:\n    url: {}\n", running.url(""));
    let d = daemon(&format!(
        "  basicAuth:\n    username: alice\n    password: s3cret\n{mirror}"
    ))
    .await;
    let url = format!("{}{path}", d.proxy_url());
    let client = reqwest::Client::new();
    let alice = format!(
        "Basic {}",
        dfdaemon::source::oras::base64_encode(b"alice:s3cret")
    );
    let r = client
        .get(&url)
        .header("proxy-authorization", &alice)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.expect("body") == data);
    // Stored now (the sendfile path would serve it): still not without credentials.
    for _ in 0..2 {
        let r = client.get(&url).send().await.expect("get");
        assert_eq!(r.status(), 407, "a mirror GET without credentials");
        let r = client.head(&url).send().await.expect("head");
        assert_eq!(r.status(), 407, "a mirror HEAD without credentials");
    }
    assert_eq!(origin.stats().gets(), 1);

    // whiteList applies to the registry a mirror request goes to.
    let d = daemon(&format!(
        "  whiteList:\n  - host: registry.example\n{mirror}"
    ))
    .await;
    let r = client
        .get(format!("{}{path}", d.proxy_url()))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 403);
    assert!(r.text().await.expect("text").contains("proxy.whiteList"));
    assert_eq!(origin.stats().gets(), 1, "nothing more reached the origin");
}
