//! Dragonfly's alternative spellings, read in a second pass and folded into the one effective
//! place: top-level `registryMirror` / `proxies` / `hijackHTTPS` into `proxy.*`, and
//! `download.downloadGRPC.unixListen` into `download.unixListen`.

use super::{DfdaemonConfig, HijackHttps, ProxyRule, RegistryMirror, UnixListen};
use dragonfly_common::config::{ConfigError, LoadOptions, load_yaml_with};
use serde::Deserialize;

/// Keys read by this pass; the main pass does not warn about them, this one does.
pub(super) const ALTERNATIVE_KEYS: &[&str] = &[
    "registryMirror",
    "proxies",
    "hijackHTTPS",
    "download.downloadGRPC",
];

/// The alternative spellings only; every other key is the main pass's business.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Alternatives {
    registry_mirror: Option<RegistryMirror>,
    proxies: Option<Vec<ProxyRule>>,
    #[serde(rename = "hijackHTTPS")]
    hijack_https: Option<HijackHttps>,
    download: AltDownload,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AltDownload {
    #[serde(rename = "downloadGRPC")]
    download_grpc: AltDownloadGrpc,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct AltDownloadGrpc {
    unix_listen: Option<UnixListen>,
}

/// Which key each effective value came from, for later messages.
pub(super) struct Origins {
    pub(super) registry_mirror: String,
    pub(super) proxies: String,
    pub(super) hijack_https: String,
}

/// Reads the alternative spellings of `text` and folds them into `config`. When a value is
/// written both ways, our own spelling wins and a warning names the ignored key.
pub(super) fn fold_alternatives(
    config: &mut DfdaemonConfig,
    text: &str,
    source: &str,
    unsupported: &[&str],
    warnings: &mut Vec<String>,
) -> Result<Origins, ConfigError> {
    // The main pass has parsed this text already, so there is no syntax error left to find.
    let options = LoadOptions {
        unsupported,
        handled_elsewhere: &[],
        report_only_under: ALTERNATIVE_KEYS,
    };
    let alt = load_yaml_with::<Alternatives>(text, source, &options)?;
    warnings.extend(alt.warnings);
    let alt = alt.value;
    let document: yaml_serde::Value = yaml_serde::from_str(text).unwrap_or_default();
    let written = |path: &[&str]| has_key(&document, path);

    let registry_mirror = fold(
        alt.registry_mirror,
        &mut config.proxy.registry_mirror,
        written(&["proxy", "registryMirror"]),
        ("registryMirror", "proxy.registryMirror"),
        source,
        warnings,
    );
    let proxies = fold(
        alt.proxies,
        &mut config.proxy.proxies,
        written(&["proxy", "proxies"]),
        ("proxies", "proxy.proxies"),
        source,
        warnings,
    );
    let hijack_https = fold(
        alt.hijack_https.map(Some),
        &mut config.proxy.hijack_https,
        written(&["proxy", "hijackHTTPS"]),
        ("hijackHTTPS", "proxy.hijackHTTPS"),
        source,
        warnings,
    );
    fold(
        alt.download.download_grpc.unix_listen,
        &mut config.download.unix_listen,
        written(&["download", "unixListen"]),
        ("download.downloadGRPC.unixListen", "download.unixListen"),
        source,
        warnings,
    );
    Ok(Origins {
        registry_mirror,
        proxies,
        hijack_https,
    })
}

/// Moves `alternative` into `ours` unless our key was written too. Returns the key path the
/// effective value came from.
fn fold<T>(
    alternative: Option<T>,
    ours: &mut T,
    ours_written: bool,
    (alt_key, our_key): (&str, &str),
    source: &str,
    warnings: &mut Vec<String>,
) -> String {
    match alternative {
        Some(_) if ours_written => {
            let kind = if alt_key.contains('.') {
                "key"
            } else {
                "top-level key"
            };
            warnings.push(format!(
                "{kind} \"{alt_key}\" in {source} is ignored because \"{our_key}\" is also set"
            ));
            our_key.to_owned()
        }
        Some(value) => {
            *ours = value;
            alt_key.to_owned()
        }
        None => our_key.to_owned(),
    }
}

fn has_key(document: &yaml_serde::Value, path: &[&str]) -> bool {
    let mut node = document;
    for key in path {
        match node.get(*key) {
            Some(next) => node = next,
            None => return false,
        }
    }
    true
}
