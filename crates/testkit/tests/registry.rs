//! The registry test kit against the real programs: docker-registry, skopeo, containerd, podman.
//!
//! These tests need root (for `/etc/hosts`) and the Debian packages in the Makefile's
//! `TEST_PACKAGES`; a missing program fails the test with an install hint, it does not skip.

use std::path::Path;
use std::time::Duration;
use testkit::registry::{
    Containerd, HostsToml, ImageSpec, Podman, Registry, RegistryOptions, TestImage,
    ensure_test_hosts, run, sha256_digest, skopeo,
};

const WAIT: Duration = Duration::from_secs(10);

fn pki(dir: &Path) -> testkit::registry::Pki {
    testkit::registry::Pki::generate(&dir.join("pki"), &["registry.test"]).expect("generate PKI")
}

/// An anonymous registry with an image of `layers` (sizes) pushed as `repo:v1`.
struct Pushed {
    tmp: tempfile::TempDir,
    pki: testkit::registry::Pki,
    reg: Registry,
    image: TestImage,
}

impl Pushed {
    async fn new(repo: &str, layers: &[u64], seed: u64) -> Pushed {
        let tmp = tempfile::tempdir().unwrap();
        let pki = pki(tmp.path());
        let reg = Registry::start(RegistryOptions::new(&pki)).await.unwrap();
        let spec = ImageSpec::new(repo, "v1", layers, seed);
        let image = reg
            .client()
            .unwrap()
            .push_new_image(&spec, &tmp.path().join("layers"))
            .await
            .unwrap();
        Pushed {
            tmp,
            pki,
            reg,
            image,
        }
    }

    /// A second registry serving the same storage, with htpasswd user `tester:testpass`.
    async fn with_auth(&self) -> Registry {
        Registry::start(
            RegistryOptions::new(&self.pki)
                .auth("tester", "testpass")
                .storage(self.reg.storage_dir()),
        )
        .await
        .unwrap()
    }

    /// A `certs.d` directory trusting the registry's CA.
    fn certs(&self) -> std::path::PathBuf {
        self.pki
            .cert_dir(&self.tmp.path().join("certs.d"), &[])
            .unwrap()
    }
}

/// `skopeo copy` of `image` from `reg` into `dir:out`, with `extra` arguments first.
async fn skopeo_copy(
    extra: &[&str],
    certs: &Path,
    reg: &Registry,
    image: &TestImage,
    out: &Path,
) -> Result<String, testkit::registry::Error> {
    let mut cmd = skopeo();
    cmd.args(["copy", "-q"])
        .args(extra)
        .arg("--src-cert-dir")
        .arg(certs)
        .arg(format!("docker://{}", image.reference(&reg.host_port())))
        .arg(format!("dir:{}", out.display()));
    run(cmd).await
}

/// The layers skopeo wrote to `out` (dir: transport, blobs named by hex digest) match the pushed ones.
fn assert_skopeo_dir_matches(out: &Path, image: &TestImage) {
    for layer in &image.layers {
        let hex = layer.digest.trim_start_matches("sha256:");
        let got =
            std::fs::read(out.join(hex)).unwrap_or_else(|e| panic!("layer {hex} in {out:?}: {e}"));
        assert_eq!(got, layer.read().unwrap(), "layer {} bytes", layer.digest);
    }
    let manifest = std::fs::read(out.join("manifest.json")).unwrap();
    assert_eq!(
        sha256_digest(&manifest),
        image.manifest_digest,
        "manifest copied unchanged"
    );
}

/// Wait until every layer of `image` has been served at least once, then check it was exactly
/// once and whole.
async fn assert_each_layer_served_once(reg: &Registry, image: &TestImage) {
    reg.assert_layers_served_once(image, WAIT).await;
    for layer in &image.layers {
        assert_eq!(
            reg.blob_gets(&layer.digest).unwrap(),
            1,
            "GETs of {}",
            layer.digest
        );
    }
}

