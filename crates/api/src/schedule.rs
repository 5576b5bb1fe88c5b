//! Incus's `snapshots.schedule`: when an instance's member takes a scheduled snapshot.
//!
//! A schedule is a cron expression (`<minute> <hour> <day of month> <month> <day of
//! week>`), an alias (`@hourly`, `@daily`, `@midnight`, `@weekly`, `@monthly`,
//! `@annually`, `@yearly`, `@never`), or several of them separated by `", "`; empty
//! means none. As in Incus, an alias does not fire at minute 0 for every instance: its
//! minute (and hour) come from the instance, so a member's instances are not all
//! snapshotted at once; here from a hash of the instance's name, stable across restarts
//! and members.
//!
//! Fields take `*`, `N`, `A-B`, `*/S`, `A-B/S`, `A/S` and comma lists; day of week 0
//! or 7 is Sunday. When both day fields are restricted, either matching is enough
//! (cron's rule). Pure: the caller gives the minute to test.

use time::OffsetDateTime;

/// A parsed schedule: any of its entries matching a minute makes it due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    minute: Vec<bool>,
    hour: Vec<bool>,
    dom: Vec<bool>,
    month: Vec<bool>,
    dow: Vec<bool>,
    dom_any: bool,
    dow_any: bool,
}

/// Why a schedule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid snapshot schedule {spec:?}: {why}")]
pub struct ScheduleError {
    pub spec: String,
    pub why: String,
}

/// Parses `spec` for the instance `subject` (which places the aliases' minute and
/// hour); an empty spec (or `@never`) is a schedule that is never due.
pub fn parse(spec: &str, subject: &str) -> Result<Schedule, ScheduleError> {
    let fail = |why: String| ScheduleError {
        spec: spec.to_string(),
        why,
    };
    let parts: Vec<&str> = if spec.contains(", ") {
        spec.split(',').map(str::trim).filter(|p| !p.is_empty()).collect()
    } else if spec.trim().is_empty() {
        Vec::new()
    } else {
        vec![spec.trim()]
    };
    let (minute, hour) = spread(subject);
    let mut entries = Vec::new();
    for p in parts {
        let cron = match p.to_ascii_lowercase().as_str() {
            // `@startup` is a snapshot when the instance starts, never due by time.
            "@never" | "@startup" => continue,
            "@hourly" => format!("{minute} * * * *"),
            "@daily" => format!("{minute} {hour} * * *"),
            "@midnight" => format!("{minute} 0 * * *"),
            "@weekly" => format!("{minute} {hour} * * 0"),
            "@monthly" => format!("{minute} {hour} 1 * *"),
            "@annually" | "@yearly" => format!("{minute} {hour} 1 1 *"),
            a if a.starts_with('@') => return Err(fail(format!("unknown alias {a:?}"))),
            _ => p.to_string(),
        };
        entries.push(entry(&cron).map_err(fail)?);
    }
    Ok(Schedule { entries })
}

/// The minute and hour an alias fires at for `subject` (FNV-1a of the name).
fn spread(subject: &str) -> (u64, u64) {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in subject.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % 60, (h / 60) % 24)
}

fn entry(cron: &str) -> Result<Entry, String> {
    let fields: Vec<&str> = cron.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!("expected 5 fields, got {}", fields.len()));
    }
    let mut dow = field(fields[4], 0, 7)?;
    if dow[7] {
        dow[0] = true;
    }
    Ok(Entry {
        minute: field(fields[0], 0, 59)?,
        hour: field(fields[1], 0, 23)?,
        dom: field(fields[2], 1, 31)?,
        month: field(fields[3], 1, 12)?,
        dow,
        dom_any: fields[2] == "*",
        dow_any: fields[4] == "*",
    })
}

