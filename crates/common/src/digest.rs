//! Content digests as users write them: `sha256:<hex>`, `sha512:<hex>`, `crc32:<hex>`.

use sha2::Digest as _;
use std::fmt;
use std::str::FromStr;

/// A digest algorithm we can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// SHA-256 (OCI blob digests).
    Sha256,
    /// SHA-512.
    Sha512,
    /// CRC-32 (IEEE), as used for pieces.
    Crc32,
}

impl Algorithm {
    /// The name used before the colon.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
            Algorithm::Crc32 => "crc32",
        }
    }

    /// Length of the hex encoding of a digest of this algorithm.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
            Algorithm::Crc32 => 8,
        }
    }

    /// A fresh incremental hasher for this algorithm.
    pub fn hasher(self) -> Hasher {
        match self {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
            Algorithm::Crc32 => Hasher::Crc32(crc32fast::Hasher::new()),
        }
    }
}

/// An expected or computed digest: algorithm plus lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

/// A digest string that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    /// No `algo:` prefix.
    #[error(
        "digest {0:?} has no algorithm prefix (expected sha256:<hex>, sha512:<hex> or crc32:<hex>)"
    )]
    MissingAlgorithm(String),
    /// Unknown algorithm name.
    #[error(
        "digest {value:?} uses unsupported algorithm {algorithm:?} (supported: sha256, sha512, crc32)"
    )]
    UnsupportedAlgorithm {
        /// The whole digest string.
        value: String,
        /// The algorithm part.
        algorithm: String,
    },
    /// Wrong length or non-hex characters.
    #[error("digest {value:?} is not {expected} hex characters of {algorithm}")]
    BadHex {
        /// The whole digest string.
        value: String,
        /// The algorithm.
        algorithm: &'static str,
        /// Expected hex length.
        expected: usize,
    },
}

impl Digest {
    /// Algorithm of this digest.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Lowercase hex value.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Digest of a whole byte slice.
    pub fn of(algorithm: Algorithm, data: &[u8]) -> Digest {
        let mut h = algorithm.hasher();
        h.update(data);
        h.finish()
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (algo, hex) = s
            .split_once(':')
            .ok_or_else(|| DigestError::MissingAlgorithm(s.to_string()))?;
        let algorithm = match algo.to_ascii_lowercase().as_str() {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            "crc32" => Algorithm::Crc32,
            _ => {
                return Err(DigestError::UnsupportedAlgorithm {
                    value: s.to_string(),
                    algorithm: algo.to_string(),
                });
            }
        };
        if hex.len() != algorithm.hex_len() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(DigestError::BadHex {
                value: s.to_string(),
                algorithm: algorithm.name(),
                expected: algorithm.hex_len(),
            });
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_ascii_lowercase(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

/// An incremental hasher for any [`Algorithm`].
pub enum Hasher {
    /// SHA-256 state.
    Sha256(sha2::Sha256),
    /// SHA-512 state.
    Sha512(sha2::Sha512),
    /// CRC-32 state.
    Crc32(crc32fast::Hasher),
}

impl Hasher {
    /// Feed bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
            Hasher::Crc32(h) => h.update(data),
        }
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            Hasher::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
            Hasher::Crc32(h) => (Algorithm::Crc32, format!("{:08x}", h.finalize())),
        };
        Digest { algorithm, hex }
    }
}

/// CRC-32 of a piece's bytes, as carried in piece metadata.
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let d: Digest = "SHA256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"
            .parse()
            .unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(
            d.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Digest::of(Algorithm::Sha256, b""), d);
    }

    #[test]
    fn known_values() {
        assert_eq!(
            Digest::of(Algorithm::Crc32, b"123456789").to_string(),
            "crc32:cbf43926"
        );
        assert_eq!(
            Digest::of(Algorithm::Sha512, b"abc").hex()[..16].to_string(),
            "ddaf35a193617aba"
        );
    }

    #[test]
    fn errors_name_the_value() {
        let e = "md5:abc".parse::<Digest>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "digest \"md5:abc\" uses unsupported algorithm \"md5\" (supported: sha256, sha512, crc32)"
        );
        let e = "sha256:xyz".parse::<Digest>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "digest \"sha256:xyz\" is not 64 hex characters of sha256"
        );
        let e = "deadbeef".parse::<Digest>().unwrap_err();
        assert!(
            e.to_string()
                .starts_with("digest \"deadbeef\" has no algorithm prefix")
        );
    }

    #[test]
    fn incremental_equals_whole() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        for algo in [Algorithm::Sha256, Algorithm::Sha512, Algorithm::Crc32] {
            let mut h = algo.hasher();
            for chunk in data.chunks(777) {
                h.update(chunk);
            }
            assert_eq!(h.finish(), Digest::of(algo, &data));
        }
    }
}
