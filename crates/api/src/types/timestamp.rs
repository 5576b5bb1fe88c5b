//! Go's `time.Time` as Incus puts it on the wire.
//!
//! Incus encodes times with Go's `RFC3339Nano` layout: the fraction of a second with its
//! trailing zeros cut (`20:15:56.78189034Z`), no fraction at all on a whole second, and
//! `0001-01-01T00:00:00Z` (Go's zero time) for "never". Clients compare those strings
//! and print "never" for the zero time, so [`Timestamp`] writes exactly that layout, and
//! reads any RFC 3339 time (and `null`, which Go reads as the zero time).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::macros::datetime;
use time::{OffsetDateTime, UtcOffset};

/// A point in time, or Go's zero time for "never" (the [`Default`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub OffsetDateTime);

impl Timestamp {
    /// Go's zero time, `0001-01-01T00:00:00Z`: what Incus writes for "never".
    pub const ZERO: Timestamp = Timestamp(datetime!(0001-01-01 0:00 UTC));

    pub fn now() -> Timestamp {
        Timestamp(OffsetDateTime::now_utc())
    }

    /// Whether this is Go's zero time ("never").
    pub fn is_zero(&self) -> bool {
        *self == Timestamp::ZERO
    }

    /// Parses an RFC 3339 time.
    pub fn parse(s: &str) -> Option<Timestamp> {
        OffsetDateTime::parse(s, &Rfc3339).ok().map(Timestamp)
    }

    /// The time in UTC.
    pub fn utc(&self) -> OffsetDateTime {
        self.0.to_offset(UtcOffset::UTC)
    }
}

impl Default for Timestamp {
    fn default() -> Timestamp {
        Timestamp::ZERO
    }
}

impl From<OffsetDateTime> for Timestamp {
    fn from(t: OffsetDateTime) -> Timestamp {
        Timestamp(t)
    }
}

/// Go's `RFC3339Nano` layout (`2006-01-02T15:04:05.999999999Z07:00`).
impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.0;
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        )?;
        let nanos = t.nanosecond();
        if nanos != 0 {
            let digits = format!("{nanos:09}");
            write!(f, ".{}", digits.trim_end_matches('0'))?;
        }
        let offset = t.offset();
        if offset.is_utc() {
            f.write_str("Z")
        } else {
            let (h, m, _) = offset.as_hms();
            let sign = if offset.is_negative() { '-' } else { '+' };
            write!(f, "{sign}{:02}:{:02}", h.unsigned_abs(), m.unsigned_abs())
        }
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(Timestamp::ZERO),
            Some(s) => Timestamp::parse(&s)
                .ok_or_else(|| serde::de::Error::custom(format!("invalid RFC 3339 time {s:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_go_layout_round_trips() {
        for s in [
            "2026-12-01T20:15:56.78189034Z",
            "2026-12-01T20:15:30Z",
            "0001-01-01T00:00:00Z",
            "2026-11-24T15:46:31.230929536Z",
            "2026-11-24T15:46:31.1+02:00",
            "2026-11-24T15:46:31-05:30",
        ] {
            assert_eq!(Timestamp::parse(s).unwrap().to_string(), s);
            let json = serde_json::to_string(&Timestamp::parse(s).unwrap()).unwrap();
            assert_eq!(json, format!("\"{s}\""));
        }
    }

    #[test]
    fn t10_zero_time_is_never() {
        assert!(Timestamp::default().is_zero());
        let t: Timestamp = serde_json::from_str("null").unwrap();
        assert!(t.is_zero());
        assert!(!Timestamp::now().is_zero());
        assert!(serde_json::from_str::<Timestamp>("\"yesterday\"").is_err());
    }
}
