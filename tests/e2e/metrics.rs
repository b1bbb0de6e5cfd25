//! Metrics and health of a real swarm: the `scheduler` binary, a seed peer and three daemons on
//! 127.0.30.x, a counting origin. After the downloads, every process's `/metrics` is scraped
//! over HTTP and parsed by PyPI `prometheus-client`'s text parser (pinned, in a venv under the
//! target dir); the numbers must agree with the origin's own byte count, the daemons' logs and
//! each other. `/healthy` and `grpc.health.v1` answer on every process.

use crate::support::{MIB, assert_ok, dfget, outs, peer, peers, scheduler};
use dragonfly_common::digest::{Algorithm, Digest};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use testkit::files::{same, wait_for};
use testkit::origin::{Behavior, Origin, Resource};

/// The parser: prometheus-client's, pinned.
const PROMETHEUS_CLIENT: &str = "prometheus-client==0.26.0";

/// Reads a scrape on stdin; prints one JSON line per sample: family, type, name, labels, value.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        print(json.dumps({"family": fam.name, "type": fam.type, "name": s.name,
                          "labels": s.labels, "value": s.value}))
"#;

fn python() -> PathBuf {
    testkit::python::venv(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        "prometheus-client",
        &[PROMETHEUS_CLIENT],
        "import prometheus_client.parser",
    )
}

