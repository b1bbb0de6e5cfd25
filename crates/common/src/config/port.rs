//! TCP ports and Dragonfly's port ranges (`port: 65001` or `port: {start: 65001, end: 65010}`).

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::num::NonZeroU16;
use std::str::FromStr;

/// A TCP port, 1-65535. Accepts a YAML integer or a string of digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port(NonZeroU16);

/// The error of parsing a [`Port`]; displays as `70000 is not a port (1-65535)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{shown} is not a port (1-65535)")]
pub struct PortError {
    shown: String,
}

impl PortError {
    fn new(shown: impl Into<String>) -> Self {
        PortError {
            shown: shown.into(),
        }
    }
}

impl Port {
    /// The port `n`; `None` for 0.
    pub const fn new(n: u16) -> Option<Self> {
        match NonZeroU16::new(n) {
            Some(p) => Some(Port(p)),
            None => None,
        }
    }

    /// The port number.
    pub const fn get(self) -> u16 {
        self.0.get()
    }

    /// A port for a built-in default (`Port::default_port(65001)`); never panics: 0, which no
    /// default uses, becomes 1.
    pub const fn default_port(n: u16) -> Self {
        match NonZeroU16::new(n) {
            Some(p) => Port(p),
            None => Port(NonZeroU16::MIN),
        }
    }

    fn from_i128(v: i128) -> Result<Self, PortError> {
        u16::try_from(v)
            .ok()
            .and_then(Port::new)
            .ok_or_else(|| PortError::new(v.to_string()))
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.get())
    }
}

impl FromStr for Port {
    type Err = PortError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if !t.is_empty() && t.len() <= 30 && t.bytes().all(|b| b.is_ascii_digit()) {
            t.parse::<i128>()
                .map_err(|_| PortError::new(format!("{s:?}")))
                .and_then(|v| Port::from_i128(v).map_err(|_| PortError::new(format!("{s:?}"))))
        } else {
            Err(PortError::new(format!("{s:?}")))
        }
    }
}

impl Serialize for Port {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u16(self.get())
    }
}

struct PortVisitor;

impl Visitor<'_> for PortVisitor {
    type Value = Port;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a port (1-65535)")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Port, E> {
        Port::from_i128(i128::from(v)).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Port, E> {
        Port::from_i128(i128::from(v)).map_err(E::custom)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Port, E> {
        Err(E::custom(PortError::new(v.to_string())))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Port, E> {
        v.parse().map_err(E::custom)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Port, E> {
        Err(E::custom(PortError::new(v.to_string())))
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PortVisitor)
    }
}

/// A listen port: one port, or Dragonfly's range form `{start, end}` (try each in turn).
///
/// A single port prints back as a plain integer; a range as `{start, end}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    start: Port,
    end: Port,
}

impl PortRange {
    /// Exactly one port.
    pub const fn single(port: Port) -> Self {
        PortRange {
            start: port,
            end: port,
        }
    }

    /// `start..=end`; `None` when `end < start`.
    pub fn new(start: Port, end: Port) -> Option<Self> {
        (start <= end).then_some(PortRange { start, end })
    }

    /// The first port to try.
    pub const fn start(&self) -> Port {
        self.start
    }

    /// The last port to try (equal to `start` for a single port).
    pub const fn end(&self) -> Port {
        self.end
    }

    /// Every port of the range, in order.
    pub fn ports(&self) -> impl Iterator<Item = u16> + use<> {
        self.start.get()..=self.end.get()
    }
}

impl PortRange {
    /// A single port for a built-in default (`PortRange::default_port(65001)`); see
    /// [`Port::default_port`].
    pub const fn default_port(n: u16) -> Self {
        PortRange::single(Port::default_port(n))
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.start == self.end {
            self.start.serialize(serializer)
        } else {
            let mut s = serializer.serialize_struct("PortRange", 2)?;
            s.serialize_field("start", &self.start)?;
            s.serialize_field("end", &self.end)?;
            s.end()
        }
    }
}

/// The `{start, end}` form; a derived struct so unknown keys inside are reported like elsewhere.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RangeForm {
    start: Port,
    end: Option<Port>,
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RangeVisitor;

        impl<'de> Visitor<'de> for RangeVisitor {
            type Value = PortRange;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port (1-65535) or a range {start, end}")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortRange, E> {
                PortVisitor.visit_u64(v).map(PortRange::single)
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortRange, E> {
                PortVisitor.visit_i64(v).map(PortRange::single)
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<PortRange, E> {
                PortVisitor.visit_f64(v).map(PortRange::single)
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<PortRange, E> {
                PortVisitor.visit_bool(v).map(PortRange::single)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortRange, E> {
                PortVisitor.visit_str(v).map(PortRange::single)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<PortRange, A::Error> {
                let form = RangeForm::deserialize(MapAccessDeserializer::new(map))?;
                let end = form.end.unwrap_or(form.start);
                PortRange::new(form.start, end).ok_or_else(|| {
                    de::Error::custom(format!(
                        "{}-{} is not a port range (start must not be above end)",
                        form.start, end
                    ))
                })
            }
        }

        deserializer.deserialize_any(RangeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::{Port, PortRange};

    #[test]
    fn ports_parse_and_reject() {
        assert_eq!("65001".parse::<Port>().map(Port::get), Ok(65001));
        assert_eq!(
            "70000".parse::<Port>().map_err(|e| e.to_string()),
            Err("\"70000\" is not a port (1-65535)".to_owned())
        );
        assert!("0".parse::<Port>().is_err());
        assert!("http".parse::<Port>().is_err());
    }

    #[test]
    fn range_iterates() {
        let r = PortRange::new(Port::default_port(10), Port::default_port(12));
        assert_eq!(
            r.map(|r| r.ports().collect::<Vec<_>>()),
            Some(vec![10, 11, 12])
        );
        assert_eq!(PortRange::default_port(65001).to_string(), "65001");
    }
}
