//! `dfdaemon containerd-hosts` on a node, with Debian's real containerd (its CRI plugin on, as
//! kubelet uses it) and a real registry: the run points containerd's `config_path` at the
//! hosts files, containerd pulls through the daemon's mirror, a re-run changes nothing, a pull
//! still works with the daemon down (containerd falls back to the `server`), and `--restore`
//! puts back the exact files. Needs root (`/etc/hosts`) and the Makefile's `TEST_PACKAGES`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use testkit::daemon::DaemonProcess;
use testkit::net::free_port;
use testkit::process::KillOnDrop;
use testkit::registry::{ImageSpec, Pki, Registry, RegistryOptions, TestImage, ensure_test_hosts};

const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(30);

/// The origin registry (TLS) and a scratch directory for the node's files.
struct Origin {
    dir: tempfile::TempDir,
    pki: Pki,
    registry: Registry,
}

impl Origin {
    async fn start() -> Origin {
        let dir = tempfile::tempdir().expect("tempdir");
        ensure_test_hosts(&["registry.test"]).expect("hosts");
        let pki = Pki::generate(&dir.path().join("pki"), &["registry.test"]).expect("pki");
        let registry = Registry::start(RegistryOptions::new(&pki).dir(dir.path().join("registry")))
            .await
            .expect("registry starts");
        Origin { dir, pki, registry }
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

    fn reference(&self, image: &TestImage) -> String {
        image.reference(&self.registry.host_port())
    }

    /// The daemon's proxy section: a dynamic mirror that trusts the origin's CA.
    fn mirror_yaml(&self) -> String {
        format!(
            "  registryMirror:\n    dynamic: true\n    url: {}\n    certs: [{}]\n  whiteList:\n    - host: registry.test\n",
            self.registry.url(),
            self.pki.ca_cert().display(),
        )
    }

    /// Wait until the origin has served every layer of `image`, then check each was served
    /// exactly once, whole.
    async fn assert_served_once(&self, image: &TestImage) {
        self.registry.assert_layers_served_once(image, WAIT).await;
        for l in &image.layers {
            assert_eq!(self.registry.blob_gets(&l.digest).expect("log"), 1);
        }
    }
}

impl Origin {
    /// Every layer of `image` is stored by the daemon whose mirror is `mirror` (a HEAD there
    /// is answered from its storage, with the task header).
    async fn assert_stored_by(&self, mirror: &str, image: &TestImage) {
        let client = reqwest::Client::new();
        for l in &image.layers {
            let head = client
                .head(format!("{mirror}/v2/{}/blobs/{}", image.repo, l.digest))
                .header("X-Dragonfly-Registry", self.registry.url())
                .send()
                .await
                .expect("HEAD through the mirror");
            assert!(
                head.status() == 200 && head.headers().contains_key("x-dragonfly-task"),
                "layer {} went through the daemon: {head:?}",
                l.digest
            );
        }
    }
}

/// `dfdaemon containerd-hosts ARGS`: its output.
fn containerd_hosts_output(args: &[&str]) -> std::process::Output {
    Command::new(testkit::bins::bin("dfdaemon"))
        .arg("containerd-hosts")
        .args(args)
        .output()
        .expect("dfdaemon runs")
}

/// Each of `lines` is a whole line of `out`.
fn assert_lines(out: &str, lines: &[String]) {
    for line in lines {
        assert!(out.lines().any(|l| l == line), "{line:?} in:\n{out}");
    }
}

/// `dfdaemon containerd-hosts ARGS`: its stdout (panics with stderr when it fails).
fn containerd_hosts(args: &[&str]) -> String {
    let out = containerd_hosts_output(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "dfdaemon containerd-hosts {args:?}: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o7777
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A node's containerd: its dir, and a config.toml with the CRI plugin on and no config_path.
struct Node {
    dir: PathBuf,
    config: PathBuf,
    socket: PathBuf,
}

impl Node {
    fn new(dir: PathBuf) -> Node {
        std::fs::create_dir_all(&dir).expect("node dir");
        let q = |p: PathBuf| serde_json::Value::String(s(&p)).to_string();
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        let text = format!(
            "version = 2\n\
             root = {root}\n\
             state = {state}\n\
             # Not what this test is about: snapshotters that do not load here.\n\
             disabled_plugins = [\"io.containerd.snapshotter.v1.btrfs\", \"io.containerd.snapshotter.v1.zfs\",\n  \
             \"io.containerd.snapshotter.v1.devmapper\", \"io.containerd.snapshotter.v1.aufs\"]\n\
             \n\
             [grpc]\n  address = {sock}\n\
             [ttrpc]\n  address = {ttrpc}\n\
             [debug]\n  level = \"debug\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {opt}\n\
             [plugins.\"io.containerd.grpc.v1.cri\"]\n  \
               sandbox_image = \"registry.k8s.io/pause:3.6\"\n  \
               [plugins.\"io.containerd.grpc.v1.cri\".cni]\n    \
                 bin_dir = {cni_bin}\n    conf_dir = {cni_conf}\n",
            root = q(dir.join("root")),
            state = q(dir.join("state")),
            sock = q(socket.clone()),
            ttrpc = q(dir.join("containerd.sock.ttrpc")),
            opt = q(dir.join("opt")),
            cni_bin = q(dir.join("cni/bin")),
            cni_conf = q(dir.join("cni/conf")),
        );
        std::fs::write(&config, text).expect("config.toml");
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        Node {
            dir,
            config,
            socket,
        }
    }

    /// Start containerd with the config as it is now; it trusts the origin's CA (for the
    /// `server` fallback) through `SSL_CERT_FILE`.
    async fn start_containerd(&self, origin: &Origin) -> Containerd {
        let bundle = origin
            .pki
            .bundle(&self.dir.join("ca-bundle.pem"), &[])
            .expect("bundle");
        let log = self.dir.join("containerd.log");
        let file = std::fs::File::create(&log).expect("log");
        let mut cmd = Command::new("containerd");
        for var in testkit::registry::PROXY_VARS {
            cmd.env_remove(var);
        }
        cmd.arg("--config")
            .arg(&self.config)
            .env("SSL_CERT_FILE", &bundle)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file);
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("containerd does not start ({e}): install the Debian package containerd")
        });
        let mut c = Containerd {
            _process: KillOnDrop(child),
            socket: self.socket.clone(),
            log,
        };
        c.wait_ready().await;
        c
    }
}

