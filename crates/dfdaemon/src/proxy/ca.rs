//! The certificate authority behind HTTPS hijacking (`proxy.hijackHTTPS`).
//!
//! The proxy terminates TLS for intercepted registry hosts with a leaf certificate minted on
//! the fly for the requested name and signed by this CA; clients trust the CA (served as
//! `GET /ca.crt`). Leaves are cached per name, and concurrent misses for one name mint once.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

/// How many leaf certificates (one per host name) stay cached.
pub const LEAF_CACHE_CAPACITY: u64 = 10_000;

/// How long a cached leaf is reused; far below its validity, so a cached leaf never expires.
pub const LEAF_CACHE_TTL: Duration = Duration::from_secs(12 * 3600);

/// Validity of a minted leaf (browsers refuse server certificates valid for over 398 days).
const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 86_400);

/// Validity of a generated CA.
const CA_VALIDITY: Duration = Duration::from_secs(3650 * 86_400);

/// Back-dating of every certificate, so clients with a slow clock accept it.
const BACKDATE: Duration = Duration::from_secs(86_400);

/// ALPN offered by intercepted connections: the proxy speaks HTTP/1.1 to clients.
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// File names [`CertAuthority::write_new`] writes.
pub const CERT_FILE: &str = "ca.crt";
/// See [`CERT_FILE`].
pub const KEY_FILE: &str = "ca.key";

/// Why a CA could not be loaded, created or used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CaError {
    /// A file could not be read (missing, unreadable).
    #[error("cannot read {what} {path}")]
    Read {
        /// "CA certificate" or "CA private key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error (shared: the leaf cache clones its errors).
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The certificate file holds no usable PEM certificate.
    #[error("CA certificate {path} is not a PEM X.509 certificate: {reason}")]
    NotPem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The certificate is not allowed to sign other certificates.
    #[error("CA certificate {path} is not a CA: {reason}")]
    NotCa {
        /// The file.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// The key file holds no usable private key.
    #[error("CA private key {path} is not usable: {reason}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The private key belongs to another certificate.
    #[error("CA private key {key} does not match the CA certificate {cert}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// [`CertAuthority::write_new`] found a file in the way.
    #[error("{path} already exists; refusing to overwrite it")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// A file could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The OS error (shared: the leaf cache clones its errors).
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The common name of a CA to generate is empty.
    #[error("cannot generate a CA {common_name:?}: the common name is empty")]
    EmptyName {
        /// The CA's common name.
        common_name: String,
    },
    /// A CA could not be generated.
    #[error("cannot generate a CA {common_name:?}")]
    Generate {
        /// The CA's common name.
        common_name: String,
        /// The certificate library's error.
        #[source]
        source: rcgen::Error,
    },
    /// No leaf certificate could be issued for a host name.
    #[error("cannot issue a certificate for {name:?}: {reason}")]
    Issue {
        /// The requested name.
        name: String,
        /// Why.
        reason: String,
    },
}

/// A CA that mints per-host server certificates; cheap to clone (shared state).
#[derive(Clone)]
pub struct CertAuthority {
    inner: Arc<Inner>,
}

struct Inner {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
    leaves: moka::future::Cache<String, Arc<ServerConfig>>,
    minted: AtomicUsize,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs; the issuer's Debug omits it too.
        f.debug_struct("CertAuthority")
            .field("issuer", &self.inner.issuer)
            .field("cached_leaves", &self.inner.leaves.entry_count())
            .finish()
    }
}

