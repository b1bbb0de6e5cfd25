//! Byte sizes as humans write them: `50Gi`, `512Mi`, `100M`, `1.5G`, `1024`.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A number of bytes, written in config as a Kubernetes-style quantity.
///
/// Binary suffixes `Ki`, `Mi`, `Gi`, `Ti`, `Pi`, `Ei` (optionally followed by `B`) are powers of
/// 1024; decimal suffixes `K`, `M`, `G`, `T`, `P`, `E` (optionally followed by `B`) are powers of
/// 1000; a plain number (or a YAML integer) is bytes. Suffixes are case-insensitive and may be
/// separated from the number by spaces. A fraction (`1.5G`) is allowed and rounded up to a whole
/// byte. Displays in the shortest exact form, binary first: `50Gi`, `100M`, `1000`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size(u64);

/// The error of parsing a [`Size`]; displays as `"50Gx" is not a size`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a size{reason}")]
pub struct SizeError {
    input: String,
    reason: &'static str,
}

const BINARY: [(&str, u64); 6] = [
    ("Ei", 1 << 60),
    ("Pi", 1 << 50),
    ("Ti", 1 << 40),
    ("Gi", 1 << 30),
    ("Mi", 1 << 20),
    ("Ki", 1 << 10),
];

const DECIMAL: [(&str, u64); 6] = [
    ("E", 1_000_000_000_000_000_000),
    ("P", 1_000_000_000_000_000),
    ("T", 1_000_000_000_000),
    ("G", 1_000_000_000),
    ("M", 1_000_000),
    ("K", 1_000),
];

impl Size {
    /// Zero bytes.
    pub const ZERO: Size = Size(0);

    /// A size of `bytes` bytes.
    pub const fn from_bytes(bytes: u64) -> Self {
        Size(bytes)
    }

    /// `n` KiB.
    pub const fn kib(n: u64) -> Self {
        Size(n.saturating_mul(1 << 10))
    }

    /// `n` MiB.
    pub const fn mib(n: u64) -> Self {
        Size(n.saturating_mul(1 << 20))
    }

    /// `n` GiB.
    pub const fn gib(n: u64) -> Self {
        Size(n.saturating_mul(1 << 30))
    }

    /// The number of bytes.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Whether this is zero (for options where 0 means "off" or "unlimited").
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }
}

/// The multiplier of a unit suffix, case-insensitively; `None` when it is not one.
fn multiplier(unit: &str) -> Option<u64> {
    let unit = unit.trim();
    let base = unit.strip_suffix(['b', 'B']).unwrap_or(unit);
    if base.is_empty() {
        return Some(1);
    }
    BINARY
        .iter()
        .chain(DECIMAL.iter())
        .find(|(name, _)| name.eq_ignore_ascii_case(base))
        .map(|&(_, m)| m)
}

impl FromStr for Size {
    type Err = SizeError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| SizeError {
            input: input.to_owned(),
            reason,
        };
        let s = input.trim();
        let number_end = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, unit) = s.split_at(number_end);
        let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(err(""));
        }
        if frac_part.contains('.') {
            return Err(err(""));
        }
        let mult = multiplier(unit).ok_or_else(|| err(""))?;
        let too_large = || err(" (larger than 16Ei)");
        // u128 keeps the arithmetic exact for any input that fits in u64 after scaling.
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| too_large())?
        };
        let mut bytes = int.checked_mul(u128::from(mult)).ok_or_else(too_large)?;
        // Digits beyond 19 cannot change a u64 result by a whole byte more than rounding up does.
        let frac_digits = &frac_part[..frac_part.len().min(19)];
        if !frac_digits.is_empty() {
            let frac: u128 = frac_digits.parse().map_err(|_| err(""))?;
            let scale = 10u128.pow(frac_digits.len() as u32);
            let rest_nonzero = frac_part[frac_digits.len()..].bytes().any(|b| b != b'0');
            let scaled = frac * u128::from(mult);
            let mut part = scaled / scale;
            if !scaled.is_multiple_of(scale) || rest_nonzero {
                part += 1;
            }
            bytes += part;
        }
        u64::try_from(bytes).map(Size).map_err(|_| too_large())
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n == 0 {
            return f.write_str("0");
        }
        for (name, m) in BINARY.iter().chain(DECIMAL.iter()) {
            if n.is_multiple_of(*m) {
                return write!(f, "{}{}", n / m, name);
            }
        }
        write!(f, "{n}")
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = self.to_string();
        // A plain byte count stays a YAML integer; anything with a unit is a string.
        match text.parse::<u64>() {
            Ok(n) => serializer.serialize_u64(n),
            Err(_) => serializer.serialize_str(&text),
        }
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;

        impl Visitor<'_> for SizeVisitor {
            type Value = Size;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 50Gi, 512Mi, 100M or a number of bytes")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom(format!("{v} is not a size (it is negative)")))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Size, E> {
                if v.is_finite() && v >= 0.0 {
                    format!("{v}").parse().map_err(E::custom)
                } else {
                    Err(E::custom(format!("{v} is not a size")))
                }
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                v.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_any(SizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::Size;

    #[test]
    fn parses_human_sizes() {
        let cases = [
            ("50Gi", 50u64 << 30),
            ("50GiB", 50 << 30),
            ("512Mi", 512 << 20),
            ("4MiB", 4 << 20),
            ("100M", 100_000_000),
            ("100MB", 100_000_000),
            ("1.5G", 1_500_000_000),
            ("1.5Gi", 1_610_612_736),
            ("1024", 1024),
            ("0", 0),
            ("2k", 2000),
            ("2 Ki", 2048),
            ("10B", 10),
            (".5Ki", 512),
            ("0.1", 1),
        ];
        for (text, bytes) in cases {
            assert_eq!(text.parse::<Size>().map(Size::as_u64), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn rejects_garbage() {
        for text in [
            "",
            "50Gx",
            "Gi",
            "-1",
            "1.2.3",
            "1e3",
            "abc",
            "99999999999Ei",
            "5 Gi B",
        ] {
            assert!(text.parse::<Size>().is_err(), "{text}");
        }
        assert_eq!(
            "50Gx".parse::<Size>().map_err(|e| e.to_string()),
            Err("\"50Gx\" is not a size".to_owned())
        );
    }

    #[test]
    fn displays_naturally() {
        assert_eq!(Size::gib(50).to_string(), "50Gi");
        assert_eq!(Size::from_bytes(100_000_000).to_string(), "100M");
        assert_eq!(Size::from_bytes(1000).to_string(), "1K");
        assert_eq!(Size::from_bytes(1001).to_string(), "1001");
        assert_eq!(Size::ZERO.to_string(), "0");
    }
}
