//! Tests of the local CA: minting, caching, loading, and real TLS handshakes.

use super::*;
use rustls::pki_types::ServerName;
use std::process::Command;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TLS client that trusts only `ca` connects as `name` to a server using `server`;
/// returns the ALPN the client negotiated.
async fn handshake(
    server: Arc<ServerConfig>,
    ca: &CertificateDer<'static>,
    name: &str,
) -> Result<Option<Vec<u8>>, std::io::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("CA is a valid trust anchor");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let server_name = ServerName::try_from(name.to_owned()).expect("valid server name");
    let (c, s) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let server_task = tokio::spawn(async move {
        let mut tls = acceptor.accept(s).await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        tls.write_all(&buf).await?;
        tls.shutdown().await?;
        Ok::<_, std::io::Error>(())
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let mut tls = connector.connect(server_name, c).await?;
    tls.write_all(b"ping").await?;
    let mut echoed = [0u8; 4];
    tls.read_exact(&mut echoed).await?;
    assert_eq!(&echoed, b"ping");
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    server_task.await.expect("server task")?;
    Ok(alpn)
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed for this test");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn generated_ca_signs_a_leaf_a_client_trusts() {
    let ca = CertAuthority::generate("test CA").unwrap();
    let config = ca.server_config("Registry.Test").await.unwrap();
    let alpn = handshake(config, ca.cert_der(), "registry.test")
        .await
        .unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
}

#[tokio::test]
async fn leaf_is_refused_for_another_name_or_another_ca() {
    let ca = CertAuthority::generate("test CA").unwrap();
    let other = CertAuthority::generate("other CA").unwrap();
    let config = ca.server_config("a.test").await.unwrap();
    assert!(
        handshake(config.clone(), ca.cert_der(), "b.test")
            .await
            .is_err()
    );
    assert!(handshake(config, other.cert_der(), "a.test").await.is_err());
}

#[tokio::test]
async fn ip_literals_get_ip_sans() {
    let ca = CertAuthority::generate("test CA").unwrap();
    for (asked, connect) in [("127.0.0.1", "127.0.0.1"), ("[::1]", "::1"), ("::1", "::1")] {
        let config = ca.server_config(asked).await.unwrap();
        let alpn = handshake(config, ca.cert_der(), connect).await.unwrap();
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]), "{asked}");
    }
    // "[::1]" and "::1" are one name.
    assert_eq!(ca.minted(), 2);
}

#[tokio::test]
async fn bad_names_are_refused_by_name() {
    let ca = CertAuthority::generate("test CA").unwrap();
    for bad in ["", "[]", "registry.test:443", "a b", "-.."] {
        let err = ca.server_config(bad).await.unwrap_err();
        assert!(
            matches!(&err, CaError::Issue { name, .. } if name == bad),
            "{bad}: {err}"
        );
    }
    assert_eq!(ca.minted(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_for_one_name_mint_once() {
    let ca = CertAuthority::generate("test CA").unwrap();
    let calls = (0..32).map(|_| {
        let ca = ca.clone();
        tokio::spawn(async move { ca.server_config("same.test").await.unwrap() })
    });
    let configs = futures::future::join_all(calls).await;
    let first = configs[0].as_ref().unwrap();
    assert!(
        configs
            .iter()
            .all(|c| Arc::ptr_eq(c.as_ref().unwrap(), first))
    );
    assert_eq!(ca.minted(), 1);
    ca.server_config("other.test").await.unwrap();
    assert_eq!(ca.minted(), 2);
}

#[tokio::test]
async fn load_round_trips_write_new() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("new");
    let (cert, key) = CertAuthority::write_new(&out, "dfdaemon CA").unwrap();
    assert_eq!(
        (cert.clone(), key.clone()),
        (out.join("ca.crt"), out.join("ca.key"))
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&cert) & 0o600, 0o600);
    let ca = CertAuthority::load(&cert, &key).unwrap();
    assert_eq!(ca.cert_pem(), std::fs::read_to_string(&cert).unwrap());
    let config = ca.server_config("registry.test").await.unwrap();
    handshake(config, ca.cert_der(), "registry.test")
        .await
        .unwrap();
}

#[test]
fn write_new_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("ca.key");
    std::fs::write(&key, "precious").unwrap();
    let err = CertAuthority::write_new(dir.path(), "x").unwrap_err();
    assert!(
        matches!(&err, CaError::Exists { path } if *path == key),
        "{err}"
    );
    assert!(err.to_string().contains(&key.display().to_string()));
    assert_eq!(std::fs::read_to_string(&key).unwrap(), "precious");
    assert!(!dir.path().join("ca.crt").exists());
}

