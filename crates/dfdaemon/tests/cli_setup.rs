//! The setup subcommands of the real `dfdaemon` binary: `gen-ca` and `containerd-hosts`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use testkit::cli::{dfdaemon, text};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn gen_ca_writes_a_ca_and_refuses_to_overwrite_it() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("pki");
    let out = out_dir.to_str().unwrap();
    let run = dfdaemon(&["gen-ca", "--out", out, "--name", "Test Hijack CA"]);
    let stdout = text(&run.stdout);
    assert!(run.status.success(), "{}{}", stdout, text(&run.stderr));

    let (cert, key) = (out_dir.join("ca.crt"), out_dir.join("ca.key"));
    assert_eq!(mode(&key), 0o600);
    assert!(stdout.contains(&cert.display().to_string()), "{stdout}");
    assert!(stdout.contains(&key.display().to_string()), "{stdout}");
    assert!(stdout.contains("hijackHTTPS:"), "{stdout}");
    assert!(
        stdout.contains(&format!("cert: {}", cert.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("key: {}", key.display())),
        "{stdout}"
    );

    let x509 = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&cert)
        .output()
        .expect("openssl must be installed for this test");
    let x509_text = text(&x509.stdout);
    assert!(x509.status.success(), "{}", text(&x509.stderr));
    assert!(x509_text.contains("CA:TRUE"), "{x509_text}");
    assert!(x509_text.contains("Certificate Sign"), "{x509_text}");
    assert!(x509_text.contains("CN = Test Hijack CA"), "{x509_text}");

    let before = std::fs::read(&key).unwrap();
    let again = dfdaemon(&["gen-ca", "--out", out]);
    let stderr = text(&again.stderr);
    assert!(!again.status.success());
    assert!(stderr.contains("already exists"), "{stderr}");
    assert!(stderr.contains(&out_dir.display().to_string()), "{stderr}");
    assert_eq!(
        std::fs::read(&key).unwrap(),
        before,
        "the key was rewritten"
    );
}

/// `hosts.toml` for `server` behind the default mirror.
fn expected_hosts(server: &str) -> String {
    format!(
        "server = \"{server}\"\n\
         \n\
         [host.\"http://127.0.0.1:65001\"]\n  \
           capabilities = [\"pull\", \"resolve\"]\n  \
           [host.\"http://127.0.0.1:65001\".header]\n    \
             X-Dragonfly-Registry = [\"{server}\"]\n"
    )
}

#[test]
fn containerd_hosts_writes_one_file_per_registry() {
    let dir = tempfile::tempdir().unwrap();
    let certs_d = dir.path().to_str().unwrap();
    let run = dfdaemon(&[
        "containerd-hosts",
        "--dir",
        certs_d,
        "docker.io",
        "registry.test:5443",
    ]);
    let stdout = text(&run.stdout);
    assert!(run.status.success(), "{}{}", stdout, text(&run.stderr));

    let docker = dir.path().join("docker.io/hosts.toml");
    let private = dir.path().join("registry.test:5443/hosts.toml");
    assert_eq!(
        std::fs::read_to_string(&docker).unwrap(),
        expected_hosts("https://registry-1.docker.io")
    );
    assert_eq!(
        std::fs::read_to_string(&private).unwrap(),
        expected_hosts("https://registry.test:5443")
    );
    assert!(stdout.contains(&docker.display().to_string()), "{stdout}");
    assert!(stdout.contains(&private.display().to_string()), "{stdout}");

    // The same run again: nothing to write (a pod restart), success.
    let again = dfdaemon(&["containerd-hosts", "--dir", certs_d, "docker.io"]);
    let stdout = text(&again.stdout);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(
        stdout.contains(&format!("unchanged {}", docker.display())),
        "{stdout}"
    );
    // A different file where one exists: kept unless --force (or --backup-dir).
    let other = dfdaemon(&[
        "containerd-hosts",
        "--dir",
        certs_d,
        "--mirror",
        "http://10.0.0.7:65001",
        "docker.io",
    ]);
    let stderr = text(&other.stderr);
    assert!(!other.status.success());
    assert!(stderr.contains(&docker.display().to_string()), "{stderr}");
    assert!(stderr.contains("--force"), "{stderr}");

    let forced = dfdaemon(&[
        "containerd-hosts",
        "--dir",
        certs_d,
        "--mirror",
        "http://10.0.0.7:65001",
        "--force",
        "docker.io",
    ]);
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    let replaced = std::fs::read_to_string(&docker).unwrap();
    assert!(
        replaced.contains("[host.\"http://10.0.0.7:65001\"]"),
        "{replaced}"
    );
}

