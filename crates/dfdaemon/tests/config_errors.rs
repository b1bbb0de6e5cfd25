//! Bad configs and the exact messages they produce; warnings that must not be errors.

use dfdaemon::config::DfdaemonConfig;

/// (what, YAML, the exact error).
const BAD: &[(&str, &str, &str)] = &[
    (
        "bad size",
        "storage:\n  diskGCThreshold: 50Gx\n",
        "storage.diskGCThreshold: \"50Gx\" is not a size (line 2, column 20)",
    ),
    (
        "negative size",
        "download:\n  totalRateLimit: -5\n",
        "download.totalRateLimit: -5 is not a size (it is negative) (line 2, column 19)",
    ),
    (
        "bad duration",
        "storage:\n  taskExpireTime: 6x\n",
        "storage.taskExpireTime: \"6x\" is not a duration (examples: 30s, 6h, 7d) (line 2, column 19)",
    ),
    (
        "bad port",
        "proxy:\n  tcpListen:\n    port: http\n",
        "proxy.tcpListen.port: \"http\" is not a port (1-65535) (line 3, column 11)",
    ),
    (
        "port out of range",
        "proxy:\n  tcpListen:\n    port: 70000\n",
        "proxy.tcpListen.port: 70000 is not a port (1-65535) (line 3, column 11)",
    ),
    (
        "port range upside down",
        "upload:\n  tcpListen:\n    port: {start: 65010, end: 65002}\n",
        "upload.tcpListen.port: 65010-65002 is not a port range (start must not be above end) (line 3, column 11)",
    ),
    (
        "bad regex in proxies",
        "proxy:\n  proxies:\n    - regx: \"([\"\n",
        "proxy.proxies[0].regx: \"([\" is not a valid regular expression: unclosed character class (line 3, column 13)",
    ),
    (
        "bad regex in top-level proxies, regex spelling",
        "proxies:\n  - regx: blobs/sha256.*\n  - regex: \"a(b\"\n",
        "proxies[1].regex: \"a(b\" is not a valid regular expression: unclosed group (line 3, column 12)",
    ),
    (
        "bad regex in hijackHTTPS.hosts",
        "proxy:\n  hijackHTTPS:\n    hosts:\n      - regx: \"*.example.com\"\n",
        "proxy.hijackHTTPS.hosts[0].regx: \"*.example.com\" is not a valid regular expression: repetition operator missing expression (line 4, column 15)",
    ),
    (
        "wrong type bool",
        "storage:\n  multiplex: maybe\n",
        "storage.multiplex: \"maybe\" is not a boolean (line 2, column 14)",
    ),
    (
        "percent above 100",
        "storage:\n  diskGCThresholdPercent: 120\n",
        "storage.diskGCThresholdPercent: 120 is not a percentage (0-100) (line 2, column 27)",
    ),
    (
        "negative number",
        "upload:\n  concurrentLimit: -1\n",
        "upload.concurrentLimit: -1 is not a non-negative integer (at most 4294967295) (line 2, column 20)",
    ),
    (
        "zero piece concurrency",
        "download:\n  concurrentPieceCount: 0\n",
        "download.concurrentPieceCount: 0 is not a piece count (1 or more)",
    ),
    (
        "bad IP",
        "host:\n  advertiseIP: 10.0.0.300\n",
        "host.advertiseIP: \"10.0.0.300\" is not an IP address (line 2, column 16)",
    ),
    (
        "bad scheduler address",
        "scheduler:\n  netAddrs:\n    - type: tcp\n      addr: scheduler.local\n",
        "scheduler.netAddrs[0]: \"scheduler.local\" is not a scheduler address (host:port, e.g. scheduler.dragonfly:8002) (line 3, column 7)",
    ),
    (
        "bad seed peer type",
        "seedPeer:\n  type: mega\n",
        "seedPeer.type: \"mega\" is not one of \"super\", \"strong\", \"weak\" (line 2, column 9)",
    ),
    (
        "proxy rule without regx",
        "proxy:\n  proxies:\n    - useHTTPS: true\n",
        "proxy.proxies[0]: missing key \"regx\" (line 3, column 7)",
    ),
    (
        "regx and regex together",
        "proxy:\n  proxies:\n    - regx: a\n      regex: b\n",
        "proxy.proxies[0]: key \"regx\" is given twice (an alias counts as the same key) (line 3, column 7)",
    ),
    (
        "section that is not a mapping",
        "storage: 5\n",
        "storage: 5 is not a mapping (line 1, column 10)",
    ),
    (
        "YAML syntax error",
        "proxy:\n  tcpListen:\n    port: 65001\n   listen: 0.0.0.0\n",
        "invalid YAML in bad.yaml at line 4, column 4: did not find expected key, while parsing a block mapping at line 2 column 3",
    ),
];