/// `GET path` over HTTP/1.1 (a new connection): the status and the body.
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr)
        .unwrap_or_else(|e| panic!("connecting to the metrics server at {addr}: {e}"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the answer");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer from {addr}{path}: {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    // Bodies here are small and sent with a Content-Length (no chunked framing to undo).
    (status, body.to_string())
}

/// One parsed sample.
#[derive(Debug, Clone)]
struct Sample {
    family: String,
    kind: String,
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A process's scrape, parsed by prometheus-client.
struct Scrape {
    text: String,
    samples: Vec<Sample>,
}

impl Scrape {
    fn of(python: &Path, addr: SocketAddr) -> Self {
        let (status, text) = http_get(addr, "/metrics");
        assert_eq!(status, 200, "GET http://{addr}/metrics: {text}");
        let mut child = Command::new(python)
            .args(["-c", PARSE])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the venv's python runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("feed the parser");
        let out = child.wait_with_output().expect("the parser ends");
        assert!(
            out.status.success(),
            "prometheus-client cannot parse the scrape of {addr}: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let samples = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("parser JSON");
                Sample {
                    family: v["family"].as_str().unwrap_or_default().to_string(),
                    kind: v["type"].as_str().unwrap_or_default().to_string(),
                    name: v["name"].as_str().unwrap_or_default().to_string(),
                    labels: v["labels"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                                .collect()
                        })
                        .unwrap_or_default(),
                    value: v["value"].as_f64().expect("a numeric value"),
                }
            })
            .collect();
        Scrape { text, samples }
    }

    /// The sum of sample `name` over the series whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert!(
            !found.is_empty(),
            "no sample {name} {labels:?} in the scrape:\n{}",
            self.text
        );
        found.iter().map(|s| s.value).sum()
    }

    /// The family's type as the parser read it.
    fn kind(&self, family: &str) -> &str {
        self.samples
            .iter()
            .find(|s| s.family == family)
            .map(|s| s.kind.as_str())
            .unwrap_or_else(|| panic!("no family {family} in:\n{}", self.text))
    }

    /// The first lines of samples whose name starts with one of `prefixes` (for the report).
    fn excerpt(&self, prefixes: &[&str]) -> String {
        self.text
            .lines()
            .filter(|l| !l.starts_with('#') && prefixes.iter().any(|p| l.starts_with(p)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `grpc.health.v1.Health/Check` for the whole server at `addr`.
async fn grpc_health(addr: &str) -> i32 {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr} for grpc.health.v1: {e}"));
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("grpc.health.v1 Check on {addr}: {e}"))
        .into_inner()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swarm_run_scrapes_to_numbers_that_match_the_origin_and_the_logs() {
    let python = tokio::task::spawn_blocking(python).await.expect("venv");
    let len = 64 * MIB;
    let data = testkit::data::random_bytes(30, len);
    let digest = Digest::of(Algorithm::Sha256, &data).to_string();
    let origin = Origin::new();
    origin.route("/file", Resource::bytes(data.clone()));
    let missing = Behavior {
        status: Some(404),
        ..Behavior::default()
    };
    origin.route("/missing", Resource::bytes(Vec::new()).with(missing));
    let o = origin.spawn().await.expect("origin");
    let url = o.url("/file");
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let sched = scheduler(&w.join("scheduler"), true);
    let seed = peer(&w.join("seed"), "127.0.30.2", &[sched.addr()], true).start();
    let peers = peers(w, "peer", 30, 3, &[sched.addr()]);

    // Three peers pull the file at once; then peer0 again (from its storage), and peer1 a URL
    // the origin answers with 404.
    let outs = outs(w, "out", 3);
    let runs = peers
        .iter()
        .zip(&outs)
        .map(|(p, out)| dfget(p, &url, out, &digest));
    for (i, r) in futures::future::join_all(runs).await.iter().enumerate() {
        assert_ok(r, &format!("peer{i}"));
        assert!(same(&outs[i], &data), "peer{i}'s copy differs");
    }
    let again = w.join("again");
    assert_ok(
        &dfget(&peers[0], &url, &again, &digest).await,
        "peer0 again",
    );
    let gone = w.join("gone");
    let out = peers[1]
        .dfget(&[&o.url("/missing"), "-O", gone.to_str().unwrap(), "-q"])
        .await;
    assert!(!out.status.success(), "a 404 origin fails dfget");

    // Every task has logged its end; pieces fed per origin, from the logs.
    let daemons: Vec<(&str, &testkit::daemon::DaemonProcess)> = std::iter::once(("seed", &seed))
        .chain(
            peers
                .iter()
                .enumerate()
                .map(|(i, p)| (["peer0", "peer1", "peer2"][i], p)),
        )
        .collect();
    let fed: Vec<BTreeMap<String, u32>> = daemons.iter().map(|(_, d)| d.fed()).collect();
    // The scheduler has heard every peer's end (its reports travel on their own streams).
    let sched_addr = sched.metrics_addr();
    wait_for(
        || {
            let (_, text) = http_get(sched_addr, "/metrics");
            text.lines()
                .any(|l| l == "dragonfly_scheduler_download_peer_finished_total 4")
        },
        "the scheduler to count 4 finished peers",
    )
    .await;

    let scrapes: Vec<Scrape> = daemons
        .iter()
        .map(|(_, d)| Scrape::of(&python, d.metrics_addr()))
        .collect();
    let s = Scrape::of(&python, sched_addr);

    // Bytes by source agree with the origin's own count and the logs.
    let piece = (4 * MIB) as f64;
    let origin_bytes: f64 = scrapes
        .iter()
        .map(|m| {
            m.sum(
                "dragonfly_dfdaemon_download_bytes_total",
                &[("source", "origin")],
            )
        })
        .sum();
    assert_eq!(
        origin_bytes,
        o.served("/file") as f64,
        "bytes in from the origin, summed over the daemons, are the origin's own count"
    );
    let mut from_parents = 0.0;
    for (i, (name, _)) in daemons.iter().enumerate() {
        let m = &scrapes[i];
        let parents = m.sum(
            "dragonfly_dfdaemon_download_bytes_total",
            &[("source", "parent")],
        );
        let origin = m.sum(
            "dragonfly_dfdaemon_download_bytes_total",
            &[("source", "origin")],
        );
        let logged_parents: u32 = fed[i]
            .iter()
            .filter(|(k, _)| k.as_str() != "source")
            .map(|(_, n)| n)
            .sum();
        let logged_source = fed[i].get("source").copied().unwrap_or(0);
        assert_eq!(
            parents,
            f64::from(logged_parents) * piece,
            "{name}: bytes from parents vs its log {:?}",
            fed[i]
        );
        assert_eq!(
            origin,
            f64::from(logged_source) * piece,
            "{name}: bytes from the origin vs its log {:?}",
            fed[i]
        );
        assert_eq!(
            parents + origin,
            len as f64,
            "{name}: one whole copy stored"
        );
        from_parents += parents;
        assert_eq!(
            m.sum("dragonfly_dfdaemon_download_task_finished_total", &[]),
            1.0,
            "{name}: one task finished"
        );
        assert_eq!(
            m.kind("dragonfly_dfdaemon_download_task_duration_seconds"),
            "histogram"
        );
        assert_eq!(
            m.sum(
                "dragonfly_dfdaemon_build_info",
                &[("version", env!("CARGO_PKG_VERSION"))]
            ),
            1.0
        );
        assert_eq!(m.sum("dragonfly_dfdaemon_upload_piece_in_flight", &[]), 0.0);
        assert!(
            m.sum("dragonfly_dfdaemon_disk_used_bytes", &[]) >= len as f64,
            "{name}"
        );
    }
    let to_peers: f64 = scrapes
        .iter()
        .map(|m| m.sum("dragonfly_dfdaemon_upload_bytes_total", &[]))
        .sum();
    assert_eq!(
        to_peers, from_parents,
        "bytes out to peers == bytes in from parents"
    );
    assert!(from_parents > 0.0, "the peers fed each other");

    // peer0's second copy came from its storage; peer1's 404 is a failed task.
    let peer0 = &scrapes[1];
    assert_eq!(
        peer0.sum("dragonfly_dfdaemon_download_task_local_total", &[]),
        1.0
    );
    assert_eq!(
        peer0.sum(
            "dragonfly_dfdaemon_download_bytes_total",
            &[("source", "local")]
        ),
        len as f64
    );
    let peer1 = &scrapes[2];
    assert_eq!(
        peer1.sum(
            "dragonfly_dfdaemon_download_task_failure_total",
            &[("reason", "source")]
        ),
        1.0
    );
    assert_eq!(
        peer1.sum("dragonfly_dfdaemon_download_task_total", &[]),
        2.0
    );
    let tasks_started: f64 = scrapes
        .iter()
        .map(|m| m.sum("dragonfly_dfdaemon_download_task_total", &[]))
        .sum();
    // 4 copies of the file and the 404 (and the seed's try at the 404, if it was triggered).
    assert!(tasks_started >= 5.0, "{tasks_started}");

    // The scheduler: every task the daemons started registered once and got one answer.
    assert_eq!(
        s.sum("dragonfly_scheduler_register_peer_total", &[]),
        tasks_started
    );
    assert_eq!(
        s.sum(
            "dragonfly_scheduler_schedule_answer_total",
            &[("trigger", "register")]
        ),
        tasks_started
    );
    assert_eq!(
        s.sum(
            "dragonfly_scheduler_schedule_duration_seconds_count",
            &[("trigger", "register")]
        ),
        tasks_started
    );
    assert!(s.sum("dragonfly_scheduler_seed_trigger_total", &[]) >= 1.0);
    assert!(
        s.sum(
            "dragonfly_scheduler_schedule_answer_total",
            &[("trigger", "register"), ("kind", "back_to_source")]
        ) >= 1.0,
        "the seed peer was sent to the origin"
    );
    let pieces_from_parents = s.sum(
        "dragonfly_scheduler_download_piece_finished_total",
        &[("source", "parent")],
    );
    assert_eq!(
        pieces_from_parents * piece,
        from_parents,
        "pieces the peers reported vs their bytes"
    );
    assert_eq!(s.sum("dragonfly_scheduler_hosts", &[]), 4.0);
    assert_eq!(s.sum("dragonfly_scheduler_seed_hosts", &[]), 1.0);
    assert!(s.sum("dragonfly_scheduler_build_info", &[]) == 1.0);
    assert_eq!(
        s.kind("dragonfly_scheduler_schedule_duration_seconds"),
        "histogram"
    );

    // Health: HTTP on every metrics port, gRPC on the scheduler's and the upload ports.
    for addr in daemons
        .iter()
        .map(|(_, d)| d.metrics_addr())
        .chain(std::iter::once(sched_addr))
    {
        assert_eq!(
            http_get(addr, "/healthy"),
            (200, "OK".to_string()),
            "{addr}"
        );
    }
    const SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    assert_eq!(grpc_health(&sched.addr()).await, SERVING);
    for (name, d) in &daemons {
        assert_eq!(grpc_health(&d.upload_addr()).await, SERVING, "{name}");
    }

    // For the report: a few real lines of each scrape.
    let prefixes = [
        "dragonfly_dfdaemon_build_info",
        "dragonfly_dfdaemon_download_bytes_total",
        "dragonfly_dfdaemon_download_task_total",
        "dragonfly_dfdaemon_download_task_finished_total{size_level=\"lt_128mib\"}",
        "dragonfly_dfdaemon_upload_bytes_total",
        "dragonfly_scheduler_build_info",
        "dragonfly_scheduler_register_peer_total",
        "dragonfly_scheduler_schedule_answer_total{trigger=\"register\"",
        "dragonfly_scheduler_seed_trigger_total",
        "dragonfly_scheduler_hosts",
        "dragonfly_scheduler_peers",
    ];
    for (i, (name, _)) in daemons.iter().enumerate() {
        eprintln!(
            "--- {name} <- {:?}\n{}",
            fed[i],
            scrapes[i].excerpt(&prefixes)
        );
    }
    eprintln!("--- scheduler\n{}", s.excerpt(&prefixes));
    eprintln!("origin served /file: {} bytes", o.served("/file"));
}
