//! Bounded, failure-tolerant reads of procfs, sysfs and cgroupfs files.
//!
//! These files are small, but a read of a file that is not what it should be (a FIFO
//! bind-mounted over it, a huge file in a container's view of `/proc`) must neither block
//! the caller for long nor fill its memory, so every read stops at a bound. A missing or
//! unreadable file is `None`: callers degrade to an empty or zero value.

use std::io::Read;
use std::path::Path;

/// Upper bound on what is read from one procfs, sysfs, cgroupfs or udev file.
pub const MAX_READ: u64 = 64 * 1024;

/// The file's text (invalid UTF-8 replaced), at most `limit` bytes of it.
pub fn read_bounded(path: &Path, limit: u64) -> Option<String> {
    let file = std::fs::File::open(path).ok()?;
    let mut buf = Vec::new();
    file.take(limit).read_to_end(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// The file's text without surrounding white space, bounded by [`MAX_READ`].
pub fn read_trimmed(path: &Path) -> Option<String> {
    read_bounded(path, MAX_READ).map(|text| text.trim().to_string())
}

/// A file holding one unsigned number (`pids.current`, `memory.usage_in_bytes`).
pub fn read_u64(path: &Path) -> Option<u64> {
    read_trimmed(path)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_trimmed_bounded_and_tolerant() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, " 42\n").unwrap();
        assert_eq!(read_trimmed(&f).as_deref(), Some("42"));
        assert_eq!(read_u64(&f), Some(42));
        assert_eq!(read_bounded(&f, 2).as_deref(), Some(" 4"));
        assert_eq!(read_trimmed(&dir.path().join("missing")), None);
        std::fs::write(&f, "max\n").unwrap();
        assert_eq!(read_u64(&f), None);
    }
}
