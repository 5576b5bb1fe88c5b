//! What a member needs from an instance runtime, behind one small trait.
//!
//! ```text
//!  server (routes, operations)            Arc<dyn Driver>: create, start, stop, restart,
//!        │                                freeze, unfreeze, state, set_limits, delete,
//!        v                                list, log, exec, fs, read_file, write_file
//!  ┌──────────────┬───────────────┐
//!  │ LxcDriver    │ FakeDriver    │       chosen per member at start (`--driver`)
//!  │ lxc-* tools, │ in-process,   │
//!  │ cgroups,     │ rootfs dirs,  │       both pass the same conformance suite
//!  │ forkfile     │ built-ins     │       (`conformance`, feature `testing`)
//!  └──────┬───────┴──────┬────────┘
//!         └── fs::RootFs ┘                file access, every path resolved inside
//! ```
//!
//! - [`driver`]: the trait and the types that cross it; [`error`]: typed errors.
//! - [`lxc`]: Debian's LXC tools drive real system containers (the only code that runs
//!   them); [`forkfile`]: the helper process for file access inside a running container.
//! - [`fake`]: simulated containers for tests of placement, forwarding and lists on any
//!   machine, without root.
//! - [`fs`]: the file operations both use, resolved with `openat2(RESOLVE_IN_ROOT)`;
//!   [`sftp`]: an SFTP v3 server over them (in the helper, or in process).
//! - [`config`]: Incus's `limits.*` and `security.privileged` values, parsed.
//! - [`signals`]: the daemon catches, at start, what it was started ignoring, so that
//!   the tools and the containers' commands start with every signal at its default.

pub mod config;
pub mod driver;
pub mod error;
pub mod execd;
pub mod fake;
pub mod fds;
pub mod forkfile;
pub mod fs;
mod local;
pub mod lxc;
pub mod sftp;
pub mod signals;
mod store;

#[cfg(feature = "testing")]
pub mod conformance;

use std::path::Path;
use std::sync::Arc;

pub use driver::{
    BoxFuture, Conn, Control, CpuLimit, CreateSpec, Driver, Duplex, ExecSpec, Limits, Listed, Log, Process,
    Reader, SftpServer, State, Status, Stop, WindowSize, Writer,
};
pub use error::{Error, FsError, FsErrorKind, Result};
pub use fake::FakeDriver;
pub use fs::{DirEntry, FileStat, FileType, FsOp, FsReply, SetAttrs, WriteSpec};
pub use lxc::{LxcDriver, LxcOptions, DEFAULT_LXCFS};

/// Which runtime a member uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    /// Debian's LXC tools: real system containers.
    Lxc,
    /// In-process simulation, for tests.
    Fake,
}

impl DriverKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DriverKind::Lxc => "lxc",
            DriverKind::Fake => "fake",
        }
    }
}

/// The driver of a member whose state directory is `state_dir` (and, for LXC, lxcfs at
/// `lxcfs` if it runs there): LXC keeps its
/// containers in `STATE_DIR/lxc` (and enters running ones through `/proc/self/exe
/// forkfile` and `/proc/self/exe execd`, i.e. the daemon's own binary), the fake in `STATE_DIR/fake`. Nothing is
/// created or checked until the first container is made, so a member starts on a host
/// without LXC.
pub fn open(kind: DriverKind, state_dir: &Path, lxcfs: &Path) -> Arc<dyn Driver> {
    match kind {
        DriverKind::Lxc => {
            let helper = forkfile::Helper {
                program: "/proc/self/exe".into(),
                args: vec!["forkfile".into()],
            };
            Arc::new(LxcDriver::new(LxcOptions {
                dir: state_dir.join("lxc"),
                execd: Some(helper.execd()),
                helper,
                lxcfs: lxcfs.to_path_buf(),
            }))
        }
        DriverKind::Fake => Arc::new(FakeDriver::new(state_dir.join("fake"))),
    }
}

/// Checks an instance name as Incus does: 1 to 63 letters, digits and hyphens, not
/// starting with a digit or a hyphen, not ending with a hyphen. A valid name is safe in
/// paths and cgroup names.
pub fn validate_name(name: &str) -> Result<()> {
    let invalid = |reason| {
        Err(Error::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 63 {
        return invalid("Name must be 1-63 characters long");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return invalid("Name can only contain alphanumeric and hyphen characters");
    }
    if name.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
        return invalid("Name must not start with a digit or hyphen");
    }
    if name.ends_with('-') {
        return invalid("Name must not end with a hyphen");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_incus_rules() {
        for ok in ["c1", "a", "web-01", &"x".repeat(63)] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "",
            "1c",
            "-c",
            "c-",
            "c_1",
            "c.1",
            "../x",
            "c/1",
            "c 1",
            &"x".repeat(64),
            "ü",
        ] {
            assert!(
                matches!(validate_name(bad), Err(Error::InvalidName { .. })),
                "{bad:?}"
            );
        }
    }
}