impl CertAuthority {
    /// Load a CA from a PEM certificate and a PEM private key (PKCS#8 `PRIVATE KEY`, PKCS#1
    /// `RSA PRIVATE KEY` or SEC1 `EC PRIVATE KEY`, as `openssl genrsa`/`ecparam` write them).
    ///
    /// The first certificate in `cert` is the CA; it must carry `basicConstraints CA:TRUE`
    /// and, when it has a `keyUsage`, `keyCertSign`.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, CaError> {
        let cert_bytes = std::fs::read(cert).map_err(|e| CaError::Read {
            what: "CA certificate",
            path: cert.to_path_buf(),
            source: Arc::new(e),
        })?;
        let not_pem = |reason: String| CaError::NotPem {
            path: cert.to_path_buf(),
            reason,
        };
        let cert_der = CertificateDer::pem_slice_iter(&cert_bytes)
            .next()
            .ok_or_else(|| not_pem("no \"BEGIN CERTIFICATE\" block found".into()))?
            .map_err(|e| not_pem(e.to_string()))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der).map_err(|e| {
            not_pem(format!(
                "the PEM block does not hold a DER X.509 certificate: {e}"
            ))
        })?;
        if !parsed.is_ca() {
            return Err(CaError::NotCa {
                path: cert.to_path_buf(),
                reason: "it lacks basicConstraints CA:TRUE (is it a server certificate?)".into(),
            });
        }
        if !parsed.validity().is_valid() {
            return Err(CaError::NotCa {
                path: cert.to_path_buf(),
                reason: format!(
                    "it is not valid now (valid from {} to {}); clients would refuse every certificate it signs",
                    parsed.validity().not_before,
                    parsed.validity().not_after
                ),
            });
        }
        let spki = parsed.public_key().raw.to_vec();
        let cert_pem = first_pem_block(&cert_bytes)
            .ok_or_else(|| not_pem("no \"BEGIN CERTIFICATE\" block found".into()))?;

        let key_pair = read_key(key)?;
        if key_pair.subject_public_key_info() != spki {
            return Err(CaError::KeyMismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            });
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key_pair)
            .map_err(|e| not_pem(format!("cannot use it as an issuer: {e}")))?;
        if !issuer.key_usages().is_empty()
            && !issuer.key_usages().contains(&KeyUsagePurpose::KeyCertSign)
        {
            return Err(CaError::NotCa {
                path: cert.to_path_buf(),
                reason: "its keyUsage lacks keyCertSign".into(),
            });
        }
        Ok(Self::new(issuer, cert_der.into_owned(), cert_pem))
    }

    /// A fresh self-signed CA (ECDSA P-256, valid for 10 years, path length 0).
    pub fn generate(common_name: &str) -> Result<Self, CaError> {
        Ok(Self::generate_with_key(common_name)?.0)
    }

    /// [`Self::generate`], also returning the private key as PKCS#8 PEM.
    fn generate_with_key(common_name: &str) -> Result<(Self, String), CaError> {
        let failed = |source: rcgen::Error| CaError::Generate {
            common_name: common_name.to_owned(),
            source,
        };
        if common_name.trim().is_empty() {
            return Err(CaError::EmptyName {
                common_name: common_name.to_owned(),
            });
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(failed)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Dragonfly dfdaemon");
        // Path length 0: this CA signs leaves only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial());
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + CA_VALIDITY).into();
        let cert = params.self_signed(&key).map_err(failed)?;
        let key_pem = key.serialize_pem();
        let cert_pem = cert.pem();
        let issuer = Issuer::new(params, key);
        Ok((Self::new(issuer, cert.der().clone(), cert_pem), key_pem))
    }

    /// Generate a CA named `common_name` and write it to `dir/ca.crt` (mode 0644) and
    /// `dir/ca.key` (created with mode 0600); returns both paths.
    ///
    /// Creates `dir` when missing; refuses to overwrite either file.
    pub fn write_new(dir: &Path, common_name: &str) -> Result<(PathBuf, PathBuf), CaError> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        for path in [&cert_path, &key_path] {
            // symlink_metadata: a dangling symlink is in the way too.
            if path.symlink_metadata().is_ok() {
                return Err(CaError::Exists { path: path.clone() });
            }
        }
        let (ca, key_pem) = Self::generate_with_key(common_name)?;
        std::fs::create_dir_all(dir).map_err(|e| CaError::Write {
            path: dir.to_path_buf(),
            source: Arc::new(e),
        })?;
        write_new_file(&key_path, key_pem.as_bytes(), 0o600)?;
        if let Err(e) = write_new_file(&cert_path, ca.cert_pem().as_bytes(), 0o644) {
            // A key without its certificate is useless; leave the directory as it was.
            let _ = std::fs::remove_file(&key_path);
            return Err(e);
        }
        Ok((cert_path, key_path))
    }

    fn new(
        issuer: Issuer<'static, KeyPair>,
        cert_der: CertificateDer<'static>,
        cert_pem: String,
    ) -> Self {
        CertAuthority {
            inner: Arc::new(Inner {
                issuer,
                cert_der,
                cert_pem,
                provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
                leaves: moka::future::Cache::builder()
                    .max_capacity(LEAF_CACHE_CAPACITY)
                    .time_to_live(LEAF_CACHE_TTL)
                    .build(),
                minted: AtomicUsize::new(0),
            }),
        }
    }

    /// The CA certificate as PEM (what `GET /ca.crt` serves and clients install).
    pub fn cert_pem(&self) -> &str {
        &self.inner.cert_pem
    }

    /// The CA certificate as DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.inner.cert_der
    }

    /// How many leaf certificates this CA has minted (cache misses).
    pub fn minted(&self) -> usize {
        self.inner.minted.load(Ordering::Relaxed)
    }

    /// A TLS server config presenting a certificate for `name` (a DNS name, or an IP literal,
    /// IPv6 with or without brackets; no port), signed by this CA, with ALPN `http/1.1`.
    ///
    /// Cached per name; concurrent calls for a name not cached yet mint one certificate.
    pub async fn server_config(&self, name: &str) -> Result<Arc<ServerConfig>, CaError> {
        let subject = LeafName::parse(name)?;
        self.inner
            .leaves
            .try_get_with(subject.to_string(), async { self.mint(&subject) })
            .await
            .map_err(|e| (*e).clone())
    }

    /// Issue a leaf for `subject` and wrap it in a server config.
    fn mint(&self, subject: &LeafName) -> Result<Arc<ServerConfig>, CaError> {
        let name = subject.to_string();
        let failed = |reason: String| CaError::Issue {
            name: name.clone(),
            reason,
        };
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| failed(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, name.as_str());
        params.subject_alt_names = vec![match subject {
            LeafName::Ip(ip) => SanType::IpAddress(*ip),
            LeafName::Dns(dns) => SanType::DnsName(
                dns.as_str()
                    .try_into()
                    .map_err(|e: rcgen::Error| failed(e.to_string()))?,
            ),
        }];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + LEAF_VALIDITY).into();
        let leaf = params
            .signed_by(&key, &self.inner.issuer)
            .map_err(|e| failed(e.to_string()))?;
        let chain = vec![leaf.der().clone(), self.inner.cert_der.clone()];
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = ServerConfig::builder_with_provider(self.inner.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| failed(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(|e| failed(e.to_string()))?;
        config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        self.inner.minted.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(name = %name, "minted a hijack certificate");
        Ok(Arc::new(config))
    }
}

