//! Images and aliases: `/1.0/images` (as the Go client's `incus_images.go` calls them).
//!
//! ```text
//!  import_image   POST /1.0/images  octet-stream (unified) | multipart metadata+rootfs (split),
//!                 streamed, X-Incus-filename/-public/-properties/-profiles  -> operation
//!  export_image   GET /1.0/images/FP/export -> one file, or multipart metadata+rootfs,
//!                 streamed to the sinks while hashing; the sha256 must start with FP
//! ```

use api::types::{
    Image, ImageAliasesEntry, ImageAliasesEntryPost, ImageAliasesEntryPut, ImagePut, Operation,
};
use futures_util::StreamExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::client::{Client, Request};
use crate::transfer::Upload;
use crate::typed::{filter_expression, query_value, seg};
use crate::{ClientError, Method};

/// What goes with an image upload besides its bytes (`X-Incus-*` headers).
#[derive(Debug, Clone, Default)]
pub struct ImageUploadArgs {
    /// The file name the server records (`X-Incus-filename`).
    pub filename: String,
    pub public: bool,
    pub properties: Vec<(String, String)>,
    pub profiles: Vec<String>,
}

/// What an image export wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageFile {
    /// The metadata (or unified) file's name and size.
    pub meta_name: String,
    pub meta_size: u64,
    /// The root file system's, for a split image.
    pub rootfs_name: Option<String>,
    pub rootfs_size: u64,
}

fn form(pairs: impl Iterator<Item = (String, String)>) -> String {
    pairs
        .map(|(k, v)| format!("{}={}", query_value(&k), query_value(&v)))
        .collect::<Vec<_>>()
        .join("&")
}

impl Client {
    /// `GET /1.0/images?recursion=1` with server-side filters (`key=value`).
    pub async fn images(&self, filters: &[String]) -> Result<Vec<Image>, ClientError> {
        let path = format!(
            "/1.0/images?filter={}&recursion=1",
            query_value(&filter_expression(filters))
        );
        Ok(self.get_typed(&path).await?.0)
    }

    pub async fn image(&self, fingerprint: &str) -> Result<(Image, Option<String>), ClientError> {
        self.get_typed(&format!("/1.0/images/{}", seg(fingerprint))).await
    }

    pub async fn update_image(
        &self,
        fingerprint: &str,
        put: &ImagePut,
        etag: Option<&str>,
    ) -> Result<(), ClientError> {
        let path = format!("/1.0/images/{}", seg(fingerprint));
        self.send_typed(Method::PUT, &path, Some(put), etag).await?;
        Ok(())
    }

    pub async fn delete_image(&self, fingerprint: &str) -> Result<Operation, ClientError> {
        let path = format!("/1.0/images/{}", seg(fingerprint));
        self.send_operation::<()>(Method::DELETE, &path, None, None).await
    }

    /// `POST /1.0/images` with the file(s) streamed: the answer's operation, whose
    /// metadata says the fingerprint once it ends.
    pub async fn import_image(&self, body: Upload, args: &ImageUploadArgs) -> Result<Operation, ClientError> {
        let mut req = Request::new(Method::POST, "/1.0/images");
        if args.public {
            req = req.header(http::HeaderName::from_static("x-incus-public"), "true");
        }
        if !args.filename.is_empty() {
            req = req.header(http::HeaderName::from_static("x-incus-filename"), &args.filename);
        }
        if !args.properties.is_empty() {
            let mut props = args.properties.clone();
            props.sort();
            req = req.header(
                http::HeaderName::from_static("x-incus-properties"),
                form(props.into_iter()),
            );
        }
        if !args.profiles.is_empty() {
            req = req.header(
                http::HeaderName::from_static("x-incus-profiles"),
                form(args.profiles.iter().map(|p| ("profile".to_string(), p.clone()))),
            );
        }
        let resp = self.upload(req, body).await?;
        let envelope = resp.envelope()?;
        serde_json::from_value(envelope.metadata)
            .map_err(|e| ClientError::BadResponse(format!("image upload: {e}")))
    }

