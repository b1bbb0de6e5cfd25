//! Unit tests of `setup`: registries, mirrors, hosts.toml, gen-ca's snippet.

use super::*;
use std::os::unix::fs::PermissionsExt;

/// `containerd_hosts` with only `--dir`: the files it wrote.
fn hosts_only(
    dir: &Path,
    mirror: &str,
    registries: &[String],
    force: bool,
    credentials: Option<&BasicAuth>,
) -> Result<Vec<PathBuf>, SetupError> {
    let report = containerd_hosts(&HostsOptions {
        dir,
        mirror,
        registries,
        force,
        credentials,
        containerd_config: None,
        backup_dir: None,
    })?;
    Ok(report
        .outcome
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Wrote(p) => Some(p.clone()),
            _ => None,
        })
        .collect())
}

fn reg(value: &str) -> (String, String) {
    let r = Registry::parse(value).unwrap_or_else(|e| panic!("{value}: {e}"));
    (r.dir_name, r.server)
}

#[test]
fn registries_parse_to_dir_and_server() {
    let cases = [
        ("docker.io", "docker.io", "https://registry-1.docker.io"),
        (
            "https://docker.io/",
            "docker.io",
            "https://registry-1.docker.io",
        ),
        (
            "registry.test:5443",
            "registry.test:5443",
            "https://registry.test:5443",
        ),
        ("https://ghcr.io", "ghcr.io", "https://ghcr.io"),
        (
            "HTTP://insecure.local:5000",
            "insecure.local:5000",
            "http://insecure.local:5000",
        ),
        ("10.0.0.1:5000", "10.0.0.1:5000", "https://10.0.0.1:5000"),
        ("[fd00::1]:5000", "[fd00::1]:5000", "https://[fd00::1]:5000"),
        (
            "registry.test:443",
            "registry.test:443",
            "https://registry.test:443",
        ),
    ];
    for (value, dir, server) in cases {
        assert_eq!(reg(value), (dir.to_owned(), server.to_owned()), "{value}");
    }
}

#[test]
fn bad_registries_are_named() {
    for value in [
        "",
        " docker.io",
        "docker io",
        "docker.io/library",
        "https://ghcr.io/owner",
        "ftp://ghcr.io",
        "https://",
        "..",
        "host:",
        "host:99999",
        "user@host",
        "host?x=1",
        "a\"b",
    ] {
        let err = Registry::parse(value).unwrap_err();
        assert!(
            matches!(&err, SetupError::Registry { value: v, .. } if v == value),
            "{value}"
        );
        assert!(err.to_string().contains(&format!("{value:?}")), "{err}");
    }
}

#[test]
fn hosts_toml_has_containerd_shape() {
    let r = Registry::parse("registry.test:5443").unwrap();
    assert_eq!(
        r.hosts_toml("http://127.0.0.1:65001", None),
        "server = \"https://registry.test:5443\"\n\
         \n\
         [host.\"http://127.0.0.1:65001\"]\n  \
           capabilities = [\"pull\", \"resolve\"]\n  \
           [host.\"http://127.0.0.1:65001\".header]\n    \
             X-Dragonfly-Registry = [\"https://registry.test:5443\"]\n"
    );
}