#[test]
fn bad_configs_fail_with_exact_messages() {
    assert!(BAD.len() >= 10);
    let mut failures = Vec::new();
    for (what, yaml, want) in BAD {
        let got = match DfdaemonConfig::from_yaml(yaml, "bad.yaml") {
            Ok(loaded) => format!("loaded: {:?}", loaded.warnings),
            Err(e) => e.to_string(),
        };
        if got != *want {
            failures.push(format!("{what}:\n  want: {want}\n  got:  {got}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// (what, YAML, the exact warnings) for configs that load.
const LOADS: &[(&str, &str, &[&str])] = &[
    (
        "unknown top-level section",
        "frobnicate:\n  level: 3\nstorage:\n  multiplex: true\n",
        &["unknown key \"frobnicate\" in w.yaml (ignored)"],
    ),
    (
        "unknown nested key",
        "proxy:\n  tcpListen:\n    prot: 65001\n  proxies:\n    - regx: a\n      usehttps: true\n",
        &[
            "unknown key \"proxy.tcpListen.prot\" in w.yaml (ignored)",
            "unknown key \"proxy.proxies[0].usehttps\" in w.yaml (ignored)",
        ],
    ),
    (
        "Dragonfly option we do not support",
        "objectStorage:\n  enable: false\ndownload:\n  peerGRPC:\n    tcpListen:\n      port: 65000\n",
        &[
            "key \"objectStorage\" in w.yaml is a Dragonfly option this implementation does not support (ignored)",
            "key \"download.peerGRPC\" in w.yaml is a Dragonfly option this implementation does not support (ignored)",
        ],
    ),
    (
        "typo inside a top-level alternative",
        "registryMirror:\n  dinamic: true\nhijackHTTPS:\n  sni: x\n  hosts:\n    - regx: r.example\n",
        &[
            "unknown key \"registryMirror.dinamic\" in w.yaml (ignored)",
            "key \"hijackHTTPS.sni\" in w.yaml is a Dragonfly option this implementation does not support (ignored)",
        ],
    ),
    (
        "Dragonfly's downloadGRPC block",
        "download:\n  calculateDigest: true\n  downloadGRPC:\n    security:\n      insecure: true\n    unixListen:\n      socket: /run/df.sock\n",
        &[
            "key \"download.calculateDigest\" in w.yaml is a Dragonfly option this implementation does not support (ignored)",
            "key \"download.downloadGRPC.security\" in w.yaml is a Dragonfly option this implementation does not support (ignored)",
        ],
    ),
    (
        "regex alias works",
        "proxy:\n  proxies:\n    - regex: blobs/sha256.*\n",
        &[],
    ),
    (
        "both shapes given: nested wins",
        "proxies:\n  - regx: top\nproxy:\n  proxies:\n    - regx: nested\n",
        &["top-level key \"proxies\" in w.yaml is ignored because \"proxy.proxies\" is also set"],
    ),
    (
        "placeholder mirror url",
        "proxy:\n  registryMirror:\n    url: <your.private.registry>\n",
        &[
            "proxy.registryMirror.url in w.yaml: \"<your.private.registry>\" is not a URL; the registry mirror cannot be used until it is set (e.g. https://index.docker.io)",
        ],
    ),
    (
        "null sections and values",
        "proxy:\nstorage:\noras:\n  proxy:\n",
        &[],
    ),
    (
        "plain-string scheduler addresses and port range",
        "scheduler:\n  netAddrs:\n    - 127.0.0.1:8002\n    - type: tcp\n      addr: scheduler-0.scheduler:8002\nproxy:\n  tcpListen:\n    port: {start: 65001, end: 65005}\n",
        &[],
    ),
];

#[test]
fn warnings_are_not_errors() {
    let mut failures = Vec::new();
    for (what, yaml, want) in LOADS {
        match DfdaemonConfig::from_yaml(yaml, "w.yaml") {
            Ok(loaded) if loaded.warnings == *want => {}
            Ok(loaded) => failures.push(format!(
                "{what}:\n  want: {want:?}\n  got:  {:?}",
                loaded.warnings
            )),
            Err(e) => failures.push(format!("{what}: failed: {e}")),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn effective_values_of_the_loading_rows() {
    let yaml = "proxies:\n  - regx: top\nproxy:\n  proxies:\n    - regex: nested\n";
    let c = DfdaemonConfig::from_yaml(yaml, "w.yaml").map(|l| l.value);
    assert_eq!(
        c.map(|c| c
            .proxy
            .proxies
            .iter()
            .map(|r| r.regx.to_string())
            .collect::<Vec<_>>())
            .map_err(|e| e.to_string()),
        Ok(vec!["nested".to_owned()])
    );
    let yaml = "scheduler:\n  netAddrs:\n    - 127.0.0.1:8002\nproxy:\n  tcpListen:\n    port: {start: 65001, end: 65003}\n";
    let c = DfdaemonConfig::from_yaml(yaml, "w.yaml").map(|l| l.value);
    let Ok(c) = c else {
        panic!("{c:?}");
    };
    assert_eq!(c.scheduler.net_addrs[0].kind, "tcp");
    assert_eq!(c.scheduler.net_addrs[0].addr, "127.0.0.1:8002");
    assert_eq!(
        c.proxy.tcp_listen.port.ports().collect::<Vec<_>>(),
        vec![65001, 65002, 65003]
    );
}

#[test]
fn empty_files_and_dragonfly_spellings() {
    // An empty `proxy:` turns the proxy on with its defaults; no section leaves it off.
    for (text, proxy_enabled) in [
        ("", false),
        ("# comments only\n", false),
        ("proxy:\nstorage:\n", true),
    ] {
        let loaded = DfdaemonConfig::from_yaml(text, "e.yaml").map_err(|e| e.to_string());
        let expected = DfdaemonConfig {
            proxy_enabled,
            ..DfdaemonConfig::default()
        };
        assert_eq!(
            loaded.map(|l| (l.value, l.warnings)),
            Ok((expected, vec![])),
            "{text:?}"
        );
    }

    let yaml = "download:\n  downloadGRPC:\n    unixListen:\n      socket: /run/df.sock\n";
    let c = DfdaemonConfig::from_yaml(yaml, "g.yaml").map(|l| (l.value, l.warnings));
    let Ok((c, warnings)) = c else {
        panic!("{c:?}");
    };
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        c.download.unix_listen.socket,
        std::path::PathBuf::from("/run/df.sock")
    );
    // The folded key prints in its one effective place.
    let printed = c.to_yaml().unwrap_or_default();
    assert!(!printed.contains("downloadGRPC"), "{printed}");
    assert!(printed.contains("socket: /run/df.sock"), "{printed}");

    let yaml = "download:\n  unixListen:\n    socket: ''\n";
    let c = DfdaemonConfig::from_yaml(yaml, "g.yaml").map(|l| l.value.download.unix_listen.socket);
    assert_eq!(
        c.map_err(|e| e.to_string()),
        Ok(std::path::PathBuf::from(
            dfdaemon::config::DEFAULT_UNIX_SOCKET
        ))
    );
}
