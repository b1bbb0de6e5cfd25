//! One-off setup commands around the daemon: `dfdaemon gen-ca` (a CA for `proxy.hijackHTTPS`)
//! and `dfdaemon containerd-hosts` (containerd `hosts.toml` files that pull through the mirror).

use crate::config::{BasicAuth, ConfigError, DfdaemonConfig};
use crate::proxy::basic_credentials;
use crate::proxy::ca::{CaError, CertAuthority};
use std::path::{Path, PathBuf};

/// Where containerd looks for per-registry host files (`config_path` in its CRI config).
pub const DEFAULT_CONTAINERD_CERTS_DIR: &str = "/etc/containerd/certs.d";

/// The daemon's registry mirror, as containerd reaches it.
pub const DEFAULT_MIRROR: &str = "http://127.0.0.1:65001";

/// Common name of a CA made by `gen-ca`.
pub const DEFAULT_CA_NAME: &str = "Dragonfly dfdaemon hijack CA";

/// Header telling the mirror which registry a request is for (`registryMirror.dynamic`).
pub const REGISTRY_HEADER: &str = "X-Dragonfly-Registry";

/// Header carrying `proxy.basicAuth` credentials to the mirror. Not `Authorization`: that one
/// is the registry's (containerd puts its registry token there, and the mirror passes it on),
/// while `Proxy-Authorization` is the mirror's own and never goes upstream.
pub const CREDENTIALS_HEADER: &str = "Proxy-Authorization";

/// Options of `dfdaemon gen-ca`.
#[derive(clap::Args, Debug, Clone)]
pub struct GenCaArgs {
    /// Directory to write ca.crt and ca.key to (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Common name of the CA (what users see when they inspect it).
    #[arg(long, value_name = "CN", default_value = DEFAULT_CA_NAME)]
    pub name: String,
}

/// Options of `dfdaemon containerd-hosts`.
#[derive(clap::Args, Debug, Clone)]
pub struct ContainerdHostsArgs {
    /// containerd's host-config directory (its `config_path`).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_CONTAINERD_CERTS_DIR)]
    pub dir: PathBuf,
    /// The dfdaemon registry mirror containerd should pull through.
    #[arg(long, value_name = "URL", default_value = DEFAULT_MIRROR)]
    pub mirror: String,
    /// Replace existing hosts.toml files.
    #[arg(long)]
    pub force: bool,
    /// The daemon's config file: when it sets proxy.basicAuth, each hosts.toml makes containerd
    /// send those credentials to the mirror (a Proxy-Authorization header; the file is then
    /// written with mode 0600).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Registries to route through the mirror: `docker.io`, `registry.test:5443`,
    /// `https://ghcr.io`, `http://insecure.local:5000`.
    #[arg(value_name = "REGISTRY", required = true)]
    pub registries: Vec<String>,
}

/// Why a setup command failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A `REGISTRY` argument is not `[http[s]://]host[:port]`.
    #[error("registry {value:?}: {reason}")]
    Registry {
        /// The argument as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The `--mirror` URL is not usable.
    #[error("mirror {value:?}: {reason}")]
    Mirror {
        /// The argument as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file exists and `--force` was not given.
    #[error("{path} already exists (use --force to replace it)")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// A file or directory could not be written.
    #[error("cannot write {path}: {reason}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The CA could not be generated or written.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// `--config` could not be loaded.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// A CA written by [`gen_ca`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedCa {
    /// The certificate (mode 0644).
    pub cert: PathBuf,
    /// The private key (mode 0600).
    pub key: PathBuf,
}

/// Generate a CA into `out/ca.crt` and `out/ca.key`; never overwrites.
pub fn gen_ca(out: &Path, common_name: &str) -> Result<GeneratedCa, SetupError> {
    // Absolute paths, so the printed config works from any working directory.
    let out = std::path::absolute(out).map_err(|e| SetupError::Write {
        path: out.to_path_buf(),
        reason: e.to_string(),
    })?;
    let (cert, key) = CertAuthority::write_new(&out, common_name)?;
    Ok(GeneratedCa { cert, key })
}

/// The dfdaemon config that uses a CA written by [`gen_ca`].
pub fn hijack_config_snippet(ca: &GeneratedCa) -> String {
    format!(
        "proxy:\n  hijackHTTPS:\n    cert: {}\n    key: {}\n    hosts:\n      - regx: your.private.registry  # hosts to intercept (regex)\n",
        yaml_string(&ca.cert.to_string_lossy()),
        yaml_string(&ca.key.to_string_lossy()),
    )
}

/// `s` as a YAML scalar, quoted only when it has to be.
fn yaml_string(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+@,=".contains(c))
        && !s.starts_with(['-', '@', ',', '=']);
    if plain {
        s.to_owned()
    } else {
        // A JSON string is a valid double-quoted YAML scalar.
        serde_json::Value::from(s).to_string()
    }
}

/// A registry containerd pulls from, as its hosts directory names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    /// The directory under containerd's `config_path`: `host[:port]` as in image references.
    pub dir_name: String,
    /// The upstream (`server` in hosts.toml): `scheme://host[:port]`.
    pub server: String,
}

