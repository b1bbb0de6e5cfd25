//! scheduler.yaml: the example file, error messages, and the binary's `--print-config`.

use scheduler::config::SchedulerConfig;
use std::path::PathBuf;
use std::process::Command;
use testkit::cli::{assert_complete_example, scheduler, text};

#[test]
fn example_file_has_every_key_with_its_default_and_no_warnings() {
    assert_complete_example(
        "config/scheduler.yaml",
        SchedulerConfig::load,
        SchedulerConfig::to_yaml,
    );
}

#[test]
fn defaults() {
    let c = SchedulerConfig::default();
    assert_eq!(c.server.port.get(), 8002);
    assert_eq!(c.server.listen_ip.to_string(), "0.0.0.0");
    assert_eq!(
        c.server.log_dir,
        PathBuf::from("/var/log/dragonfly/scheduler")
    );
    assert_eq!(c.scheduler.algorithm, "default");
    assert_eq!(c.scheduler.back_to_source_count, 1);
    assert_eq!(c.scheduler.retry_back_to_source_limit, 5);
    assert_eq!(c.scheduler.retry_limit, 10);
    assert_eq!(c.scheduler.retry_interval.get().as_millis(), 200);
    assert_eq!(c.scheduler.candidate_parent_limit, 4);
    assert_eq!(c.scheduler.child_limit, 8);
    assert_eq!(c.scheduler.filter_parent_limit, 15);
    assert_eq!(c.scheduler.gc.peer_gc_interval.get().as_secs(), 10);
    assert_eq!(c.scheduler.gc.peer_ttl.get().as_secs(), 24 * 3600);
    assert_eq!(c.scheduler.gc.task_gc_interval.get().as_secs(), 30 * 60);
    assert_eq!(c.scheduler.gc.host_gc_interval.get().as_secs(), 60);
    assert_eq!(c.scheduler.gc.host_ttl.get().as_secs(), 3600);
    assert!(c.seed_peer.enable);
    assert_eq!(c.metrics.addr.to_string(), ":8003");
}

#[test]
fn dragonfly_shaped_file_loads() {
    let yaml = "server:\n  port: 8002\n  advertiseIP: 10.0.0.5\n  cacheDir: /var/cache\nscheduler:\n  algorithm: default\n  retryInterval: 300ms\n  gc:\n    peerTTL: 48h\n    pieceDownloadTimeout: 30m\nmanager:\n  addr: manager:65003\n  schedulerClusterID: 1\nsecurity:\n  autoIssueCert: false\nnetwork:\n  enableIPv6: false\njob:\n  enable: true\nconsole: true\n";
    let loaded = match SchedulerConfig::from_yaml(yaml, "s.yaml") {
        Ok(l) => l,
        Err(e) => panic!("{e}"),
    };
    let c = &loaded.value;
    assert_eq!(
        c.server.advertise_ip.map(|ip| ip.to_string()),
        Some("10.0.0.5".to_owned())
    );
    assert_eq!(c.scheduler.retry_interval.get().as_millis(), 300);
    assert_eq!(c.scheduler.gc.peer_ttl.get().as_secs(), 48 * 3600);
    assert!(c.manager.is_some() && c.security.is_some() && c.network.is_some());
    assert!(c.console);
    assert_eq!(
        loaded.warnings,
        vec![
            "key \"server.cacheDir\" in s.yaml is a Dragonfly option this implementation does not support (ignored)",
            "key \"scheduler.gc.pieceDownloadTimeout\" in s.yaml is a Dragonfly option this implementation does not support (ignored)",
            "key \"job\" in s.yaml is a Dragonfly option this implementation does not support (ignored)",
        ]
    );
}

