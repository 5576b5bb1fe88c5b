//! Streaming import: an upload becomes `<dir>/<fingerprint>` (and `<fingerprint>.rootfs`
//! for a split image), checked whole, or nothing at all.
//!
//! ```text
//!  body chunks ──(async, bounded channel)──> writer thread: sha256 + temp file
//!                                                 │ (same Bytes, bounded channel)
//!                                                 v
//!                                          reader thread: decompress, walk the
//!                                          tar to its end, read metadata.yaml
//!  end of body ─> fingerprint (checked against the expected one) ─> metadata checks
//!             ─> rename into place (rootfs first; `<fp>` last, never replacing)
//! ```
//!
//! At most a few chunks are in memory at once (the channels hold `CHANNEL_CHUNKS`
//! each), whatever the image's size. A copy of an image the cluster already holds
//! ([`import_copy`]) is only hashed and written, not read through. The sha256 is Incus's fingerprint: of the file as
//! uploaded, or of the metadata bytes followed by the rootfs bytes. Any failure drops
//! the temporary files (`.partial-*`, removed on drop); [`crate::remove_partial`] clears those a
//! crash left behind.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::mpsc as std_mpsc;

use aws_lc_rs::digest;
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::inspect::{self, Found, Part};
use crate::metadata::Metadata;
use crate::store::{self, ImageFiles, TempFile};

/// Chunks in flight between the body and the writer, and between the writer and the
/// reader thread (at most about `2 * CHANNEL_CHUNKS * CHUNK` bytes in memory).
const CHANNEL_CHUNKS: usize = 4;

/// The size small body chunks are gathered to before they are written.
const CHUNK: usize = 128 << 10;

/// Bounds of an import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most the upload may hold (both parts together for a split image).
    pub max_size: u64,
    /// The most the archive may hold once decompressed (a bound on the work a small
    /// upload can cause).
    pub max_unpacked: u64,
}

impl Default for Limits {
    /// 32 GiB uploaded, 256 GiB decompressed.
    fn default() -> Self {
        Limits {
            max_size: 32 << 30,
            max_unpacked: 256 << 30,
        }
    }
}

/// What the request says about the upload besides its body.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    pub limits: Limits,
    /// `X-Incus-fingerprint`, or the fingerprint asked of another member: the upload
    /// is refused unless its sha256 is this.
    pub expected_fingerprint: Option<String>,
    /// `X-Incus-Filename`: the image's `filename` for a unified upload (a split one
    /// takes the rootfs part's file name, as Incus does).
    pub filename: Option<String>,
}

/// An upload's body, as the request's `Content-Type` says.
pub enum Upload<S> {
    /// One file: a unified image.
    Unified(S),
    /// `multipart/form-data`: parts `metadata` then `rootfs` (a split image).
    Multipart { boundary: String, body: S },
}

impl<S> Upload<S> {
    /// Chooses from the `Content-Type` header as Incus does: `multipart/form-data` is a
    /// split image, anything else (or none) a unified one.
    pub fn from_content_type(content_type: Option<&str>, body: S) -> Result<Self> {
        let Some(ct) = content_type else {
            return Ok(Upload::Unified(body));
        };
        let media = ct.split(';').next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("multipart/form-data") {
            return Ok(Upload::Unified(body));
        }
        let boundary = multer::parse_boundary(ct).map_err(|_| Error::InvalidMultipart)?;
        Ok(Upload::Multipart { boundary, body })
    }
}

/// The image type (`type` in the image record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageType {
    Container,
}

impl ImageType {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageType::Container => "container",
        }
    }
}

/// An image now in the directory: the fields of the Incus image record that come from
/// the upload.
#[derive(Debug, Clone)]
pub struct Imported {
    pub fingerprint: String,
    pub filename: String,
    /// Bytes of the upload (both parts for a split image).
    pub size: u64,
    pub image_type: ImageType,
    /// As `metadata.yaml` writes it.
    pub architecture: String,
    pub created_at: Option<OffsetDateTime>,
    pub expires_at: Option<OffsetDateTime>,
    pub properties: BTreeMap<String, String>,
    pub metadata: Metadata,
    pub files: ImageFiles,
}

