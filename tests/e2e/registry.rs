//! The proxy and mirror with real parts: Debian's `docker-registry` (TLS, with and without
//! htpasswd) as the origin, and skopeo, containerd's `ctr`, podman and curl as clients, each
//! talking to a dfdaemon over real sockets. The registry's access log counts what the origin
//! served. Needs root (`/etc/hosts`) and the Makefile's `TEST_PACKAGES`; a missing tool fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use testkit::daemon::{DaemonProcess, InProcessDaemon};
use testkit::net::free_port;
use testkit::process::output_ok;
use testkit::registry::{
    Containerd, ImageSpec, Pki, Podman, Registry, RegistryOptions, TestImage, ensure_test_hosts,
    run, skopeo,
};
use testkit::scheduler::SchedulerProcess;

const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(15);
/// `proxy.whiteList` of the hosts these tests use (all on loopback here).
const TEST_HOSTS: &str =
    "  whiteList:\n    - host: registry.test\n    - host: other.test\n    - host: 127.0.0.1\n";

/// An origin registry, the CA the proxy intercepts with, and a pushed image.
struct Setup {
    dir: tempfile::TempDir,
    origin_pki: Pki,
    proxy_pki: Pki,
    registry: Registry,
}

impl Setup {
    async fn new(auth: bool) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        ensure_test_hosts(&["registry.test", "other.test"]).expect("hosts");
        let origin_pki = Pki::generate(
            &dir.path().join("origin-pki"),
            &["registry.test", "other.test"],
        )
        .expect("origin pki");
        // The proxy's CA: a separate one, so a client that trusts only it cannot be talking
        // to the registry directly.
        let proxy_pki =
            Pki::generate(&dir.path().join("proxy-pki"), &["unused.test"]).expect("proxy pki");
        let mut opts = RegistryOptions::new(&origin_pki).dir(dir.path().join("registry"));
        if auth {
            opts = opts.auth("tester", "testpass");
        }
        let registry = Registry::start(opts).await.expect("registry starts");
        Setup {
            dir,
            origin_pki,
            proxy_pki,
            registry,
        }
    }

    async fn push(&self, repo: &str, sizes: &[u64], seed: u64) -> TestImage {
        let client = self.registry.client().expect("registry client");
        client
            .push_new_image(
                &ImageSpec::new(repo, "v1", sizes, seed),
                &self.dir.path().join("images"),
            )
            .await
            .expect("push")
    }

    /// A `--cert-dir` that trusts only the proxy's CA.
    /// `dfdaemon containerd-hosts` for this registry with `mirror` (and the daemon config
    /// `config`): the hosts directory, the registry's `hosts.toml` and its text.
    fn containerd_hosts(&self, mirror: &str, config: Option<&Path>) -> (PathBuf, PathBuf, String) {
        let hosts = self.dir.path().join("certs.d");
        let mut cmd = Command::new(testkit::bins::bin("dfdaemon"));
        cmd.args(["containerd-hosts", "--dir"]).arg(&hosts);
        if let Some(config) = config {
            cmd.arg("--config").arg(config);
        }
        cmd.args(["--mirror", mirror, &self.registry.host_port()]);
        output_ok(&mut cmd, "dfdaemon containerd-hosts failed");
        let toml = hosts.join(self.registry.host_port()).join("hosts.toml");
        let text = std::fs::read_to_string(&toml).expect("hosts.toml");
        (hosts, toml, text)
    }

    /// The registry's URL of blob `digest` of `image`.
    fn blob_url(&self, image: &TestImage, digest: &str) -> String {
        format!("{}/v2/{}/blobs/{digest}", self.registry.url(), image.repo)
    }

    fn proxy_trust(&self) -> PathBuf {
        self.proxy_pki
            .cert_dir(&self.dir.path().join("trust-proxy"), &[])
            .expect("cert dir")
    }

    /// Extra YAML under `proxy:` that hijacks registry.test and trusts its real CA upstream.
    /// The test hosts are on loopback, so they are listed (registry.test as the mirror's
    /// upstream, other.test for a tunnel, 127.0.0.1 for a plain origin).
    fn hijack_yaml(&self) -> String {
        format!(
            "  hijackHTTPS:\n    cert: {}\n    key: {}\n    hosts:\n      - regx: registry.test\n        certs: [{}]\n\
             \x20 registryMirror:\n    dynamic: true\n    url: {}\n    certs: [{}]\n{TEST_HOSTS}",
            self.proxy_pki.ca_cert().display(),
            self.proxy_pki.ca_key().display(),
            self.origin_pki.ca_cert().display(),
            self.registry.url(),
            self.origin_pki.ca_cert().display(),
        )
    }

    async fn assert_served_once(&self, image: &TestImage) {
        self.registry.assert_layers_served_once(image, WAIT).await;
    }
}

