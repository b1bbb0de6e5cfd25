//! The `dfdaemon` binary's config handling, and the example config file.

use dfdaemon::config::DfdaemonConfig;
use std::path::{Path, PathBuf};
use std::process::Command;
use testkit::cli::{assert_complete_example, dfdaemon, repo_file, text};

fn load(path: &Path) -> DfdaemonConfig {
    match DfdaemonConfig::load(path) {
        Ok(loaded) => loaded.value,
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

fn every_config_file() -> Vec<PathBuf> {
    let mut files = vec![repo_file("config/dfdaemon.yaml")];
    if let Ok(entries) = std::fs::read_dir(repo_file("config/seeds")) {
        files.extend(
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml")),
        );
    }
    files.sort();
    files
}

#[test]
fn print_config_round_trips() {
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => panic!("tempdir: {e}"),
    };
    let files = every_config_file();
    assert!(files.len() >= 8, "{files:?}");
    for path in files {
        let path_arg = path.display().to_string();
        let out = dfdaemon(&["--config", &path_arg, "--print-config"]);
        assert!(out.status.success(), "{path_arg}: {}", text(&out.stderr));
        let printed = text(&out.stdout);
        let reprinted_path = dir.path().join("printed.yaml");
        assert!(std::fs::write(&reprinted_path, &printed).is_ok());

        assert_eq!(load(&reprinted_path), load(&path), "{path_arg}:\n{printed}");
        // Printing the printed config changes nothing.
        let again = dfdaemon(&[
            "--config",
            &reprinted_path.display().to_string(),
            "--print-config",
        ]);
        assert_eq!(text(&again.stdout), printed, "{path_arg}");
    }
}

#[test]
fn warnings_go_to_stderr() {
    let seed = repo_file("config/seeds/singularity-proxy.en.1.yaml")
        .display()
        .to_string();
    let out = dfdaemon(&["--config", &seed, "--print-config"]);
    assert!(out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("warning: registryMirror.url in ")),
        "{stderr}"
    );
    assert!(!text(&out.stdout).contains("warning"));
}

#[test]
fn bad_config_exits_non_zero_naming_key_and_value() {
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => panic!("tempdir: {e}"),
    };
    let bad = dir.path().join("bad.yaml");
    assert!(std::fs::write(&bad, "storage:\n  diskGCThreshold: 50Gx\n").is_ok());
    let bad_arg = bad.display().to_string();
    for args in [
        vec!["--config", &bad_arg, "--print-config"],
        vec!["--config", &bad_arg],
    ] {
        let out = dfdaemon(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = text(&out.stderr);
        assert_eq!(
            stderr.trim_end(),
            format!(
                "error: invalid config {bad_arg}: storage.diskGCThreshold: \"50Gx\" is not a size (line 2, column 20)"
            ),
        );
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn missing_explicit_config_fails_and_env_var_is_read() {
    let out = dfdaemon(&["--config", "/nonexistent/dfget.yaml", "--print-config"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("config file /nonexistent/dfget.yaml does not exist"),
        "{}",
        text(&out.stderr)
    );

    let seed = repo_file("config/seeds/oras-resource-client.1.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_dfdaemon"))
        .arg("--print-config")
        .env("DFDAEMON_CONFIG", &seed)
        .output();
    let Ok(out) = out else {
        panic!("cannot run dfdaemon");
    };
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("diskGCThreshold: 50Gi"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn a_port_in_use_is_a_clear_startup_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let cfg = dir.path().join("dfget.yaml");
    std::fs::write(
        &cfg,
        format!(
            "dataDir: {d}/data\nlogDir: {d}/log\ndownload:\n  unixListen:\n    socket: {d}/s.sock\n\
             upload:\n  tcpListen:\n    listen: 127.0.0.1\n    port: {port}\n"
        ),
    )
    .unwrap();
    let out = dfdaemon(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot listen on upload.tcpListen")
            && err.contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error: line in {err}"));
    assert_eq!(
        line.matches(&format!("127.0.0.1:{port}")).count(),
        1,
        "the address is said once: {line}"
    );
}

#[test]
fn example_file_has_every_key_with_its_default_and_no_warnings() {
    assert_complete_example(
        "config/dfdaemon.yaml",
        DfdaemonConfig::load,
        DfdaemonConfig::to_yaml,
    );
}
