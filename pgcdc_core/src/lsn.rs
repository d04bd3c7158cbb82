//! Log sequence numbers: one text form (`16/B374D848`) in SQL, JSON and Python.

use std::fmt;
use std::str::FromStr;

/// A WAL position. Ordered, hashable, printed as PostgreSQL prints `pg_lsn`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);
    pub const MAX: Lsn = Lsn(u64::MAX);

    /// Debezium writes LSNs as plain integers (`source.lsn`, `sequence`).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

/// Text that is not `X/Y` with two hexadecimal halves of at most 8 digits each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {0:?}: expected two hexadecimal numbers separated by '/', like 16/B374D848")]
pub struct ParseLsnError(pub String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_owned());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let half = |h: &str| {
            if h.is_empty() || h.len() > 8 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            u32::from_str_radix(h, 16).ok()
        };
        let (hi, lo) = (half(hi).ok_or_else(err)?, half(lo).ok_or_else(err)?);
        Ok(Lsn(((hi as u64) << 32) | lo as u64))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 as u32)
    }
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Self {
        Lsn(v)
    }
}

impl From<Lsn> for u64 {
    fn from(l: Lsn) -> u64 {
        l.0
    }
}

/// Serialises as the `X/Y` string; deserialises from that string or from a Debezium integer.
impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Lsn;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an LSN as 'X/Y' text or as an unsigned integer")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Lsn, E> {
                Ok(Lsn(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Lsn, E> {
                u64::try_from(v).map(Lsn).map_err(|_| E::custom("negative LSN"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Lsn, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Serde adapter for Debezium's integer form: `#[serde(with = "pgcdc_core::lsn::as_integer")]`.
pub mod as_integer {
    use super::Lsn;

    pub fn serialize<S: serde::Serializer>(l: &Lsn, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(l.0)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
        serde::Deserialize::deserialize(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_prints_postgres_form() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l, Lsn(0x16_B374_D848));
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn::ZERO);
        assert_eq!(Lsn::MAX.to_string(), "FFFFFFFF/FFFFFFFF");
        assert_eq!("0/16b3748".parse::<Lsn>().unwrap().to_string(), "0/16B3748");
    }

    #[test]
    fn rejects_malformed_text() {
        for bad in ["", "/", "1/", "/1", "1", "1/2/3", "G/0", "123456789/0", " 1/2", "1/-2", "+1/2"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn serde_text_and_integer_forms() {
        let l = Lsn(46857448);
        assert_eq!(serde_json::to_string(&l).unwrap(), "\"0/2CAFCE8\"");
        assert_eq!(serde_json::from_str::<Lsn>("\"0/2CAFCE8\"").unwrap(), l);
        assert_eq!(serde_json::from_str::<Lsn>("46857448").unwrap(), l);
        #[derive(serde::Serialize)]
        struct S {
            #[serde(with = "as_integer")]
            lsn: Lsn,
        }
        assert_eq!(serde_json::to_string(&S { lsn: l }).unwrap(), r#"{"lsn":46857448}"#);
    }

    proptest! {
        #[test]
        fn text_round_trip(v in any::<u64>()) {
            let l = Lsn(v);
            prop_assert_eq!(l.to_string().parse::<Lsn>().unwrap(), l);
        }

        #[test]
        fn order_follows_integer(a in any::<u64>(), b in any::<u64>()) {
            prop_assert_eq!(Lsn(a).cmp(&Lsn(b)), a.cmp(&b));
        }
    }
}
