//! Incus images without HTTP.
//!
//! - [`import()`]: an upload (a unified file, or the multipart `metadata` + `rootfs` the
//!   official client sends for a split image) streamed to disk with Incus's fingerprint,
//!   checked whole, and moved into place only when complete.
//! - [`export()`]: an image's files as the body of `GET /1.0/images/<fp>/export`; a
//!   member fetching an image from another feeds that body back into [`import()`] with
//!   the fingerprint as the expected one.
//! - [`unpack()`]: an image into a new container volume, with every member kept inside
//!   it (see [`unpack`](mod@unpack) for the rules).
//!
//! The route layer owns the HTTP side (headers, operations, the envelope); errors carry
//! Incus's messages and say whose fault they are ([`Error::is_bad_input`]).
//!
//! Files in an image directory:
//!
//! ```text
//!  <dir>/<fp>            unified image, or a split image's metadata tarball
//!  <dir>/<fp>.rootfs     a split image's root file system (tarball or squashfs)
//!  <dir>/.partial-*      an import under way (or cut short: see remove_partial)
//! ```

mod error;
pub mod export;
pub mod format;
pub mod import;
mod inspect;
pub mod metadata;
pub mod paths;
mod store;
pub mod unpack;

pub use error::{Error, Result};
pub use export::{export, ByteStream, Export};
pub use format::Format;
pub use import::{import, import_copy, ImageType, ImportOptions, Imported, Limits, Upload};
pub use metadata::{Metadata, Template};
pub use store::{check_fingerprint, delete, remove_partial, ImageFiles};
pub use unpack::{unpack, unpack_async, unpack_volume, Ownership, Progress, UnpackOptions, UnpackStats};
