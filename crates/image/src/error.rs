//! The crate's one error type. Messages are Incus's where Incus has one, so the route
//! that maps an [`Error`] to the envelope passes the text on unchanged;
//! [`Error::is_bad_input`] says which side is at fault (400 or 500).

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The first bytes match no format Incus knows.
    #[error("Unsupported compression")]
    UnsupportedCompression,
    /// A format Incus knows but stapes does not read (lz4, qcow2, vmdk), or a virtual
    /// machine image.
    #[error("Unsupported image format: {0}")]
    UnsupportedFormat(String),
    #[error("Metadata tarball is missing metadata.yaml")]
    MissingMetadata,
    #[error("Image is missing a rootfs")]
    MissingRootfs,
    #[error("Architecture isn't supported: {0}")]
    Architecture(String),
    #[error("Missing creation date")]
    MissingCreationDate,
    /// `metadata.yaml` is not YAML of the expected shape, or too large.
    #[error("Failed to parse metadata.yaml: {0}")]
    Metadata(String),
    /// The archive ends early, fails its checksum, or is otherwise unreadable.
    #[error("Invalid image file ({part}): {detail}")]
    Corrupt { part: &'static str, detail: String },
    #[error("fingerprints don't match, got {got} expected {expected}")]
    FingerprintMismatch { got: String, expected: String },
    #[error("Invalid multipart image")]
    InvalidMultipart,
    #[error("Image upload is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    /// The archive holds more than the bound allows once decompressed.
    #[error("Image unpacks to more than the limit of {limit} bytes")]
    UnpackedTooLarge { limit: u64 },
    /// The body could not be read to its end (the client went away, a malformed chunk).
    #[error("Failed reading the image upload: {0}")]
    Body(String),
    /// The image's files are already in the directory.
    #[error("Image with same fingerprint already exists")]
    Exists { fingerprint: String },
    /// No files for this fingerprint in the directory.
    #[error("Image {fingerprint:?} not found")]
    NotFound { fingerprint: String },
    /// An archive member that would land outside the target or is not allowed in a
    /// container (see `unpack`).
    #[error("Refusing to unpack {path:?}: {reason}")]
    Unsafe { path: String, reason: String },
    /// The unpack target is not a new, empty directory.
    #[error("Unpack target {0} is not an empty directory")]
    TargetNotEmpty(PathBuf),
    /// A helper program (sqfs2tar) failed.
    #[error("{tool} failed: {detail}")]
    Tool { tool: &'static str, detail: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// True when the request was at fault (400), false for the server's side (500).
    pub fn is_bad_input(&self) -> bool {
        !matches!(
            self,
            Error::Io { .. } | Error::Tool { .. } | Error::NotFound { .. }
        )
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