#[test]
fn containerd_hosts_takes_the_mirror_credentials_from_the_daemon_config() {
    let dir = tempfile::tempdir().unwrap();
    let certs_d = dir.path().join("certs.d");
    let (certs_d_arg, cfg) = (certs_d.to_str().unwrap(), dir.path().join("dfget.yaml"));
    let cfg_arg = cfg.to_str().unwrap();
    std::fs::write(
        &cfg,
        "proxy:\n  basicAuth:\n    username: alice\n    password: s3cret\n",
    )
    .unwrap();
    let hosts = |config: &str, registry: &str| {
        dfdaemon(&[
            "containerd-hosts",
            "--dir",
            certs_d_arg,
            "--config",
            config,
            registry,
        ])
    };
    let run = hosts(cfg_arg, "registry.test:5443");
    assert!(run.status.success(), "{}", text(&run.stderr));
    let file = certs_d.join("registry.test:5443/hosts.toml");
    let written = std::fs::read_to_string(&file).unwrap();
    // base64("alice:s3cret")
    let line = "    Proxy-Authorization = [\"Basic YWxpY2U6czNjcmV0\"]\n";
    assert_eq!(
        written,
        format!("{}{line}", expected_hosts("https://registry.test:5443"))
    );
    assert_eq!(mode(&file), 0o600);
    assert!(text(&run.stdout).contains("0600"), "{}", text(&run.stdout));

    // A config without basicAuth: no credentials; a config that does not load: named.
    std::fs::write(&cfg, "proxy: {}\n").unwrap();
    let run = hosts(cfg_arg, "r.test");
    assert!(run.status.success(), "{}", text(&run.stderr));
    let written = std::fs::read_to_string(certs_d.join("r.test/hosts.toml")).unwrap();
    assert!(!written.contains("Proxy-Authorization"), "{written}");
    let run = hosts("/nonexistent/dfget.yaml", "r2.test");
    assert!(!run.status.success());
    assert!(
        text(&run.stderr).contains("/nonexistent/dfget.yaml"),
        "{}",
        text(&run.stderr)
    );
    assert!(!certs_d.join("r2.test").exists());
}

#[test]
fn containerd_hosts_names_a_bad_registry_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let certs_d = dir.path().to_str().unwrap();
    for bad in ["ghcr.io/owner/image", "my registry", ""] {
        let run = dfdaemon(&["containerd-hosts", "--dir", certs_d, "docker.io", bad]);
        let stderr = text(&run.stderr);
        assert!(!run.status.success(), "{bad:?} accepted");
        assert!(stderr.contains(&format!("{bad:?}")), "{stderr}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn no_subcommand_still_runs_the_daemon_options() {
    let run = dfdaemon(&["--print-config", "-c", "/nonexistent/dfdaemon.yaml"]);
    assert!(!run.status.success());
    assert!(
        text(&run.stderr).contains("/nonexistent/dfdaemon.yaml"),
        "{}",
        text(&run.stderr)
    );
    let help = dfdaemon(&["--help"]);
    let help = text(&help.stdout);
    for needle in ["gen-ca", "containerd-hosts", "--config", "--print-config"] {
        assert!(help.contains(needle), "{help}");
    }
}
