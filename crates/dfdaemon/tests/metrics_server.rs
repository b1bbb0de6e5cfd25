//! The daemon's metrics server and gRPC health, in process: a metrics port that is taken stops
//! the start with an error naming the key and the address; the upload port's
//! `grpc.health.v1` turns NOT_SERVING when the daemon shuts down. (The swarm's scrape is
//! `tests/e2e/metrics.rs`.)

use dfdaemon::config::MetricsListen;
use dfdaemon::daemon::{DaemonError, Listeners};
use dragonfly_common::config::{Port, PortRange};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;
use testkit::daemon::DaemonProcess;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn a_taken_metrics_port_fails_the_start_naming_the_key_and_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let b = DaemonProcess::temp().config(|c| {
        c.metrics.tcp_listen = MetricsListen {
            listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: PortRange::single(Port::new(port).unwrap()),
        }
    });
    let err = match dfdaemon::daemon::start(b.get().clone(), std::future::pending()).await {
        Ok(_) => panic!("the daemon started on a taken metrics port"),
        Err(e) => e,
    };
    assert!(matches!(err, DaemonError::Listen { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("metrics.tcpListen") && text.contains(&format!("127.0.0.1:{port}")),
        "{text}"
    );
}

#[tokio::test]
async fn the_upload_ports_grpc_health_turns_not_serving_when_the_daemon_shuts_down() {
    let b = DaemonProcess::temp();
    let cfg = b.get().clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (bound, run) = dfdaemon::daemon::start_with(cfg, Listeners::default(), async {
        let _ = rx.await;
    })
    .await
    .expect("the daemon starts");
    let running = tokio::spawn(run);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", bound.upload))
        .unwrap()
        .connect()
        .await
        .expect("connect to the upload port");
    let mut client = HealthClient::new(channel);
    let mut watch = client
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("Watch")
        .into_inner();
    let first = watch.message().await.expect("a status").expect("a message");
    assert_eq!(first.status, ServingStatus::Serving as i32);

    let _ = tx.send(());
    let next = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("an update before the grace period ends")
        .expect("a status")
        .expect("a message");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    drop(watch);
    drop(client);
    let _ = tokio::time::timeout(Duration::from_secs(60), running).await;
}