/// Receives an upload into `dir` (which must exist), checks it, and moves it into
/// place. On any error nothing is left in `dir`.
pub async fn import<S, E>(dir: &Path, upload: Upload<S>, opts: &ImportOptions) -> Result<Imported>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let received = receive_upload(dir, upload, opts, true).await?;
    check_expected(&received.fingerprint, opts)?;
    let fingerprint = received.fingerprint;
    match received.parts {
        Parts::Unified(mut part) => {
            let found = part.found_whole(Part::Unified, opts).await?;
            if found.has_vm_disk && !found.has_rootfs {
                return Err(Error::UnsupportedFormat("virtual-machine image".into()));
            }
            if !found.has_rootfs {
                return Err(Error::MissingRootfs);
            }
            let metadata = found.metadata.ok_or(Error::MissingMetadata)?;
            let files = store::persist(dir, &fingerprint, part.file, None)?;
            Ok(record(
                fingerprint,
                opts.filename.clone().unwrap_or_default(),
                part.size,
                metadata,
                files,
            ))
        }
        Parts::Split {
            mut meta,
            mut rootfs,
            filename,
        } => {
            let size = meta.size + rootfs.size;
            let found = meta.found_whole(Part::Metadata, opts).await?;
            let metadata = found.metadata.ok_or(Error::MissingMetadata)?;
            rootfs.found_whole(Part::Rootfs, opts).await?;
            let files = store::persist(dir, &fingerprint, meta.file, Some(rootfs.file))?;
            Ok(record(fingerprint, filename, size, metadata, files))
        }
    }
}

/// Receives a copy of an image this cluster has already accepted (another member's
/// export of it) into `dir`, and moves it into place once its sha256 is `fingerprint`.
/// Only the sha256 is checked: the bytes are the ones the first member read through and
/// accepted, so reading them through again would prove nothing more. On any error
/// nothing is left in `dir`.
pub async fn import_copy<S, E>(
    dir: &Path,
    upload: Upload<S>,
    fingerprint: &str,
    limits: Limits,
) -> Result<ImageFiles>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    store::check_fingerprint(fingerprint)?;
    let opts = ImportOptions {
        limits,
        expected_fingerprint: Some(fingerprint.to_string()),
        filename: None,
    };
    let received = receive_upload(dir, upload, &opts, false).await?;
    check_expected(&received.fingerprint, &opts)?;
    match received.parts {
        Parts::Unified(part) => store::persist(dir, fingerprint, part.file, None),
        Parts::Split { meta, rootfs, .. } => store::persist(dir, fingerprint, meta.file, Some(rootfs.file)),
    }
}

/// An upload received whole into temporary files, not yet checked or placed.
struct ReceivedUpload {
    /// The sha256 of the upload (of both parts, for a split image).
    fingerprint: String,
    parts: Parts,
}

enum Parts {
    Unified(Received),
    /// A split image, and the rootfs part's file name.
    Split {
        meta: Received,
        rootfs: Box<Received>,
        filename: String,
    },
}

/// Receives an upload's parts into temporary files in `dir`, hashing them, and reading
/// them through when `inspect` is set.
async fn receive_upload<S, E>(
    dir: &Path,
    upload: Upload<S>,
    opts: &ImportOptions,
    inspect: bool,
) -> Result<ReceivedUpload>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let mut budget = opts.limits.max_size;
    let hash = digest::Context::new(&digest::SHA256);
    let inspect_as = |part: Part| inspect.then_some(part);
    match upload {
        Upload::Unified(mut body) => {
            let mut source = BodySource(&mut body);
            let part = receive(
                dir,
                &mut source,
                hash,
                inspect_as(Part::Unified),
                &mut budget,
                opts,
            )
            .await?;
            Ok(ReceivedUpload {
                fingerprint: hex::encode(part.hash.clone().finish().as_ref()),
                parts: Parts::Unified(part),
            })
        }
        Upload::Multipart { boundary, body } => {
            let constraints = multer::Constraints::new().size_limit(
                multer::SizeLimit::new().whole_stream(opts.limits.max_size.saturating_add(1 << 20)),
            );
            let mut form = multer::Multipart::with_constraints(body, boundary, constraints);
            let mut field = next_field(&mut form).await?;
            if field.name() != Some("metadata") {
                return Err(Error::InvalidMultipart);
            }
            let meta = receive(
                dir,
                &mut FieldSource(&mut field),
                hash,
                inspect_as(Part::Metadata),
                &mut budget,
                opts,
            )
            .await?;
            drop(field);
            let mut field = next_field(&mut form).await?;
            match field.name() {
                Some("rootfs") => {}
                Some("rootfs.img") => return Err(Error::UnsupportedFormat("virtual-machine image".into())),
                _ => return Err(Error::InvalidMultipart),
            }
            let filename = field.file_name().unwrap_or_default().to_string();
            let rootfs = receive(
                dir,
                &mut FieldSource(&mut field),
                meta.hash.clone(),
                inspect_as(Part::Rootfs),
                &mut budget,
                opts,
            )
            .await?;
            Ok(ReceivedUpload {
                fingerprint: hex::encode(rootfs.hash.clone().finish().as_ref()),
                parts: Parts::Split {
                    meta,
                    rootfs: Box::new(rootfs),
                    filename,
                },
            })
        }
    }
}

