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
#[path = "ca_tests.rs"]
mod tests;
