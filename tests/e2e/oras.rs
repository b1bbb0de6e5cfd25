//! `dfget oras://` with real parts: Debian's `docker-registry` (TLS; anonymous, htpasswd, and
//! token auth with a token server written here), artifacts pushed by oras-py (PyPI `oras`, the
//! client Singularity users script against) with the SIF media types, `dfdaemon` and
//! `scheduler` processes. The registry's access log counts what the origin served.
//!
//! Needs root (`/etc/hosts`), the Makefile's `TEST_PACKAGES` (python3-venv among them) and
//! PyPI: oras-py is installed once into a venv under the cargo target dir. A missing tool fails.

use dfdaemon::config::{DfdaemonConfig, NetAddr};
use dragonfly_common::digest::{Algorithm, Digest};
use dragonfly_common::task_id::TaskId;
use std::ffi::OsStr;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use testkit::bins::bin;
use testkit::daemon::{DaemonProcess, Program};
use testkit::net::free_port;
use testkit::registry::{PROXY_VARS, Pki, Registry, RegistryOptions, ensure_test_hosts};
use testkit::scheduler::SchedulerProcess;

const MIB: usize = 1 << 20;
const WAIT: Duration = Duration::from_secs(15);
/// oras-py version the tests push with.
const ORAS_PY: &str = "oras==0.2.43";
const SIF_LAYER: &str = "application/vnd.sylabs.sif.layer.v1.sif";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// oras-py driver: push a file as an Apptainer-style SIF artifact, print the manifest digest.
const ORAS_TOOL: &str = r#"
import argparse, json, os, sys, tempfile
import oras.client

SIF_LAYER = "application/vnd.sylabs.sif.layer.v1.sif"
SIF_CONFIG = "application/vnd.sylabs.sif.config.v1+json"

p = argparse.ArgumentParser()
p.add_argument("op", choices=["push", "pull"])
p.add_argument("ref")
p.add_argument("path")
p.add_argument("--ca", required=True)
a = p.parse_args()
c = oras.client.OrasClient(tls_verify=a.ca)
if a.op == "push":
    with tempfile.TemporaryDirectory() as d:
        cfg = os.path.join(d, "config.json")
        with open(cfg, "w") as f:
            json.dump({}, f)
        os.chdir(os.path.dirname(os.path.abspath(a.path)))
        r = c.push(target=a.ref, files=[f"{os.path.basename(a.path)}:{SIF_LAYER}"],
                   manifest_config=f"{cfg}:{SIF_CONFIG}", disable_path_validation=True)
    if r.status_code != 201:
        sys.exit(f"push answered {r.status_code}: {r.text}")
    print(json.dumps({"manifest": r.headers.get("Docker-Content-Digest")}))
else:
    print(json.dumps({"files": c.pull(target=a.ref, outdir=a.path)}))
"#;

fn sha256(data: &[u8]) -> Digest {
    Digest::of(Algorithm::Sha256, data)
}

/// The venv's python with oras-py, created once per target dir.
fn oras_python() -> PathBuf {
    testkit::python::venv(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        "oras-py",
        &[ORAS_PY],
        "import oras.client",
    )
}

/// A pushed artifact.
struct Artifact {
    data: Vec<u8>,
    blob: Digest,
    manifest: String,
}

/// The anonymous registry the tests push to, its CA, and the oras-py driver.
struct Setup {
    dir: tempfile::TempDir,
    pki: Pki,
    registry: Registry,
    /// System roots plus the test CA: `SSL_CERT_FILE` for dfget and the daemons.
    bundle: PathBuf,
    python: PathBuf,
    tool: PathBuf,
}

