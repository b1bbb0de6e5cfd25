//! The generic loader: unknown keys, error formats, empty files, syntax errors, path resolution.

use dragonfly_common::config::{
    ConfigError, ConfigOrigin, Duration, LoadOptions, Pattern, Percent, Port, PortRange, Size,
    load_for_cli, load_yaml, load_yaml_with, resolve_config_path,
};
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Demo {
    size: Size,
    wait: Duration,
    flag: bool,
    count: u32,
    port: Option<Port>,
    range: Option<PortRange>,
    percent: Percent,
    inner: Inner,
    rules: Vec<Rule>,
}

#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Inner {
    name: String,
}

#[derive(Debug, PartialEq, Deserialize)]
struct Rule {
    #[serde(alias = "regex")]
    regx: Pattern,
}

fn error(yaml: &str) -> String {
    match load_yaml::<Demo>(yaml, "demo.yaml") {
        Ok(loaded) => format!("unexpectedly loaded: {loaded:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn empty_and_comment_only_files_are_defaults() {
    for text in ["", "\n", "# just a comment\n# and another\n", "---\n"] {
        let loaded = load_yaml::<Demo>(text, "demo.yaml").map_err(|e| e.to_string());
        assert_eq!(
            loaded.map(|l| (l.value, l.warnings)),
            Ok((Demo::default(), vec![])),
            "{text:?}"
        );
    }
}

#[test]
fn values_parse() {
    let yaml = "size: 50Gi\nwait: 1m30s\nflag: true\ncount: 7\nport: 65001\nrange: {start: 1, end: 3}\npercent: 80\ninner: {name: x}\nrules:\n  - regx: a.*\n  - regex: b\n";
    let loaded = load_yaml::<Demo>(yaml, "demo.yaml").map_err(|e| e.to_string());
    let Ok(loaded) = loaded else {
        panic!("{loaded:?}");
    };
    let v = loaded.value;
    assert_eq!(v.size.as_u64(), 53_687_091_200);
    assert_eq!(v.wait, Duration::from_secs(90));
    assert!(v.flag);
    assert_eq!(v.port.map(Port::get), Some(65001));
    assert_eq!(
        v.range.map(|r| r.ports().collect::<Vec<_>>()),
        Some(vec![1, 2, 3])
    );
    assert_eq!(v.percent.get(), 80.0);
    assert_eq!(
        v.rules.iter().map(|r| r.regx.as_str()).collect::<Vec<_>>(),
        vec!["a.*", "b"]
    );
    assert!(loaded.warnings.is_empty());
}

#[test]
fn unknown_keys_are_warnings_with_full_paths() {
    let yaml = "foo: 1\ninner:\n  name: x\n  typo: 2\nrules:\n  - regx: a\n    extra: [1, 2]\nrange: {start: 1, stop: 2}\n";
    let loaded = load_yaml::<Demo>(yaml, "/etc/dragonfly/demo.yaml").map_err(|e| e.to_string());
    assert_eq!(
        loaded.map(|l| l.warnings),
        Ok(vec![
            "unknown key \"foo\" in /etc/dragonfly/demo.yaml (ignored)".to_owned(),
            "unknown key \"inner.typo\" in /etc/dragonfly/demo.yaml (ignored)".to_owned(),
            "unknown key \"rules[0].extra\" in /etc/dragonfly/demo.yaml (ignored)".to_owned(),
            "unknown key \"range.stop\" in /etc/dragonfly/demo.yaml (ignored)".to_owned(),
        ])
    );
}

#[test]
fn unsupported_dragonfly_keys_say_so() {
    let options = LoadOptions {
        unsupported: &["objectStorage", "inner.legacy"],
        handled_elsewhere: &["alt", "inner.other"],
        report_only_under: &[],
    };
    let yaml = "objectStorage:\n  enable: true\ninner:\n  legacy: 1\n  other: 2\nalt: [1]\n";
    let loaded = load_yaml_with::<Demo>(yaml, "d.yaml", &options).map_err(|e| e.to_string());
    assert_eq!(
        loaded.map(|l| l.warnings),
        Ok(vec![
            "key \"objectStorage\" in d.yaml is a Dragonfly option this implementation does not support (ignored)".to_owned(),
            "key \"inner.legacy\" in d.yaml is a Dragonfly option this implementation does not support (ignored)".to_owned(),
        ])
    );
}

#[test]
fn a_partial_pass_reports_only_its_own_keys() {
    let options = LoadOptions {
        report_only_under: &["inner"],
        ..LoadOptions::default()
    };
    let yaml = "foo: 1\ninner:\n  typo: 2\n";
    let loaded = load_yaml_with::<Demo>(yaml, "d.yaml", &options).map_err(|e| e.to_string());
    assert_eq!(
        loaded.map(|l| l.warnings),
        Ok(vec![
            "unknown key \"inner.typo\" in d.yaml (ignored)".to_owned()
        ])
    );
}

#[test]
fn value_errors_name_key_value_and_position() {
    let cases = [
        (
            "size: 50Gx\n",
            "size: \"50Gx\" is not a size (line 1, column 7)",
        ),
        (
            "size: -5\n",
            "size: -5 is not a size (it is negative) (line 1, column 7)",
        ),
        (
            "wait: 6x\n",
            "wait: \"6x\" is not a duration (examples: 30s, 6h, 7d) (line 1, column 7)",
        ),
        (
            "flag: maybe\n",
            "flag: \"maybe\" is not a boolean (line 1, column 7)",
        ),
        (
            "count: -1\n",
            "count: -1 is not a non-negative integer (at most 4294967295) (line 1, column 8)",
        ),
        (
            "port: 70000\n",
            "port: 70000 is not a port (1-65535) (line 1, column 7)",
        ),
        (
            "port: 0\n",
            "port: 0 is not a port (1-65535) (line 1, column 7)",
        ),
        (
            "range: {start: 9, end: 3}\n",
            "range: 9-3 is not a port range (start must not be above end) (line 1, column 8)",
        ),
        (
            "percent: 120\n",
            "percent: 120 is not a percentage (0-100) (line 1, column 10)",
        ),
        (
            "rules:\n  - regx: \"([\"\n",
            "rules[0].regx: \"([\" is not a valid regular expression: unclosed character class (line 2, column 11)",
        ),
        (
            "rules:\n  - {}\n",
            "rules[0]: missing key \"regx\" (line 2, column 5)",
        ),
        (
            "inner: [1]\n",
            "inner: a list is not a mapping (line 1, column 8)",
        ),
        (
            "hello\n",
            "(top level): \"hello\" is not a mapping (line 1, column 1)",
        ),
    ];
    for (yaml, want) in cases {
        assert_eq!(error(yaml), want, "{yaml:?}");
    }
}

#[test]
fn syntax_errors_name_file_line_and_column() {
    let err = load_yaml::<Demo>("inner:\n  name: x\n bad: y\n", "/tmp/x.yaml");
    match err {
        Err(ConfigError::Syntax {
            file, line, column, ..
        }) => {
            assert_eq!(file, "/tmp/x.yaml");
            assert_eq!((line, column), (Some(3), Some(2)));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        error("size: [\n"),
        "invalid YAML in demo.yaml at line 2, column 1: did not find expected node content, while parsing a flow node"
    );
}

#[test]
fn explicit_path_must_exist_default_paths_may_not() {
    let dir = std::env::temp_dir().join(format!("df-config-test-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let missing = dir.join("missing.yaml");
    let present = dir.join("present.yaml");
    assert!(std::fs::write(&present, "size: 1Ki\n").is_ok());

    assert!(matches!(
        resolve_config_path(Some(&missing), &[]),
        Err(ConfigError::NotFound { .. })
    ));
    assert_eq!(
        resolve_config_path(None, &[missing.as_path(), present.as_path()])
            .map_err(|e| e.to_string()),
        Ok(ConfigOrigin::File(present.clone()))
    );
    let defaults = load_for_cli::<Demo>(None, &[missing.as_path()], load_yaml::<Demo>);
    assert!(defaults.is_ok_and(
        |d| d.value == Demo::default() && matches!(d.origin, ConfigOrigin::Defaults { .. })
    ));
    let from_file = load_for_cli::<Demo>(Some(present.as_path()), &[], load_yaml::<Demo>);
    assert!(from_file.is_ok_and(|d| d.value.size == Size::kib(1)));
    assert_eq!(
        load_for_cli::<Demo>(
            Some(Path::new("/nonexistent/x.yaml")),
            &[],
            load_yaml::<Demo>
        )
        .map(|_| ())
        .map_err(|e| e.to_string()),
        Err("config file /nonexistent/x.yaml does not exist".to_owned())
    );
    let _ = std::fs::remove_dir_all(&dir);
}
