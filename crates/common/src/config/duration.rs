//! Durations as humans write them: `30s`, `6h`, `1m30s`, `500ms`, `7d`, `1.5h`.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A span of time in config.
///
/// Accepts Go-style durations (`1m30s`, `1.5h`, `500ms`, `250us`, `10ns`) extended with days and
/// weeks (`7d`, `2w`), humantime's spelled-out forms (`2 days 3 hours`), and bare numbers, which
/// are seconds (`90` or the YAML integer `90`). Displays compactly, largest unit first, without
/// spaces: `6h`, `1m30s`, `60d`, `1s500ms`, `0s`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(std::time::Duration);

/// The error of parsing a [`Duration`]; displays as
/// `"6x" is not a duration (examples: 30s, 6h, 7d)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a duration (examples: 30s, 6h, 7d)")]
pub struct DurationError {
    input: String,
}

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Units, largest first (Display relies on the order), in nanoseconds.
const UNITS: [(&str, u128); 7] = [
    ("d", 86_400 * NANOS_PER_SEC),
    ("h", 3_600 * NANOS_PER_SEC),
    ("m", 60 * NANOS_PER_SEC),
    ("s", NANOS_PER_SEC),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("ns", 1),
];

impl Duration {
    /// Zero.
    pub const ZERO: Duration = Duration(std::time::Duration::ZERO);

    /// `n` seconds.
    pub const fn from_secs(n: u64) -> Self {
        Duration(std::time::Duration::from_secs(n))
    }

    /// `n` milliseconds.
    pub const fn from_millis(n: u64) -> Self {
        Duration(std::time::Duration::from_millis(n))
    }

    /// `n` minutes.
    pub const fn from_mins(n: u64) -> Self {
        Duration(std::time::Duration::from_secs(n.saturating_mul(60)))
    }

    /// `n` hours.
    pub const fn from_hours(n: u64) -> Self {
        Duration(std::time::Duration::from_secs(n.saturating_mul(3600)))
    }

    /// `n` days.
    pub const fn from_days(n: u64) -> Self {
        Duration(std::time::Duration::from_secs(n.saturating_mul(86_400)))
    }

    /// The std duration.
    pub const fn get(self) -> std::time::Duration {
        self.0
    }

    /// Whether this is zero (for options where 0 means "off").
    pub const fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Duration(d)
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

fn nanos_to_duration(nanos: u128) -> Option<std::time::Duration> {
    let secs = u64::try_from(nanos / NANOS_PER_SEC).ok()?;
    // The remainder is below 1e9, so it fits in u32.
    let sub = u32::try_from(nanos % NANOS_PER_SEC).ok()?;
    Some(std::time::Duration::new(secs, sub))
}

/// Go's `time.ParseDuration` grammar plus `d` and `w`: one or more `<decimal><unit>`.
fn parse_go_style(s: &str) -> Option<std::time::Duration> {
    let mut rest = s;
    let mut total: u128 = 0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_end);
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let scale = match unit {
            "w" => 7 * 86_400 * NANOS_PER_SEC,
            "µs" | "μs" => 1_000,
            u => UNITS.iter().find(|(name, _)| *name == u)?.1,
        };
        let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
        if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
            return None;
        }
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().ok()?
        };
        total = total.checked_add(int.checked_mul(scale)?)?;
        // Fraction digits beyond nanosecond precision of the largest unit are dropped.
        let frac_digits = &frac_part[..frac_part.len().min(20)];
        if !frac_digits.is_empty() {
            let frac: u128 = frac_digits.parse().ok()?;
            let denominator = 10u128.checked_pow(u32::try_from(frac_digits.len()).ok()?)?;
            total = total.checked_add(frac.checked_mul(scale)? / denominator)?;
        }
        rest = next;
    }
    nanos_to_duration(total)
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let s = input.trim();
        let parsed = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse::<u64>().ok().map(std::time::Duration::from_secs)
        } else {
            parse_go_style(s).or_else(|| humantime::parse_duration(s).ok())
        };
        parsed.map(Duration).ok_or_else(|| DurationError {
            input: input.to_owned(),
        })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        for (name, scale) in UNITS {
            if nanos >= scale {
                write!(f, "{}{}", nanos / scale, name)?;
                nanos %= scale;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = Duration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 30s, 6h, 7d or a number of seconds")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                Ok(Duration::from_secs(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                u64::try_from(v).map(Duration::from_secs).map_err(|_| {
                    E::custom(format!(
                        "{v} is not a duration (it is negative; examples: 30s, 6h, 7d)"
                    ))
                })
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
                std::time::Duration::try_from_secs_f64(v)
                    .map(Duration)
                    .map_err(|_| {
                        E::custom(format!("{v} is not a duration (examples: 30s, 6h, 7d)"))
                    })
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                v.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_any(DurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::Duration;

    #[test]
    fn parses_human_durations() {
        let cases = [
            ("6h", Duration::from_hours(6)),
            ("30s", Duration::from_secs(30)),
            ("1m30s", Duration::from_secs(90)),
            ("90s", Duration::from_secs(90)),
            ("500ms", Duration::from_millis(500)),
            ("60d", Duration::from_days(60)),
            ("1.5h", Duration::from_mins(90)),
            ("1m0s", Duration::from_mins(1)),
            ("2w", Duration::from_days(14)),
            ("90", Duration::from_secs(90)),
            ("0", Duration::ZERO),
            ("2 days 3h", Duration::from_hours(51)),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<Duration>(), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_garbage() {
        for text in ["", "6x", "h", "-5s", "1..5s", "s30"] {
            assert!(text.parse::<Duration>().is_err(), "{text}");
        }
        assert_eq!(
            "6x".parse::<Duration>().map_err(|e| e.to_string()),
            Err("\"6x\" is not a duration (examples: 30s, 6h, 7d)".to_owned())
        );
    }

    #[test]
    fn displays_compactly() {
        assert_eq!(Duration::from_hours(6).to_string(), "6h");
        assert_eq!(Duration::from_secs(90).to_string(), "1m30s");
        assert_eq!(Duration::from_days(60).to_string(), "60d");
        assert_eq!(Duration::from_millis(1500).to_string(), "1s500ms");
        assert_eq!(Duration::ZERO.to_string(), "0s");
    }
}
