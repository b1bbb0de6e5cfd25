//! One-off setup commands around the daemon: `dfdaemon gen-ca` (a CA for `proxy.hijackHTTPS`)
//! and `dfdaemon containerd-hosts` (containerd `hosts.toml` files that pull through the mirror,
//! containerd's `config_path` pointed at them when unset, backed up and restorable).

pub mod containerd;
pub mod install;

pub use install::{Event, Manifest, Outcome};

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
    /// containerd's host-config directory. With --containerd-config, used only when its
    /// config_path is unset (then config_path is set to it).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_CONTAINERD_CERTS_DIR)]
    pub dir: PathBuf,
    /// The dfdaemon registry mirror containerd should pull through.
    #[arg(long, value_name = "URL", default_value = DEFAULT_MIRROR)]
    pub mirror: String,
    /// Replace existing files that are not ours without a backup (or ours, edited since).
    #[arg(long, conflicts_with = "restore")]
    pub force: bool,
    /// The daemon's config file: when it sets proxy.basicAuth, each hosts.toml makes containerd
    /// send those credentials to the mirror (a Proxy-Authorization header; the file is then
    /// written with mode 0600).
    #[arg(long, value_name = "FILE", conflicts_with = "restore")]
    pub config: Option<PathBuf>,
    /// containerd's config.toml: its CRI registry config_path is honoured when set (the hosts
    /// files go into its first directory); when unset it is set to --dir (a containerd config
    /// change: see --on-change). A missing file is created with only that setting.
    #[arg(long, value_name = "FILE", conflicts_with = "restore")]
    pub containerd_config: Option<PathBuf>,
    /// Copy every file replaced that is not ours into DIR (once), and keep there a manifest of
    /// what was written, for --restore. Existing files are then replaced without --force.
    #[arg(long, value_name = "DIR")]
    pub backup_dir: Option<PathBuf>,
    /// Run `sh -c CMD` when containerd's config.toml changed on disk in this run (e.g. restart
    /// containerd); hosts.toml changes need none: containerd reads them on every pull.
    #[arg(long, value_name = "CMD")]
    pub on_change: Option<String>,
    /// Undo a previous run: put back what the manifest in --backup-dir lists, delete what had
    /// no original, then remove the manifest.
    #[arg(long, requires = "backup_dir")]
    pub restore: bool,
    /// Registries to route through the mirror: `docker.io`, `registry.test:5443`,
    /// `https://ghcr.io`, `http://insecure.local:5000`.
    #[arg(
        value_name = "REGISTRY",
        required_unless_present = "restore",
        conflicts_with = "restore"
    )]
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
    /// A file exists, is not ours, and neither `--backup-dir` nor `--force` was given.
    #[error("{path} already exists (give --backup-dir to back it up and replace it, or --force)")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// A file we wrote was changed since (its sha256 is not the manifest's).
    #[error(
        "{path} was changed since dfdaemon wrote it (use --force to replace it; its original backup is kept)"
    )]
    Changed {
        /// The file.
        path: PathBuf,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// containerd's config.toml (or a file it imports) cannot be used.
    #[error("containerd config {path}: {reason}")]
    ContainerdConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        reason: String,
    },
    /// containerd's config sets the deprecated registry mirrors/TLS configs, with which its CRI
    /// plugin refuses `config_path` (it does not load at all).
    #[error(
        "containerd config {path}: key {key} is set; containerd's CRI plugin does not load with it \
         and config_path together: move it to a hosts.toml and remove it from the file"
    )]
    DeprecatedRegistry {
        /// The file.
        path: PathBuf,
        /// The key, dotted.
        key: String,
    },
    /// The manifest in the backup directory cannot be used.
    #[error("manifest {path}: {reason}")]
    Manifest {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// `--on-change` failed.
    #[error("--on-change command {command:?} {reason}")]
    OnChange {
        /// The command.
        command: String,
        /// How it failed.
        reason: String,
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

/// What `dfdaemon containerd-hosts` is to do.
#[derive(Debug, Clone, Copy)]
pub struct HostsOptions<'a> {
    /// `--dir`.
    pub dir: &'a Path,
    /// `--mirror`.
    pub mirror: &'a str,
    /// The registries.
    pub registries: &'a [String],
    /// `--force`.
    pub force: bool,
    /// `proxy.basicAuth` of `--config`.
    pub credentials: Option<&'a BasicAuth>,
    /// `--containerd-config`.
    pub containerd_config: Option<&'a Path>,
    /// `--backup-dir`.
    pub backup_dir: Option<&'a Path>,
}

/// What `dfdaemon containerd-hosts` did.
#[derive(Debug, Clone)]
pub struct HostsReport {
    /// The directory the hosts files went into.
    pub hosts_dir: PathBuf,
    /// Files written, unchanged, backed up, restored or removed.
    pub outcome: Outcome,
    /// Things to tell the user (which config_path was honoured, ...).
    pub notes: Vec<String>,
}

fn absolute(path: &Path) -> Result<PathBuf, SetupError> {
    std::path::absolute(path).map_err(|e| SetupError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Write `<hosts dir>/<registry>/hosts.toml` for every registry; with `containerd_config`, the
/// hosts dir is its `config_path` (set to `dir` when unset). With `credentials`
/// (`proxy.basicAuth`), containerd sends them to the mirror, and the files are readable by their
/// owner only (mode 0600).
///
/// Every argument and file is checked before anything is written. A file identical to ours is
/// left alone; one that is not ours is replaced only with `backup_dir` (copied there first) or
/// `force`.
pub fn containerd_hosts(opts: &HostsOptions<'_>) -> Result<HostsReport, SetupError> {
    let mirror = parse_mirror(opts.mirror)?;
    let mut parsed: Vec<Registry> = Vec::with_capacity(opts.registries.len());
    for value in opts.registries {
        let registry = Registry::parse(value)?;
        // The same registry twice (e.g. docker.io and https://docker.io) is written once.
        if !parsed.iter().any(|r| r.dir_name == registry.dir_name) {
            parsed.push(registry);
        }
    }
    let dir = absolute(opts.dir)?;
    let backup_dir = opts.backup_dir.map(absolute).transpose()?;
    let mut notes = Vec::new();
    let mut config_file = None;
    let hosts_dir = match opts.containerd_config {
        None => dir,
        Some(config) => {
            let config = absolute(config)?;
            let text = match std::fs::read_to_string(&config) {
                Ok(text) => Some(text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    return Err(SetupError::Read {
                        path: config,
                        reason: e.to_string(),
                    });
                }
            };
            match containerd::plan(&config, text.as_deref(), &dir)? {
                containerd::HostsDir::Configured {
                    dir: found,
                    list,
                    file,
                } => {
                    notes.push(format!(
                        "{} sets the CRI registry config_path{}: hosts files go to {}{}",
                        file.display(),
                        list.map(|l| format!(" to {l:?}")).unwrap_or_default(),
                        found.display(),
                        if found == dir { "" } else { " (not --dir)" },
                    ));
                    absolute(&found)?
                }
                containerd::HostsDir::Set { text, created } => {
                    if created {
                        notes.push(format!(
                            "{} does not exist: writing one that sets only the CRI registry config_path",
                            config.display()
                        ));
                    }
                    config_file = Some(install::Planned {
                        path: config,
                        data: text.into_bytes(),
                        mode: None,
                        kind: install::Kind::ContainerdConfig,
                    });
                    dir
                }
            }
        }
    };
    let mode = if opts.credentials.is_some() {
        0o600
    } else {
        0o644
    };
    let mut planned = Vec::with_capacity(parsed.len() + 1);
    for registry in &parsed {
        planned.push(install::Planned {
            path: hosts_dir.join(&registry.dir_name).join("hosts.toml"),
            data: registry.hosts_toml(&mirror, opts.credentials).into_bytes(),
            mode: Some(mode),
            kind: install::Kind::HostsToml,
        });
    }
    // Hosts files first: containerd restarted for the config then finds them in place.
    planned.extend(config_file);
    let outcome = install::apply(&planned, backup_dir.as_deref(), opts.force)?;
    Ok(HostsReport {
        hosts_dir,
        outcome,
        notes,
    })
}

/// Undo `containerd_hosts` runs recorded in `backup_dir`; `None` when there is nothing to undo
/// (no such directory, or no manifest in it).
pub fn containerd_restore(backup_dir: &Path) -> Result<Option<Outcome>, SetupError> {
    install::restore(&absolute(backup_dir)?)
}

/// Run `sh -c command` (after containerd's config changed), failing when it does.
pub fn run_on_change(command: &str) -> Result<(), SetupError> {
    let failed = |reason: String| SetupError::OnChange {
        command: command.to_owned(),
        reason,
    };
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .status()
        .map_err(|e| failed(format!("did not start: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(failed(format!("failed ({status})")))
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