#[test]
fn credentials_go_into_the_mirror_header_table_and_the_file_is_private() {
    let auth = BasicAuth {
        username: "alice".into(),
        password: "s3cret:\"x\"".into(),
    };
    let dir = tempfile::tempdir().unwrap();
    let args = ["registry.test:5443".to_owned()];
    let written = hosts_only(dir.path(), DEFAULT_MIRROR, &args, false, Some(&auth)).unwrap();
    let text = std::fs::read_to_string(&written[0]).unwrap();
    // Parsed back as containerd reads it.
    let doc: toml_edit::DocumentMut = text.parse().unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(doc["server"].as_str(), Some("https://registry.test:5443"));
    let host = &doc["host"][DEFAULT_MIRROR];
    let header = &host["header"];
    let first = |key: &str| {
        header[key]
            .as_array()
            .and_then(|a| a.get(0))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    assert_eq!(
        first(CREDENTIALS_HEADER).as_deref(),
        Some(basic_credentials(&auth).as_str())
    );
    assert_eq!(
        first(REGISTRY_HEADER).as_deref(),
        Some("https://registry.test:5443")
    );
    assert_eq!(
        crate::source::oras::base64_decode(basic_credentials(&auth).trim_start_matches("Basic "))
            .as_deref(),
        Some(&b"alice:s3cret:\"x\""[..])
    );
    let mode = std::fs::metadata(&written[0]).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    // Without credentials: no header.
    let plain = hosts_only(dir.path(), DEFAULT_MIRROR, &args, true, None).unwrap();
    let text = std::fs::read_to_string(&plain[0]).unwrap();
    assert!(!text.contains(CREDENTIALS_HEADER), "{text}");
}

#[test]
fn mirrors_are_checked_and_normalised() {
    assert_eq!(
        parse_mirror("http://127.0.0.1:65001/").unwrap(),
        "http://127.0.0.1:65001"
    );
    assert_eq!(
        parse_mirror("http://node:65001/p").unwrap(),
        "http://node:65001/p"
    );
    for bad in ["127.0.0.1:65001", "ftp://x", "http://x/?a", "nope"] {
        let err = parse_mirror(bad).unwrap_err().to_string();
        assert!(err.contains(&format!("{bad:?}")), "{err}");
    }
}

#[test]
fn containerd_hosts_checks_everything_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["ghcr.io".to_owned(), "bad/path".to_owned()];
    assert!(hosts_only(dir.path(), DEFAULT_MIRROR, &args, false, None).is_err());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    let args = ["docker.io".to_owned(), "https://docker.io".to_owned()];
    let written = hosts_only(dir.path(), DEFAULT_MIRROR, &args, false, None).unwrap();
    assert_eq!(written, vec![dir.path().join("docker.io/hosts.toml")]);
    // The same file again: nothing to do, no --force needed.
    let again = hosts_only(dir.path(), DEFAULT_MIRROR, &args, false, None).unwrap();
    assert!(again.is_empty(), "{again:?}");
    // Another mirror: an existing file, not ours to replace without --force or --backup-dir.
    let err = hosts_only(dir.path(), "http://10.0.0.2:65001", &args, false, None).unwrap_err();
    assert!(
        matches!(err, SetupError::Exists { ref path } if *path == written[0]),
        "{err}"
    );
    hosts_only(dir.path(), "http://10.0.0.2:65001", &args, true, None).unwrap();
    let text = std::fs::read_to_string(&written[0]).unwrap();
    assert!(text.contains("[host.\"http://10.0.0.2:65001\"]"), "{text}");
    let names: Vec<_> = std::fs::read_dir(dir.path().join("docker.io"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["hosts.toml"], "no temp file left");
}

#[test]
fn snippet_quotes_only_odd_paths() {
    let ca = GeneratedCa {
        cert: "/etc/dragonfly/ca.crt".into(),
        key: "/tmp/my dir: x/ca.key".into(),
    };
    let snippet = hijack_config_snippet(&ca);
    assert!(
        snippet.contains("cert: /etc/dragonfly/ca.crt\n"),
        "{snippet}"
    );
    assert!(
        snippet.contains("key: \"/tmp/my dir: x/ca.key\"\n"),
        "{snippet}"
    );
    let parsed: serde_json::Value = yaml_serde::from_str(&snippet).unwrap();
    assert_eq!(
        parsed["proxy"]["hijackHTTPS"]["key"],
        "/tmp/my dir: x/ca.key"
    );
}

/// The registry the flow tests route.
const REG: &str = "registry.test:5000";

/// A containerd 1.6 config as `containerd config default` writes it (shortened): config_path
/// empty, empty deprecated tables, comments and other settings around.
const DEFAULT_V2: &str = r#"disabled_plugins = []
imports = []
oom_score = 0
root = "/var/lib/containerd"
version = 2

# a comment the edit must keep
[plugins]

  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.6"

    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = ""

      [plugins."io.containerd.grpc.v1.cri".registry.auths]

      [plugins."io.containerd.grpc.v1.cri".registry.configs]

      [plugins."io.containerd.grpc.v1.cri".registry.mirrors]

  [plugins."io.containerd.internal.v1.opt"]
    path = "/opt/containerd"
"#;

struct Node {
    root: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        Node {
            root: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }
    fn config(&self) -> PathBuf {
        self.path("etc/containerd/config.toml")
    }
    fn backups(&self) -> PathBuf {
        self.path("var/lib/dragonfly/containerd-backup")
    }
    fn write(&self, rel: &str, text: &str, mode: u32) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    fn run(&self, mirror: &str, registries: &[&str]) -> Result<HostsReport, SetupError> {
        let registries: Vec<String> = registries.iter().map(|r| r.to_string()).collect();
        let dir = self.path("etc/containerd/certs.d");
        let config = self.config();
        let backups = self.backups();
        containerd_hosts(&HostsOptions {
            dir: &dir,
            mirror,
            registries: &registries,
            force: false,
            credentials: None,
            containerd_config: Some(&config),
            backup_dir: Some(&backups),
        })
    }
    fn restore(&self) -> Option<Outcome> {
        containerd_restore(&self.backups()).unwrap()
    }
}

fn lines(events: &[Event]) -> Vec<String> {
    events.iter().map(ToString::to_string).collect()
}

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn an_unset_config_path_is_set_backed_up_and_restored_byte_for_byte() {
    let node = Node::new();
    node.write("etc/containerd/config.toml", DEFAULT_V2, 0o640);
    let hosts = node
        .path("etc/containerd/certs.d")
        .join(REG)
        .join("hosts.toml");
    let config = node.config();
    let backup = node.backups().join(config.strip_prefix("/").unwrap());

    let first = node.run(DEFAULT_MIRROR, &[REG]).unwrap();
    assert_eq!(
        lines(&first.outcome.events),
        [
            format!("wrote {}", hosts.display()),
            format!("backed up {} to {}", config.display(), backup.display()),
            format!("wrote {}", config.display()),
        ]
    );
    assert!(first.outcome.containerd_config_changed);
    // Only the config_path line differs, and the file keeps its mode.
    let edited = std::fs::read_to_string(&config).unwrap();
    let changed: Vec<(&str, &str)> = DEFAULT_V2
        .lines()
        .zip(edited.lines())
        .filter(|(a, b)| a != b)
        .collect();
    let want = format!(
        "      config_path = {:?}",
        node.path("etc/containerd/certs.d").display().to_string()
    );
    assert_eq!(changed, [("      config_path = \"\"", want.as_str())]);
    assert_eq!(DEFAULT_V2.lines().count(), edited.lines().count());
    assert_eq!(mode_of(&config), 0o640);
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), DEFAULT_V2);
    assert_eq!(mode_of(&backup), 0o640);
    let manifest = Manifest::load(&node.backups()).unwrap().unwrap();
    let kinds: Vec<_> = manifest
        .files
        .iter()
        .map(|e| (e.path.clone(), e.kind, e.original.is_some()))
        .collect();
    assert_eq!(
        kinds,
        [
            (hosts.clone(), install::Kind::HostsToml, false),
            (config.clone(), install::Kind::ContainerdConfig, true),
        ]
    );
    assert_eq!(
        manifest.files[0].created_dirs,
        [
            hosts.parent().unwrap(),
            hosts.parent().unwrap().parent().unwrap()
        ]
    );

    // A pod restart: the same run changes nothing, not even the manifest.
    let manifest_bytes = std::fs::read(node.backups().join(install::MANIFEST)).unwrap();
    let second = node.run(DEFAULT_MIRROR, &[REG]).unwrap();
    assert_eq!(
        lines(&second.outcome.events),
        [format!("unchanged {}", hosts.display())]
    );
    assert!(!second.outcome.containerd_config_changed);
    assert!(second.notes[0].contains("sets the CRI registry config_path"));
    assert_eq!(
        std::fs::read(node.backups().join(install::MANIFEST)).unwrap(),
        manifest_bytes
    );

    let restored = node.restore().unwrap();
    assert!(restored.containerd_config_changed);
    assert_eq!(
        lines(&restored.events),
        [
            format!("removed {}", hosts.display()),
            format!("restored {}", config.display()),
            format!("removed {}", hosts.parent().unwrap().display()),
            format!(
                "removed {}",
                hosts.parent().unwrap().parent().unwrap().display()
            ),
        ]
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), DEFAULT_V2);
    assert_eq!(mode_of(&config), 0o640);
    assert!(!node.path("etc/containerd/certs.d").exists());
    // The backup directory is left empty, and a second restore has nothing to do.
    assert_eq!(std::fs::read_dir(node.backups()).unwrap().count(), 0);
    assert!(node.restore().is_none());
}

