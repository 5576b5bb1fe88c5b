//! What can go wrong in a driver, typed so that the server maps each case to the Incus
//! message and status code in one place.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A failed driver call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Invalid instance name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("Instance {0:?} not found")]
    NotFound(String),
    #[error("Instance {0:?} already exists")]
    AlreadyExists(String),
    /// Start of a running instance.
    #[error("The instance is already running")]
    AlreadyRunning(String),
    /// Stop, freeze, exec or a limit change of a stopped instance.
    #[error("Instance is not running")]
    NotRunning(String),
    /// Delete of an instance that is not stopped.
    #[error("Instance is running")]
    Running(String),
    /// Exec in, or freeze of, a frozen instance.
    #[error("Instance is frozen")]
    Frozen(String),
    /// Unfreeze of an instance that is not frozen.
    #[error("Instance is not frozen")]
    NotFrozen(String),
    #[error("Invalid value {value:?} for {key}: {reason}")]
    InvalidConfig {
        key: String,
        value: String,
        reason: String,
    },
    /// The host lacks what the request needs (a cgroup controller, a tool).
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{what} did not finish within {after:?}")]
    Timeout { what: String, after: Duration },
    /// An LXC tool or helper failed; `detail` says how (its stderr, or the container log).
    #[error("{command} failed: {detail}")]
    Tool { command: String, detail: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

/// What kind of file-access failure, as the SFTP and files APIs need to tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsErrorKind {
    NotFound,
    PermissionDenied,
    AlreadyExists,
    NotADirectory,
    IsADirectory,
    DirectoryNotEmpty,
    /// Not a path the container can have: empty, a NUL byte, not UTF-8.
    InvalidPath,
    /// A read or attribute change of something that is not a regular file or directory
    /// (device, FIFO, socket), refused so that no device is opened for a client.
    NotRegular,
    /// Too many symbolic links, or a link into `/proc/*/fd` style magic.
    Loop,
    Other,
}

/// A failed file access inside an instance.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{path}: {message}")]
pub struct FsError {
    pub kind: FsErrorKind,
    /// The path as the caller gave it.
    pub path: String,
    pub message: String,
}

impl FsError {
    pub fn new(kind: FsErrorKind, path: &str, message: impl Into<String>) -> FsError {
        FsError {
            kind,
            path: path.to_string(),
            message: message.into(),
        }
    }

    /// From a system call's error number.
    pub fn from_errno(path: &str, err: rustix::io::Errno) -> FsError {
        use rustix::io::Errno;
        let kind = match err {
            Errno::NOENT => FsErrorKind::NotFound,
            Errno::ACCESS | Errno::PERM | Errno::ROFS => FsErrorKind::PermissionDenied,
            Errno::EXIST => FsErrorKind::AlreadyExists,
            Errno::NOTDIR => FsErrorKind::NotADirectory,
            Errno::ISDIR => FsErrorKind::IsADirectory,
            Errno::NOTEMPTY => FsErrorKind::DirectoryNotEmpty,
            Errno::LOOP | Errno::XDEV => FsErrorKind::Loop,
            Errno::NAMETOOLONG | Errno::INVAL => FsErrorKind::InvalidPath,
            _ => FsErrorKind::Other,
        };
        FsError::new(kind, path, std::io::Error::from(err).to_string())
    }

    /// From a standard I/O error (a read or write in the middle of a file).
    pub fn from_io(path: &str, err: &std::io::Error) -> FsError {
        match err.raw_os_error() {
            Some(code) => FsError::from_errno(path, rustix::io::Errno::from_raw_os_error(code)),
            None => FsError::new(FsErrorKind::Other, path, err.to_string()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
