//! Small validated value types and field helpers shared by the config structs.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::net::IpAddr;

/// Deserializes a string through `parse` inside the deserializer's own visit, so that a parse
/// error carries the line and column of the value (not of the enclosing mapping).
pub(crate) fn from_str_with<'de, D, T, F>(
    deserializer: D,
    expecting: &'static str,
    parse: F,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    F: FnOnce(&str) -> Result<T, String>,
{
    struct StrVisitor<F> {
        expecting: &'static str,
        parse: F,
    }

    impl<T, F: FnOnce(&str) -> Result<T, String>> Visitor<'_> for StrVisitor<F> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.expecting)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.parse)(v).map_err(E::custom)
        }
    }

    deserializer.deserialize_str(StrVisitor { expecting, parse })
}

/// A percentage, 0-100 (fractions allowed), e.g. `diskGCThresholdPercent: 80`.
#[derive(Debug, Clone, Copy, Default, PartialEq, PartialOrd)]
pub struct Percent(f64);

impl Percent {
    /// `v` percent; `None` outside 0-100 or not a number.
    pub fn new(v: f64) -> Option<Self> {
        (0.0..=100.0).contains(&v).then_some(Percent(v))
    }

    /// A percentage for a built-in default; out-of-range values are clamped (never panics).
    pub const fn default_value(v: f64) -> Self {
        Percent(v.clamp(0.0, 100.0))
    }

    /// The value, 0-100.
    pub const fn get(self) -> f64 {
        self.0
    }

    /// Whether this is zero (for options where 0 means "off").
    pub fn is_zero(self) -> bool {
        self.0 == 0.0
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Whole percentages print as integers, as people write them.
        if self.0.fract() == 0.0 {
            serializer.serialize_u64(self.0 as u64)
        } else {
            serializer.serialize_f64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PercentVisitor;

        fn check<E: de::Error>(v: f64, shown: &dyn fmt::Display) -> Result<Percent, E> {
            Percent::new(v).ok_or_else(|| E::custom(format!("{shown} is not a percentage (0-100)")))
        }

        impl Visitor<'_> for PercentVisitor {
            type Value = Percent;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a percentage (0-100)")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Percent, E> {
                check(v as f64, &v)
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Percent, E> {
                check(v as f64, &v)
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Percent, E> {
                check(v, &v)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Percent, E> {
                let number = v.trim().trim_end_matches('%').trim();
                match number.parse::<f64>() {
                    Ok(n) if n.is_finite() => check(n, &format_args!("{v:?}")),
                    _ => Err(E::custom(format!("{v:?} is not a percentage (0-100)"))),
                }
            }
        }

        deserializer.deserialize_any(PercentVisitor)
    }
}

/// A non-negative finite number such as an evaluator weight.
#[derive(Debug, Clone, Copy, Default, PartialEq, PartialOrd)]
pub struct Weight(f64);

impl Weight {
    /// `v`; `None` when negative or not finite.
    pub fn new(v: f64) -> Option<Self> {
        (v.is_finite() && v >= 0.0).then_some(Weight(v))
    }

    /// A weight for a built-in default; negative values become 0 (never panics).
    pub const fn default_value(v: f64) -> Self {
        Weight(v.max(0.0))
    }

    /// The value.
    pub const fn get(self) -> f64 {
        self.0
    }
}

impl Serialize for Weight {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.0)
    }
}

impl<'de> Deserialize<'de> for Weight {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct WeightVisitor;

        impl Visitor<'_> for WeightVisitor {
            type Value = Weight;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a weight (a number, 0 or more)")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Weight, E> {
                Ok(Weight(v as f64))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Weight, E> {
                Weight::new(v as f64)
                    .ok_or_else(|| E::custom(format!("{v} is not a weight (a number, 0 or more)")))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Weight, E> {
                Weight::new(v)
                    .ok_or_else(|| E::custom(format!("{v} is not a weight (a number, 0 or more)")))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Weight, E> {
                v.trim()
                    .parse::<f64>()
                    .ok()
                    .and_then(Weight::new)
                    .ok_or_else(|| {
                        E::custom(format!("{v:?} is not a weight (a number, 0 or more)"))
                    })
            }
        }

        deserializer.deserialize_any(WeightVisitor)
    }
}

/// serde helpers for IP address fields, with our error wording
/// (`"10.0.0.300" is not an IP address`).
pub mod ip {
    use super::*;

    fn parse(text: &str) -> Result<IpAddr, String> {
        text.trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address"))
    }

    /// `#[serde(with = "ip")]` for `IpAddr`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<IpAddr, D::Error> {
        from_str_with(d, "an IP address", parse)
    }

    /// `#[serde(with = "ip")]` for `IpAddr`.
    pub fn serialize<S: Serializer>(ip: &IpAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(ip)
    }

    /// serde helpers for `Option<IpAddr>`; null and the empty string are `None`.
    pub mod option {
        use super::*;

        /// `#[serde(with = "ip::option")]` for `Option<IpAddr>`.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
            struct OptionVisitor;

            impl<'de> Visitor<'de> for OptionVisitor {
                type Value = Option<IpAddr>;

                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("an IP address")
                }

                fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                    Ok(None)
                }

                fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                    Ok(None)
                }

                fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                    from_str_with(d, "an IP address", |t| {
                        if t.trim().is_empty() {
                            Ok(None)
                        } else {
                            parse(t).map(Some)
                        }
                    })
                }
            }

            d.deserialize_option(OptionVisitor)
        }

        /// `#[serde(with = "ip::option")]` for `Option<IpAddr>`.
        pub fn serialize<S: Serializer>(ip: &Option<IpAddr>, s: S) -> Result<S::Ok, S::Error> {
            match ip {
                Some(ip) => s.collect_str(ip),
                None => s.serialize_none(),
            }
        }
    }
}

/// A `host:port` or `:port` listen address such as the scheduler's `metrics.addr: :8003`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListenAddr {
    host: String,
    port: super::Port,
}

impl ListenAddr {
    /// An address for a built-in default (`ListenAddr::default_addr("", 8003)` is `:8003`).
    pub fn default_addr(host: &str, port: u16) -> Self {
        ListenAddr {
            host: host.to_owned(),
            port: super::Port::default_port(port),
        }
    }

    /// The host part; empty means every interface.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> super::Port {
        self.port
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for ListenAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{text:?} is not a listen address (examples: :8003, 0.0.0.0:8003)");
        let (host, port) = text.trim().rsplit_once(':').ok_or_else(bad)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port = port.parse().map_err(|_| bad())?;
        Ok(ListenAddr {
            host: host.to_owned(),
            port,
        })
    }
}

impl Serialize for ListenAddr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_str_with(deserializer, "a listen address", str::parse)
    }
}

#[cfg(test)]
mod tests {
    use super::{ListenAddr, Percent};

    #[test]
    fn percent_range() {
        assert!(Percent::new(80.0).is_some());
        assert!(Percent::new(100.5).is_none());
        assert!(Percent::new(f64::NAN).is_none());
    }

    #[test]
    fn listen_addr_forms() {
        assert_eq!(
            ":8003".parse::<ListenAddr>().map(|a| a.to_string()),
            Ok(":8003".to_owned())
        );
        assert_eq!(
            "[::1]:8003".parse::<ListenAddr>().map(|a| a.to_string()),
            Ok("[::1]:8003".to_owned())
        );
        assert!("8003".parse::<ListenAddr>().is_err());
        assert!("host:99999".parse::<ListenAddr>().is_err());
    }
}
