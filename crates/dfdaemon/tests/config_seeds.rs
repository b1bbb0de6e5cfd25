//! Every YAML snippet of the docs we follow (snapshotted under `config/seeds/`) loads, with the
//! effective values the docs intend.

use dfdaemon::config::{DfdaemonConfig, Loaded};
use dragonfly_common::config::Duration;
use std::path::{Path, PathBuf};

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/seeds")
}

fn seed_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(seeds_dir())
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn load(name: &str) -> Loaded<DfdaemonConfig> {
    let path = seeds_dir().join(name);
    match DfdaemonConfig::load(&path) {
        Ok(loaded) => loaded,
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

fn rules(config: &DfdaemonConfig) -> Vec<&str> {
    config
        .proxy
        .proxies
        .iter()
        .map(|r| r.regx.as_str())
        .collect()
}

fn hijack_hosts(config: &DfdaemonConfig) -> Vec<&str> {
    config
        .proxy
        .hijack_https
        .iter()
        .flat_map(|h| h.hosts.iter().map(|host| host.regx.as_str()))
        .collect()
}

#[test]
fn every_seed_loads_without_unknown_keys() {
    let files = seed_files();
    assert!(
        files.len() >= 7,
        "expected at least 7 fixtures, found {files:?}"
    );
    for path in files {
        match DfdaemonConfig::load(&path) {
            Ok(loaded) => {
                for w in &loaded.warnings {
                    assert!(!w.contains("unknown key"), "{}: {w}", path.display());
                }
            }
            Err(e) => panic!("{}: {e}", path.display()),
        }
    }
}

#[test]
fn containerd_proxy_with_hijack() {
    for (name, insecure, certs) in [
        ("containerd-proxy-and-mirror.1.yaml", false, vec![]),
        ("containerd-proxy-and-mirror.2.yaml", true, vec![]),
        (
            "containerd-proxy-and-mirror.3.yaml",
            false,
            vec![PathBuf::from("server.crt")],
        ),
    ] {
        let loaded = load(name);
        let c = &loaded.value;
        assert!(loaded.warnings.is_empty(), "{name}: {:?}", loaded.warnings);
        assert_eq!(c.proxy.tcp_listen.port.start().get(), 65001, "{name}");
        assert_eq!(c.proxy.tcp_listen.listen.to_string(), "0.0.0.0", "{name}");
        assert!(c.proxy.security.insecure, "{name}");
        assert_eq!(rules(c), vec!["blobs/sha256.*"], "{name}");
        assert_eq!(hijack_hosts(c), vec!["your.private.registry"], "{name}");
        let hijack = c.proxy.hijack_https.as_ref();
        assert_eq!(
            hijack.and_then(|h| h.cert.clone()),
            Some(PathBuf::from("ca.crt"))
        );
        assert_eq!(
            hijack.and_then(|h| h.key.clone()),
            Some(PathBuf::from("ca.key"))
        );
        let host = hijack.and_then(|h| h.hosts.first());
        assert_eq!(host.map(|h| h.insecure), Some(insecure), "{name}");
        assert_eq!(host.map(|h| h.certs.clone()), Some(certs), "{name}");
        assert!(
            c.proxy.proxies[0]
                .regx
                .is_match("/v2/library/busybox/blobs/sha256:0123abcd"),
            "{name}"
        );
    }
}

#[test]
fn containerd_registry_mirror() {
    let loaded = load("containerd-proxy-and-mirror.4.yaml");
    let c = &loaded.value;
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(c.proxy.tcp_listen.port.start().get(), 65001);
    assert!(c.proxy.registry_mirror.dynamic);
    assert_eq!(c.proxy.registry_mirror.url, "https://index.docker.io");
    assert_eq!(rules(c), vec!["blobs/sha256.*"]);
    assert!(c.proxy.hijack_https.is_none());
}

#[test]
fn oras_resource_client() {
    let loaded = load("oras-resource-client.1.yaml");
    let c = &loaded.value;
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(c.storage.task_expire_time, Duration::from_hours(6));
    assert_eq!(c.storage.strategy, "io.d7y.storage.v2.advance.");
    assert_eq!(c.storage.disk_gc_threshold.as_u64(), 53_687_091_200);
    assert_eq!(c.storage.disk_gc_threshold.to_string(), "50Gi");
    assert_eq!(c.storage.disk_gc_threshold_percent.get(), 80.0);
    assert!(c.storage.multiplex);
    assert_eq!(c.oras.proxy, None);
    assert_eq!(c.oras.dial_timeout, Duration::from_secs(30));
    assert_eq!(c.oras.keep_alive, Duration::from_secs(30));
    assert_eq!(c.oras.max_idle_conns, 100);
    assert_eq!(c.oras.idle_conn_timeout, Duration::from_secs(90));
    assert_eq!(c.oras.response_header_timeout, Duration::from_secs(30));
    assert_eq!(c.oras.tls_handshake_timeout, Duration::from_secs(30));
    assert_eq!(c.oras.expect_continue_timeout, Duration::from_secs(10));
    assert!(c.oras.insecure_skip_verify);
    // Sections the snippet does not mention keep their defaults.
    assert_eq!(c.proxy, DfdaemonConfig::default().proxy);
}

#[test]
fn singularity_proxy_top_level_shape() {
    for name in ["singularity-proxy.en.1.yaml", "singularity-proxy.zh.1.yaml"] {
        let loaded = load(name);
        let c = &loaded.value;
        let mirror = &c.proxy.registry_mirror;
        assert!(mirror.dynamic, "{name}");
        assert_eq!(mirror.url, "<your.private.registry>", "{name}");
        assert!(
            !mirror.insecure && !mirror.direct && !mirror.use_proxies,
            "{name}"
        );
        assert!(mirror.certs.is_empty(), "{name}");
        assert_eq!(
            rules(c),
            vec!["blobs/sha256.*", "manifests/sha256.*"],
            "{name}"
        );
        assert_eq!(hijack_hosts(c), vec!["<your.private.registry>"], "{name}");
        assert_eq!(c.proxy.tcp_listen.port.start().get(), 65001, "{name}");
        assert_eq!(loaded.warnings.len(), 2, "{name}: {:?}", loaded.warnings);
        assert!(
            loaded.warnings[0].starts_with("registryMirror.url in ")
                && loaded.warnings[0].contains("\"<your.private.registry>\" is not a URL"),
            "{name}: {:?}",
            loaded.warnings
        );
        assert!(
            loaded.warnings[1].starts_with("hijackHTTPS.hosts[0].regx in ")
                && loaded.warnings[1].contains("looks like a placeholder"),
            "{name}: {:?}",
            loaded.warnings
        );
    }
}

#[test]
fn both_shapes_give_the_same_effective_config() {
    let top = "registryMirror:\n  dynamic: true\n  url: https://r.example\nproxies:\n  - regx: blobs/sha256.*\n  - regex: manifests/sha256.*\nhijackHTTPS:\n  cert: ca.crt\n  key: ca.key\n  hosts:\n    - regx: r.example\n";
    let nested = "proxy:\n  registryMirror:\n    dynamic: true\n    url: https://r.example\n  proxies:\n    - regx: blobs/sha256.*\n    - regx: manifests/sha256.*\n  hijackHTTPS:\n    cert: ca.crt\n    key: ca.key\n    hosts:\n      - regex: r.example\n";
    let a = DfdaemonConfig::from_yaml(top, "top.yaml").map_err(|e| e.to_string());
    let b = DfdaemonConfig::from_yaml(nested, "nested.yaml").map_err(|e| e.to_string());
    assert_eq!(
        a.map(|l| (l.value, l.warnings)),
        b.map(|l| (l.value, l.warnings))
    );
}
