//! Incus's expiry expressions (`3H`, `1d 12H`, `1y`): how long a token lives.
//!
//! An expression is fields `<digits><unit>` separated by single spaces, units `S`
//! (seconds), `M` (minutes), `H` (hours), `d` (days), `w` (weeks), `m` (months) and `y`
//! (years), each unit at most once. As in Incus, years and months count on the
//! calendar (a month from January 31 is March 3 or 2, as Go's `AddDate` normalises),
//! days and weeks as whole days, and the clock fields as durations.
//!
//! Two things Incus does not do: an expression may reach at most [`MAX_YEARS`] years
//! ahead ([`parse_bounded`], used where values are set), and [`Expiry::after`]
//! saturates at the latest representable time instead of overflowing, so no
//! expression, however large, can make the time arithmetic panic.

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime};

/// The furthest an expiry may reach when it is set.
pub const MAX_YEARS: i32 = 1000;

/// A parsed expiry expression. Every field is a count of its unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expiry {
    pub years: u64,
    pub months: u64,
    pub weeks: u64,
    pub days: u64,
    pub hours: u64,
    pub minutes: u64,
    pub seconds: u64,
}

/// Why an expression was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpiryError {
    #[error("Invalid expiry expression")]
    Invalid,
    #[error("Expiry must be at most {MAX_YEARS} years")]
    TooFar,
}

/// Parses an expression; an empty (or blank) one is `None`, no expiry.
pub fn parse(text: &str) -> Result<Option<Expiry>, ExpiryError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let mut e = Expiry::default();
    for field in text.split(' ') {
        let unit = field.chars().last().ok_or(ExpiryError::Invalid)?;
        let digits = &field[..field.len() - unit.len_utf8()];
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ExpiryError::Invalid);
        }
        // Incus reads each count into a Go int (64 bits).
        let n: u64 = digits
            .parse::<i64>()
            .ok()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or(ExpiryError::Invalid)?;
        let slot = match unit {
            'S' => &mut e.seconds,
            'M' => &mut e.minutes,
            'H' => &mut e.hours,
            'd' => &mut e.days,
            'w' => &mut e.weeks,
            'm' => &mut e.months,
            'y' => &mut e.years,
            _ => return Err(ExpiryError::Invalid),
        };
        // As Incus: a unit may not come back once it was given a count.
        if *slot > 0 {
            return Err(ExpiryError::Invalid);
        }
        *slot = n;
    }
    Ok(Some(e))
}

/// [`parse`], refusing expressions that reach more than [`MAX_YEARS`] years ahead.
pub fn parse_bounded(text: &str) -> Result<Option<Expiry>, ExpiryError> {
    let parsed = parse(text)?;
    if let Some(e) = parsed {
        let from = reference();
        let limit = from.replace_year(from.year() + MAX_YEARS).unwrap_or(from);
        if e.after(from) > limit {
            return Err(ExpiryError::TooFar);
        }
    }
    Ok(parsed)
}