fn record(
    fingerprint: String,
    filename: String,
    size: u64,
    metadata: Metadata,
    files: ImageFiles,
) -> Imported {
    Imported {
        fingerprint,
        filename,
        size,
        image_type: ImageType::Container,
        architecture: metadata.architecture.clone(),
        created_at: metadata.created_at(),
        expires_at: metadata.expires_at(),
        properties: metadata.properties.clone(),
        metadata,
        files,
    }
}

fn check_expected(got: &str, opts: &ImportOptions) -> Result<()> {
    match &opts.expected_fingerprint {
        Some(expected) if expected != got => Err(Error::FingerprintMismatch {
            got: got.to_string(),
            expected: expected.clone(),
        }),
        _ => Ok(()),
    }
}

async fn next_field(form: &mut multer::Multipart<'static>) -> Result<multer::Field<'static>> {
    form.next_field()
        .await
        .map_err(multipart_error)?
        .ok_or(Error::InvalidMultipart)
}

fn multipart_error(e: multer::Error) -> Error {
    match e {
        multer::Error::StreamReadFailed(e) => Error::Body(e.to_string()),
        multer::Error::StreamSizeExceeded { limit } | multer::Error::FieldSizeExceeded { limit, .. } => {
            Error::TooLarge { limit }
        }
        multer::Error::IncompleteStream | multer::Error::IncompleteFieldData { .. } => {
            Error::Body("the multipart body ended early".into())
        }
        _ => Error::InvalidMultipart,
    }
}

/// Where a part's bytes come from.
trait Source {
    async fn next(&mut self) -> Result<Option<Bytes>>;
}

struct BodySource<'a, S>(&'a mut S);

impl<S, E> Source for BodySource<'_, S>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    async fn next(&mut self) -> Result<Option<Bytes>> {
        match self.0.next().await {
            None => Ok(None),
            Some(Ok(b)) => Ok(Some(b)),
            Some(Err(e)) => Err(Error::Body(e.into().to_string())),
        }
    }
}

struct FieldSource<'a>(&'a mut multer::Field<'static>);

impl Source for FieldSource<'_> {
    async fn next(&mut self) -> Result<Option<Bytes>> {
        self.0.chunk().await.map_err(multipart_error)
    }
}

/// One part received: its temporary file, the hash so far, and what reading it found
/// (nothing, when it was not read through).
struct Received {
    file: TempFile,
    hash: digest::Context,
    size: u64,
    found: Option<Result<Found>>,
}

impl Received {
    /// What reading the part found, reading the finished file where the stream could
    /// not tell (a squashfs holding `metadata.yaml`). Errors are reported here, after
    /// the fingerprint check, which is Incus's order.
    async fn found_whole(&mut self, part: Part, opts: &ImportOptions) -> Result<Found> {
        let found = self.found.take().unwrap_or_else(|| {
            Err(Error::Corrupt {
                part: part.label(),
                detail: "not read".into(),
            })
        })?;
        if found.needs_file {
            let path = self.file.path().to_path_buf();
            let max = opts.limits.max_unpacked;
            return tokio::task::spawn_blocking(move || inspect::inspect_squashfs_file(&path, part, max))
                .await
                .map_err(join_error)?;
        }
        Ok(found)
    }
}