#[tokio::test]
async fn skopeo_pulls_pushed_image_from_anonymous_and_htpasswd_registries() {
    let p = Pushed::new("e2e/skopeo", &[3000, 70_000, 300_000], 1).await;
    let (anon, image, tmp) = (&p.reg, &p.image, p.tmp.path());
    let auth = p.with_auth().await;
    assert_ne!(anon.port(), auth.port());
    assert_eq!(anon.url(), format!("https://registry.test:{}", anon.port()));
    assert_eq!(image.layers.len(), 3);
    let certs = p.certs();

    // Anonymous pull.
    let out = tmp.join("out-anon");
    skopeo_copy(&[], &certs, anon, image, &out).await.unwrap();
    assert_skopeo_dir_matches(&out, image);
    assert_each_layer_served_once(anon, image).await;
    assert_eq!(
        anon.blob_gets(&image.config.digest).unwrap(),
        1,
        "config GET"
    );

    // The htpasswd instance serves the same storage, but only with credentials.
    let err = skopeo_copy(&[], &certs, &auth, image, &tmp.join("out-denied"))
        .await
        .expect_err("pull without credentials must fail");
    assert!(err.to_string().contains("unauthorized"), "{err}");

    let out = tmp.join("out-auth");
    let creds = ["--src-creds", "tester:testpass"];
    skopeo_copy(&creds, &certs, &auth, image, &out)
        .await
        .unwrap();
    assert_skopeo_dir_matches(&out, image);
    assert_each_layer_served_once(&auth, image).await;
    // The pull without credentials was refused; the one with them got the manifest.
    let reqs = auth.requests().unwrap();
    let manifest_gets: Vec<u16> = reqs
        .iter()
        .filter(|r| r.method == "GET" && r.manifest_ref() == Some(("e2e/skopeo", "v1")))
        .map(|r| r.status)
        .collect();
    assert_eq!(manifest_gets, [401, 200], "{reqs:?}");
    assert!(
        reqs.iter().any(|r| r.user_agent.starts_with("skopeo/")),
        "{reqs:?}"
    );
    // The anonymous instance saw none of the second pull.
    assert_eq!(anon.blob_gets(&image.layers[0].digest).unwrap(), 1);
}

#[tokio::test]
async fn containerd_pulls_and_unpacks_pushed_image() {
    let p = Pushed::new("e2e/ctr", &[4096, 100_000, 1_000_000], 2).await;
    let (reg, image, tmp, pki) = (&p.reg, &p.image, &p.tmp, &p.pki);
    let auth = p.with_auth().await;
    let containerd = Containerd::start().await.unwrap();

    // --hosts-dir with the CA in hosts.toml.
    let hosts = tmp.path().join("hosts");
    HostsToml::direct(&reg.url(), &pki.ca_cert())
        .write(&hosts, &reg.host_port())
        .unwrap();
    let reference = image.reference(&reg.host_port());
    let mut pull = containerd.ctr(["images", "pull", "--hosts-dir"]);
    pull.arg(&hosts).arg(&reference);
    run(pull).await.unwrap();
    assert!(containerd.images().await.unwrap().contains(&reference));
    assert_each_layer_served_once(reg, image).await;

    // The layers were unpacked: mount the image and read the files back.
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mut mount = containerd.ctr(["images", "mount"]);
    mount.arg(&reference).arg(&mnt);
    run(mount).await.unwrap();
    let unpacked: Vec<_> = image
        .layers
        .iter()
        .map(|l| std::fs::metadata(mnt.join(&l.file_name)).map(|m| m.len()))
        .collect();
    run(containerd.ctr([
        Path::new("images").as_os_str(),
        "unmount".as_ref(),
        mnt.as_os_str(),
    ]))
    .await
    .unwrap();
    for (layer, size) in image.layers.iter().zip(unpacked) {
        assert_eq!(
            size.unwrap(),
            layer.payload_size,
            "{} in the rootfs",
            layer.file_name
        );
    }

    // --tlscacert with a bundle and --user against the htpasswd instance.
    let bundle = pki.bundle(&tmp.path().join("bundle.pem"), &[]).unwrap();
    let auth_ref = image.reference(&auth.host_port());
    let mut pull = containerd.ctr(["images", "pull", "--user", "tester:testpass", "--tlscacert"]);
    pull.arg(&bundle).arg(&auth_ref);
    run(pull).await.unwrap();
    assert!(containerd.images().await.unwrap().contains(&auth_ref));
    // Content is already in containerd's store: it fetches manifests, not layers, again.
    assert_eq!(auth.blob_gets(&image.layers[2].digest).unwrap(), 0);
}

