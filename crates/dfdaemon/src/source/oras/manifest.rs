//! Manifests and indexes: which blob of an artifact is the file to download.

use serde::Deserialize;
use std::collections::BTreeMap;

/// OCI image manifest (what `oras push` writes).
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest v2 schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The OCI artifact manifest of OCI 1.1 release candidates (`blobs` instead of `layers`).
pub const OCI_ARTIFACT_MANIFEST: &str = "application/vnd.oci.artifact.manifest.v1+json";
/// Singularity / Apptainer image layer.
pub const SIF_LAYER: &str = "application/vnd.sylabs.sif.layer.v1.sif";

/// `Accept` for a manifest GET: every kind we can read.
pub const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.artifact.manifest.v1+json";

/// Annotation holding a layer's file name (set by oras push).
const TITLE: &str = "org.opencontainers.image.title";

/// A content descriptor.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// What the blob is.
    #[serde(default)]
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Length in bytes.
    #[serde(default)]
    pub size: u64,
    /// Artifact type (index entries of OCI 1.1).
    #[serde(default)]
    pub artifact_type: Option<String>,
    /// Platform (index entries).
    #[serde(default)]
    pub platform: Option<Platform>,
    /// Annotations, e.g. the file name.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// The platform of an index entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Platform {
    /// e.g. `linux`.
    #[serde(default)]
    pub os: String,
    /// e.g. `amd64`.
    #[serde(default)]
    pub architecture: String,
    /// e.g. `v8`.
    #[serde(default)]
    pub variant: Option<String>,
}

impl Descriptor {
    /// The file name oras recorded, if any.
    pub fn title(&self) -> Option<&str> {
        self.annotations.get(TITLE).map(String::as_str)
    }

    /// One line naming the entry, for error messages.
    pub fn describe(&self) -> String {
        let mut s = format!("{} ({}", self.digest, self.media_type);
        if let Some(t) = &self.artifact_type {
            s.push_str(&format!(", artifact {t}"));
        }
        if let Some(p) = &self.platform {
            s.push_str(&format!(", {}/{}", p.os, p.architecture));
            if let Some(v) = &p.variant {
                s.push_str(&format!("/{v}"));
            }
        }
        if let Some(t) = self.title() {
            s.push_str(&format!(", {t:?}"));
        }
        s.push_str(&format!(", {} B)", self.size));
        s
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    blobs: Option<Vec<Descriptor>>,
}

/// A parsed manifest document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Document {
    /// An index or manifest list: the manifests it points at.
    Index(Vec<Descriptor>),
    /// An image (or artifact) manifest: its layers (or blobs).
    Manifest(Vec<Descriptor>),
}

/// Parse a manifest body; `content_type` (the response's) wins over the body's `mediaType`.
pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Document, String> {
    let raw: Raw =
        serde_json::from_slice(body).map_err(|e| format!("the manifest is not valid JSON: {e}"))?;
    let ct = content_type
        .map(|c| c.split(';').next().unwrap_or(c).trim().to_string())
        .filter(|c| !c.is_empty() && c != "application/json" && c != "text/plain")
        .or(raw.media_type.clone());
    let index = match ct.as_deref() {
        Some(OCI_INDEX | DOCKER_MANIFEST_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST | OCI_ARTIFACT_MANIFEST) => false,
        Some(other) => {
            if raw.manifests.is_none() && raw.layers.is_none() && raw.blobs.is_none() {
                return Err(format!("unsupported manifest media type {other:?}"));
            }
            raw.manifests.is_some()
        }
        None => raw.manifests.is_some(),
    };
    if index {
        return Ok(Document::Index(raw.manifests.unwrap_or_default()));
    }
    Ok(Document::Manifest(
        raw.layers.or(raw.blobs).unwrap_or_default(),
    ))
}