impl Registry {
    /// Parse `[http://|https://]host[:port][/]`; `docker.io` maps to the server
    /// `https://registry-1.docker.io`, as containerd resolves Docker Hub.
    pub fn parse(value: &str) -> Result<Self, SetupError> {
        let bad = |reason: &str| SetupError::Registry {
            value: value.to_owned(),
            reason: reason.to_owned(),
        };
        if value.is_empty() {
            return Err(bad(
                "empty; give host[:port], e.g. docker.io or registry.test:5443",
            ));
        }
        if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("contains whitespace"));
        }
        let (scheme, rest) = match value.split_once("://") {
            Some((s, rest)) if s.eq_ignore_ascii_case("https") => ("https", rest),
            Some((s, rest)) if s.eq_ignore_ascii_case("http") => ("http", rest),
            Some((s, _)) => {
                return Err(bad(&format!("scheme {s:?} is not http or https")));
            }
            None => ("https", value),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        if authority.contains(['/', '\\']) {
            return Err(bad(
                "has a path; give host[:port] only (containerd routes by registry host)",
            ));
        }
        if authority.contains(['?', '#', '@', '%', '"', '\'']) {
            return Err(bad("not a host[:port]"));
        }
        if authority.ends_with(':') {
            return Err(bad("empty port"));
        }
        let url = url::Url::parse(&format!("{scheme}://{authority}/"))
            .map_err(|e| bad(&format!("not a host[:port]: {e}")))?;
        let host = url.host_str().unwrap_or_default();
        if host.is_empty() || host.trim_matches('.').is_empty() {
            return Err(bad("no host"));
        }
        if url.path() != "/" {
            return Err(bad("not a host[:port]"));
        }
        let dir_name = authority.to_owned();
        let server = if dir_name.eq_ignore_ascii_case("docker.io") {
            format!("{scheme}://registry-1.docker.io")
        } else {
            format!("{scheme}://{authority}")
        };
        Ok(Registry { dir_name, server })
    }

    /// The hosts.toml that sends this registry's pulls through `mirror` (a URL from
    /// [`parse_mirror`]), telling the mirror the upstream in [`REGISTRY_HEADER`] and, with
    /// `credentials`, sending them in [`CREDENTIALS_HEADER`].
    pub fn hosts_toml(&self, mirror: &str, credentials: Option<&BasicAuth>) -> String {
        let mut toml = format!(
            "server = \"{server}\"\n\
             \n\
             [host.\"{mirror}\"]\n  \
               capabilities = [\"pull\", \"resolve\"]\n  \
               [host.\"{mirror}\".header]\n    \
                 {REGISTRY_HEADER} = [\"{server}\"]\n",
            server = self.server,
        );
        if let Some(auth) = credentials {
            // Base64 has no character a TOML basic string must escape.
            toml.push_str(&format!(
                "    {CREDENTIALS_HEADER} = [\"{}\"]\n",
                basic_credentials(auth)
            ));
        }
        toml
    }
}

