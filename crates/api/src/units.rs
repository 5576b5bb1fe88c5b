//! Incus's byte sizes, as Go's `units.ParseByteSizeString` reads them: `512MiB`, `1GB`,
//! `4096`. One table of units for the member that enforces `limits.memory` and for the
//! client that prints it, so both read a size alike.

/// The multiplier of a byte-size unit: nothing, `B` or ` bytes`, a decimal unit (`kB`,
/// `MB`, ..., `EB`) or a binary one (`KiB`, ..., `EiB`). Incus spells kilo `kB`: `KB` is
/// not a unit.
pub fn byte_unit(unit: &str) -> Option<u64> {
    Some(match unit {
        "" | "B" | " bytes" => 1,
        "kB" => 1000,
        "MB" => 1000u64.pow(2),
        "GB" => 1000u64.pow(3),
        "TB" => 1000u64.pow(4),
        "PB" => 1000u64.pow(5),
        "EB" => 1000u64.pow(6),
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "PiB" => 1 << 50,
        "EiB" => 1 << 60,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_units_as_incus_spells_them() {
        assert_eq!(byte_unit(""), Some(1));
        assert_eq!(byte_unit(" bytes"), Some(1));
        assert_eq!(byte_unit("kB"), Some(1000));
        assert_eq!(byte_unit("MiB"), Some(1 << 20));
        assert_eq!(byte_unit("EB"), Some(1_000_000_000_000_000_000));
        assert_eq!(byte_unit("KB"), None);
        assert_eq!(byte_unit("mib"), None);
    }
}
