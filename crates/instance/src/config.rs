//! From Incus instance configuration to typed [`Limits`]: `limits.memory` and
//! `limits.cpu`, with Incus's syntax. Pure, so the rules are unit-tested here.

use std::collections::BTreeMap;

use crate::driver::{CpuLimit, Limits};
use crate::error::{Error, Result};

impl Limits {
    /// The limits named in an instance's (expanded) configuration. `host_memory` (bytes)
    /// turns a percentage into bytes.
    pub fn from_config(config: &BTreeMap<String, String>, host_memory: u64) -> Result<Limits> {
        let get = |key: &str| config.get(key).map(String::as_str).filter(|v| !v.is_empty());
        let memory = get("limits.memory")
            .map(|v| parse_memory(v, host_memory).map_err(|reason| invalid("limits.memory", v, reason)))
            .transpose()?;
        let cpu = get("limits.cpu")
            .map(|v| parse_cpu(v).map_err(|reason| invalid("limits.cpu", v, reason)))
            .transpose()?;
        Ok(Limits { memory, cpu })
    }
}

/// `security.privileged`, as Incus reads a boolean.
pub fn privileged(config: &BTreeMap<String, String>) -> Result<bool> {
    match config.get("security.privileged").map(String::as_str) {
        None | Some("") => Ok(false),
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(invalid("security.privileged", v, "expected true or false".into())),
        },
    }
}

fn invalid(key: &str, value: &str, reason: String) -> Error {
    Error::InvalidConfig {
        key: key.into(),
        value: value.into(),
        reason,
    }
}

/// Below this a container cannot even start its init.
const MIN_MEMORY: u64 = 1 << 20;

/// `512MiB`, `1GB`, `1073741824`, `50%`.
pub fn parse_memory(value: &str, host_memory: u64) -> std::result::Result<u64, String> {
    let bytes = if let Some(percent) = value.strip_suffix('%') {
        let p: u64 = percent
            .parse()
            .map_err(|_| "a percentage must be a whole number".to_string())?;
        if p == 0 || p > 100 {
            return Err("a percentage must be between 1 and 100".into());
        }
        u64::try_from(u128::from(host_memory) * u128::from(p) / 100).unwrap_or(u64::MAX)
    } else {
        parse_byte_size(value)?
    };
    if bytes < MIN_MEMORY {
        return Err("at least 1MiB is needed".into());
    }
    Ok(bytes)
}

/// Incus's byte sizes: a whole number, then a unit of [`api::units::byte_unit`].
pub fn parse_byte_size(value: &str) -> std::result::Result<u64, String> {
    let split = value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    if number.is_empty() {
        return Err("expected a number of bytes with an optional unit (e.g. 512MiB)".into());
    }
    let number: u64 = number
        .parse()
        .map_err(|_| "the number is too large".to_string())?;
    let multiplier = api::units::byte_unit(unit).ok_or_else(|| format!("unknown unit {unit:?}"))?;
    number
        .checked_mul(multiplier)
        .ok_or_else(|| "the size is too large".to_string())
}

/// The most CPUs a list may name.
const MAX_CPU: u32 = 8192;

/// `2` (a count) or `0-1,3` (the CPUs themselves).
pub fn parse_cpu(value: &str) -> std::result::Result<CpuLimit, String> {
    if value.bytes().all(|b| b.is_ascii_digit()) {
        let count: u32 = value.parse().map_err(|_| "too many CPUs".to_string())?;
        if count == 0 || count > MAX_CPU {
            return Err(format!("a CPU count must be between 1 and {MAX_CPU}"));
        }
        return Ok(CpuLimit::Count(count));
    }
    Ok(CpuLimit::Set(normalise_cpu_list(&parse_cpu_list(value)?)))
}

/// The CPUs of a list such as `0-1,3`, sorted, without repeats.
pub fn parse_cpu_list(value: &str) -> std::result::Result<Vec<u32>, String> {
    let bad = || format!("{value:?} is not a CPU count or a list of CPUs such as 0-1,3");
    let mut cpus = Vec::new();
    for part in value.split(',') {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (
                a.trim().parse::<u32>().map_err(|_| bad())?,
                b.trim().parse::<u32>().map_err(|_| bad())?,
            ),
            None => {
                let n = part.trim().parse::<u32>().map_err(|_| bad())?;
                (n, n)
            }
        };
        if first > last || last >= MAX_CPU {
            return Err(bad());
        }
        cpus.extend(first..=last);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// `[0, 1, 3]` as `0-1,3`.
pub fn normalise_cpu_list(cpus: &[u32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn byte_sizes_follow_incus_units() {
        assert_eq!(parse_byte_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_byte_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_byte_size("2kB"), Ok(2000));
        assert_eq!(parse_byte_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_byte_size("3B"), Ok(3));
        assert!(parse_byte_size("1KB").is_err(), "Incus spells it kB");
        assert!(parse_byte_size("MiB").is_err());
        assert!(parse_byte_size("-1").is_err());
        assert!(parse_byte_size("16EiB").is_err(), "overflow");
    }

    #[test]
    fn memory_limits() {
        assert_eq!(parse_memory("50%", 8 << 30), Ok(4 << 30));
        assert!(parse_memory("0%", 8 << 30).is_err());
        assert!(parse_memory("101%", 8 << 30).is_err());
        assert!(parse_memory("1kB", 8 << 30).is_err(), "too small to boot");
    }

    #[test]
    fn cpu_limits() {
        assert_eq!(parse_cpu("2"), Ok(CpuLimit::Count(2)));
        assert_eq!(parse_cpu("3,0-1,1"), Ok(CpuLimit::Set("0-1,3".into())));
        assert_eq!(parse_cpu("1-1"), Ok(CpuLimit::Set("1".into())));
        assert!(parse_cpu("0").is_err());
        assert!(parse_cpu("2-1").is_err());
        assert!(parse_cpu("a").is_err());
        assert!(parse_cpu("0-99999").is_err());
        assert_eq!(normalise_cpu_list(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
    }

    #[test]
    fn limits_from_config() {
        let limits =
            Limits::from_config(&cfg(&[("limits.memory", "256MiB"), ("limits.cpu", "1")]), 0).unwrap();
        assert_eq!(limits.memory, Some(256 << 20));
        assert_eq!(limits.cpu, Some(CpuLimit::Count(1)));
        assert_eq!(
            Limits::from_config(&cfg(&[("limits.memory", "")]), 0).unwrap(),
            Limits::default()
        );
        let err = Limits::from_config(&cfg(&[("limits.memory", "lots")]), 0).unwrap_err();
        assert!(err.to_string().contains("limits.memory"), "{err}");
        assert!(privileged(&cfg(&[("security.privileged", "true")])).unwrap());
        assert!(!privileged(&cfg(&[])).unwrap());
        assert!(privileged(&cfg(&[("security.privileged", "maybe")])).is_err());
    }
}