/// Receives one part: writes it to a temporary file in `dir` while hashing it and, when
/// `inspect` names the part, reading it through. Returns early when the reader has
/// already refused it.
///
/// Small body chunks (an HTTP/2 body comes in frames of 16 KiB) are gathered into
/// chunks of about [`CHUNK`] before they go to the writer: one write, one hand-over
/// and one wake-up per chunk instead of per frame.
async fn receive(
    dir: &Path,
    source: &mut impl Source,
    hash: digest::Context,
    inspect: Option<Part>,
    budget: &mut u64,
    opts: &ImportOptions,
) -> Result<Received> {
    let (tmp, file) = TempFile::create(dir)?;
    let (tx, rx) = mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
    let (reader, reader_tx) = match inspect {
        Some(part) => {
            let (reader_tx, reader_rx) = std_mpsc::sync_channel::<Bytes>(CHANNEL_CHUNKS);
            let max_unpacked = opts.limits.max_unpacked;
            let reader = tokio::task::spawn_blocking(move || {
                inspect::inspect(ChannelReader::new(reader_rx), part, max_unpacked)
            });
            (Some(reader), Some(reader_tx))
        }
        None => (None, None),
    };
    let writer = tokio::task::spawn_blocking(move || write_part(rx, file, hash, reader_tx));

    let mut reader = reader;
    let mut early: Option<Result<Found>> = None;
    let limit = opts.limits.max_size;
    let outcome: Result<()> = async {
        let mut pending = BytesMut::new();
        loop {
            let next = source.next().await?;
            let ended = next.is_none();
            let chunk = match next {
                Some(chunk) => {
                    let len = chunk.len() as u64;
                    if len > *budget {
                        return Err(Error::TooLarge { limit });
                    }
                    *budget -= len;
                    if pending.is_empty() && chunk.len() >= CHUNK {
                        Some(chunk)
                    } else {
                        if pending.is_empty() {
                            pending.reserve(CHUNK);
                        }
                        pending.extend_from_slice(&chunk);
                        (pending.len() >= CHUNK).then(|| pending.split().freeze())
                    }
                }
                None if pending.is_empty() => break,
                None => Some(pending.split().freeze()),
            };
            let Some(chunk) = chunk else { continue };
            if tx.send(chunk).await.is_err() {
                break; // the writer failed; its error is collected below
            }
            if reader.as_ref().is_some_and(|r| r.is_finished()) {
                if let Some(r) = reader.take() {
                    let found = r.await.map_err(join_error)?;
                    if let Err(e) = found {
                        return Err(e); // refused already: stop reading the body
                    }
                    early = Some(found);
                }
            }
            if ended {
                break;
            }
        }
        Ok(())
    }
    .await;
    drop(tx);
    let written = writer.await.map_err(join_error)?;
    outcome?;
    let (hash, size) = written?;
    let found = match (inspect, early, reader) {
        (None, ..) => None,
        (Some(_), Some(found), _) => Some(found),
        (Some(_), None, Some(r)) => Some(r.await.map_err(join_error)?),
        (Some(part), None, None) => Some(Err(Error::Corrupt {
            part: part.label(),
            detail: "not read".into(),
        })),
    };
    Ok(Received {
        file: tmp,
        hash,
        size,
        found,
    })
}

fn join_error(e: tokio::task::JoinError) -> Error {
    Error::Io {
        context: "image import task".into(),
        source: io::Error::other(e.to_string()),
    }
}

/// The writer thread: hashes, writes and passes each chunk on to the reader (while it
/// still reads).
///
/// The file is not synced (no fsync), on purpose, as Incus does not sync its image
/// files either. An acknowledged import must survive `kill -9` of any member, and the
/// page cache gives that: the file is whole before it is renamed into place. A sync
/// would add survival of a power loss, at the price of every import waiting for the
/// disk to write every copy (three by default, and the disk is the slowest part of an
/// import on a small machine). What a power loss can do to an unsynced file is leave it
/// shorter than it was (ext4 with its default `data=ordered` and XFS write a file's
/// size after its data); a copy whose size is not the record's is dropped as missing
/// and fetched again (`crate::ImageFiles::size`, checked by the member), and every copy
/// made from another member is checked against its sha256.
fn write_part(
    mut rx: mpsc::Receiver<Bytes>,
    mut file: File,
    mut hash: digest::Context,
    reader: Option<std_mpsc::SyncSender<Bytes>>,
) -> Result<(digest::Context, u64)> {
    let mut reader = reader;
    let mut size = 0u64;
    while let Some(chunk) = rx.blocking_recv() {
        hash.update(&chunk);
        file.write_all(&chunk).map_err(Error::io("writing the image"))?;
        size += chunk.len() as u64;
        if let Some(r) = &reader {
            if r.send(chunk).is_err() {
                reader = None; // the reader is done (finished early or refused)
            }
        }
    }
    Ok((hash, size))
}

/// A `Read` over chunks sent from the writer thread.
struct ChannelReader {
    rx: std_mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl ChannelReader {
    fn new(rx: std_mpsc::Receiver<Bytes>) -> Self {
        ChannelReader {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.recv() {
                Ok(chunk) => self.current = chunk,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}