impl Setup {
    async fn new() -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        ensure_test_hosts(&["registry.test"]).expect("hosts");
        let pki = Pki::generate(&dir.path().join("pki"), &["registry.test"]).expect("pki");
        let registry = Registry::start(
            RegistryOptions::new(&pki)
                .dir(dir.path().join("registry"))
                .storage(dir.path().join("storage")),
        )
        .await
        .expect("registry starts");
        let bundle = pki
            .bundle(&dir.path().join("bundle.pem"), &[])
            .expect("bundle");
        let python = tokio::task::spawn_blocking(oras_python)
            .await
            .expect("venv");
        let tool = dir.path().join("oras_tool.py");
        std::fs::write(&tool, ORAS_TOOL).expect("write tool");
        Setup {
            dir,
            pki,
            registry,
            bundle,
            python,
            tool,
        }
    }

    fn oras_py(&self, args: &[&OsStr]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.python);
        c.arg(&self.tool).args(args);
        for v in PROXY_VARS {
            c.env_remove(v);
        }
        c.arg("--ca").arg(self.pki.ca_cert());
        c
    }

    /// `oras push registry.test:PORT/<repo_tag>` of `len` random bytes as a SIF image.
    async fn push(&self, repo_tag: &str, len: usize, seed: u64) -> Artifact {
        let data = testkit::data::random_bytes(seed, len);
        let file = self.dir.path().join(format!("{seed}.sif"));
        std::fs::write(&file, &data).expect("write artifact");
        let target = format!("{}/{repo_tag}", self.registry.host_port());
        let out = self
            .oras_py(&[OsStr::new("push"), OsStr::new(&target), file.as_os_str()])
            .output()
            .await
            .expect("oras-py runs");
        assert!(
            out.status.success(),
            "oras-py push {target}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_file(&file);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "oras-py output {}: {e}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        let manifest = v["manifest"].as_str().expect("manifest digest").to_string();
        // What oras-py wrote is the manifest Singularity pulls: one SIF layer.
        let (repo, tag) = repo_tag.split_once(':').expect("repo:tag");
        let (_, body) = self
            .registry
            .client()
            .expect("client")
            .get_manifest(repo, tag)
            .await
            .expect("manifest");
        let m: serde_json::Value = serde_json::from_slice(&body).expect("manifest json");
        let blob = sha256(&data);
        assert_eq!(m["layers"][0]["mediaType"], SIF_LAYER, "{m}");
        assert_eq!(m["layers"][0]["digest"], blob.to_string(), "{m}");
        Artifact {
            data,
            blob,
            manifest,
        }
    }

    fn url(&self, registry: &Registry, reference: &str) -> String {
        format!("oras://{}/{reference}", registry.host_port())
    }

    /// A registry with htpasswd auth serving the same storage.
    async fn with_basic_auth(&self) -> Registry {
        Registry::start(
            RegistryOptions::new(&self.pki)
                .dir(self.dir.path().join("registry-basic"))
                .storage(self.registry.storage_dir())
                .auth("tester", "testpass"),
        )
        .await
        .expect("htpasswd registry starts")
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A `dfdaemon` process in `dir` with `edit` applied to its config, none of the host's proxy
/// variables, and `ca_bundle` as its `SSL_CERT_FILE`.
fn daemon(
    dir: &Path,
    ca_bundle: Option<&Path>,
    edit: impl FnOnce(&mut DfdaemonConfig),
) -> DaemonProcess {
    let mut b = DaemonProcess::builder(dir)
        .program(Program::Dfdaemon)
        .multiplex(true)
        .config(edit);
    for v in PROXY_VARS {
        b = b.env_remove(v);
    }
    if let Some(bundle) = ca_bundle {
        b = b.env("SSL_CERT_FILE", bundle);
    }
    b.start()
}

/// How a dfget run finds registry credentials and the daemon.
struct Dfget<'a> {
    setup: &'a Setup,
    daemon: Option<&'a DaemonProcess>,
    docker_config: Option<PathBuf>,
    env: Vec<(&'static str, String)>,
}

impl<'a> Dfget<'a> {
    fn via(setup: &'a Setup, daemon: Option<&'a DaemonProcess>) -> Self {
        Self {
            setup,
            daemon,
            docker_config: None,
            env: Vec::new(),
        }
    }

    /// `dfget URL -O OUT --username USER --password PASSWORD`.
    async fn run_as(&self, url: &str, out: &str, user: &str, password: &str) -> Output {
        self.run(&[url, "-O", out, "--username", user, "--password", password])
            .await
    }

    async fn run(&self, args: &[&str]) -> Output {
        let mut c = tokio::process::Command::new(bin("dfget"));
        c.args(args);
        for v in PROXY_VARS {
            c.env_remove(v);
        }
        for v in ["DFGET_ORAS_USERNAME", "DFGET_ORAS_PASSWORD"] {
            c.env_remove(v);
        }
        // Never the host's own docker login: an empty config dir unless a test gives one.
        let empty = self.setup.dir.path().join("no-docker-config");
        c.env(
            "DOCKER_CONFIG",
            self.docker_config.as_deref().unwrap_or(&empty),
        );
        c.env("SSL_CERT_FILE", &self.setup.bundle);
        match self.daemon {
            Some(d) => c.env("DFGET_DAEMON_SOCK", d.socket()),
            None => c.arg("--standalone"),
        };
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c.output().await.expect("dfget runs")
    }
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "dfget failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// dfget failed (exit != 0) with every `needle` in its stderr; returns stderr.
fn fails(o: &Output, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    eprintln!("expected failure: {}", err.trim());
    assert!(
        !o.status.success(),
        "dfget should fail: {}{err}",
        String::from_utf8_lossy(&o.stdout)
    );
    for n in needles {
        assert!(err.contains(n), "{n:?} not in: {err}");
    }
    err
}

fn assert_content(path: &Path, a: &Artifact) {
    let got = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        got.len() == a.data.len() && got == a.data,
        "{} differs from what was pushed ({} vs {} bytes)",
        path.display(),
        got.len(),
        a.data.len()
    );
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oras_pull_through_the_daemon_and_again_from_local_storage_by_hardlink() {
    let s_ = Setup::new().await;
    let a = s_.push("sif/app:v1", 24 * MIB + 5, 61).await;
    let d = daemon(&s_.out("daemon"), Some(&s_.bundle), |_| {});
    let dfget = Dfget::via(&s_, Some(&d));
    let task = TaskId::for_blob(&a.blob, &format!("https://{}/", s_.registry.host_port()));

    let out1 = s_.out("app.sif");
    let url = s_.url(&s_.registry, "sif/app:v1");
    let stdout = ok(&dfget.run(&[&url, "-O", s(&out1)]).await);
    assert_content(&out1, &a);
    assert!(
        stdout.contains("through the local daemon")
            && stdout.contains(&format!("digest {} verified", a.blob)),
        "{stdout}"
    );
    let done = d.task_lines("peer task done, cost: ", &task);
    assert_eq!(done.len(), 1, "one finished task keyed by the blob digest");
    assert!(
        d.log().contains("oras artifact resolved"),
        "the daemon resolved the reference itself"
    );

    // Again, by manifest digest and with -u: the same task, served from storage, hardlinked.
    let out2 = s_.out("again.sif");
    let by_digest = s_.url(&s_.registry, &format!("sif/app@{}", a.manifest));
    ok(&dfget.run(&["-u", &by_digest, "-O", s(&out2)]).await);
    assert_content(&out2, &a);
    assert!(
        std::fs::metadata(&out2).expect("out2").nlink() >= 2,
        "with storage.multiplex the second output is a hardlink to the stored blob"
    );
    assert_eq!(
        std::fs::metadata(&out2).expect("out2").ino(),
        std::fs::metadata(&out1).expect("out1").ino(),
        "both outputs share the stored content's inode"
    );
    assert!(
        d.log()
            .lines()
            .any(|l| l.contains("task served from local storage") && l.contains(task.as_str())),
        "the second pull came from local storage"
    );
    assert_eq!(
        s_.registry
            .blob_bytes_served(&a.blob.to_string())
            .expect("log"),
        a.data.len() as u64,
        "the registry served the blob once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_registry_with_credentials_from_flags_env_and_docker_config() {
    let s_ = Setup::new().await;
    let a = s_.push("private/app:v1", 6 * MIB + 1, 62).await;
    let basic = s_.with_basic_auth().await;
    let url = s_.url(&basic, "private/app:v1");
    let d = daemon(&s_.out("daemon"), Some(&s_.bundle), |_| {});

    // No credentials: a clear error, through the daemon and without it, and no output.
    for daemon in [Some(&d), None] {
        let out = s_.out("none.sif");
        let err = fails(
            &Dfget::via(&s_, daemon).run(&[&url, "-O", s(&out)]).await,
            &["requires authentication", "--username", &basic.host_port()],
        );
        assert!(!out.exists(), "{err}");
    }

    // Flags, standalone.
    let out = s_.out("flags.sif");
    ok(&Dfget::via(&s_, None)
        .run_as(&url, s(&out), "tester", "testpass")
        .await);
    assert_content(&out, &a);

    // A docker config.json (base64 `auth`), through the daemon.
    let cfg_dir = s_.out("docker");
    std::fs::create_dir_all(&cfg_dir).expect("dir");
    std::fs::write(
        cfg_dir.join("config.json"),
        format!(
            r#"{{"auths":{{"https://{}":{{"auth":"dGVzdGVyOnRlc3RwYXNz"}}}}}}"#,
            basic.host_port()
        ),
    )
    .expect("config.json");
    let mut dfget = Dfget::via(&s_, Some(&d));
    dfget.docker_config = Some(cfg_dir);
    let out = s_.out("docker.sif");
    let stderr =
        String::from_utf8_lossy(&dfget.run(&[&url, "-O", s(&out)]).await.stderr).into_owned();
    assert_content(&out, &a);
    assert!(stderr.contains("as user \"tester\""), "{stderr}");

    // A wrong password from the environment: refused, named by user, never echoed.
    let mut dfget = Dfget::via(&s_, Some(&d));
    dfget.env = vec![
        ("DFGET_ORAS_USERNAME", "tester".into()),
        ("DFGET_ORAS_PASSWORD", "wrong-Pa55".into()),
    ];
    let out = s_.out("wrong.sif");
    let err = fails(
        &dfget.run(&[&url, "-O", s(&out), "--overwrite"]).await,
        &["refused the credentials of user \"tester\""],
    );
    assert!(!err.contains("wrong-Pa55"), "{err}");
    assert!(!out.exists());
    for log in [
        d.log(),
        std::fs::read_to_string(d.dir().join("stderr.log")).unwrap_or_default(),
    ] {
        assert!(
            !log.contains("testpass") && !log.contains("wrong-Pa55") && !log.contains("dGVzdGVy"),
            "credentials in the daemon's logs"
        );
    }
}

/// A distribution token server: grants what it is asked for to `tester:testpass`, anonymous
/// pull of `public/*`, nothing else; tokens are RS256 JWTs with the signing cert in `x5c`.
struct TokenServer {
    addr: SocketAddr,
    /// `user` (or "" for anonymous) and scope of every token request.
    seen: Arc<Mutex<Vec<(String, String)>>>,
    root_pem: PathBuf,
}

const ISSUER: &str = "dragonfly-test-issuer";
const SERVICE: &str = "registry.test";

fn b64url(data: &[u8]) -> String {
    dfdaemon::source::oras::base64_encode(data)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

impl TokenServer {
    fn start(dir: &Path) -> TokenServer {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("rsa key");
        let cert = rcgen::CertificateParams::new(vec!["token.test".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let root_pem = dir.join("token-root.pem");
        std::fs::write(&root_pem, cert.pem()).expect("root pem");
        let x5c = dfdaemon::source::oras::base64_encode(cert.der());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 65536 {
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).into_owned();
                let (status, body) = Self::answer(&head, &key, &x5c, &log);
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        TokenServer {
            addr,
            seen,
            root_pem,
        }
    }

    fn answer(
        head: &str,
        key: &rcgen::KeyPair,
        x5c: &str,
        log: &Mutex<Vec<(String, String)>>,
    ) -> (&'static str, String) {
        let target = head.split_whitespace().nth(1).unwrap_or("/");
        let url = url::Url::parse(&format!("http://t{target}")).expect("target");
        let q = |k: &str| {
            url.query_pairs()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let scope = q("scope");
        let user = head
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case("authorization")
                    .then(|| v.trim().strip_prefix("Basic ").map(str::to_string))?
            })
            .and_then(|b| dfdaemon::source::oras::base64_decode(&b))
            .map(|raw| String::from_utf8_lossy(&raw).into_owned());
        log.lock().expect("log").push((
            user.clone()
                .map(|u| u.split(':').next().unwrap_or("").to_string())
                .unwrap_or_default(),
            scope.clone(),
        ));
        if q("service") != SERVICE {
            return ("400 Bad Request", r#"{"details":"wrong service"}"#.into());
        }
        let granted = match user.as_deref() {
            Some("tester:testpass") => true,
            Some(_) => {
                return (
                    "401 Unauthorized",
                    r#"{"details":"bad credentials"}"#.into(),
                );
            }
            None => scope.starts_with("repository:public/"),
        };
        let access = match scope.splitn(3, ':').collect::<Vec<_>>().as_slice() {
            [kind, name, actions] if granted => serde_json::json!([{
                "type": kind, "name": name,
                "actions": actions.split(',').collect::<Vec<_>>(),
            }]),
            _ => serde_json::json!([]),
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": user.as_deref().and_then(|u| u.split(':').next()).unwrap_or(""),
            "aud": SERVICE, "exp": now + 300, "nbf": now - 30, "iat": now,
            "jti": format!("{:x}", rand::random::<u64>()), "access": access,
        });
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let sig = rcgen::SigningKey::sign(key, input.as_bytes()).expect("sign");
        let token = format!("{input}.{}", b64url(&sig));
        // Public scopes get the OAuth field name, the rest Docker Hub's: the tests use both.
        let field = if scope.starts_with("repository:public/") {
            "access_token"
        } else {
            "token"
        };
        (
            "200 OK",
            serde_json::json!({ field: token, "expires_in": 300 }).to_string(),
        )
    }

    /// A registry on the same storage as `setup`'s, authenticating with this server's tokens.
    async fn registry(&self, setup: &Setup) -> Registry {
        let yaml = format!(
            "auth:\n  token:\n    realm: http://{}/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            self.addr,
            self.root_pem.display()
        );
        Registry::start(
            RegistryOptions::new(&setup.pki)
                .dir(setup.dir.path().join("registry-token"))
                .storage(setup.registry.storage_dir())
                .extra_config(&yaml),
        )
        .await
        .expect("token-auth registry starts")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_flow_against_a_token_auth_registry() {
    let s_ = Setup::new().await;
    let public = s_.push("public/tool:v1", 3 * MIB, 63).await;
    let private = s_.push("team/model:v2", 5 * MIB + 9, 64).await;
    let tokens = TokenServer::start(s_.dir.path());
    let reg = tokens.registry(&s_).await;
    let d = daemon(&s_.out("daemon"), Some(&s_.bundle), |_| {});
    let dfget = Dfget::via(&s_, Some(&d));

    // Anonymous token for a public repository, through the daemon.
    let out = s_.out("public.sif");
    ok(&dfget
        .run(&[&s_.url(&reg, "public/tool:v1"), "-O", s(&out)])
        .await);
    assert_content(&out, &public);

    // A private one: anonymous tokens grant nothing, so credentials are asked for.
    let url = s_.url(&reg, "team/model:v2");
    fails(
        &dfget.run(&[&url, "-O", s(&s_.out("x.sif"))]).await,
        &["requires authentication (Bearer)", &reg.host_port()],
    );
    // With credentials: the daemon exchanges them for a token (and standalone dfget does too).
    for (daemon, name) in [(Some(&d), "daemon.sif"), (None, "alone.sif")] {
        let out = s_.out(name);
        ok(&Dfget::via(&s_, daemon)
            .run_as(&url, s(&out), "tester", "testpass")
            .await);
        assert_content(&out, &private);
    }
    let seen = tokens.seen.lock().expect("seen").clone();
    assert!(
        seen.iter()
            .any(|(u, scope)| u == "tester" && scope == "repository:team/model:pull"),
        "the token server got the credentials and the pull scope: {seen:?}"
    );
    // A wrong password: the token server refuses it.
    fails(
        &Dfget::via(&s_, Some(&d))
            .run_as(&url, s(&s_.out("y.sif")), "tester", "nope")
            .await,
        &["refused the credentials of user \"tester\""],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_tags_ambiguous_indexes_and_corrupt_blobs_fail_clearly() {
    let s_ = Setup::new().await;
    let one = s_.push("multi/app:amd64", 2 * MIB, 65).await;
    let two = s_.push("multi/app:arm64", 2 * MIB + 3, 66).await;
    let d = daemon(&s_.out("daemon"), Some(&s_.bundle), |_| {});
    let client = s_.registry.client().expect("client");
    let entry = |digest: &str, manifest: &[u8], arch: &str| {
        serde_json::json!({
            "mediaType": OCI_MANIFEST, "digest": digest, "size": manifest.len(),
            "platform": {"os": "linux", "architecture": arch},
        })
    };
    let (_, m1) = client.get_manifest("multi/app", "amd64").await.expect("m1");
    let (_, m2) = client.get_manifest("multi/app", "arm64").await.expect("m2");
    let e1 = entry(&one.manifest, &m1, "amd64");
    let e2 = entry(&two.manifest, &m2, "arm64");
    for (tag, entries) in [("both", vec![e1.clone(), e2]), ("single", vec![e1])] {
        let index =
            serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries});
        client
            .put_manifest("multi/app", tag, OCI_INDEX, index.to_string().as_bytes())
            .await
            .expect("index");
    }

    for (daemon, name) in [(Some(&d), "daemon.sif"), (None, "alone.sif")] {
        let dfget = Dfget::via(&s_, daemon);
        let out = s_.out(name);
        // A tag that does not exist.
        fails(
            &dfget
                .run(&[&s_.url(&s_.registry, "multi/app:nope"), "-O", s(&out)])
                .await,
            &["manifest nope not found", "multi/app", "MANIFEST_UNKNOWN"],
        );
        // An index with two artifacts: both named, and how to pick one.
        fails(
            &dfget
                .run(&[&s_.url(&s_.registry, "multi/app:both"), "-O", s(&out)])
                .await,
            &[
                "2 manifests",
                &one.manifest,
                &two.manifest,
                "linux/arm64",
                &format!("multi/app@{}", one.manifest),
            ],
        );
        assert!(!out.exists());
        // An index with one: followed.
        ok(&dfget
            .run(&[&s_.url(&s_.registry, "multi/app:single"), "-O", s(&out)])
            .await);
        assert_content(&out, &one);
    }

    // A blob whose stored bytes no longer match its digest: refused, nothing written or kept.
    let bad = s_.push("corrupt/app:v1", 3 * MIB, 67).await;
    s_.registry
        .corrupt_blob(&bad.blob.to_string())
        .expect("corrupt");
    let url = s_.url(&s_.registry, "corrupt/app:v1");
    for daemon in [Some(&d), None] {
        let out = s_.out("corrupt.sif");
        fails(
            &Dfget::via(&s_, daemon).run(&[&url, "-O", s(&out)]).await,
            &["digest mismatch", &bad.blob.to_string()],
        );
        assert!(!out.exists());
    }
    let task = TaskId::for_blob(&bad.blob, &format!("https://{}/", s_.registry.host_port()));
    assert!(
        d.task_lines("peer task done", task.as_str()).is_empty(),
        "a corrupt blob never finishes"
    );
    assert!(
        !d.dir().join("data").read_dir().is_ok_and(|mut r| r
            .any(|e| { e.is_ok_and(|e| e.file_name().to_string_lossy().contains(task.as_str())) })),
        "nothing of the corrupt blob is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_takes_the_oras_blob_from_the_first() {
    let s_ = Setup::new().await;
    let a = s_.push("sif/shared:v1", 40 * MIB + 11, 68).await;
    let scheduler = SchedulerProcess::start(&s_.out("scheduler"));
    let sched = |c: &mut DfdaemonConfig| {
        c.scheduler.net_addrs = vec![NetAddr {
            kind: "tcp".into(),
            addr: scheduler.addr(),
        }]
    };
    let node_a = daemon(&s_.out("a"), Some(&s_.bundle), sched);
    let node_b = daemon(&s_.out("b"), Some(&s_.bundle), sched);
    let url = s_.url(&s_.registry, "sif/shared:v1");
    let task = TaskId::for_blob(&a.blob, &format!("https://{}/", s_.registry.host_port()));

    let (out_a, out_b) = (s_.out("a.sif"), s_.out("b.sif"));
    ok(&Dfget::via(&s_, Some(&node_a))
        .run(&[&url, "-O", s(&out_a)])
        .await);
    ok(&Dfget::via(&s_, Some(&node_b))
        .run(&[&url, "-O", s(&out_b)])
        .await);
    assert_content(&out_a, &a);
    assert_content(&out_b, &a);
    s_.registry
        .wait_for_requests(WAIT, |r| {
            r.iter().any(|r| r.is_blob_get_of(&a.blob.to_string()))
        })
        .await
        .expect("origin saw the blob");
    assert_eq!(
        s_.registry
            .blob_bytes_served(&a.blob.to_string())
            .expect("log"),
        a.data.len() as u64,
        "origin blob bytes: once for two nodes"
    );
    let done = node_b.task_lines("peer task done, cost: ", &task);
    let from = done
        .first()
        .and_then(|v| v["from"].as_str())
        .unwrap_or_else(|| panic!("no finished task on b:\n{}", node_b.log()))
        .to_string();
    eprintln!("node b: pieces from {from}");
    assert!(
        !from.contains("source") && !from.is_empty(),
        "b's pieces came from a, not the registry: {from}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oras_config_section_reaches_the_daemons_registry_client() {
    let s_ = Setup::new().await;
    let a = s_.push("sif/tls:v1", 2 * MIB, 69).await;
    let url = s_.url(&s_.registry, "sif/tls:v1");
    // No SSL_CERT_FILE: the daemon does not know the registry's CA and says so.
    let strict = daemon(&s_.out("strict"), None, |_| {});
    let out = s_.out("tls.sif");
    fails(
        &Dfget::via(&s_, Some(&strict))
            .run(&[&url, "-O", s(&out)])
            .await,
        &["certificate", "registry.test"],
    );
    // insecureSkipVerify: true reaches the resolution and the blob fetch.
    let lax = daemon(&s_.out("lax"), None, |c| c.oras.insecure_skip_verify = true);
    ok(&Dfget::via(&s_, Some(&lax))
        .run(&[&url, "-O", s(&out)])
        .await);
    assert_content(&out, &a);
    // oras.proxy: every registry request goes to the proxy (here: nothing listens there).
    let dead = free_port();
    let proxied = daemon(&s_.out("proxied"), Some(&s_.bundle), |c| {
        c.oras.proxy = Some(format!("http://127.0.0.1:{dead}"));
        c.oras.dial_timeout = Duration::from_secs(2).into();
    });
    fails(
        &Dfget::via(&s_, Some(&proxied))
            .run(&[&url, "-O", s(&s_.out("p.sif"))])
            .await,
        &["cannot reach", "registry.test"],
    );
    // A proxy URL that does not parse stops the daemon at start, naming the key.
    let cfg = DaemonProcess::builder(&s_.out("badproxy"))
        .config(|c| c.oras.proxy = Some("::nope".into()))
        .write_config();
    let out = Command::new(bin("dfdaemon"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .expect("dfdaemon runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("oras.proxy"), "{err}");
}
