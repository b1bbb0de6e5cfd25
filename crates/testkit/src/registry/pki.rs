//! A throwaway CA and a server certificate, and the trust files each client wants.

use super::error::{Error, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, date_time_ymd,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// System roots on Debian (package `ca-certificates`).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A CA and a server certificate signed by it, written as PEM files into one directory:
/// `ca.pem`, `ca.key`, `server.pem`, `server.key`.
///
/// The server certificate is valid for the given DNS names, `localhost`, 127.0.0.1 and ::1.
/// The CA key is written too, so an intercepting proxy under test can sign with the same CA.
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// Generate a fresh CA and a server certificate for `dns_names` into `dir` (created if
    /// missing; existing files are replaced). Keys are ECDSA P-256.
    pub fn generate(dir: &Path, dns_names: &[&str]) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(Error::io("create dir", dir))?;
        let cert_err = |what: &str| {
            let what = what.to_string();
            move |source| Error::Cert { what, source }
        };

        let ca_key = KeyPair::generate().map_err(cert_err("CA key"))?;
        let mut ca = CertificateParams::default();
        ca.distinguished_name.push(
            DnType::CommonName,
            format!("dragonfly-tests CA {}", unique_suffix()),
        );
        ca.distinguished_name
            .push(DnType::OrganizationName, "dragonfly-tests");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca.not_before = date_time_ymd(2020, 1, 1);
        ca.not_after = date_time_ymd(2099, 12, 31);
        let ca_cert = ca.self_signed(&ca_key).map_err(cert_err("CA"))?;

        let server_key = KeyPair::generate().map_err(cert_err("server key"))?;
        let mut names: Vec<String> = dns_names.iter().map(|s| s.to_string()).collect();
        names.push("localhost".into());
        let mut server =
            CertificateParams::new(names.clone()).map_err(cert_err(&names.join(",")))?;
        server.subject_alt_names.extend([
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ]);
        server.distinguished_name = rcgen::DistinguishedName::new();
        server.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        server.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server.use_authority_key_identifier_extension = true;
        server.not_before = date_time_ymd(2020, 1, 1);
        server.not_after = date_time_ymd(2099, 12, 31);
        let issuer = Issuer::new(ca, ca_key);
        let server_cert = server
            .signed_by(&server_key, &issuer)
            .map_err(cert_err(&names.join(",")))?;

        let pki = Self {
            dir: dir.to_path_buf(),
        };
        write(&pki.ca_cert(), ca_cert.pem().as_bytes())?;
        write(&pki.ca_key(), issuer.key().serialize_pem().as_bytes())?;
        write(&pki.server_cert(), server_cert.pem().as_bytes())?;
        write(&pki.server_key(), server_key.serialize_pem().as_bytes())?;
        Ok(pki)
    }

    /// The directory holding the PEM files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate (`ca.pem`): what clients must trust.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The CA private key (`ca.key`), PKCS#8 PEM.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    /// The server certificate (`server.pem`).
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    /// The server private key (`server.key`), PKCS#8 PEM.
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    /// A directory of `*.crt` files (this CA plus `extra_cas`) for skopeo `--src-cert-dir` and
    /// podman `--cert-dir`. Returns `dir`.
    pub fn cert_dir(&self, dir: &Path, extra_cas: &[&Path]) -> Result<PathBuf> {
        let mut cas = vec![self.ca_cert()];
        cas.extend(extra_cas.iter().map(|p| p.to_path_buf()));
        write_cert_dir(dir, &cas.iter().map(PathBuf::as_path).collect::<Vec<_>>())
    }

    /// A PEM bundle of the system roots, this CA and `extra_cas`, for `SSL_CERT_FILE` (Go clients,
    /// containerd) or `ctr --tlscacert`. Returns `path`.
    pub fn bundle(&self, path: &Path, extra_cas: &[&Path]) -> Result<PathBuf> {
        let mut cas = vec![self.ca_cert()];
        cas.extend(extra_cas.iter().map(|p| p.to_path_buf()));
        write_ca_bundle(path, &cas.iter().map(PathBuf::as_path).collect::<Vec<_>>())
    }
}

/// Write `cas` as `ca-0.crt`, `ca-1.crt`, ... into `dir` (created if missing). Returns `dir`.
pub fn write_cert_dir(dir: &Path, cas: &[&Path]) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(Error::io("create dir", dir))?;
    for (i, ca) in cas.iter().enumerate() {
        let to = dir.join(format!("ca-{i}.crt"));
        std::fs::copy(ca, &to).map_err(Error::io("copy CA into cert dir", *ca))?;
    }
    Ok(dir.to_path_buf())
}

/// Write the system roots (`/etc/ssl/certs/ca-certificates.crt`, if present) followed by `cas`
/// into one PEM file at `path`. Returns `path`.
pub fn write_ca_bundle(path: &Path, cas: &[&Path]) -> Result<PathBuf> {
    let mut out = match std::fs::read(SYSTEM_ROOTS) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io("read", SYSTEM_ROOTS)(e)),
    };
    for ca in cas {
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        out.extend(std::fs::read(ca).map_err(Error::io("read", *ca))?);
    }
    write(path, &out)?;
    Ok(path.to_path_buf())
}

fn write(path: &Path, data: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(Error::io("create dir", parent))?;
    }
    std::fs::write(path, data).map_err(Error::io("write", path))
}

/// Distinguishes CAs of concurrent tests in error messages and trust stores.
fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{}-{nanos}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_pem_files_and_trust_helpers() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = Pki::generate(&tmp.path().join("pki"), &["registry.test", "other.test"]).unwrap();
        for f in [pki.ca_cert(), pki.server_cert()] {
            let s = std::fs::read_to_string(&f).unwrap();
            assert!(s.starts_with("-----BEGIN CERTIFICATE-----"), "{f:?}");
        }
        for f in [pki.ca_key(), pki.server_key()] {
            assert!(
                std::fs::read_to_string(&f).unwrap().contains("PRIVATE KEY"),
                "{f:?}"
            );
        }
        let extra = tmp.path().join("extra.pem");
        std::fs::write(
            &extra,
            "-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let dir = pki
            .cert_dir(&tmp.path().join("certs.d"), &[&extra])
            .unwrap();
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["ca-0.crt", "ca-1.crt"]);
        let bundle = pki
            .bundle(&tmp.path().join("bundle.pem"), &[&extra])
            .unwrap();
        let b = std::fs::read_to_string(bundle).unwrap();
        let ca = std::fs::read_to_string(pki.ca_cert()).unwrap();
        assert!(b.contains(&ca));
        assert!(b.ends_with("-----END CERTIFICATE-----\n"));
    }
}
