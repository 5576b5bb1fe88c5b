//! Uploads that are refused: each with Incus's message where Incus has one, and each
//! leaving nothing behind in the image directory.

use bytes::Bytes;
use futures_util::stream;
use stapes_image::{import, Error, ImportOptions, Limits, Upload};

use crate::common::*;

async fn refused(data: &[u8], opts: &ImportOptions) -> Error {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = import(dir.path(), Upload::Unified(body(data, 4096)), opts)
        .await
        .expect_err("refused");
    assert!(
        listing(dir.path()).is_empty(),
        "{err}: left {:?}",
        listing(dir.path())
    );
    err
}

async fn refused_split(data: &[u8], opts: &ImportOptions) -> Error {
    let dir = tempfile::tempdir().expect("tempdir");
    let upload = Upload::from_content_type(Some(&content_type()), body(data, 4096)).expect("multipart");
    let err = import(dir.path(), upload, opts).await.expect_err("refused");
    assert!(
        listing(dir.path()).is_empty(),
        "{err}: left {:?}",
        listing(dir.path())
    );
    err
}

fn unified_with_meta(meta: &str) -> Vec<u8> {
    let mut t = Tar::new();
    t.file("metadata.yaml", meta.as_bytes())
        .dir("rootfs/")
        .file("rootfs/x", b"x");
    gzip(&t.finish())
}

#[tokio::test]
async fn t30_wrong_format() {
    let d = ImportOptions::default();
    let e = refused(b"PK\x03\x04 this is a zip file, not an image", &d).await;
    assert_eq!(e.to_string(), "Unsupported compression");
    assert!(e.is_bad_input());
    let e = refused(b"", &d).await;
    assert_eq!(e.to_string(), "Unsupported compression");
    let e = refused(&[0x04, 0x22, 0x4d, 0x18, 0, 0, 0, 0], &d).await;
    assert!(matches!(e, Error::UnsupportedFormat(_)), "{e}");
}

#[tokio::test]
async fn t30_truncated_and_corrupt() {
    let d = ImportOptions::default();
    let tar = Tar::unified().finish();
    for (name, data) in [
        ("gzip", gzip(&tar)),
        ("xz", xz(&tar)),
        ("zstd", zstd(&tar)),
        ("bzip2", bzip2(&tar)),
    ] {
        let cut = &data[..data.len() - 20];
        let e = refused(cut, &d).await;
        assert!(matches!(e, Error::Corrupt { .. }), "{name} truncated: {e}");
        let mut bad = data.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        bad[mid + 1] ^= 0x55;
        let e = refused(&bad, &d).await;
        assert!(matches!(e, Error::Corrupt { .. }), "{name} corrupt: {e}");
    }
    // A plain tarball cut at a member boundary (no end-of-archive blocks), and one cut
    // in the middle of a member.
    let mut t = Tar::unified();
    t.file("rootfs/big", &[7u8; 5000]);
    let whole = t.finish();
    let boundary = whole.len() - 1024 - 5120 - 512;
    let e = refused(&whole[..boundary], &d).await;
    assert!(matches!(e, Error::Corrupt { .. }), "cut at a member: {e}");
    let e = refused(&whole[..whole.len() - 3000], &d).await;
    assert!(matches!(e, Error::Corrupt { .. }), "cut in a member: {e}");
}

#[tokio::test]
async fn t30_metadata_problems() {
    let d = ImportOptions::default();
    let mut t = Tar::new();
    t.dir("rootfs/").file("rootfs/x", b"x");
    let e = refused(&gzip(&t.finish()), &d).await;
    assert_eq!(e.to_string(), "Metadata tarball is missing metadata.yaml");

    let e = refused(
        &unified_with_meta("architecture: [x86_64\ncreation_date: 1\n"),
        &d,
    )
    .await;
    assert!(matches!(e, Error::Metadata(_)), "bad YAML: {e}");
    assert!(e.to_string().starts_with("Failed to parse metadata.yaml"));

    let e = refused(&unified_with_meta("architecture: pdp11\ncreation_date: 1\n"), &d).await;
    assert_eq!(e.to_string(), "Architecture isn't supported: pdp11");

    let e = refused(&unified_with_meta("architecture: x86_64\n"), &d).await;
    assert_eq!(e.to_string(), "Missing creation date");

    let mut t = Tar::new();
    t.file("metadata.yaml", META.as_bytes());
    let e = refused(&gzip(&t.finish()), &d).await;
    assert_eq!(e.to_string(), "Image is missing a rootfs");
}

#[tokio::test]
async fn t30_fingerprint_mismatch() {
    let data = gzip(&Tar::unified().finish());
    let expected = "0".repeat(64);
    let opts = ImportOptions {
        expected_fingerprint: Some(expected.clone()),
        ..Default::default()
    };
    let e = refused(&data, &opts).await;
    assert_eq!(
        e.to_string(),
        format!(
            "fingerprints don't match, got {} expected {expected}",
            sha256(&[&data])
        )
    );
}