#[tokio::test]
async fn load_accepts_openssl_keys() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca_ext = [
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ];
    // PKCS#1 RSA ("BEGIN RSA PRIVATE KEY"), PKCS#8 RSA, and SEC1 EC with EC PARAMETERS first.
    openssl(&["genrsa", "-traditional", "-out", "rsa1.key", "2048"], d);
    openssl(&["genrsa", "-out", "rsa8.key", "2048"], d);
    openssl(
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-out",
            "ec.key",
        ],
        d,
    );
    assert!(
        std::fs::read_to_string(d.join("rsa1.key"))
            .unwrap()
            .contains("BEGIN RSA PRIVATE KEY")
    );
    for key in ["rsa1.key", "rsa8.key", "ec.key"] {
        let crt = format!("{key}.crt");
        let mut args = vec![
            "req",
            "-x509",
            "-new",
            "-key",
            key,
            "-subj",
            "/O=Test/CN=openssl CA",
            "-days",
            "30",
            "-out",
            &crt,
        ];
        args.extend(ca_ext);
        openssl(&args, d);
        let ca = CertAuthority::load(&d.join(&crt), &d.join(key))
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        let config = ca.server_config("registry.test").await.unwrap();
        handshake(config, ca.cert_der(), "registry.test")
            .await
            .unwrap_or_else(|e| panic!("{key}: {e}"));
    }
}

#[test]
fn load_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cert, key) = CertAuthority::write_new(&d.join("a"), "a").unwrap();
    let (_, other_key) = CertAuthority::write_new(&d.join("b"), "b").unwrap();
    let garbage = d.join("garbage.pem");
    std::fs::write(&garbage, "hello\n").unwrap();
    let missing = d.join("missing.crt");
    // A self-signed server certificate: valid PEM, not a CA.
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["leaf.test".to_owned()])
        .unwrap()
        .self_signed(&leaf_key)
        .unwrap();
    let (leaf_crt, leaf_key_path) = (d.join("leaf.crt"), d.join("leaf.key"));
    std::fs::write(&leaf_crt, leaf.pem()).unwrap();
    std::fs::write(&leaf_key_path, leaf_key.serialize_pem()).unwrap();
    // A CA that expired yesterday.
    let old_key = KeyPair::generate().unwrap();
    let mut old = CertificateParams::new(Vec::<String>::new()).unwrap();
    old.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    old.not_before = rcgen::date_time_ymd(2020, 1, 1);
    old.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let old = old.self_signed(&old_key).unwrap();
    let (old_crt, old_key_path) = (d.join("old.crt"), d.join("old.key"));
    std::fs::write(&old_crt, old.pem()).unwrap();
    std::fs::write(&old_key_path, old_key.serialize_pem()).unwrap();

    let cases: [(&Path, &Path, &Path, &str); 7] = [
        (&missing, &key, &missing, "cannot read CA certificate"),
        (&cert, &missing, &missing, "cannot read CA private key"),
        (&garbage, &key, &garbage, "not a PEM X.509 certificate"),
        (&cert, &garbage, &garbage, "not usable"),
        (&leaf_crt, &leaf_key_path, &leaf_crt, "is not a CA"),
        (&cert, &other_key, &other_key, "does not match"),
        (&old_crt, &old_key_path, &old_crt, "not valid now"),
    ];
    for (c, k, named, what) in cases {
        let err = CertAuthority::load(c, k).unwrap_err().to_string();
        assert!(err.contains(&named.display().to_string()), "{err}");
        assert!(err.contains(what), "{err}");
    }
}