/// A daemon running in the test, with its proxy on.
struct Daemon(InProcessDaemon);

impl Daemon {
    /// A daemon whose proxy section is `proxy_yaml` and that knows `schedulers`.
    async fn start(proxy_yaml: &str, schedulers: &[String]) -> Daemon {
        Daemon(
            DaemonProcess::temp()
                .proxy(free_port(), proxy_yaml)
                .schedulers(schedulers)
                .start_in_process()
                .await,
        )
    }

    fn proxy_url(&self) -> String {
        self.0.proxy_url()
    }

    fn with_proxy(&self, mut cmd: Command) -> Command {
        cmd.env("HTTPS_PROXY", self.proxy_url())
            .env("https_proxy", self.proxy_url())
            .env("NO_PROXY", "")
            .env("no_proxy", "");
        cmd
    }

    /// Whether this daemon stores the blob (HEAD through its mirror is answered locally).
    async fn stores(&self, registry: &Registry, repo: &str, digest: &str) -> bool {
        self.stores_as(registry, repo, digest, None).await
    }

    /// [`Self::stores`] asked with `Proxy-Authorization: proxy_auth`.
    async fn stores_as(
        &self,
        registry: &Registry,
        repo: &str,
        digest: &str,
        proxy_auth: Option<&str>,
    ) -> bool {
        let mut head = reqwest::Client::new()
            .head(format!("{}/v2/{repo}/blobs/{digest}", self.proxy_url()))
            .header("X-Dragonfly-Registry", registry.url());
        if let Some(auth) = proxy_auth {
            head = head.header("Proxy-Authorization", auth);
        }
        let r = head.send().await;
        r.is_ok_and(|r| r.status() == 200 && r.headers().contains_key("x-dragonfly-task"))
    }
}

/// `ctr images pull --hosts-dir HOSTS REFERENCE` (the registry's mirror from `hosts.toml`).
async fn ctr_pull_with_hosts(containerd: &Containerd, hosts: &Path, reference: &str) {
    let c = containerd.ctr([
        "images",
        "pull",
        "--hosts-dir",
        &hosts.display().to_string(),
        reference,
    ]);
    run(c).await.expect("ctr pull through the mirror");
}

fn assert_dir_has_layers(out: &Path, image: &TestImage) {
    for layer in &image.layers {
        let hex = layer.digest.trim_start_matches("sha256:");
        let got = std::fs::read(out.join(hex)).unwrap_or_else(|e| panic!("{hex}: {e}"));
        assert!(
            got == layer.read().expect("layer"),
            "layer {} differs",
            layer.digest
        );
    }
}