#[tokio::test]
async fn t30_over_the_bound() {
    let data = Tar::unified().finish();
    let opts = ImportOptions {
        limits: Limits {
            max_size: 4096,
            max_unpacked: 1 << 30,
        },
        ..Default::default()
    };
    let e = refused(&data, &opts).await;
    assert!(matches!(e, Error::TooLarge { limit: 4096 }), "{e}");

    // Small upload, large content: the decompressed bound.
    let mut t = Tar::unified();
    t.file("rootfs/zeros", &vec![0u8; 4 << 20]);
    let opts = ImportOptions {
        limits: Limits {
            max_size: 1 << 30,
            max_unpacked: 1 << 20,
        },
        ..Default::default()
    };
    let e = refused(&zstd(&t.finish()), &opts).await;
    assert!(matches!(e, Error::UnpackedTooLarge { .. }), "{e}");

    // Split: both parts count.
    let mut m = Tar::new();
    m.file("metadata.yaml", META.as_bytes());
    let meta = gzip(&m.finish());
    let rootfs = vec![0u8; 8192];
    let data = multipart(&[("metadata", "m", &meta), ("rootfs", "r", &rootfs)]);
    let opts = ImportOptions {
        limits: Limits {
            max_size: 4096,
            max_unpacked: 1 << 30,
        },
        ..Default::default()
    };
    let e = refused_split(&data, &opts).await;
    assert!(matches!(e, Error::TooLarge { .. }), "{e}");
}

#[tokio::test]
async fn t30_invalid_multipart() {
    let d = ImportOptions::default();
    let mut m = Tar::new();
    m.file("metadata.yaml", META.as_bytes());
    let meta = gzip(&m.finish());
    let mut r = Tar::new();
    r.file("x", b"x");
    let rootfs = gzip(&r.finish());
    for parts in [
        vec![("rootfs", "r", &rootfs[..]), ("metadata", "m", &meta[..])],
        vec![("metadata", "m", &meta[..]), ("disk", "r", &rootfs[..])],
        vec![("metadata", "m", &meta[..])],
    ] {
        let e = refused_split(&multipart(&parts), &d).await;
        assert_eq!(e.to_string(), "Invalid multipart image", "{parts:?}");
    }
    let e = refused_split(b"this is not multipart at all", &d).await;
    assert!(e.is_bad_input(), "{e}");
    assert!(matches!(
        Upload::from_content_type(Some("multipart/form-data"), body(b"", 1)),
        Err(Error::InvalidMultipart)
    ));
    // A split rootfs that is no image format.
    let data = multipart(&[("metadata", "m", &meta), ("rootfs", "r", b"just text")]);
    let e = refused_split(&data, &d).await;
    assert_eq!(e.to_string(), "Unsupported compression");
    // A metadata part without metadata.yaml.
    let data = multipart(&[("metadata", "m", &rootfs), ("rootfs", "r", &rootfs)]);
    let e = refused_split(&data, &d).await;
    assert_eq!(e.to_string(), "Metadata tarball is missing metadata.yaml");
}

#[tokio::test]
async fn t30_truncated_squashfs_rootfs() {
    if !have_tool("tar2sqfs") {
        return;
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let mut r = Tar::new();
    // Incompressible, so the file system is larger than its padding.
    let noise: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    r.file("bin/busybox", &noise);
    let sqfs = squashfs(&r.finish(), scratch.path());
    let mut m = Tar::new();
    m.file("metadata.yaml", META.as_bytes());
    let meta = gzip(&m.finish());
    let data = multipart(&[("metadata", "m", &meta), ("rootfs", "r", &sqfs[..sqfs.len() / 2])]);
    let e = refused_split(&data, &ImportOptions::default()).await;
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
}

#[tokio::test]
async fn t30_duplicate_and_broken_body() {
    let data = gzip(&Tar::unified().finish());
    let dir = tempfile::tempdir().expect("tempdir");
    let d = ImportOptions::default();
    let first = import(dir.path(), Upload::Unified(body(&data, 4096)), &d)
        .await
        .expect("first");
    let e = import(dir.path(), Upload::Unified(body(&data, 4096)), &d)
        .await
        .expect_err("duplicate");
    assert_eq!(e.to_string(), "Image with same fingerprint already exists");
    assert_eq!(
        listing(dir.path()),
        [first.fingerprint],
        "the first copy is untouched"
    );

    // The client goes away half way.
    let half = Bytes::copy_from_slice(&data[..data.len() / 2]);
    let broken = stream::iter(vec![
        Ok(half),
        Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset")),
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let e = import(dir.path(), Upload::Unified(broken), &d)
        .await
        .expect_err("broken");
    assert!(matches!(e, Error::Body(_)), "{e}");
    assert!(listing(dir.path()).is_empty());
}