/// The index entry to follow: the only one.
pub fn pick_manifest(entries: &[Descriptor]) -> Result<&Descriptor, String> {
    match entries {
        [one] => Ok(one),
        [] => Err("the index lists no manifests".to_string()),
        many => Err(format!(
            "the index lists {} manifests: {}",
            many.len(),
            many.iter()
                .map(Descriptor::describe)
                .collect::<Vec<_>>()
                .join("; ")
        )),
    }
}

/// The layer holding the artifact: the only SIF layer, else the only layer.
pub fn pick_layer(layers: &[Descriptor]) -> Result<&Descriptor, String> {
    let sif: Vec<&Descriptor> = layers
        .iter()
        .filter(|l| l.media_type == SIF_LAYER)
        .collect();
    match (sif.as_slice(), layers) {
        ([one], _) => Ok(one),
        ([], [one]) => Ok(one),
        ([], []) => Err("the manifest has no layers".to_string()),
        ([], many) => Err(format!(
            "the manifest has {} layers and none is a SIF image ({SIF_LAYER}): {}",
            many.len(),
            list(many.iter())
        )),
        (several, _) => Err(format!(
            "the manifest has {} SIF layers: {}",
            several.len(),
            list(several.iter().copied())
        )),
    }
}

fn list<'a>(d: impl Iterator<Item = &'a Descriptor>) -> String {
    d.map(Descriptor::describe).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(media: &str, n: u8) -> String {
        format!(
            r#"{{"mediaType":"{media}","digest":"sha256:{}","size":{n}}}"#,
            format!("{n:02x}").repeat(32)
        )
    }

    #[test]
    fn oras_push_manifest_picks_the_sif_layer() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
               "config":{},"layers":[{},{}]}}"#,
            d("application/vnd.sylabs.sif.config.v1+json", 1),
            d("text/plain", 2),
            d(SIF_LAYER, 3),
        );
        let Document::Manifest(layers) = parse(Some(OCI_MANIFEST), body.as_bytes()).unwrap() else {
            panic!("a manifest")
        };
        assert_eq!(pick_layer(&layers).unwrap().size, 3);
        // Without a SIF layer, two layers are ambiguous and both are named.
        let e = pick_layer(&layers[..1]).map(|l| l.size);
        assert_eq!(e, Ok(2), "the only layer");
        let two = vec![layers[0].clone(), layers[0].clone()];
        let e = pick_layer(&two).unwrap_err();
        assert!(e.contains("2 layers") && e.contains("text/plain"), "{e}");
        let e = pick_layer(&[layers[1].clone(), layers[1].clone()]).unwrap_err();
        assert!(e.contains("2 SIF layers"), "{e}");
        assert!(pick_layer(&[]).unwrap_err().contains("no layers"));
    }

    #[test]
    fn indexes_and_content_types() {
        let body = format!(
            r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
            d(OCI_MANIFEST, 7)
        );
        let doc = parse(Some("application/json"), body.as_bytes()).unwrap();
        let Document::Index(m) = doc else {
            panic!("an index")
        };
        assert_eq!(pick_manifest(&m).unwrap().size, 7);
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST_LIST}","manifests":[{},{}]}}"#,
            d(OCI_MANIFEST, 7),
            d(OCI_MANIFEST, 8)
        );
        let Document::Index(m) = parse(None, body.as_bytes()).unwrap() else {
            panic!("a list")
        };
        let e = pick_manifest(&m).unwrap_err();
        assert!(
            e.contains("2 manifests") && e.contains(&"07".repeat(32)),
            "{e}"
        );
        let art = format!(r#"{{"blobs":[{}]}}"#, d(SIF_LAYER, 9));
        assert!(matches!(
            parse(Some(OCI_ARTIFACT_MANIFEST), art.as_bytes()).unwrap(),
            Document::Manifest(b) if b.len() == 1
        ));
        assert!(parse(Some(OCI_MANIFEST), b"<html>").is_err());
        assert!(
            parse(
                Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
                b"{}"
            )
            .unwrap_err()
            .contains("unsupported")
        );
    }
}
