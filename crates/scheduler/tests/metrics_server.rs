//! The scheduler's metrics server (`server::run`) and gRPC health, in process; and the binary's
//! error when `metrics.addr` is taken. (The swarm's scrape is `tests/e2e/metrics.rs`.)

use scheduler::SchedulerState;
use scheduler::config::SchedulerConfig;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics server");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_metrics_and_health_then_turns_not_serving_on_shutdown() {
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (grpc_addr, metrics_addr) = (grpc.local_addr().unwrap(), metrics.local_addr().unwrap());
    let state = Arc::new(SchedulerState::new(SchedulerConfig::default()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(scheduler::server::run(grpc, Some(metrics), state, async {
        let _ = stopped.await;
    }));

    let healthy = tokio::task::spawn_blocking(move || get(metrics_addr, "/healthy"))
        .await
        .unwrap();
    assert!(
        healthy.starts_with("HTTP/1.1 200") && healthy.ends_with("OK"),
        "{healthy}"
    );
    let scrape = tokio::task::spawn_blocking(move || get(metrics_addr, "/metrics"))
        .await
        .unwrap();
    assert!(
        scrape.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{scrape}"
    );
    for line in [
        "dragonfly_scheduler_hosts 0",
        "dragonfly_scheduler_register_peer_total 0",
        "# EOF",
    ] {
        assert!(scrape.lines().any(|l| l == line), "no {line:?} in {scrape}");
    }

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to the gRPC port");
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: "dragonfly.scheduler.v1.Scheduler".into(),
        })
        .await
        .expect("Watch")
        .into_inner();
    let first = watch.message().await.unwrap().expect("a status");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let _ = stop.send(());
    let next = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("an update before the grace period ends")
        .unwrap()
        .expect("a status");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    drop(watch);
    let ended = tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("run returns after the shutdown")
        .unwrap();
    assert!(ended.is_ok(), "{ended:?}");
}

#[test]
fn a_taken_metrics_addr_stops_the_scheduler_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = dir.path().join("scheduler.yaml");
    std::fs::write(
        &cfg,
        format!(
            "server:\n  listenIP: 127.0.0.1\n  port: {}\n  logDir: {}\nmetrics:\n  addr: 127.0.0.1:{port}\n",
            testkit::net::free_port(),
            dir.path().display()
        ),
    )
    .unwrap();
    let out = testkit::cli::scheduler(&["--config", cfg.to_str().unwrap()]);
    let err = testkit::cli::text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")) && err.contains("metrics.addr"),
        "{err}"
    );
}