fn skopeo_copy(s: &Setup, image: &TestImage, out: &Path, cert_dir: &Path) -> Command {
    let mut c = skopeo();
    c.args(["copy", "--src-cert-dir"])
        .arg(cert_dir)
        .arg(format!(
            "docker://{}",
            image.reference(&s.registry.host_port())
        ))
        .arg(format!("dir:{}", out.display()));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_through_the_hijacking_proxy_and_the_second_pull_is_cached() {
    let s = Setup::new(false).await;
    let image = s.push("e2e/skopeo", &[MIB, 6 * MIB, 9 * MIB + 7], 51).await;
    let d = Daemon::start(&s.hijack_yaml(), &[]).await;
    let trust = s.proxy_trust();

    let out1 = s.dir.path().join("out1");
    run(d.with_proxy(skopeo_copy(&s, &image, &out1, &trust)))
        .await
        .expect("skopeo through the proxy");
    assert_dir_has_layers(&out1, &image);
    let out2 = s.dir.path().join("out2");
    run(d.with_proxy(skopeo_copy(&s, &image, &out2, &trust)))
        .await
        .expect("second pull");
    assert_dir_has_layers(&out2, &image);
    s.assert_served_once(&image).await;

    // A push goes through as is (POST, PATCH/PUT bodies streamed to the registry).
    let mut push = skopeo();
    push.args(["copy", "--dest-cert-dir"])
        .arg(&trust)
        .arg(format!("dir:{}", out1.display()))
        .arg(format!("docker://{}/e2e/pushed:v1", s.registry.host_port()));
    run(d.with_proxy(push))
        .await
        .expect("skopeo push through the proxy");
    let client = s.registry.client().expect("client");
    for l in &image.layers {
        let got = client
            .get_blob("e2e/pushed", &l.digest)
            .await
            .expect("pushed blob");
        assert!(got == l.read().expect("layer"), "pushed {}", l.digest);
    }

    // Control: the proxy really intercepts. Trusting only the registry's own CA fails through
    // it, and trusting only the proxy's CA fails without it.
    let origin_trust = s
        .origin_pki
        .cert_dir(&s.dir.path().join("trust-origin"), &[])
        .expect("cert dir");
    let err = run(d.with_proxy(skopeo_copy(
        &s,
        &image,
        &s.dir.path().join("o3"),
        &origin_trust,
    )))
    .await
    .expect_err("the proxy's certificate is not the registry's");
    assert!(err.to_string().contains("certificate"), "{err}");
    let err = run(skopeo_copy(&s, &image, &s.dir.path().join("o4"), &trust))
        .await
        .expect_err("without the proxy the proxy CA is useless");
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_registry_works_through_the_proxy_with_credentials_only() {
    let s = Setup::new(true).await;
    let image = s.push("e2e/auth", &[2 * MIB, 5 * MIB], 52).await;
    let d = Daemon::start(&s.hijack_yaml(), &[]).await;
    let trust = s.proxy_trust();
    let out = s.dir.path().join("out");
    let mut c = skopeo_copy(&s, &image, &out, &trust);
    c.args(["--src-creds", "tester:testpass"]);
    run(d.with_proxy(c)).await.expect("pull with credentials");
    assert_dir_has_layers(&out, &image);
    s.assert_served_once(&image).await;
    let err = run(d.with_proxy(skopeo_copy(&s, &image, &s.dir.path().join("o2"), &trust)))
        .await
        .expect_err("no credentials");
    let msg = err.to_string().to_lowercase();
    assert!(
        msg.contains("unauthorized") || msg.contains("authentication"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctr_pulls_through_the_proxy_and_through_a_generated_hosts_toml() {
    let s = Setup::new(false).await;
    let via_proxy = s.push("e2e/ctr-proxy", &[MIB, 5 * MIB], 53).await;
    let via_mirror = s.push("e2e/ctr-mirror", &[2 * MIB, 6 * MIB], 54).await;
    let d = Daemon::start(&s.hijack_yaml(), &[]).await;
    let containerd = Containerd::start().await.expect("containerd");

    // 1. HTTPS_PROXY in ctr's environment (ctr pulls in its own process), the proxy CA trusted.
    let mut c = containerd.ctr([
        "images",
        "pull",
        "--tlscacert",
        &s.proxy_pki.ca_cert().display().to_string(),
        &via_proxy.reference(&s.registry.host_port()),
    ]);
    c.env("HTTPS_PROXY", d.proxy_url());
    run(c).await.expect("ctr pull through the proxy");
    s.assert_served_once(&via_proxy).await;

    // 2. A hosts.toml written by `dfdaemon containerd-hosts`, the daemon as mirror.
    let (hosts, _, text) = s.containerd_hosts(&d.proxy_url(), None);
    // containerd must trust the registry's CA for the fallback `server`; the mirror is http.
    assert!(text.contains("X-Dragonfly-Registry"), "{text}");
    ctr_pull_with_hosts(
        &containerd,
        &hosts,
        &via_mirror.reference(&s.registry.host_port()),
    )
    .await;
    s.assert_served_once(&via_mirror).await;
    for l in &via_mirror.layers {
        assert!(
            d.stores(&s.registry, &via_mirror.repo, &l.digest).await,
            "layer {} went through the daemon",
            l.digest
        );
    }
    let images = containerd.images().await.expect("images");
    for img in [&via_proxy, &via_mirror] {
        let r = img.reference(&s.registry.host_port());
        assert!(images.iter().any(|i| i == &r), "{r} in {images:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctr_sends_the_mirror_its_basic_auth_credentials_from_a_generated_hosts_toml() {
    let s = Setup::new(false).await;
    let image = s.push("e2e/ctr-auth", &[2 * MIB, 3 * MIB], 60).await;
    let auth = "  basicAuth:\n    username: node\n    password: pull-secret\n";
    let d = Daemon::start(&format!("{}{auth}", s.hijack_yaml()), &[]).await;
    let containerd = Containerd::start().await.expect("containerd");
    // The daemon's config, where containerd-hosts reads the credentials.
    let cfg = s.dir.path().join("dfget.yaml");
    std::fs::write(&cfg, format!("proxy:\n{auth}")).expect("config");
    let (hosts, toml, text) = s.containerd_hosts(&d.proxy_url(), Some(&cfg));
    assert!(text.contains("Proxy-Authorization"), "{text}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&toml).expect("mode").permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "credentials are not readable by others"
    );
    ctr_pull_with_hosts(
        &containerd,
        &hosts,
        &image.reference(&s.registry.host_port()),
    )
    .await;
    s.assert_served_once(&image).await;
    // containerd falls back to the registry itself when the mirror refuses it: the layers
    // being stored here shows the mirror served them, so the credentials went along.
    let credentials = format!(
        "Basic {}",
        dfdaemon::source::oras::base64_encode(b"node:pull-secret")
    );
    for l in &image.layers {
        assert!(
            d.stores_as(&s.registry, &image.repo, &l.digest, Some(&credentials))
                .await,
            "layer {} went through the daemon",
            l.digest
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_pulls_through_the_proxy() {
    let s = Setup::new(false).await;
    let image = s.push("e2e/podman", &[MIB, 3 * MIB], 55).await;
    let d = Daemon::start(&s.hijack_yaml(), &[]).await;
    let podman = Podman::new().expect("podman");
    let trust = s.proxy_trust();
    let c = podman.command([
        "pull",
        "--cert-dir",
        &trust.display().to_string(),
        &image.reference(&s.registry.host_port()),
    ]);
    let out = run(d.with_proxy(c))
        .await
        .expect("podman pull through the proxy");
    assert!(
        out.contains(image.config.digest.trim_start_matches("sha256:")),
        "podman printed the image id: {out}"
    );
    s.assert_served_once(&image).await;
}

fn curl(d: &Daemon, args: &[&str]) -> Command {
    let mut c = Command::new("curl");
    c.args(["-sS", "--fail-with-body", "-x", &d.proxy_url()])
        .args(args);
    c
}

/// curl through `d`'s proxy to the end, whatever its exit status.
async fn curl_output(d: &Daemon, args: &[&str]) -> std::process::Output {
    tokio::process::Command::from(curl(d, args))
        .output()
        .await
        .expect("curl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_ranges_head_tunnel_and_plain_http_through_the_proxy() {
    let s = Setup::new(false).await;
    let image = s.push("e2e/curl", &[5 * MIB + 3], 56).await;
    let d = Daemon::start(&s.hijack_yaml(), &[]).await;
    let layer = &image.layers[0];
    let data = layer.read().expect("layer");
    let url = s.blob_url(&image, &layer.digest);
    let ca = s.proxy_pki.ca_cert().display().to_string();

    let got = curl_output(&d, &["--cacert", &ca, "-r", "100-4194404", &url]).await;
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(got.stdout, data[100..=4194404], "range bytes");
    let head = run(curl(&d, &["--cacert", &ca, "-I", &url]))
        .await
        .expect("head");
    let head = head.to_lowercase();
    assert!(
        head.contains(&format!("content-length: {}", data.len())),
        "{head}"
    );
    assert!(
        head.contains(&format!("docker-content-digest: {}", layer.digest)),
        "{head}"
    );
    s.assert_served_once(&image).await;

    // other.test is not in hijackHTTPS.hosts: tunnelled, so curl sees the registry's real
    // certificate (it trusts only the registry's CA here) and the daemon stores nothing.
    let other = format!(
        "https://other.test:{}/v2/{}/blobs/{}",
        s.registry.port(),
        image.repo,
        layer.digest
    );
    let origin_ca = s.origin_pki.ca_cert().display().to_string();
    let v = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "-v",
            "-o",
            "/dev/null",
            "-x",
            &d.proxy_url(),
            "--cacert",
            &origin_ca,
            &other,
        ])
        .output()
        .await
        .expect("curl");
    let stderr = String::from_utf8_lossy(&v.stderr);
    assert!(v.status.success(), "{stderr}");
    assert!(stderr.contains("CONNECT other.test"), "{stderr}");
    // The tunnelled GET reached the origin: the layer's bytes a second time.
    s.registry
        .wait_for_requests(WAIT, |reqs| {
            reqs.iter()
                .filter(|r| r.is_blob_get_of(&layer.digest))
                .map(|r| r.bytes)
                .sum::<u64>()
                == 2 * layer.size
        })
        .await
        .expect("tunnelled GET reached the origin");

    // A plain-HTTP origin is forwarded.
    let (_origin, running) = testkit::origin::Origin::serving([(
        "/plain",
        testkit::origin::Resource::bytes(&b"plain bytes"[..]),
    )])
    .await;
    let out = run(curl(&d, &[&running.url("/plain")]))
        .await
        .expect("plain http");
    assert_eq!(out, "plain bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_from_the_registry_fail_the_pull_and_are_not_kept() {
    let s = Setup::new(false).await;
    let image = s.push("e2e/corrupt", &[6 * MIB], 57).await;
    let layer = &image.layers[0];
    s.registry.corrupt_blob(&layer.digest).expect("corrupt");
    let d = Daemon::start(&s.hijack_yaml(), &[]).await;
    let err = run(d.with_proxy(skopeo_copy(
        &s,
        &image,
        &s.dir.path().join("out"),
        &s.proxy_trust(),
    )))
    .await
    .expect_err("a corrupt layer must fail the pull");
    let msg = err.to_string();
    assert!(
        msg.contains(&layer.digest),
        "skopeo names the layer it could not read: {msg}"
    );
    assert!(
        !d.stores(&s.registry, &image.repo, &layer.digest).await,
        "nothing of a corrupt blob is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_takes_the_layers_from_the_first() {
    let s = Setup::new(false).await;
    let image = s.push("e2e/two-nodes", &[9 * MIB, 13 * MIB], 58).await;
    let scheduler = SchedulerProcess::start(&s.dir.path().join("scheduler"));
    let sched = [scheduler.addr()];
    let a = Daemon::start(&s.hijack_yaml(), &sched).await;
    let b = Daemon::start(&s.hijack_yaml(), &sched).await;
    let trust = s.proxy_trust();
    run(a.with_proxy(skopeo_copy(&s, &image, &s.dir.path().join("a"), &trust)))
        .await
        .expect("node a pulls");
    run(b.with_proxy(skopeo_copy(&s, &image, &s.dir.path().join("b"), &trust)))
        .await
        .expect("node b pulls");
    assert_dir_has_layers(&s.dir.path().join("b"), &image);
    s.assert_served_once(&image).await;
    // b stores every layer too, and the origin served each once in all (to a): b's pieces
    // came from a.
    for l in &image.layers {
        assert!(
            a.stores(&s.registry, &image.repo, &l.digest).await,
            "a has {}",
            l.digest
        );
        assert!(
            b.stores(&s.registry, &image.repo, &l.digest).await,
            "b has {}",
            l.digest
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_is_verified_unless_the_host_is_insecure() {
    let s = Setup::new(false).await;
    let image = s.push("e2e/verify", &[MIB], 59).await;
    let layer = &image.layers[0];
    let url = s.blob_url(&image, &layer.digest);
    let ca = s.proxy_pki.ca_cert().display().to_string();
    let hijack = |extra: &str| {
        format!(
            "{TEST_HOSTS}  hijackHTTPS:\n    cert: {}\n    key: {}\n    hosts:\n      - regx: registry.test\n{extra}",
            s.proxy_pki.ca_cert().display(),
            s.proxy_pki.ca_key().display(),
        )
    };
    // No `certs` for the registry's private CA: the daemon refuses the real registry.
    let strict = Daemon::start(&hijack(""), &[]).await;
    let out = curl_output(&strict, &["--cacert", &ca, &url]).await;
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "must not pass: {body}");
    assert!(
        body.contains("certificate") && body.contains("registry.test"),
        "the error names the host and the certificate problem: {body}"
    );
    // `insecure: true` for that host: no verification, the pull works.
    let lax = Daemon::start(&hijack("        insecure: true\n"), &[]).await;
    let out = curl_output(&lax, &["--cacert", &ca, &url]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == layer.read().expect("layer"), "layer bytes");
}
