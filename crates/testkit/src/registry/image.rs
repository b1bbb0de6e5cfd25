//! Deterministic OCI test images: random-data layers as uncompressed tars, a config, a manifest.
//!
//! The same [`ImageSpec`] gives the same bytes and digests on every machine, so benchmarks and
//! tests can name content by digest. Layers are written to files and streamed when pushed.

use super::error::{Error, Result};
use super::{OCI_CONFIG, OCI_LAYER_TAR, OCI_MANIFEST};
use crate::data::random_bytes;
use bytes::Bytes;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Tar block size.
const BLOCK: u64 = 512;
/// Random data is generated in chunks of this size (each from its own sub-seed).
const CHUNK: u64 = 1 << 20;
/// Largest size the 11 octal digits of a ustar header can hold.
const MAX_TAR_FILE: u64 = (1 << 33) - 1;

/// What image to build.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Repository (`test/app`).
    pub repo: String,
    /// Tag (`v1`).
    pub tag: String,
    /// Size of the data file in each layer; each layer blob is that plus 1.5-2 KiB of tar framing.
    pub layer_sizes: Vec<u64>,
    /// Seed of the layer contents. Same seed and sizes, same layers.
    pub seed: u64,
    /// OCI architecture in the config (default: this machine's, so containerd unpacks it).
    pub architecture: String,
}

impl ImageSpec {
    /// An image for this machine's architecture.
    pub fn new(repo: &str, tag: &str, layer_sizes: &[u64], seed: u64) -> Self {
        Self {
            repo: repo.to_string(),
            tag: tag.to_string(),
            layer_sizes: layer_sizes.to_vec(),
            seed,
            architecture: oci_arch().to_string(),
        }
    }
}

/// A blob held in memory (config, manifest).
#[derive(Debug, Clone)]
pub struct Blob {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Length in bytes.
    pub size: u64,
    /// Media type.
    pub media_type: String,
    /// The bytes.
    pub data: Bytes,
}

/// A layer blob stored in a file.
#[derive(Debug, Clone)]
pub struct Layer {
    /// `sha256:<hex>` of the tar (also its diff id: it is uncompressed).
    pub digest: String,
    /// Length of the tar in bytes.
    pub size: u64,
    /// Media type ([`OCI_LAYER_TAR`]).
    pub media_type: String,
    /// The tar file.
    pub path: PathBuf,
    /// Name of the one file inside the tar.
    pub file_name: String,
    /// Length of that file.
    pub payload_size: u64,
}

impl Layer {
    /// The whole tar in memory (small layers only).
    pub fn read(&self) -> Result<Vec<u8>> {
        std::fs::read(&self.path).map_err(Error::io("read layer", &self.path))
    }
}

/// A built image: what was (or will be) pushed, to compare with what clients pull.
#[derive(Debug, Clone)]
pub struct TestImage {
    /// Repository.
    pub repo: String,
    /// Tag.
    pub tag: String,
    /// Digest of the manifest.
    pub manifest_digest: String,
    /// The manifest ([`OCI_MANIFEST`]).
    pub manifest: Blob,
    /// The config ([`OCI_CONFIG`]).
    pub config: Blob,
    /// The layers, bottom first.
    pub layers: Vec<Layer>,
}

impl TestImage {
    /// Write the layers of `spec` into `dir` (created if missing) and build config and manifest.
    ///
    /// Layer files are named by seed, index and size; a file left by an earlier build with its
    /// `.sha256` next to it is reused, so a benchmark's 512 MiB layer is generated once per dir.
    pub fn build(spec: &ImageSpec, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(Error::io("create dir", dir))?;
        let layers = spec
            .layer_sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| build_layer(dir, layer_seed(spec.seed, i), i, size))
            .collect::<Result<Vec<_>>>()?;
        let diff_ids: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
        let config = json!({
            "architecture": spec.architecture,
            "os": "linux",
            "created": "1970-01-01T00:00:00Z",
            "config": {"Labels": {"org.dragonfly.testkit.seed": spec.seed.to_string()}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config = blob(OCI_CONFIG, config.to_string().into_bytes());
        let layer_descs: Vec<_> = layers
            .iter()
            .map(|l| json!({"mediaType": l.media_type, "digest": l.digest, "size": l.size}))
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config.digest, "size": config.size},
            "layers": layer_descs,
        });
        let manifest = blob(OCI_MANIFEST, manifest.to_string().into_bytes());
        Ok(Self {
            repo: spec.repo.clone(),
            tag: spec.tag.clone(),
            manifest_digest: manifest.digest.clone(),
            manifest,
            config,
            layers,
        })
    }

    /// `<host_port>/<repo>:<tag>`, the reference clients pull.
    pub fn reference(&self, host_port: &str) -> String {
        format!("{host_port}/{}:{}", self.repo, self.tag)
    }

    /// `<host_port>/<repo>@<manifest digest>`.
    pub fn reference_by_digest(&self, host_port: &str) -> String {
        format!("{host_port}/{}@{}", self.repo, self.manifest_digest)
    }

    /// Sum of the layer sizes.
    pub fn layers_size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// This machine's architecture as OCI names it (`amd64`, `arm64`, ...).
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

fn blob(media_type: &str, data: Vec<u8>) -> Blob {
    Blob {
        digest: sha256_digest(&data),
        size: data.len() as u64,
        media_type: media_type.to_string(),
        data: data.into(),
    }
}