/// One field as a table of the values it matches (indexed by value).
fn field(text: &str, min: u32, max: u32) -> Result<Vec<bool>, String> {
    let mut out = vec![false; max as usize + 1];
    let num = |s: &str| -> Result<u32, String> {
        let n: u32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
        if n < min || n > max {
            return Err(format!("{n} is outside {min}-{max}"));
        }
        Ok(n)
    };
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let s: u32 = s.parse().map_err(|_| format!("{s:?} is not a step"))?;
                if s == 0 {
                    return Err("a step of 0".into());
                }
                (r, s)
            }
            None => (item, 1),
        };
        let (from, to) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (num(a)?, num(b)?);
            if a > b {
                return Err(format!("range {a}-{b} goes backwards"));
            }
            (a, b)
        } else {
            let a = num(range)?;
            (a, if item.contains('/') { max } else { a })
        };
        let mut v = from;
        while v <= to {
            out[v as usize] = true;
            v += step;
        }
    }
    Ok(out)
}

impl Schedule {
    /// Whether the schedule fires in the minute holding `at` (UTC).
    pub fn due(&self, at: OffsetDateTime) -> bool {
        let at = at.to_offset(time::UtcOffset::UTC);
        let (minute, hour) = (at.minute() as usize, at.hour() as usize);
        let (dom, month) = (at.day() as usize, u8::from(at.month()) as usize);
        let dow = at.weekday().number_days_from_sunday() as usize;
        self.entries.iter().any(|e| {
            let day = match (e.dom_any, e.dow_any) {
                (true, true) => true,
                (false, true) => e.dom[dom],
                (true, false) => e.dow[dow],
                (false, false) => e.dom[dom] || e.dow[dow],
            };
            e.minute[minute] && e.hour[hour] && e.month[month] && day
        })
    }

    /// Whether it can ever fire.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn t10_cron_fields() {
        let s = parse("*/15 2-4 * * *", "c1").unwrap();
        assert!(s.due(datetime!(2026-03-01 03:30 UTC)));
        assert!(!s.due(datetime!(2026-03-01 03:31 UTC)));
        assert!(!s.due(datetime!(2026-03-01 05:00 UTC)));
        let s = parse("0 0 1,15 * *", "c1").unwrap();
        assert!(s.due(datetime!(2026-03-15 00:00 UTC)));
        assert!(!s.due(datetime!(2026-03-16 00:00 UTC)));
        // Sunday as 0 and as 7; both day fields restricted: either one.
        for spec in ["30 6 * * 0", "30 6 * * 7"] {
            assert!(parse(spec, "c1").unwrap().due(datetime!(2026-12-06 06:30 UTC)));
        }
        let s = parse("0 0 13 * 5", "c1").unwrap();
        assert!(s.due(datetime!(2026-02-13 00:00 UTC)));
        assert!(s.due(datetime!(2026-02-06 00:00 UTC)));
        assert!(!s.due(datetime!(2026-02-07 00:00 UTC)));
        let s = parse("5/20 * * * *", "c1").unwrap();
        assert!(s.due(datetime!(2026-02-07 00:45 UTC)));
        assert!(!s.due(datetime!(2026-02-07 00:00 UTC)));
    }

    #[test]
    fn t10_aliases_fire_once_per_period_at_the_instances_minute() {
        for (alias, minutes) in [
            ("@hourly", 24 * 60),
            ("@daily", 24 * 60),
            ("@weekly", 7 * 24 * 60),
        ] {
            let s = parse(alias, "c1").unwrap();
            let start = datetime!(2026-01-04 00:00 UTC);
            let fired = (0..minutes)
                .filter(|m| s.due(start + time::Duration::minutes(*m)))
                .count();
            let expected = if alias == "@hourly" { 24 } else { 1 };
            assert_eq!(fired, expected, "{alias}");
        }
        assert!(parse("@never", "c1").unwrap().is_empty());
        assert!(parse("", "c1").unwrap().is_empty());
        let two = parse("@hourly, 0 0 * * *", "c1").unwrap();
        assert!(two.due(datetime!(2026-01-01 00:00 UTC)));
    }

    #[test]
    fn t90_bad_schedules_are_refused() {
        for bad in [
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "*/0 * * * *",
            "5-1 * * * *",
            "a * * * *",
            "@often",
            "* * * * 8",
        ] {
            assert!(parse(bad, "c1").is_err(), "{bad:?}");
        }
    }
}
