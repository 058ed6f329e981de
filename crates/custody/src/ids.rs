//! Identifiers and small value types (`custody.md` §2): parse, don't validate.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};
use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime, UtcOffset};

use crate::error::FieldError;

/// An agency id: 1 to 63 of `[a-z0-9-]`, starting and ending with a letter or digit.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct AgencyId(String);

impl AgencyId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for AgencyId {
    type Err = FieldError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let ok = (1..=63).contains(&b.len())
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-';
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(FieldError::new("agency id", s))
        }
    }
}

impl fmt::Display for AgencyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A transfer id: 128 bits as exactly 32 lowercase hex characters. Never a path.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct TransferId([u8; 16]);

impl TransferId {
    /// A fresh random transfer id.
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut b = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut b);
        Self(b)
    }

    /// The all-zero id, used by statements about no particular transfer.
    pub const NONE: Self = Self([0; 16]);

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// From raw bytes.
    pub fn from_bytes(b: [u8; 16]) -> Self {
        Self(b)
    }
}

impl FromStr for TransferId {
    type Err = FieldError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower_hex = s.len() == 32
            && s.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
        let mut b = [0u8; 16];
        if lower_hex && hex::decode_to_slice(s, &mut b).is_ok() {
            Ok(Self(b))
        } else {
            Err(FieldError::new("transfer id", s))
        }
    }
}

impl fmt::Display for TransferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A SHA-256 digest, written as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// SHA-256 of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    /// Constant-time equality, for digests that authenticate data.
    pub fn ct_eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({self})")
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl FromStr for Sha256Digest {
    type Err = FieldError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
        let mut b = [0u8; 32];
        if s.len() == 64 && lower && hex::decode_to_slice(s, &mut b).is_ok() {
            Ok(Self(b))
        } else {
            Err(FieldError::new("sha256 digest", s))
        }
    }
}

/// An instant in UTC with second precision, written `YYYY-MM-DDTHH:MM:SSZ`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Timestamp(OffsetDateTime);

impl Timestamp {
    /// From Unix seconds.
    pub fn from_unix(secs: i64) -> Result<Self, FieldError> {
        OffsetDateTime::from_unix_timestamp(secs)
            .map(Self)
            .map_err(|_| FieldError::new("time", &secs.to_string()))
    }

    /// Truncates `t` to whole seconds in UTC.
    pub fn from_datetime(t: OffsetDateTime) -> Self {
        let t = t.to_offset(UtcOffset::UTC);
        Self(t.replace_nanosecond(0).unwrap_or(t))
    }

    /// Unix seconds.
    pub fn unix(&self) -> i64 {
        self.0.unix_timestamp()
    }

    /// The calendar date (UTC).
    pub fn date(&self) -> Date {
        self.0.date()
    }
}

impl FromStr for Timestamp {
    type Err = FieldError;

    /// Accepts only the canonical form, so that it re-encodes byte for byte.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|_| FieldError::new("time", s))?;
        let t = Self::from_datetime(t);
        if t.to_string() == s {
            Ok(t)
        } else {
            Err(FieldError::new("time (canonical UTC form)", s))
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            d.year(),
            u8::from(d.month()),
            d.day(),
            d.hour(),
            d.minute(),
            d.second()
        )
    }
}

/// A calendar date, `YYYY-MM-DD`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct CalendarDate(pub Date);

impl FromStr for CalendarDate {
    type Err = FieldError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fmt = time::macros::format_description!("[year]-[month]-[day]");
        let d = Date::parse(s, &fmt).map_err(|_| FieldError::new("date", s))?;
        let c = Self(d);
        if c.to_string() == s {
            Ok(c)
        } else {
            Err(FieldError::new("date", s))
        }
    }
}

impl fmt::Display for CalendarDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}",
            self.0.year(),
            u8::from(self.0.month()),
            self.0.day()
        )
    }
}

/// Serde as the `Display` / `FromStr` text form.
macro_rules! serde_as_text {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
pub(crate) use serde_as_text;
serde_as_text!(AgencyId, TransferId, Sha256Digest, Timestamp, CalendarDate);

/// A format's `"format"` field: a unit type that (de)serialises as one fixed string; or, with
/// a current and an earlier version, a newtype over the value each version names.
macro_rules! format_tag {
    ($name:ident($ty:ty) { $current:literal => $now:path, $earlier:literal => $then:path }) => {
        #[derive(Clone, Copy, PartialEq, Eq, Debug)]
        struct $name($ty);

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(match self.0 {
                    $now => $current,
                    $then => $earlier,
                })
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                match &*s {
                    $current => Ok($name($now)),
                    $earlier => Ok($name($then)),
                    _ => Err(serde::de::Error::custom(concat!(
                        "format is not ",
                        $current,
                        " (nor ",
                        $earlier,
                        ")"
                    ))),
                }
            }
        }
    };
    ($name:ident, $value:expr) => {
        #[derive(Clone, Copy, PartialEq, Eq, Debug)]
        struct $name;

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str($value)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                (s == $value)
                    .then_some($name)
                    .ok_or_else(|| serde::de::Error::custom(concat!("format is not ", $value)))
            }
        }
    };
}
pub(crate) use format_tag;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_refuse_anything_that_could_be_a_path() {
        for bad in [
            "../../etc/x",
            "%2e%2e/x",
            "",
            "a\0b",
            "00112233445566778899AABBCCDDEEFF",
            "0011223344556677889900112233445",
        ] {
            assert!(bad.parse::<TransferId>().is_err(), "{bad:?}");
        }
        assert!("x".repeat(4096).parse::<TransferId>().is_err());
        let t = TransferId::generate();
        assert_eq!(t.to_string().parse::<TransferId>().expect("parses"), t);
        for bad in ["", "-a", "a-", "A", "a b", "a/b", "a+b", &"a".repeat(64)] {
            assert!(bad.parse::<AgencyId>().is_err(), "{bad:?}");
        }
        assert!("de-bka-cyber".parse::<AgencyId>().is_ok());
    }

    #[test]
    fn times_are_canonical() {
        let t: Timestamp = "2026-11-22T05:10:00Z".parse().expect("parses");
        assert_eq!(t.to_string(), "2026-11-22T05:10:00Z");
        for bad in [
            "2026-11-22T05:10:00+01:00",
            "2026-11-22T05:10:00.5Z",
            "2026-11-22t05:10:00z",
            "2026-11-22 05:10:00Z",
        ] {
            assert!(bad.parse::<Timestamp>().is_err(), "{bad}");
        }
        assert!("2027-02-29".parse::<CalendarDate>().is_err());
        assert!("2028-02-29".parse::<CalendarDate>().is_ok());
    }
}
