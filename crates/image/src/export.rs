//! Export: an image's files as the body Incus's `GET /1.0/images/<fp>/export` sends,
//! streamed from disk. A unified image is its file (`Content-Disposition:
//! inline;filename=<fp>.tar.xz`); a split one is `multipart/form-data` with the parts
//! `metadata` (`meta-<fp><ext>`) and `rootfs` (`<fp><ext>`), which is also what
//! [`crate::Upload::from_content_type`] reads back when a member fetches an image from
//! another (with the fingerprint as the expected one, so the copy is verified).

use std::fs::File as StdFile;
use std::io::Read;
use std::path::Path;
use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{self, Stream, StreamExt};
use tokio::io::AsyncReadExt;

use crate::error::{Error, Result};
use crate::format::{self, HEADER_LEN};
use crate::store::{check_fingerprint, ImageFiles};

/// Size of the chunks read from disk.
const CHUNK: usize = 256 << 10;

/// A body of bytes read from disk.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// An export, ready to send.
pub struct Export {
    /// `application/octet-stream` or `multipart/form-data; boundary=…`.
    pub content_type: String,
    /// `inline;filename=<fp><ext>` for a unified image.
    pub content_disposition: Option<String>,
    pub content_length: u64,
    pub body: ByteStream,
}

/// Exports the image `fingerprint` from `dir`.
pub async fn export(dir: &Path, fingerprint: &str) -> Result<Export> {
    check_fingerprint(fingerprint)?;
    let files = ImageFiles::locate(dir, fingerprint)?;
    let meta_name = format!("{fingerprint}{}", extension(&files.metadata));
    let (meta_body, meta_len) = file_stream(&files.metadata).await?;
    let Some(rootfs) = &files.rootfs else {
        return Ok(Export {
            content_type: "application/octet-stream".into(),
            content_disposition: Some(format!("inline;filename={meta_name}")),
            content_length: meta_len,
            body: meta_body,
        });
    };
    let rootfs_name = format!("{fingerprint}{}", extension(rootfs));
    let (rootfs_body, rootfs_len) = file_stream(rootfs).await?;
    let boundary = boundary()?;
    let head = |first: bool, name: &str, filename: &str| {
        Bytes::from(format!(
            "{}--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n",
            if first { "" } else { "\r\n" }
        ))
    };
    let h1 = head(true, "metadata", &format!("meta-{meta_name}"));
    let h2 = head(false, "rootfs", &rootfs_name);
    let end = Bytes::from(format!("\r\n--{boundary}--\r\n"));
    let content_length = h1.len() as u64 + meta_len + h2.len() as u64 + rootfs_len + end.len() as u64;
    let body = stream::once(async move { Ok(h1) })
        .chain(meta_body)
        .chain(stream::once(async move { Ok(h2) }))
        .chain(rootfs_body)
        .chain(stream::once(async move { Ok(end) }));
    Ok(Export {
        content_type: format!("multipart/form-data; boundary={boundary}"),
        content_disposition: None,
        content_length,
        body: Box::pin(body),
    })
}

/// The extension Incus names an exported file with, from its content; none if unknown.
fn extension(path: &Path) -> &'static str {
    let mut header = Vec::with_capacity(HEADER_LEN);
    let read = StdFile::open(path).and_then(|f| f.take(HEADER_LEN as u64).read_to_end(&mut header));
    match read {
        Ok(_) => format::detect(&header).map(|f| f.extension()).unwrap_or(""),
        Err(_) => "",
    }
}

/// A random multipart boundary (60 hex digits, as Go's `multipart.Writer` makes).
fn boundary() -> Result<String> {
    let mut random = [0u8; 30];
    aws_lc_rs::rand::fill(&mut random)
        .map_err(|_| Error::io("multipart boundary")(std::io::Error::other("no randomness")))?;
    Ok(hex::encode(random))
}

/// A file as a stream of chunks, with its length.
async fn file_stream(path: &Path) -> Result<(ByteStream, u64)> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(Error::io(format!("opening {}", path.display())))?;
    let len = file
        .metadata()
        .await
        .map_err(Error::io(format!("reading {}", path.display())))?
        .len();
    let body = stream::try_unfold(file, |mut file| async move {
        let mut buf = BytesMut::with_capacity(CHUNK);
        let n = file.read_buf(&mut buf).await?;
        Ok((n > 0).then(|| (buf.freeze(), file)))
    });
    Ok((Box::pin(body), len))
}