#[tokio::test]
async fn podman_pulls_pushed_image_into_vfs_storage() {
    let p = Pushed::new("e2e/podman", &[2048, 50_000, 200_000], 3).await;
    let (reg, image) = (&p.reg, &p.image);
    let certs = p.certs();
    let podman = Podman::new().unwrap();
    let reference = image.reference(&reg.host_port());
    let mut pull = podman.command(["pull", "-q", "--cert-dir"]);
    pull.arg(&certs).arg(&reference);
    let id = run(pull).await.unwrap();
    // podman's image id is the config digest.
    assert_eq!(id.trim(), image.config.digest.trim_start_matches("sha256:"));
    assert_each_layer_served_once(reg, image).await;
}

#[tokio::test]
async fn corrupt_blob_is_served_with_wrong_bytes_and_clients_reject_it() {
    let p = Pushed::new("e2e/corrupt", &[10_000, 20_000], 4).await;
    let (reg, image) = (&p.reg, &p.image);
    let client = reg.client().unwrap();
    let bad = &image.layers[1];
    reg.corrupt_blob(&bad.digest).unwrap();
    let served = client.get_blob(&image.repo, &bad.digest).await.unwrap();
    assert_eq!(served.len() as u64, bad.size, "same length");
    assert_ne!(sha256_digest(&served), bad.digest, "wrong bytes");

    let out = p.tmp.path().join("out");
    let err = skopeo_copy(&[], &p.certs(), reg, image, &out)
        .await
        .expect_err("skopeo must reject a blob that does not match its digest");
    assert!(
        err.to_string()
            .to_lowercase()
            .contains("digest did not match"),
        "{err}"
    );

    reg.replace_blob(&image.layers[0].digest, b"short").unwrap();
    let served = client
        .get_blob(&image.repo, &image.layers[0].digest)
        .await
        .unwrap();
    assert_eq!(&served[..], b"short");
}

#[tokio::test]
async fn range_requests_add_up_in_the_log_and_a_stopped_registry_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(tmp.path());
    let reg = Registry::start(RegistryOptions::new(&pki)).await.unwrap();
    let client = reg.client().unwrap();
    let blob = client
        .push_blob(
            "e2e/range",
            "application/octet-stream",
            testkit::data::random_bytes(5, 100_000),
        )
        .await
        .unwrap();
    let http = reqwest::Client::builder()
        .tls_certs_only([
            reqwest::Certificate::from_pem(&std::fs::read(pki.ca_cert()).unwrap()).unwrap(),
        ])
        .no_proxy()
        .build()
        .unwrap();
    let url = format!("{}/v2/e2e/range/blobs/{}", reg.url(), blob.digest);
    let mut got = Vec::new();
    for range in ["bytes=0-39999", "bytes=40000-"] {
        let resp = http.get(&url).header("Range", range).send().await.unwrap();
        assert_eq!(resp.status(), 206);
        got.extend_from_slice(&resp.bytes().await.unwrap());
    }
    assert_eq!(sha256_digest(&got), blob.digest);
    let reqs = reg
        .wait_for_requests(WAIT, |r| {
            r.iter().filter(|r| r.is_blob_get_of(&blob.digest)).count() == 2
        })
        .await
        .unwrap();
    assert!(reqs.iter().any(|r| r.status == 206 && r.bytes == 40_000));
    assert_eq!(reg.blob_gets(&blob.digest).unwrap(), 2);
    assert_eq!(reg.blob_bytes_served(&blob.digest).unwrap(), 100_000);

    // An origin that goes away refuses connections; its log stays readable.
    let mut reg = reg;
    reg.stop();
    assert!(
        client
            .status_of(&format!("{}/v2/", reg.url()))
            .await
            .is_err()
    );
    assert_eq!(reg.blob_gets(&blob.digest).unwrap(), 2);
}

#[test]
fn test_hosts_are_added_once_by_concurrent_callers() {
    let names: Vec<String> = (0..6)
        .map(|i| format!("concurrent-{i}.dragonfly.test"))
        .collect();
    std::thread::scope(|s| {
        for n in &names {
            s.spawn(move || ensure_test_hosts(&["registry.test", n]).unwrap());
        }
    });
    ensure_test_hosts(&["registry.test"]).unwrap();
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap();
    let marked: Vec<&str> = hosts
        .lines()
        .filter(|l| l.ends_with("# dragonfly-tests"))
        .collect();
    assert_eq!(marked.len(), 1, "{hosts}");
    for n in &names {
        assert!(
            marked[0].split_whitespace().any(|w| w == n),
            "{n} missing: {hosts}"
        );
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(n.as_str(), 443))
            .unwrap()
            .next()
            .unwrap();
        assert!(addr.ip().is_loopback(), "{n} -> {addr}");
    }
}