    /// Streams `GET /1.0/images/{fingerprint}/export` into `meta` (a unified image, or
    /// a split image's metadata) and `rootfs` (a split image's root file system), and
    /// checks the sha256 against the fingerprint as the Go client does.
    pub async fn export_image<M, R>(
        &self,
        fingerprint: &str,
        meta: &mut M,
        rootfs: &mut R,
    ) -> Result<ImageFile, ClientError>
    where
        M: AsyncWrite + Unpin + ?Sized,
        R: AsyncWrite + Unpin + ?Sized,
    {
        let req = Request::get(format!("/1.0/images/{}/export", seg(fingerprint)));
        let (head, body) = self.get_stream(req).await?;
        let content_type = header(&head.headers, http::header::CONTENT_TYPE);
        let mut hash = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut file = ImageFile::default();
        if let Some(boundary) = multipart_boundary(&content_type) {
            let mut parts = multer::Multipart::new(body, boundary);
            let first = parts
                .next_field()
                .await
                .map_err(bad_multipart)?
                .ok_or_else(|| ClientError::BadResponse("Invalid multipart image".into()))?;
            if first.name() != Some("metadata") {
                return Err(ClientError::BadResponse("Invalid multipart image".into()));
            }
            file.meta_name = first.file_name().unwrap_or_default().to_string();
            file.meta_size = copy_field(first, meta, &mut hash).await?;
            let second = parts
                .next_field()
                .await
                .map_err(bad_multipart)?
                .ok_or_else(|| ClientError::BadResponse("Invalid multipart image".into()))?;
            if !matches!(second.name(), Some("rootfs" | "rootfs.img")) {
                return Err(ClientError::BadResponse("Invalid multipart image".into()));
            }
            file.rootfs_name = Some(second.file_name().unwrap_or_default().to_string());
            file.rootfs_size = copy_field(second, rootfs, &mut hash).await?;
        } else {
            file.meta_name = disposition_filename(&header(&head.headers, http::header::CONTENT_DISPOSITION))
                .ok_or_else(|| {
                    ClientError::BadResponse("No filename in Content-Disposition header".into())
                })?;
            let mut body = body;
            while let Some(chunk) = body.next().await {
                let data = chunk?;
                hash.update(&data);
                meta.write_all(&data)
                    .await
                    .map_err(|e| ClientError::io("Failed to write the image", e))?;
                file.meta_size += data.len() as u64;
            }
        }
        meta.flush()
            .await
            .map_err(|e| ClientError::io("Failed to write the image", e))?;
        rootfs
            .flush()
            .await
            .map_err(|e| ClientError::io("Failed to write the image", e))?;
        let got = hex::encode(hash.finish().as_ref());
        if !got.starts_with(fingerprint) {
            return Err(ClientError::BadResponse(format!(
                "Image fingerprint doesn't match. Got {got} expected {fingerprint}"
            )));
        }
        Ok(file)
    }

    /// `GET /1.0/images/aliases?recursion=1`.
    pub async fn image_aliases(&self) -> Result<Vec<ImageAliasesEntry>, ClientError> {
        Ok(self.get_typed("/1.0/images/aliases?recursion=1").await?.0)
    }

    pub async fn image_alias(&self, name: &str) -> Result<(ImageAliasesEntry, Option<String>), ClientError> {
        self.get_typed(&format!("/1.0/images/aliases/{}", seg(name)))
            .await
    }

    /// `POST /1.0/images/aliases` (the type is left for the server to fill in).
    pub async fn create_image_alias(&self, alias: &ImageAliasesEntry) -> Result<(), ClientError> {
        self.send_typed(Method::POST, "/1.0/images/aliases", Some(alias), None)
            .await?;
        Ok(())
    }

    pub async fn update_image_alias(
        &self,
        name: &str,
        put: &ImageAliasesEntryPut,
        etag: Option<&str>,
    ) -> Result<(), ClientError> {
        let path = format!("/1.0/images/aliases/{}", seg(name));
        self.send_typed(Method::PUT, &path, Some(put), etag).await?;
        Ok(())
    }

    pub async fn rename_image_alias(&self, name: &str, new_name: &str) -> Result<(), ClientError> {
        let path = format!("/1.0/images/aliases/{}", seg(name));
        let body = ImageAliasesEntryPost {
            name: new_name.to_string(),
        };
        self.send_typed(Method::POST, &path, Some(&body), None).await?;
        Ok(())
    }

    pub async fn delete_image_alias(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("/1.0/images/aliases/{}", seg(name));
        self.send_typed::<()>(Method::DELETE, &path, None, None).await?;
        Ok(())
    }
}

fn header(headers: &http::HeaderMap, name: http::header::HeaderName) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn bad_multipart(e: multer::Error) -> ClientError {
    ClientError::BadResponse(format!("Invalid multipart image: {e}"))
}

async fn copy_field<W: AsyncWrite + Unpin + ?Sized>(
    mut field: multer::Field<'_>,
    sink: &mut W,
    hash: &mut aws_lc_rs::digest::Context,
) -> Result<u64, ClientError> {
    let mut n = 0u64;
    while let Some(chunk) = field.chunk().await.map_err(bad_multipart)? {
        hash.update(&chunk);
        sink.write_all(&chunk)
            .await
            .map_err(|e| ClientError::io("Failed to write the image", e))?;
        n += chunk.len() as u64;
    }
    Ok(n)
}

/// The boundary of a `multipart/form-data` content type (pure).
pub fn multipart_boundary(content_type: &str) -> Option<String> {
    let mut parts = content_type.split(';');
    if !parts.next()?.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    parts.find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.eq_ignore_ascii_case("boundary")
            .then(|| v.trim_matches('"').to_string())
    })
}

/// The `filename` of a `Content-Disposition` value (pure).
pub fn disposition_filename(value: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.eq_ignore_ascii_case("filename")
            .then(|| v.trim_matches('"').to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_export_headers() {
        assert_eq!(
            multipart_boundary("multipart/form-data; boundary=abc123").as_deref(),
            Some("abc123")
        );
        assert_eq!(multipart_boundary("application/octet-stream"), None);
        assert_eq!(
            disposition_filename("inline;filename=bb.tar.gz").as_deref(),
            Some("bb.tar.gz")
        );
        assert_eq!(
            disposition_filename("attachment; filename=\"a b.tar.xz\"").as_deref(),
            Some("a b.tar.xz")
        );
        assert_eq!(disposition_filename("inline"), None);
    }

    #[test]
    fn t10_upload_headers_are_url_encoded_forms() {
        assert_eq!(
            form(
                vec![
                    ("os".to_string(), "Debian GNU".to_string()),
                    ("x".into(), "a&b".into())
                ]
                .into_iter()
            ),
            "os=Debian+GNU&x=a%26b"
        );
    }
}
