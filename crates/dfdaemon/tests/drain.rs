//! A daemon that drains on SIGTERM (transfers in flight finish, then it exits 0), and one that
//! stops, naming the server, when a server of it fails (issue 14 §4).

use dfdaemon::config::DfdaemonConfig;
use dfdaemon::daemon::{DaemonError, Listeners};
use dragonfly_common::config::Size;
use sha2::{Digest as _, Sha256};
use std::path::Path;
use std::time::Duration;
use testkit::daemon::DaemonProcess;
use testkit::dfget::ok;
use testkit::net::free_port;
use testkit::origin::{Origin, Resource};

const MIB: u64 = 1 << 20;

/// The sha256 of a file, as `sha256:<hex>` (dfget's `--digest`).
fn sha256_of(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// Whether some connection to `port` on 127.0.0.1 is established (from `/proc/net/tcp`).
fn has_connection_to(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1] == local && f[3] == "01"
    })
}

/// `in_flight` of the "stopped accepting; draining" line `server` logged.
fn in_flight_at_stop(log: &str, server: &str) -> u64 {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["msg"] == "stopped accepting; draining" && v["server"] == server)
        .and_then(|v| v["in_flight"].as_u64())
        .unwrap_or_else(|| panic!("no 'stopped accepting' line of the {server} in:\n{log}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_child_finish_256_mib_from_the_daemon_then_it_exits_0() {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("origin.bin");
    testkit::data::write_random_file(&file, 14, 256 * MIB).unwrap();
    let digest = sha256_of(&file);
    let origin = Origin::new();
    origin.route("/big", Resource::file(&file));
    let o = origin.spawn().await.unwrap();
    let url = o.url("/big");

    // The parent sends at 48 MiB/s, so the child's 256 MiB take a few seconds; the grace period
    // is longer than that.
    let mut a = DaemonProcess::builder(&work.path().join("a"))
        .multiplex(true)
        .config(|c| {
            c.upload.rate_limit = Size::mib(48);
            c.graceful_shutdown_timeout = std::time::Duration::from_secs(120).into();
        })
        .start();
    let out_a = work.path().join("out-a");
    ok(&a.dfget(&[&url, "-O", out_a.to_str().unwrap()]).await);
    let b = DaemonProcess::builder(&work.path().join("b"))
        .parents(&[a.upload_port()])
        .multiplex(true)
        .start();

    let out_b = work.path().join("out-b");
    let child = tokio::spawn(b.dfget(&[&url, "-O", out_b.to_str().unwrap(), "--digest", &digest]));
    // Under load the child's dfget and its daemon's first piece request can take a while: wait
    // for the connection (up to 2 minutes), never send SIGTERM before it.
    let mut connected = false;
    for _ in 0..12_000 {
        if has_connection_to(a.upload_port()) {
            connected = true;
            break;
        }
        if child.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        connected,
        "the child never connected to the parent's upload port; the child's log:\n{}",
        b.log()
    );
    assert!(
        !child.is_finished(),
        "the child finished before SIGTERM; the test needs a transfer in flight"
    );
    a.sigterm();

    ok(&child.await.unwrap());
    assert_eq!(sha256_of(&out_b), digest, "the child has the right bytes");
    assert_eq!(
        o.stats.for_path("/big").1,
        256 * MIB,
        "the origin served the file once (to the parent): the child took it from the parent; \
         the child's log:\n{}",
        b.log()
    );
    let status = a.wait_exit(Duration::from_secs(120)).await;
    assert!(status.success(), "the parent exited with {status}");
    let log = a.log();
    assert!(
        in_flight_at_stop(&log, "upload server") >= 1,
        "the child's connections were open at SIGTERM"
    );
    assert!(!log.contains("were cut"), "nothing was cut:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_stream_in_flight_across_sigterm_completes() {
    let data = testkit::data::random_bytes(15, (24 * MIB) as usize);
    // 8 MiB/s: the 24 MiB stream takes a few seconds.
    let origin = Origin::new().with_rate_limit(8 * MIB);
    origin.route("/stream.bin", Resource::bytes(data.clone()));
    let o = origin.spawn().await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let proxy_port = free_port();
    let mut a = DaemonProcess::builder(&work.path().join("a"))
        .config(|c| c.graceful_shutdown_timeout = std::time::Duration::from_secs(120).into())
        .proxy(proxy_port, "  whiteList:\n  - host: 127.0.0.1\n")
        .start();
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", proxy_port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(format!("http://127.0.0.1:{proxy_port}")).unwrap())
        .build()
        .unwrap();
    let mut resp = client.get(o.url("/stream.bin")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut got = Vec::with_capacity(data.len());
    got.extend_from_slice(&resp.chunk().await.unwrap().expect("a first chunk"));
    assert!(got.len() < data.len(), "the stream is in flight");

    a.sigterm();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    assert!(got == data, "the stream completed with the right bytes");
    let status = a.wait_exit(Duration::from_secs(120)).await;
    assert!(status.success(), "the daemon exited with {status}");
    let log = a.log();
    assert!(in_flight_at_stop(&log, "proxy") >= 1, "{log}");
    assert!(!log.contains("were cut"), "nothing was cut:\n{log}");
}

/// A config for a daemon in `dir` (no proxy; listeners come from the test).
fn config_in(dir: &Path) -> DfdaemonConfig {
    let yaml = format!(
        "dataDir: {d}/data\nlogDir: {d}/log\ndownload:\n  unixListen:\n    socket: {d}/dfdaemon.sock\nmetrics:\n  tcpListen:\n    listen: 127.0.0.1\n    port: {m}\n",
        d = dir.display(),
        m = free_port()
    );
    DfdaemonConfig::from_yaml(&yaml, "test.yaml").unwrap().value
}

#[tokio::test]
async fn a_server_whose_listener_breaks_stops_the_daemon_with_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    // The test keeps a second descriptor of the upload listener, and shuts it down under the
    // daemon: accept then fails with EINVAL, as for a listener that no longer works.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ours = listener.try_clone().unwrap();
    listener.set_nonblocking(true).unwrap();
    let listeners = Listeners {
        upload: Some(tokio::net::TcpListener::from_std(listener).unwrap()),
        ..Listeners::default()
    };
    let (bound, run) =
        dfdaemon::daemon::start_with(config_in(dir.path()), listeners, std::future::pending())
            .await
            .unwrap();
    assert_eq!(bound.upload, ours.local_addr().unwrap());
    let run = tokio::spawn(run);
    rustix::net::shutdown(&ours, rustix::net::Shutdown::Read).unwrap();

    let err = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the daemon stops")
        .unwrap()
        .expect_err("a broken server is an error");
    let text = dragonfly_common::error::chain(&err);
    assert!(
        matches!(&err, DaemonError::Server { server, .. } if server.starts_with("upload server")),
        "{text}"
    );
    assert!(text.contains("upload.tcpListen"), "{text}");
    assert!(
        !bound.socket.exists(),
        "the socket file is removed on the way out"
    );
}

#[tokio::test]
async fn listeners_bound_by_the_caller_are_used_and_a_clean_shutdown_is_ok() {
    let dir = tempfile::tempdir().unwrap();
    let upload = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upload_addr = upload.local_addr().unwrap();
    let socket_path = dir.path().join("given.sock");
    let socket = tokio::net::UnixListener::bind(&socket_path).unwrap();
    let listeners = Listeners {
        upload: Some(upload),
        socket: Some(socket),
        ..Listeners::default()
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (bound, run) = dfdaemon::daemon::start_with(config_in(dir.path()), listeners, async {
        let _ = rx.await;
    })
    .await
    .unwrap();
    assert_eq!(bound.upload, upload_addr);
    assert_eq!(bound.socket, socket_path);
    assert!(bound.proxy.is_none());
    let run = tokio::spawn(run);
    // The upload server answers on the given listener.
    let resp = reqwest::get(format!("http://{upload_addr}/pieces/nothing/0"))
        .await
        .unwrap();
    assert!(resp.status().is_client_error(), "{}", resp.status());
    tx.send(()).unwrap();
    run.await.unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(upload_addr).await.is_err());
}