#[test]
fn an_existing_config_path_is_honoured_and_the_hosts_toml_there_backed_up_once() {
    let node = Node::new();
    let theirs = node.path("etc/k8s/certs.d");
    let config_text = format!(
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"{}:/etc/docker/certs.d\"\n",
        theirs.display()
    );
    node.write("etc/containerd/config.toml", &config_text, 0o644);
    let old = "server = \"https://registry.test:5000\"\n[host.\"https://cache.local\"]\n";
    node.write(&format!("etc/k8s/certs.d/{REG}/hosts.toml"), old, 0o600);
    let hosts = theirs.join(REG).join("hosts.toml");

    let first = node.run(DEFAULT_MIRROR, &[REG]).unwrap();
    assert_eq!(first.hosts_dir, theirs);
    assert!(!first.outcome.containerd_config_changed);
    assert!(
        first.notes[0].contains(":/etc/docker/certs.d") && first.notes[0].contains("(not --dir)"),
        "{:?}",
        first.notes
    );
    let backup = node.backups().join(hosts.strip_prefix("/").unwrap());
    assert_eq!(
        lines(&first.outcome.events),
        [
            format!("backed up {} to {}", hosts.display(), backup.display()),
            format!("wrote {}", hosts.display()),
        ]
    );
    assert_eq!(std::fs::read_to_string(node.config()).unwrap(), config_text);
    assert!(
        std::fs::read_to_string(&hosts)
            .unwrap()
            .contains(DEFAULT_MIRROR)
    );
    assert_eq!(mode_of(&hosts), 0o644);

    // Another mirror: our file is rewritten, the original's backup is not touched.
    let second = node.run("http://10.1.2.3:65001", &[REG]).unwrap();
    assert_eq!(
        lines(&second.outcome.events),
        [format!("wrote {}", hosts.display())]
    );
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), old);

    node.restore().unwrap();
    assert_eq!(std::fs::read_to_string(&hosts).unwrap(), old);
    assert_eq!(mode_of(&hosts), 0o600);
    assert_eq!(std::fs::read_to_string(node.config()).unwrap(), config_text);
}