/// A running containerd and a CRI client to it (the requests kubelet makes to pull).
struct Containerd {
    _process: KillOnDrop,
    socket: PathBuf,
    log: PathBuf,
}

impl Containerd {
    async fn wait_ready(&mut self) {
        let mut last = String::new();
        for _ in 0..300 {
            match cri::list_images(&self.socket).await {
                Ok(_) => return,
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "containerd's CRI image service does not answer: {last}\n{}",
            self.log_tail()
        );
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// CRI `PullImage`, as kubelet asks it.
    async fn pull(&self, reference: &str) {
        if let Err(e) = cri::pull_image(&self.socket, reference).await {
            panic!("CRI pull {reference}: {e}\n{}", self.log_tail());
        }
        let images = cri::list_images(&self.socket).await.expect("list images");
        assert!(
            images.iter().any(|i| i == reference),
            "{reference} in {images:?}"
        );
    }
}

/// The two CRI calls the test makes, over containerd's socket (hand-written messages: the
/// fields of `runtime.v1` that these calls need).
mod cri {
    use hyper_util::rt::TokioIo;
    use std::path::Path;
    use tonic::codegen::http::uri::PathAndQuery;
    use tonic::transport::{Channel, Endpoint, Uri};

    #[derive(Clone, PartialEq, prost::Message)]
    struct ImageSpec {
        #[prost(string, tag = "1")]
        image: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct PullImageRequest {
        #[prost(message, optional, tag = "1")]
        image: Option<ImageSpec>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct PullImageResponse {
        #[prost(string, tag = "1")]
        image_ref: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct ListImagesRequest {}
    #[derive(Clone, PartialEq, prost::Message)]
    struct Image {
        #[prost(string, tag = "1")]
        id: String,
        #[prost(string, repeated, tag = "2")]
        repo_tags: Vec<String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct ListImagesResponse {
        #[prost(message, repeated, tag = "1")]
        images: Vec<Image>,
    }

    async fn channel(socket: &Path) -> Result<Channel, String> {
        let path = socket.to_path_buf();
        Endpoint::from_static("http://containerd.local")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .map_err(|e| {
                format!(
                    "{}: {}",
                    socket.display(),
                    dragonfly_common::error::chain(&e)
                )
            })
    }

    async fn unary<Q, R>(socket: &Path, method: &'static str, req: Q) -> Result<R, String>
    where
        Q: prost::Message + Send + Sync + 'static,
        R: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(channel(socket).await?);
        grpc.ready().await.map_err(|e| e.to_string())?;
        let codec = tonic_prost::ProstCodec::<Q, R>::default();
        grpc.unary(
            tonic::Request::new(req),
            PathAndQuery::from_static(method),
            codec,
        )
        .await
        .map(tonic::Response::into_inner)
        .map_err(|e| format!("{method}: {e}"))
    }

    /// Pull `reference`; returns containerd's image id.
    pub async fn pull_image(socket: &Path, reference: &str) -> Result<String, String> {
        let req = PullImageRequest {
            image: Some(ImageSpec {
                image: reference.to_owned(),
            }),
        };
        let r: PullImageResponse = unary(socket, "/runtime.v1.ImageService/PullImage", req).await?;
        Ok(r.image_ref)
    }

    /// Every tag of every image.
    pub async fn list_images(socket: &Path) -> Result<Vec<String>, String> {
        let r: ListImagesResponse = unary(
            socket,
            "/runtime.v1.ImageService/ListImages",
            ListImagesRequest {},
        )
        .await?;
        Ok(r.images.into_iter().flat_map(|i| i.repo_tags).collect())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_gets_config_path_pulls_through_the_mirror_falls_back_and_is_restored() {
    let origin = Origin::start().await;
    let image = origin.push("e2e/cri-mirror", &[MIB, 3 * MIB], 81).await;
    let daemon = DaemonProcess::temp()
        .proxy(free_port(), &origin.mirror_yaml())
        .start_in_process()
        .await;
    let node = Node::new(origin.dir.path().join("node"));
    let original = std::fs::read(&node.config).expect("config");
    let certs = node.dir.join("certs.d");
    let backups = node.dir.join("backup");
    let marker = node.dir.join("on-change.log");
    let hosts = certs.join(origin.registry.host_port()).join("hosts.toml");
    let on_change = format!("echo ran >> {}", s(&marker));
    let mirror = daemon.proxy_url();
    let host_port = origin.registry.host_port();
    let install = [
        "--containerd-config",
        &s(&node.config),
        "--dir",
        &s(&certs),
        "--mirror",
        &mirror,
        "--backup-dir",
        &s(&backups),
        "--on-change",
        &on_change,
        &host_port,
    ];

    // 1. No config_path: set, config.toml backed up, the hosts file written, on-change run.
    let out = containerd_hosts(&install);
    let backup = backups.join(node.config.strip_prefix("/").expect("absolute"));
    assert_lines(
        &out,
        &[
            format!("wrote {}", s(&hosts)),
            format!("backed up {} to {}", s(&node.config), s(&backup)),
            format!("wrote {}", s(&node.config)),
            "containerd config: changed (containerd must be restarted to read it)".to_owned(),
            "on-change: done".to_owned(),
        ],
    );
    assert_eq!(std::fs::read_to_string(&marker).expect("marker"), "ran\n");
    assert_eq!(std::fs::read(&backup).expect("backup"), original);
    assert_eq!(mode_of(&node.config), 0o640);

    // 2. containerd started with that config pulls through the daemon: the origin serves each
    //    layer once, to the daemon.
    let containerd = node.start_containerd(&origin).await;
    containerd.pull(&origin.reference(&image)).await;
    origin.assert_served_once(&image).await;
    origin.assert_stored_by(&mirror, &image).await;

    // 3. A pod restart: the same run changes nothing and does not run on-change.
    let out = containerd_hosts(&install);
    assert_lines(
        &out,
        &[
            format!("unchanged {}", s(&hosts)),
            "unchanged: every file is already as dfdaemon writes it".to_owned(),
            "containerd config: unchanged (no restart needed)".to_owned(),
            "on-change: not run".to_owned(),
        ],
    );
    assert_eq!(std::fs::read_to_string(&marker).expect("marker"), "ran\n");

    // 4. The daemon down (its port refuses): containerd falls back to the hosts file's
    //    `server`, the origin itself.
    let proxy = daemon.proxy_addr();
    drop(daemon);
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(proxy).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "the daemon's proxy {proxy} still accepts");
    let direct = origin.push("e2e/cri-fallback", &[2 * MIB], 82).await;
    containerd.pull(&origin.reference(&direct)).await;
    origin.assert_served_once(&direct).await;
    drop(containerd);

    // 5. Restore: config.toml back byte for byte with its mode, what we created removed,
    //    on-change run again (containerd's config changed back); a second restore is a no-op.
    let restore = [
        "--restore",
        "--backup-dir",
        &s(&backups),
        "--on-change",
        &on_change,
    ];
    let out = containerd_hosts(&restore);
    assert_lines(
        &out,
        &[
            format!("removed {}", s(&hosts)),
            format!("restored {}", s(&node.config)),
            format!("removed {}", s(&certs)),
            "on-change: done".to_owned(),
        ],
    );
    assert_eq!(std::fs::read(&node.config).expect("config"), original);
    assert_eq!(mode_of(&node.config), 0o640);
    assert!(!certs.exists());
    assert_eq!(
        std::fs::read_to_string(&marker).expect("marker"),
        "ran\nran\n"
    );
    let out = containerd_hosts(&restore);
    assert!(out.starts_with("nothing to restore"), "{out}");
    assert_eq!(
        std::fs::read_to_string(&marker).expect("marker"),
        "ran\nran\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_config_path_and_hosts_toml_are_honoured_backed_up_and_restored() {
    let origin = Origin::start().await;
    let image = origin.push("e2e/cri-existing", &[2 * MIB], 83).await;
    let daemon = DaemonProcess::temp()
        .proxy(free_port(), &origin.mirror_yaml())
        .start_in_process()
        .await;
    let node = Node::new(origin.dir.path().join("node"));
    // The node's own hosts dir, with a hosts.toml of its own for our registry.
    let theirs = node.dir.join("etc-certs.d");
    let mut config = std::fs::read_to_string(&node.config).expect("config");
    config.push_str(&format!(
        "  [plugins.\"io.containerd.grpc.v1.cri\".registry]\n    config_path = \"{}\"\n",
        s(&theirs)
    ));
    std::fs::write(&node.config, &config).expect("config");
    let hosts = theirs.join(origin.registry.host_port()).join("hosts.toml");
    std::fs::create_dir_all(hosts.parent().expect("parent")).expect("dir");
    let old = format!("# the node's own\nserver = \"{}\"\n", origin.registry.url());
    std::fs::write(&hosts, &old).expect("hosts.toml");
    std::fs::set_permissions(&hosts, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let backups = node.dir.join("backup");
    let marker = node.dir.join("on-change.log");
    let on_change = format!("echo ran >> {}", s(&marker));
    let unused = node.dir.join("unused-certs.d");
    let mirror = daemon.proxy_url();
    let host_port = origin.registry.host_port();
    let out = containerd_hosts(&[
        "--containerd-config",
        &s(&node.config),
        "--dir",
        &s(&unused),
        "--mirror",
        &mirror,
        "--backup-dir",
        &s(&backups),
        "--on-change",
        &on_change,
        &host_port,
    ]);
    let backup = backups.join(hosts.strip_prefix("/").expect("absolute"));
    assert_lines(
        &out,
        &[
            format!("backed up {} to {}", s(&hosts), s(&backup)),
            format!("wrote {}", s(&hosts)),
            "containerd config: unchanged (no restart needed)".to_owned(),
            "on-change: not run".to_owned(),
        ],
    );
    assert!(out.contains("(not --dir)"), "{out}");
    assert!(!unused.exists());
    assert!(!marker.exists(), "hosts.toml changes need no restart");
    assert_eq!(
        std::fs::read_to_string(&node.config).expect("config"),
        config
    );
    assert_eq!(std::fs::read_to_string(&backup).expect("backup"), old);

    // containerd reads the replaced file: the pull goes through the daemon.
    let containerd = node.start_containerd(&origin).await;
    containerd.pull(&origin.reference(&image)).await;
    origin.assert_served_once(&image).await;
    origin.assert_stored_by(&mirror, &image).await;
    drop(containerd);

    let out = containerd_hosts(&["--restore", "--backup-dir", &s(&backups)]);
    assert!(out.contains(&format!("restored {}", s(&hosts))), "{out}");
    assert!(out.contains("containerd config: unchanged"), "{out}");
    assert_eq!(std::fs::read_to_string(&hosts).expect("hosts"), old);
    assert_eq!(mode_of(&hosts), 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_on_change_is_run_again_by_the_next_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::new(dir.path().join("node"));
    let certs = node.dir.join("certs.d");
    let backups = node.dir.join("backup");
    let marker = node.dir.join("on-change.log");
    let run = |on_change: &str| {
        containerd_hosts_output(&[
            "--containerd-config",
            &s(&node.config),
            "--dir",
            &s(&certs),
            "--backup-dir",
            &s(&backups),
            "--on-change",
            on_change,
            "registry.test:5000",
        ])
    };
    let failed = run("echo no >&2; exit 3");
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success());
    assert!(
        stderr.contains("--on-change command \"echo no >&2; exit 3\" failed (exit status: 3)"),
        "{stderr}"
    );
    // The files are written; the restart is still owed, so the next run runs the command
    // although nothing changes, and the one after it does not.
    let on_change = format!("echo ran >> {}", s(&marker));
    let out = String::from_utf8_lossy(&run(&on_change).stdout).into_owned();
    assert!(
        out.contains("earlier run whose --on-change failed"),
        "{out}"
    );
    assert!(out.contains("unchanged: every file is already"), "{out}");
    assert_eq!(std::fs::read_to_string(&marker).expect("marker"), "ran\n");
    let again = run(&on_change);
    assert!(again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("on-change: not run"),
        "{again:?}"
    );
    assert_eq!(std::fs::read_to_string(&marker).expect("marker"), "ran\n");
}