#[test]
fn bad_configs_fail_with_exact_messages() {
    let cases = [
        (
            "server:\n  port: 80000\n",
            "server.port: 80000 is not a port (1-65535) (line 2, column 9)",
        ),
        (
            "scheduler:\n  retryInterval: soon\n",
            "scheduler.retryInterval: \"soon\" is not a duration (examples: 30s, 6h, 7d) (line 2, column 18)",
        ),
        (
            "scheduler:\n  gc:\n    hostTTL: 1x\n",
            "scheduler.gc.hostTTL: \"1x\" is not a duration (examples: 30s, 6h, 7d) (line 3, column 14)",
        ),
        (
            "scheduler:\n  candidateParentLimit: 20\n",
            "scheduler.filterParentLimit: 15 is below scheduler.candidateParentLimit (20)",
        ),
        (
            "evaluator:\n  weights:\n    freeUpload: -0.5\n",
            "evaluator.weights.freeUpload: -0.5 is not a weight (a number, 0 or more) (line 3, column 17)",
        ),
        (
            "metrics:\n  addr: 8003\n",
            "metrics.addr: \"8003\" is not a listen address (examples: :8003, 0.0.0.0:8003) (line 2, column 9)",
        ),
        (
            "seedPeer:\n  enable: sometimes\n",
            "seedPeer.enable: \"sometimes\" is not a boolean (line 2, column 11)",
        ),
        (
            "server:\n  listenIP: everywhere\n",
            "server.listenIP: \"everywhere\" is not an IP address (line 2, column 13)",
        ),
    ];
    let mut failures = Vec::new();
    for (yaml, want) in cases {
        let got = match SchedulerConfig::from_yaml(yaml, "s.yaml") {
            Ok(l) => format!("loaded: {:?}", l.warnings),
            Err(e) => e.to_string(),
        };
        if got != want {
            failures.push(format!("{yaml:?}\n  want: {want}\n  got:  {got}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn print_config_round_trips_and_bad_config_fails() {
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => panic!("tempdir: {e}"),
    };
    let input = dir.path().join("in.yaml");
    assert!(
        std::fs::write(
            &input,
            "scheduler:\n  retryLimit: 3\nmetrics:\n  addr: 127.0.0.1:9000\n"
        )
        .is_ok()
    );
    let out = scheduler(&["--config", &input.display().to_string(), "--print-config"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = dir.path().join("printed.yaml");
    assert!(std::fs::write(&printed, &out.stdout).is_ok());
    let a = SchedulerConfig::load(&input)
        .map(|l| l.value)
        .map_err(|e| e.to_string());
    let b = SchedulerConfig::load(&printed)
        .map(|l| l.value)
        .map_err(|e| e.to_string());
    assert_eq!(a, b);
    assert!(a.is_ok_and(|c| c.scheduler.retry_limit == 3));

    let bad = dir.path().join("bad.yaml");
    assert!(std::fs::write(&bad, "server:\n  port: 0\n").is_ok());
    let out = scheduler(&["--config", &bad.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).trim_end(),
        format!(
            "error: invalid config {}: server.port: 0 is not a port (1-65535) (line 2, column 9)",
            bad.display()
        )
    );
}

#[test]
fn without_print_config_it_serves_grpc() {
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => panic!("tempdir: {e}"),
    };
    let port = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(e) => panic!("free port: {e}"),
    };
    let config = dir.path().join("serve.yaml");
    let yaml = format!("server:\n  listenIP: 127.0.0.1\n  port: {port}\n");
    assert!(std::fs::write(&config, yaml).is_ok());
    let mut child = match Command::new(env!("CARGO_BIN_EXE_scheduler"))
        .args(["--config", &config.display().to_string()])
        .env_remove("SCHEDULER_CONFIG")
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => panic!("cannot run scheduler: {e}"),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    };
    let answer = runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let url = format!("http://127.0.0.1:{port}");
            if let Ok(mut client) = dragonfly_proto::SchedulerClient::connect(url).await {
                let req = dragonfly_proto::scheduler::v1::StatTaskRequest {
                    task_id: "nope".into(),
                };
                return client
                    .stat_task(req)
                    .await
                    .map(|_| ())
                    .map_err(|s| s.code());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(tonic::Code::Unavailable);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    });
    let still_running = matches!(child.try_wait(), Ok(None));
    let _ = child.kill();
    let _ = child.wait();
    assert!(still_running, "scheduler exited early");
    assert_eq!(answer, Err(tonic::Code::NotFound));
}
