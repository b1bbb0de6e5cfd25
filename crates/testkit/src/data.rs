//! Deterministic pseudo-random test content.

use std::io::Write;
use std::path::Path;

/// `len` bytes of deterministic pseudo-random data derived from `seed` (xorshift64*).
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Write `len` bytes of deterministic data to `path`, 8 MiB at a time.
pub fn write_random_file(path: &Path, seed: u64, len: u64) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let chunk = 8 << 20;
    let mut written = 0u64;
    let mut block = 0u64;
    while written < len {
        let n = chunk.min(len - written) as usize;
        f.write_all(&random_bytes(seed.wrapping_add(block), n))?;
        written += n as u64;
        block += 1;
    }
    f.flush()
}

#[cfg(test)]
mod tests {
    #[test]
    fn deterministic_and_varied() {
        let a = super::random_bytes(1, 1000);
        assert_eq!(a, super::random_bytes(1, 1000));
        assert_ne!(a, super::random_bytes(2, 1000));
        assert_eq!(a.len(), 1000);
        let zeros = a.iter().filter(|&&b| b == 0).count();
        assert!(zeros < 20, "too many zero bytes: {zeros}");
    }
}