/// The fixed start [`parse_bounded`] measures from, so the check is the same on every
/// member and every day.
fn reference() -> OffsetDateTime {
    Date::from_calendar_date(2000, Month::January, 1)
        .map(|d| d.midnight().assume_utc())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The latest time [`Expiry::after`] returns.
pub fn latest() -> OffsetDateTime {
    PrimitiveDateTime::MAX.assume_utc()
}

impl Expiry {
    /// When something made at `start` expires: never earlier than `start`, at most
    /// [`latest`].
    pub fn after(&self, start: OffsetDateTime) -> OffsetDateTime {
        self.try_after(start).unwrap_or_else(latest).max(start)
    }

    fn try_after(&self, start: OffsetDateTime) -> Option<OffsetDateTime> {
        // Years and months on the calendar, from the first of the month...
        let months = i128::from(start.year()) * 12
            + i128::from(u8::from(start.month()) - 1)
            + i128::from(self.years) * 12
            + i128::from(self.months);
        let year = i32::try_from(months.div_euclid(12)).ok()?;
        let month = Month::try_from(u8::try_from(months.rem_euclid(12) + 1).ok()?).ok()?;
        let first = Date::from_calendar_date(year, month, 1).ok()?;
        // ...then the day of the month and the days, normalised as Go's AddDate does.
        let days = u64::from(start.day() - 1)
            .checked_add(self.days)?
            .checked_add(self.weeks.checked_mul(7)?)?;
        let day_secs = i64::try_from(days.checked_mul(86_400)?).ok()?;
        let date = first.checked_add(time::Duration::seconds(day_secs))?;
        let at = date.with_time(start.time()).assume_offset(start.offset());
        // The clock fields as a duration.
        let secs = self
            .hours
            .checked_mul(3600)?
            .checked_add(self.minutes.checked_mul(60)?)?
            .checked_add(self.seconds)?;
        at.checked_add(time::Duration::seconds(i64::try_from(secs).ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::datetime;

    fn after(text: &str, start: OffsetDateTime) -> OffsetDateTime {
        parse(text).unwrap().unwrap().after(start)
    }

    #[test]
    fn fields_and_units() {
        let start = datetime!(2026-01-31 10:00 UTC);
        assert_eq!(after("3H", start), datetime!(2026-01-31 13:00 UTC));
        assert_eq!(after("1d 30M", start), datetime!(2026-02-01 10:30 UTC));
        assert_eq!(after("2w", start), datetime!(2026-02-14 10:00 UTC));
        assert_eq!(after("90S", start), datetime!(2026-01-31 10:01:30 UTC));
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("  ").unwrap(), None);
    }

    #[test]
    fn months_and_years_count_on_the_calendar_as_go_normalises() {
        // January 31 + 1 month: "February 31" is March 3 (2026 is not a leap year).
        let start = datetime!(2026-01-31 00:00 UTC);
        assert_eq!(after("1m", start), datetime!(2026-03-03 00:00 UTC));
        assert_eq!(
            after("1y", datetime!(2024-02-29 00:00 UTC)),
            datetime!(2025-03-01 00:00 UTC)
        );
        assert_eq!(after("13m", start), datetime!(2027-03-03 00:00 UTC));
        assert_eq!(
            after("1y 1m 1d", datetime!(2026-06-15 08:00 UTC)),
            datetime!(2027-07-16 08:00 UTC)
        );
    }

    #[test]
    fn malformed_expressions_are_refused() {
        for bad in [
            "3h",
            "H",
            "3",
            "3H 3H",
            "3H  1d",
            "+3H",
            "-3H",
            "3.5H",
            "1d,2H",
            "3 H",
            "3Hx",
            "٣H",
            "99999999999999999999S",
        ] {
            assert_eq!(parse(bad), Err(ExpiryError::Invalid), "{bad:?}");
        }
        // As Incus: a unit given a zero count may be given again.
        assert!(parse("0H 3H").is_ok());
    }

    #[test]
    fn set_values_reach_at_most_a_thousand_years() {
        assert!(parse_bounded("1000y").is_ok());
        assert!(parse_bounded("999y 11m").is_ok());
        assert_eq!(parse_bounded("1000y 1S"), Err(ExpiryError::TooFar));
        assert_eq!(parse_bounded("9999y"), Err(ExpiryError::TooFar));
        assert_eq!(parse_bounded("8000y"), Err(ExpiryError::TooFar));
        assert_eq!(parse_bounded("400000d"), Err(ExpiryError::TooFar));
        assert_eq!(parse_bounded("9223372036854775807S"), Err(ExpiryError::TooFar));
        assert_eq!(parse_bounded("3H").unwrap(), parse("3H").unwrap());
    }

    #[test]
    fn huge_values_saturate() {
        let start = datetime!(2026-01-01 00:00 UTC);
        assert_eq!(after("9999y", start), latest());
        assert_eq!(after("9223372036854775807S", start), latest());
        assert_eq!(
            after(
                "9223372036854775807y 9223372036854775807m 9223372036854775807w",
                start
            ),
            latest()
        );
        assert_eq!(after("1S", latest()), latest());
    }

    fn any_start() -> impl Strategy<Value = OffsetDateTime> {
        let min = PrimitiveDateTime::MIN.assume_utc().unix_timestamp();
        let max = PrimitiveDateTime::MAX.assume_utc().unix_timestamp();
        (min..=max).prop_map(|t| OffsetDateTime::from_unix_timestamp(t).unwrap())
    }

    fn any_expiry() -> impl Strategy<Value = Expiry> {
        let n = prop_oneof![0u64..100, 0u64..100_000, any::<u64>()];
        (
            n.clone(),
            n.clone(),
            n.clone(),
            n.clone(),
            n.clone(),
            n.clone(),
            n,
        )
            .prop_map(|(years, months, weeks, days, hours, minutes, seconds)| Expiry {
                years,
                months,
                weeks,
                days,
                hours,
                minutes,
                seconds,
            })
    }

    proptest! {
        /// Any text: a result, never a panic.
        #[test]
        fn parsing_never_panics(text in "\\PC{0,40}") {
            let _ = parse(&text);
            let _ = parse_bounded(&text);
        }

        /// Expressions built from the grammar parse to what they say.
        #[test]
        fn well_formed_expressions_parse(
            fields in proptest::sample::subsequence(vec!['S', 'M', 'H', 'd', 'w', 'm', 'y'], 1..=7),
            counts in proptest::collection::vec(1u64..1_000_000, 7),
        ) {
            let text: Vec<String> = fields.iter().zip(&counts).map(|(u, n)| format!("{n}{u}")).collect();
            let e = parse(&text.join(" ")).unwrap().unwrap();
            let total = e.years + e.months + e.weeks + e.days + e.hours + e.minutes + e.seconds;
            prop_assert_eq!(total, counts.iter().take(fields.len()).sum::<u64>());
        }

        /// The arithmetic never panics, never goes back in time, and saturates.
        #[test]
        fn after_is_total_and_monotonic(start in any_start(), e in any_expiry(), more in 0u64..1_000_000) {
            let end = e.after(start);
            prop_assert!(end >= start);
            prop_assert!(end <= latest().max(start));
            let later = Expiry { seconds: e.seconds.saturating_add(more), ..e };
            prop_assert!(later.after(start) >= end);
            let later = Expiry { years: e.years.saturating_add(more), ..e };
            prop_assert!(later.after(start) >= end);
        }
    }
}