#[test]
fn a_file_edited_since_is_refused_on_install_and_left_on_restore() {
    let node = Node::new();
    node.write("etc/containerd/config.toml", DEFAULT_V2, 0o644);
    node.run(DEFAULT_MIRROR, &[REG]).unwrap();
    let hosts = node
        .path("etc/containerd/certs.d")
        .join(REG)
        .join("hosts.toml");
    std::fs::write(&hosts, "# mine now\n").unwrap();
    let err = node.run(DEFAULT_MIRROR, &[REG]).unwrap_err();
    assert!(
        matches!(&err, SetupError::Changed { path } if *path == hosts),
        "{err}"
    );
    let out = node.restore().unwrap();
    assert_eq!(
        out.events[0],
        Event::Left {
            path: hosts.clone(),
            why: "changed since dfdaemon wrote it (there was no original)".into()
        }
    );
    assert_eq!(std::fs::read_to_string(&hosts).unwrap(), "# mine now\n");
    // config.toml was not edited: it is put back.
    assert_eq!(std::fs::read_to_string(node.config()).unwrap(), DEFAULT_V2);
}

#[test]
fn a_missing_config_toml_is_created_with_only_config_path_and_removed_on_restore() {
    let node = Node::new();
    let out = node.run(DEFAULT_MIRROR, &[REG]).unwrap();
    assert!(out.outcome.containerd_config_changed);
    let text = std::fs::read_to_string(node.config()).unwrap();
    let doc: toml_edit::DocumentMut = text.parse().unwrap();
    assert_eq!(doc["version"].as_integer(), Some(2));
    assert_eq!(
        doc["plugins"]["io.containerd.grpc.v1.cri"]["registry"]["config_path"].as_str(),
        Some(node.path("etc/containerd/certs.d").to_str().unwrap())
    );
    assert!(out.notes[0].contains("does not exist"), "{:?}", out.notes);
    node.restore().unwrap();
    assert!(
        !node.path("etc").exists(),
        "every directory we made is gone"
    );
}

