//! Unit tests of reading and editing containerd's config.toml.

use super::*;

const DIR: &str = "/etc/containerd/certs.d";

fn set(text: &str) -> String {
    match plan(Path::new("/c/config.toml"), Some(text), Path::new(DIR)).unwrap() {
        HostsDir::Set { text, created } => {
            assert!(!created);
            text
        }
        other => panic!("{other:?}"),
    }
}

fn config_path(text: &str, keys: &[&str]) -> Option<String> {
    let doc: DocumentMut = text.parse().unwrap_or_else(|e| panic!("{e}\n{text}"));
    let mut item = doc.as_item();
    for k in keys {
        item = item.get(k)?;
    }
    item.get("config_path")?.as_str().map(str::to_owned)
}

#[test]
fn each_config_version_has_its_registry_table() {
    for (version, plugin) in [
        ("", "cri"),
        ("version = 1\n", "cri"),
        ("version = 2\n", "io.containerd.grpc.v1.cri"),
        ("version = 3\n", "io.containerd.cri.v1.images"),
    ] {
        let text = set(&format!("{version}root = \"/var/lib/containerd\"\n"));
        assert_eq!(
            config_path(&text, &["plugins", plugin, "registry"]).as_deref(),
            Some(DIR),
            "{text}"
        );
        assert!(
            text.starts_with(&format!("{version}root = \"/var/lib/containerd\"\n")),
            "{text}"
        );
        // The tables above `registry` stay implicit: one new header only.
        assert_eq!(text.matches('[').count(), 1, "{text}");
    }
}

#[test]
fn bad_versions_and_keys_are_named() {
    let cases = [
        (
            "version = 4\n",
            "key version: 4 is not a containerd config version",
        ),
        ("version = \"2\"\n", "key version: not an integer"),
        (
            "version = 2\n[plugins]\n\"io.containerd.grpc.v1.cri\" = 3\n",
            "key plugins.\"io.containerd.grpc.v1.cri\": not a table",
        ),
        (
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = 1\n",
            "key plugins.\"io.containerd.grpc.v1.cri\".registry.config_path: not a string",
        ),
        ("version = 2\n[plugins\n", "not valid TOML"),
    ];
    for (text, want) in cases {
        let err = plan(Path::new("/c/config.toml"), Some(text), Path::new(DIR)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("containerd config /c/config.toml: ") && msg.contains(want),
            "{text}: {msg}"
        );
    }
}

#[test]
fn dotted_and_inline_registry_tables_are_edited_in_place() {
    let dotted = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  registry.config_path = \"\"\n  sandbox_image = \"p\"\n";
    let text = set(dotted);
    assert_eq!(
        config_path(&text, &["plugins", "io.containerd.grpc.v1.cri", "registry"]).as_deref(),
        Some(DIR)
    );
    assert!(text.contains("sandbox_image = \"p\""), "{text}");
    let inline = "version = 3\n[plugins.\"io.containerd.cri.v1.images\"]\n  registry = { config_path = \"\" }\n";
    let text = set(inline);
    assert_eq!(
        config_path(
            &text,
            &["plugins", "io.containerd.cri.v1.images", "registry"]
        )
        .as_deref(),
        Some(DIR)
    );
}

#[test]
fn a_set_config_path_is_honoured_first_entry_first() {
    let text = "version = 3\n[plugins.\"io.containerd.cri.v1.images\".registry]\nconfig_path = \"/a/certs.d:/b\"\n";
    assert_eq!(
        plan(Path::new("/c/config.toml"), Some(text), Path::new(DIR)).unwrap(),
        HostsDir::Configured {
            dir: "/a/certs.d".into(),
            list: Some("/a/certs.d:/b".into()),
            file: "/c/config.toml".into(),
        }
    );
}

#[test]
fn tls_configs_are_refused_and_auth_configs_are_not() {
    let base = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"r.local\".";
    let err = plan(
        Path::new("/c/config.toml"),
        Some(&format!("{base}tls]\ninsecure_skip_verify = true\n")),
        Path::new(DIR),
    )
    .unwrap_err();
    assert!(
        matches!(&err, SetupError::DeprecatedRegistry { key, .. }
            if key == "plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"r.local\".tls"),
        "{err}"
    );
    let text = set(&format!("{base}auth]\nusername = \"u\"\n"));
    assert!(text.contains("username = \"u\""), "{text}");
}

#[test]
fn imports_are_followed_as_containerd_merges_them() {
    let root = tempfile::tempdir().unwrap();
    let main = root.path().join("config.toml");
    let confd = root.path().join("conf.d");
    std::fs::create_dir_all(&confd).unwrap();
    let main_text = format!(
        "version = 2\nimports = [\"{}/*.toml\", \"extra.toml\"]\n",
        confd.display()
    );
    std::fs::write(
        root.path().join("extra.toml"),
        "version = 2\n[debug]\nlevel = \"info\"\n",
    )
    .unwrap();
    std::fs::write(confd.join("README"), "not toml").unwrap();
    // An import without the CRI table: the main file is edited.
    std::fs::write(confd.join("10-grpc.toml"), "version = 2\n[grpc]\nuid = 0\n").unwrap();
    let out = plan(&main, Some(&main_text), Path::new(DIR)).unwrap();
    assert!(matches!(out, HostsDir::Set { .. }), "{out:?}");

    // An import that defines the CRI table replaces the main file's: honoured when it sets
    // config_path, an error naming it when it does not.
    let cri = confd.join("20-cri.toml");
    std::fs::write(
        &cri,
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/k/certs.d\"\n",
    )
    .unwrap();
    assert_eq!(
        plan(&main, Some(&main_text), Path::new(DIR)).unwrap(),
        HostsDir::Configured {
            dir: "/k/certs.d".into(),
            list: None,
            file: cri.clone(),
        }
    );
    std::fs::write(
        &cri,
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\nsandbox_image = \"p\"\n",
    )
    .unwrap();
    let err = plan(&main, Some(&main_text), Path::new(DIR)).unwrap_err();
    assert!(
        matches!(&err, SetupError::ContainerdConfig { path, reason }
            if *path == cri && reason.contains("without registry.config_path")),
        "{err}"
    );

    // A missing plain import is what containerd fails on, so do we; odd patterns are named.
    for (imports, want) in [
        ("[\"missing.toml\"]", "missing.toml"),
        ("[\"/x/*/y.toml\"]", "only a `*` in the file name"),
        ("[\"/x/[ab].toml*\"]", "only `*` wildcards"),
    ] {
        let text = format!("version = 2\nimports = {imports}\n");
        let err = plan(&main, Some(&text), Path::new(DIR)).unwrap_err();
        assert!(err.to_string().contains(want), "{imports}: {err}");
    }
}

#[test]
fn wildcards_match_like_globs() {
    for (pattern, name, want) in [
        ("*.toml", "a.toml", true),
        ("*.toml", ".toml", true),
        ("*.toml", "a.toml.bak", false),
        ("10-*.toml", "10-x.toml", true),
        ("10-*.toml", "20-x.toml", false),
        ("a*b*c", "abc", true),
        ("a*b*c", "axxbyyc", true),
        ("a*b*c", "acb", false),
        ("ab*ba", "aba", false),
    ] {
        assert_eq!(wildcard(pattern, name), want, "{pattern} {name}");
    }
}