/// Seed of layer `index` of an image with `seed` (splitmix64 step, so neighbours differ).
fn layer_seed(seed: u64, index: usize) -> u64 {
    let mut z = seed.wrapping_add((index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Write (or reuse) one layer tar holding `data-<index>.bin` of `size` seeded bytes.
fn build_layer(dir: &Path, seed: u64, index: usize, size: u64) -> Result<Layer> {
    if size > MAX_TAR_FILE {
        return Err(Error::Invalid(format!(
            "layer {index}: {size} bytes is more than a ustar entry holds"
        )));
    }
    let file_name = format!("data-{index}.bin");
    let path = dir.join(format!("layer-{seed:016x}-{index}-{size}.tar"));
    let sum_path = path.with_extension("tar.sha256");
    let tar_size = tar_size(size);
    let layer = |digest: String| Layer {
        digest,
        size: tar_size,
        media_type: OCI_LAYER_TAR.to_string(),
        path: path.clone(),
        file_name: file_name.clone(),
        payload_size: size,
    };
    let cached = std::fs::read_to_string(&sum_path)
        .ok()
        .filter(|d| d.starts_with("sha256:"))
        .filter(|_| std::fs::metadata(&path).is_ok_and(|m| m.len() == tar_size));
    if let Some(digest) = cached {
        return Ok(layer(digest.trim().to_string()));
    }
    let tmp = path.with_extension(format!("tar.tmp{}", std::process::id()));
    let file = std::fs::File::create(&tmp).map_err(Error::io("create", &tmp))?;
    let mut out = HashingWriter {
        inner: std::io::BufWriter::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
    };
    write_tar(&mut out, &file_name, seed, size).map_err(Error::io("write", &tmp))?;
    out.inner.flush().map_err(Error::io("write", &tmp))?;
    let digest = format!("sha256:{}", hex::encode(out.hasher.finalize()));
    std::fs::rename(&tmp, &path).map_err(Error::io("rename into", &path))?;
    std::fs::write(&sum_path, &digest).map_err(Error::io("write", &sum_path))?;
    Ok(layer(digest))
}

/// Bytes of a tar with one file of `size` bytes: header, padded data, two zero blocks.
fn tar_size(size: u64) -> u64 {
    BLOCK + size.div_ceil(BLOCK) * BLOCK + 2 * BLOCK
}

fn write_tar(out: &mut impl Write, name: &str, seed: u64, size: u64) -> std::io::Result<()> {
    out.write_all(&ustar_header(name, size))?;
    let mut written = 0u64;
    let mut block = 0u64;
    while written < size {
        let n = CHUNK.min(size - written);
        out.write_all(&random_bytes(seed.wrapping_add(block), n as usize))?;
        written += n;
        block += 1;
    }
    let pad = (BLOCK - size % BLOCK) % BLOCK + 2 * BLOCK;
    out.write_all(&vec![0u8; pad as usize])
}

/// A POSIX ustar header for a regular file (mode 0644, uid/gid 0, mtime 0).
fn ustar_header(name: &str, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    let put = |h: &mut [u8; 512], at: usize, v: &[u8]| h[at..at + v.len()].copy_from_slice(v);
    put(&mut h, 0, name.as_bytes()); // name[100]
    put(&mut h, 100, b"0000644\0"); // mode
    put(&mut h, 108, b"0000000\0"); // uid
    put(&mut h, 116, b"0000000\0"); // gid
    put(&mut h, 124, format!("{size:011o}\0").as_bytes()); // size[12]
    put(&mut h, 136, b"00000000000\0"); // mtime[12]
    put(&mut h, 148, b"        "); // checksum, counted as spaces
    h[156] = b'0'; // regular file
    put(&mut h, 257, b"ustar\0"); // magic
    put(&mut h, 263, b"00"); // version
    put(&mut h, 265, b"root"); // uname
    put(&mut h, 297, b"root"); // gname
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    put(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
    h
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_framing_and_header_checksum() {
        assert_eq!(tar_size(0), 1536);
        assert_eq!(tar_size(1), 2048);
        assert_eq!(tar_size(512), 2048);
        let h = ustar_header("data-0.bin", 1000);
        let stored = u32::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
        let mut blank = h;
        blank[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, blank.iter().map(|&b| u32::from(b)).sum::<u32>());
        assert_eq!(&h[124..136], b"00000001750\0");
    }

    #[test]
    fn images_are_deterministic_and_layers_differ() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let spec = ImageSpec::new("t/app", "v1", &[1000, 5000, 0], 7);
        let x = TestImage::build(&spec, a.path()).unwrap();
        let y = TestImage::build(&spec, b.path()).unwrap();
        assert_eq!(x.manifest_digest, y.manifest_digest);
        assert_eq!(x.layers.len(), 3);
        assert_ne!(x.layers[0].digest, x.layers[1].digest);
        for l in &x.layers {
            let data = l.read().unwrap();
            assert_eq!(data.len() as u64, l.size);
            assert_eq!(sha256_digest(&data), l.digest);
            assert_eq!(&data[..10], l.file_name.as_bytes());
        }
        let cfg: serde_json::Value = serde_json::from_slice(&x.config.data).unwrap();
        assert_eq!(cfg["rootfs"]["diff_ids"][1], x.layers[1].digest.as_str());
        assert_eq!(cfg["os"], "linux");
        let other = TestImage::build(&ImageSpec::new("t/app", "v1", &[1000], 8), a.path()).unwrap();
        assert_ne!(other.layers[0].digest, x.layers[0].digest);
        // A second build in the same dir reuses the files and gives the same digests.
        let again = TestImage::build(&spec, a.path()).unwrap();
        assert_eq!(again.manifest_digest, x.manifest_digest);
    }
}
