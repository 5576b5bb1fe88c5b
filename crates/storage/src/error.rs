//! Storage errors. Messages are Incus's where Incus has one; [`Error::is_bad_input`]
//! says which side is at fault.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Invalid storage pool name: {0}")]
    InvalidPoolName(String),
    #[error("Invalid volume name {name:?}: {reason}")]
    InvalidVolumeName { name: String, reason: &'static str },
    /// A config key the driver does not have.
    #[error("Invalid option {0:?}")]
    InvalidOption(String),
    /// Incus's `ErrUnknownDriver`.
    #[error("Unknown driver")]
    UnknownDriver(String),
    #[error("Source path '{}' doesn't exist", .0.display())]
    SourceMissing(PathBuf),
    #[error("Source path '{}' isn't empty", .0.display())]
    SourceNotEmpty(PathBuf),
    #[error("Source path '{}' is within the state directory", .0.display())]
    SourceInStateDir(PathBuf),
    #[error("Source path '{}' isn't an absolute path", .0.display())]
    SourceNotAbsolute(PathBuf),
    #[error("Source path '{}' isn't a directory", .0.display())]
    SourceNotDirectory(PathBuf),
    /// The pool's directory or its layout is missing (not created, or removed behind
    /// our back).
    #[error("Storage pool directory '{}' is missing or incomplete", .0.display())]
    PoolMissing(PathBuf),
    #[error("The storage pool is currently in use")]
    InUse { volumes: Vec<String> },
    #[error("Volume path {:?} already exists", .0.display().to_string())]
    VolumeExists(PathBuf),
    #[error("Storage volume not found")]
    VolumeNotFound(PathBuf),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// True when the request was at fault (400/404/409), false for the server's side.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, Error::Io { .. } | Error::PoolMissing(_))
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    pub(crate) fn errno(context: impl Into<String>) -> impl FnOnce(rustix::io::Errno) -> Error {
        let context = context.into();
        move |e| Error::Io {
            context,
            source: e.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