#[test]
fn deprecated_mirrors_fail_before_anything_is_written() {
    let node = Node::new();
    let text = format!(
        "{DEFAULT_V2}\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://m.local\"]\n"
    );
    // Appended sub-table of an existing table: valid TOML, as users write it.
    let text = text.replace(
        "      [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors]\n",
        "",
    );
    node.write("etc/containerd/config.toml", &text, 0o644);
    let err = node.run(DEFAULT_MIRROR, &[REG]).unwrap_err();
    assert!(
        matches!(&err, SetupError::DeprecatedRegistry { path, key }
            if *path == node.config()
            && key == "plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\""),
        "{err}"
    );
    assert!(err.to_string().contains("registry.mirrors"), "{err}");
    assert!(!node.backups().exists());
    assert!(!node.path("etc/containerd/certs.d").exists());
    assert_eq!(std::fs::read_to_string(node.config()).unwrap(), text);
}

#[test]
fn a_registry_dropped_from_the_list_is_cleaned_up_on_the_next_run() {
    let node = Node::new();
    node.run(DEFAULT_MIRROR, &[REG, "ghcr.io"]).unwrap();
    let ghcr = node.path("etc/containerd/certs.d/ghcr.io/hosts.toml");
    assert!(ghcr.exists());
    let out = node.run(DEFAULT_MIRROR, &[REG]).unwrap();
    assert!(
        lines(&out.outcome.events).contains(&format!("removed {}", ghcr.display())),
        "{:?}",
        out.outcome.events
    );
    assert!(!ghcr.parent().unwrap().exists());
    let manifest = Manifest::load(&node.backups()).unwrap().unwrap();
    assert!(manifest.files.iter().all(|e| e.path != ghcr));
}

#[test]
fn without_a_backup_dir_a_config_toml_that_is_not_ours_is_refused() {
    let node = Node::new();
    node.write("etc/containerd/config.toml", DEFAULT_V2, 0o644);
    let config = node.config();
    let dir = node.path("certs.d");
    let err = containerd_hosts(&HostsOptions {
        dir: &dir,
        mirror: DEFAULT_MIRROR,
        registries: &[REG.to_owned()],
        force: false,
        credentials: None,
        containerd_config: Some(&config),
        backup_dir: None,
    })
    .unwrap_err();
    assert!(
        matches!(&err, SetupError::Exists { path } if *path == config),
        "{err}"
    );
    assert!(!dir.exists(), "nothing written");
}

#[test]
fn restore_without_a_backup_dir_or_manifest_is_a_no_op() {
    let node = Node::new();
    assert!(containerd_restore(&node.path("nope")).unwrap().is_none());
    std::fs::create_dir_all(node.backups()).unwrap();
    assert!(node.restore().is_none());
}

#[test]
fn a_broken_manifest_is_named() {
    let node = Node::new();
    node.write(
        "var/lib/dragonfly/containerd-backup/manifest.json",
        "{not json",
        0o600,
    );
    let err = containerd_restore(&node.backups()).unwrap_err();
    assert!(
        matches!(&err, SetupError::Manifest { path, .. } if path.ends_with("manifest.json")),
        "{err}"
    );
}