/// The subject of a leaf: what the client asked for, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LeafName {
    Ip(IpAddr),
    Dns(String),
}

impl LeafName {
    fn parse(raw: &str) -> Result<Self, CaError> {
        let bad = |reason: &str| CaError::Issue {
            name: raw.to_owned(),
            reason: reason.to_owned(),
        };
        let unbracketed = raw
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or(raw);
        if unbracketed.is_empty() {
            return Err(bad("the name is empty"));
        }
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Ok(LeafName::Ip(ip));
        }
        let dns = unbracketed.to_ascii_lowercase();
        match rustls::pki_types::ServerName::try_from(dns.as_str()) {
            Ok(rustls::pki_types::ServerName::DnsName(_)) => Ok(LeafName::Dns(dns)),
            _ => Err(bad(
                "not a DNS name or IP address (give the host without a port)",
            )),
        }
    }
}

impl std::fmt::Display for LeafName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeafName::Ip(ip) => ip.fmt(f),
            LeafName::Dns(dns) => f.write_str(dns),
        }
    }
}

/// A positive 127-bit serial number (RFC 5280 allows up to 20 octets).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// Read a PEM private key of any common encoding.
fn read_key(path: &Path) -> Result<KeyPair, CaError> {
    let bytes = std::fs::read(path).map_err(|e| CaError::Read {
        what: "CA private key",
        path: path.to_path_buf(),
        source: Arc::new(e),
    })?;
    let bad = |reason: String| CaError::BadKey {
        path: path.to_path_buf(),
        reason,
    };
    let der = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        if bytes.windows(9).any(|w| w == b"ENCRYPTED") {
            bad("the key is encrypted; decrypt it with `openssl pkey -in KEY -out KEY.plain`".into())
        } else {
            bad(format!(
                "no \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\" block ({e})"
            ))
        }
    })?;
    KeyPair::try_from(&der).map_err(|e| {
        bad(format!(
            "unsupported key ({e}); use RSA, ECDSA P-256/P-384/P-521 or Ed25519"
        ))
    })
}

/// The first `CERTIFICATE` PEM block of `bytes`, verbatim, ending in a newline.
fn first_pem_block(bytes: &[u8]) -> Option<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let text = std::str::from_utf8(bytes).ok()?;
    let start = text.find(BEGIN)?;
    let end = start + text[start..].find(END)? + END.len();
    let block = text[start..end].replace("\r\n", "\n");
    Some(block + "\n")
}

/// Create `path` (which must not exist) with `mode` and write `data` to it.
fn write_new_file(path: &Path, data: &[u8], mode: u32) -> Result<(), CaError> {
    use std::os::unix::fs::OpenOptionsExt;
    let failed = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            CaError::Exists {
                path: path.to_path_buf(),
            }
        } else {
            CaError::Write {
                path: path.to_path_buf(),
                source: Arc::new(e),
            }
        }
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(failed)?;
    file.write_all(data)
        .and_then(|()| file.sync_all())
        .map_err(failed)
}

#[cfg(test)]
mod tests {
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
}