/// Check `--mirror` and return it normalised (no trailing slash).
pub fn parse_mirror(value: &str) -> Result<String, SetupError> {
    let bad = |reason: String| SetupError::Mirror {
        value: value.to_owned(),
        reason,
    };
    let url = url::Url::parse(value).map_err(|e| bad(format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!(
            "scheme {:?} is not http or https",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host".into()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("a query or fragment is not allowed".into()));
    }
    // Url escapes quotes and spaces, so the result is safe inside a TOML string.
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// The mirror credentials of the daemon config at `path`: its `proxy.basicAuth`, if set.
/// Load warnings are returned for the caller to print.
pub fn credentials_from_config(
    path: &Path,
) -> Result<(Option<BasicAuth>, Vec<String>), SetupError> {
    let loaded = DfdaemonConfig::load(path)?;
    Ok((loaded.value.proxy.basic_auth, loaded.warnings))
}

/// Write `dir/<registry>/hosts.toml` for every registry; returns the files written. With
/// `credentials` (`proxy.basicAuth`), containerd sends them to the mirror, and the files are
/// readable by their owner only (mode 0600).
///
/// Every argument is checked before anything is written. Existing files are replaced only
/// with `force` (atomically, via a rename).
pub fn containerd_hosts(
    dir: &Path,
    mirror: &str,
    registries: &[String],
    force: bool,
    credentials: Option<&BasicAuth>,
) -> Result<Vec<PathBuf>, SetupError> {
    let mirror = parse_mirror(mirror)?;
    let mut parsed: Vec<Registry> = Vec::with_capacity(registries.len());
    for value in registries {
        let registry = Registry::parse(value)?;
        // The same registry twice (e.g. docker.io and https://docker.io) is written once.
        if !parsed.iter().any(|r| r.dir_name == registry.dir_name) {
            parsed.push(registry);
        }
    }
    let file_of = |r: &Registry| dir.join(&r.dir_name).join("hosts.toml");
    if !force
        && let Some(path) = parsed
            .iter()
            .map(file_of)
            .find(|p| p.symlink_metadata().is_ok())
    {
        return Err(SetupError::Exists { path });
    }
    let mut written = Vec::with_capacity(parsed.len());
    for registry in &parsed {
        let path = file_of(registry);
        let mode = if credentials.is_some() { 0o600 } else { 0o644 };
        write_replacing(
            &path,
            registry.hosts_toml(&mirror, credentials).as_bytes(),
            mode,
        )?;
        written.push(path);
    }
    Ok(written)
}

/// Write `data` to `path` (with file `mode`) through a temporary file and a rename, so
/// containerd never reads half a file.
fn write_replacing(path: &Path, data: &[u8], mode: u32) -> Result<(), SetupError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let failed = |p: &Path, e: std::io::Error| SetupError::Write {
        path: p.to_path_buf(),
        reason: e.to_string(),
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| failed(parent, e))?;
    }
    let tmp = path.with_extension("toml.tmp");
    let _ = std::fs::remove_file(&tmp);
    // Created with `mode` (less what the umask takes), never wider for a moment.
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| f.write_all(data));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(failed(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        failed(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(value: &str) -> (String, String) {
        let r = Registry::parse(value).unwrap_or_else(|e| panic!("{value}: {e}"));
        (r.dir_name, r.server)
    }

    #[test]
    fn registries_parse_to_dir_and_server() {
        let cases = [
            ("docker.io", "docker.io", "https://registry-1.docker.io"),
            (
                "https://docker.io/",
                "docker.io",
                "https://registry-1.docker.io",
            ),
            (
                "registry.test:5443",
                "registry.test:5443",
                "https://registry.test:5443",
            ),
            ("https://ghcr.io", "ghcr.io", "https://ghcr.io"),
            (
                "HTTP://insecure.local:5000",
                "insecure.local:5000",
                "http://insecure.local:5000",
            ),
            ("10.0.0.1:5000", "10.0.0.1:5000", "https://10.0.0.1:5000"),
            ("[fd00::1]:5000", "[fd00::1]:5000", "https://[fd00::1]:5000"),
            (
                "registry.test:443",
                "registry.test:443",
                "https://registry.test:443",
            ),
        ];
        for (value, dir, server) in cases {
            assert_eq!(reg(value), (dir.to_owned(), server.to_owned()), "{value}");
        }
    }

    #[test]
    fn bad_registries_are_named() {
        for value in [
            "",
            " docker.io",
            "docker io",
            "docker.io/library",
            "https://ghcr.io/owner",
            "ftp://ghcr.io",
            "https://",
            "..",
            "host:",
            "host:99999",
            "user@host",
            "host?x=1",
            "a\"b",
        ] {
            let err = Registry::parse(value).unwrap_err();
            assert!(
                matches!(&err, SetupError::Registry { value: v, .. } if v == value),
                "{value}"
            );
            assert!(err.to_string().contains(&format!("{value:?}")), "{err}");
        }
    }

    #[test]
    fn hosts_toml_has_containerd_shape() {
        let r = Registry::parse("registry.test:5443").unwrap();
        assert_eq!(
            r.hosts_toml("http://127.0.0.1:65001", None),
            "server = \"https://registry.test:5443\"\n\
             \n\
             [host.\"http://127.0.0.1:65001\"]\n  \
               capabilities = [\"pull\", \"resolve\"]\n  \
               [host.\"http://127.0.0.1:65001\".header]\n    \
                 X-Dragonfly-Registry = [\"https://registry.test:5443\"]\n"
        );
    }

    #[test]
    fn credentials_go_into_the_mirror_header_table_and_the_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let auth = BasicAuth {
            username: "alice".into(),
            password: "s3cret:\"x\"".into(),
        };
        let dir = tempfile::tempdir().unwrap();
        let args = ["registry.test:5443".to_owned()];
        let written =
            containerd_hosts(dir.path(), DEFAULT_MIRROR, &args, false, Some(&auth)).unwrap();
        let text = std::fs::read_to_string(&written[0]).unwrap();
        // Parsed back as containerd reads it.
        let doc: toml_edit::DocumentMut = text.parse().unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(doc["server"].as_str(), Some("https://registry.test:5443"));
        let host = &doc["host"][DEFAULT_MIRROR];
        let header = &host["header"];
        let first = |key: &str| {
            header[key]
                .as_array()
                .and_then(|a| a.get(0))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        assert_eq!(
            first(CREDENTIALS_HEADER).as_deref(),
            Some(basic_credentials(&auth).as_str())
        );
        assert_eq!(
            first(REGISTRY_HEADER).as_deref(),
            Some("https://registry.test:5443")
        );
        assert_eq!(
            crate::source::oras::base64_decode(
                basic_credentials(&auth).trim_start_matches("Basic ")
            )
            .as_deref(),
            Some(&b"alice:s3cret:\"x\""[..])
        );
        let mode = std::fs::metadata(&written[0]).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        // Without credentials: no header.
        let plain = containerd_hosts(dir.path(), DEFAULT_MIRROR, &args, true, None).unwrap();
        let text = std::fs::read_to_string(&plain[0]).unwrap();
        assert!(!text.contains(CREDENTIALS_HEADER), "{text}");
    }

    #[test]
    fn mirrors_are_checked_and_normalised() {
        assert_eq!(
            parse_mirror("http://127.0.0.1:65001/").unwrap(),
            "http://127.0.0.1:65001"
        );
        assert_eq!(
            parse_mirror("http://node:65001/p").unwrap(),
            "http://node:65001/p"
        );
        for bad in ["127.0.0.1:65001", "ftp://x", "http://x/?a", "nope"] {
            let err = parse_mirror(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn containerd_hosts_checks_everything_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let args = ["ghcr.io".to_owned(), "bad/path".to_owned()];
        assert!(containerd_hosts(dir.path(), DEFAULT_MIRROR, &args, false, None).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        let args = ["docker.io".to_owned(), "https://docker.io".to_owned()];
        let written = containerd_hosts(dir.path(), DEFAULT_MIRROR, &args, false, None).unwrap();
        assert_eq!(written, vec![dir.path().join("docker.io/hosts.toml")]);
        let err = containerd_hosts(dir.path(), DEFAULT_MIRROR, &args, false, None).unwrap_err();
        assert!(
            matches!(err, SetupError::Exists { ref path } if *path == written[0]),
            "{err}"
        );
        containerd_hosts(dir.path(), "http://10.0.0.2:65001", &args, true, None).unwrap();
        let text = std::fs::read_to_string(&written[0]).unwrap();
        assert!(text.contains("[host.\"http://10.0.0.2:65001\"]"), "{text}");
        assert!(!dir.path().join("docker.io/hosts.toml.tmp").exists());
    }

    #[test]
    fn snippet_quotes_only_odd_paths() {
        let ca = GeneratedCa {
            cert: "/etc/dragonfly/ca.crt".into(),
            key: "/tmp/my dir: x/ca.key".into(),
        };
        let snippet = hijack_config_snippet(&ca);
        assert!(
            snippet.contains("cert: /etc/dragonfly/ca.crt\n"),
            "{snippet}"
        );
        assert!(
            snippet.contains("key: \"/tmp/my dir: x/ca.key\"\n"),
            "{snippet}"
        );
        let parsed: serde_json::Value = yaml_serde::from_str(&snippet).unwrap();
        assert_eq!(
            parsed["proxy"]["hijackHTTPS"]["key"],
            "/tmp/my dir: x/ca.key"
        );
    }
}
