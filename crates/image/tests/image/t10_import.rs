//! Imports that succeed: every compression, both kinds of image, and the export that a
//! member fetching an image reads back.

use futures_util::StreamExt;
use stapes_image::{export, import, import_copy, Error, ImageFiles, ImportOptions, Limits, Upload};

use crate::common::*;

async fn import_unified(data: &[u8], chunk: usize) -> (tempfile::TempDir, stapes_image::Imported) {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = ImportOptions {
        filename: Some("bb.tar.gz".into()),
        ..Default::default()
    };
    let imported = import(dir.path(), Upload::Unified(body(data, chunk)), &opts)
        .await
        .expect("import");
    (dir, imported)
}

#[tokio::test]
async fn t10_unified_every_compression() {
    let tar = Tar::unified().finish();
    for (name, data) in [
        ("tar", tar.clone()),
        ("gzip", gzip(&tar)),
        ("xz", xz(&tar)),
        ("zstd", zstd(&tar)),
        ("bzip2", bzip2(&tar)),
    ] {
        let (dir, img) = import_unified(&data, 7000).await;
        assert_eq!(
            img.fingerprint,
            sha256(&[&data]),
            "{name}: the fingerprint is the file's sha256"
        );
        assert_eq!(img.size, data.len() as u64, "{name}");
        assert_eq!(img.filename, "bb.tar.gz");
        assert_eq!(img.image_type.as_str(), "container");
        assert_eq!(img.architecture, "x86_64");
        assert_eq!(img.created_at.map(|t| t.unix_timestamp()), Some(1_764_619_200));
        assert_eq!(img.properties["os"], "BusyBox");
        assert_eq!(img.properties["release"], "1.36");
        assert_eq!(img.metadata.templates["/etc/hostname"].template, "hostname.tpl");
        assert_eq!(
            listing(dir.path()),
            vec![img.fingerprint.clone()],
            "{name}: only the image is left"
        );
        assert_eq!(
            std::fs::read(dir.path().join(&img.fingerprint)).expect("stored"),
            data
        );
        assert_eq!(
            ImageFiles::locate(dir.path(), &img.fingerprint).expect("located"),
            img.files
        );
    }
}

#[tokio::test]
async fn t10_split_tarball_rootfs() {
    let mut meta = Tar::new();
    meta.file("metadata.yaml", META.as_bytes()).dir("templates/");
    let meta = xz(&meta.finish());
    let mut rootfs = Tar::new();
    rootfs.dir("bin/").file("bin/busybox", b"binary");
    let rootfs = gzip(&rootfs.finish());
    let data = multipart(&[
        ("metadata", "meta.tar.xz", &meta),
        ("rootfs", "rootfs.tar.gz", &rootfs),
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let upload = Upload::from_content_type(Some(&content_type()), body(&data, 4096)).expect("multipart");
    let img = import(dir.path(), upload, &ImportOptions::default())
        .await
        .expect("import");
    assert_eq!(
        img.fingerprint,
        sha256(&[&meta, &rootfs]),
        "metadata bytes then rootfs bytes"
    );
    assert_eq!(img.size, (meta.len() + rootfs.len()) as u64);
    assert_eq!(
        img.filename, "rootfs.tar.gz",
        "the rootfs part's name, as Incus keeps"
    );
    let fp = &img.fingerprint;
    assert_eq!(listing(dir.path()), [fp.clone(), format!("{fp}.rootfs")]);
    assert_eq!(std::fs::read(dir.path().join(fp)).expect("meta"), meta);
    assert_eq!(
        std::fs::read(dir.path().join(format!("{fp}.rootfs"))).expect("rootfs"),
        rootfs
    );
}

#[tokio::test]
async fn t10_split_squashfs_rootfs() {
    if !have_tool("tar2sqfs") || !have_tool("sqfs2tar") {
        return;
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let mut meta = Tar::new();
    meta.file("metadata.yaml", META.as_bytes());
    let meta = gzip(&meta.finish());
    let mut rootfs = Tar::new();
    rootfs
        .dir("bin/")
        .file("bin/busybox", b"binary")
        .symlink("bin/sh", "busybox");
    let sqfs = squashfs(&rootfs.finish(), scratch.path());
    let data = multipart(&[
        ("metadata", "meta.tar.gz", &meta),
        ("rootfs", "bb.squashfs", &sqfs),
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let upload = Upload::from_content_type(Some(&content_type()), body(&data, 65536)).expect("multipart");
    let img = import(dir.path(), upload, &ImportOptions::default())
        .await
        .expect("import");
    assert_eq!(img.fingerprint, sha256(&[&meta, &sqfs]));
    assert_eq!(img.filename, "bb.squashfs");
}

#[tokio::test]
async fn t10_unified_squashfs() {
    if !have_tool("tar2sqfs") || !have_tool("sqfs2tar") {
        return;
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let sqfs = squashfs(&Tar::unified().finish(), scratch.path());
    let (_dir, img) = import_unified(&sqfs, 65536).await;
    assert_eq!(img.fingerprint, sha256(&[&sqfs]));
    assert_eq!(
        img.properties["os"], "BusyBox",
        "metadata.yaml read out of the squashfs"
    );
}

#[tokio::test]
async fn t10_expected_fingerprint_accepted() {
    let data = gzip(&Tar::unified().finish());
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = ImportOptions {
        expected_fingerprint: Some(sha256(&[&data])),
        ..Default::default()
    };
    import(dir.path(), Upload::Unified(body(&data, 1000)), &opts)
        .await
        .expect("import");
}

async fn collect(e: stapes_image::Export) -> Vec<u8> {
    let mut out = Vec::new();
    let mut body = e.body;
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk.expect("chunk"));
    }
    out
}

/// What a member fetching an image from another does: export on one side, import with
/// the fingerprint expected on the other.
#[tokio::test]
async fn t10_export_then_fetch() {
    // Unified.
    let data = xz(&Tar::unified().finish());
    let (src, img) = import_unified(&data, 9000).await;
    let e = export(src.path(), &img.fingerprint).await.expect("export");
    assert_eq!(e.content_type, "application/octet-stream");
    assert_eq!(
        e.content_disposition.as_deref(),
        Some(format!("inline;filename={}.tar.xz", img.fingerprint).as_str())
    );
    assert_eq!(e.content_length, data.len() as u64);
    let ct = e.content_type.clone();
    let bytes = collect(e).await;
    assert_eq!(bytes, data);
    let dst = tempfile::tempdir().expect("tempdir");
    let opts = ImportOptions {
        expected_fingerprint: Some(img.fingerprint.clone()),
        ..Default::default()
    };
    let upload = Upload::from_content_type(Some(&ct), body(&bytes, 5000)).expect("upload");
    let copy = import(dst.path(), upload, &opts).await.expect("fetched");
    assert_eq!(copy.fingerprint, img.fingerprint);
    copied_as_is(&ct, &bytes, &img.fingerprint).await;

    // Split.
    let mut meta = Tar::new();
    meta.file("metadata.yaml", META.as_bytes());
    let meta = gzip(&meta.finish());
    let mut rootfs = Tar::new();
    rootfs.file("hello", b"world");
    let rootfs = zstd(&rootfs.finish());
    let data = multipart(&[("metadata", "m.tar.gz", &meta), ("rootfs", "r.tar.zst", &rootfs)]);
    let src = tempfile::tempdir().expect("tempdir");
    let upload = Upload::from_content_type(Some(&content_type()), body(&data, 3000)).expect("multipart");
    let img = import(src.path(), upload, &ImportOptions::default())
        .await
        .expect("import");
    let e = export(src.path(), &img.fingerprint).await.expect("export");
    assert!(e.content_type.starts_with("multipart/form-data; boundary="));
    assert_eq!(e.content_disposition, None);
    let ct = e.content_type.clone();
    let len = e.content_length;
    let bytes = collect(e).await;
    assert_eq!(bytes.len() as u64, len, "content length is exact");
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains(&format!(
        "name=\"metadata\"; filename=\"meta-{}.tar.gz\"",
        img.fingerprint
    )));
    assert!(text.contains(&format!(
        "name=\"rootfs\"; filename=\"{}.tar.zst\"",
        img.fingerprint
    )));
    let dst = tempfile::tempdir().expect("tempdir");
    let opts = ImportOptions {
        expected_fingerprint: Some(img.fingerprint.clone()),
        ..Default::default()
    };
    let upload = Upload::from_content_type(Some(&ct), body(&bytes, 777)).expect("upload");
    let copy = import(dst.path(), upload, &opts).await.expect("fetched");
    assert_eq!(copy.fingerprint, img.fingerprint);
    copied_as_is(&ct, &bytes, &img.fingerprint).await;
    assert_eq!(
        std::fs::read(dst.path().join(format!("{}.rootfs", img.fingerprint))).expect("rootfs"),
        rootfs
    );
}

/// What a member copying an image it lacks does: `import_copy` places the exported
/// bytes as they are when their sha256 is the fingerprint, and leaves nothing when it
/// is not (one byte changed, or the body cut short).
async fn copied_as_is(content_type: &str, bytes: &[u8], fingerprint: &str) {
    let dst = tempfile::tempdir().expect("tempdir");
    let upload = Upload::from_content_type(Some(content_type), body(bytes, 1000)).expect("upload");
    let files = import_copy(dst.path(), upload, fingerprint, Limits::default())
        .await
        .expect("copied");
    assert_eq!(
        files,
        ImageFiles::locate(dst.path(), fingerprint).expect("placed")
    );
    if files.rootfs.is_none() {
        assert_eq!(std::fs::read(&files.metadata).expect("read"), bytes);
    }

    let mut changed = bytes.to_vec();
    // The last byte of the image (before a multipart body's closing boundary line).
    let at = changed.len()
        - if content_type.starts_with("multipart/") {
            69
        } else {
            1
        };
    changed[at] ^= 1;
    let short = &bytes[..bytes.len() / 2];
    for bad in [&changed[..], short] {
        let dst = tempfile::tempdir().expect("tempdir");
        let upload = Upload::from_content_type(Some(content_type), body(bad, 1000)).expect("upload");
        let err = import_copy(dst.path(), upload, fingerprint, Limits::default())
            .await
            .expect_err("refused");
        assert!(
            matches!(
                err,
                Error::FingerprintMismatch { .. } | Error::InvalidMultipart | Error::Body(_)
            ),
            "{err:?}"
        );
        assert_eq!(
            std::fs::read_dir(dst.path()).expect("dir").count(),
            0,
            "nothing left"
        );
    }
}

#[tokio::test]
async fn t10_delete_and_leftovers() {
    let data = gzip(&Tar::unified().finish());
    let (dir, img) = import_unified(&data, 4096).await;
    std::fs::write(dir.path().join(".partial-0011223344556677"), b"cut short").expect("leftover");
    assert_eq!(stapes_image::remove_partial(dir.path()).expect("cleanup"), 1);
    stapes_image::delete(dir.path(), &img.fingerprint).expect("delete");
    assert!(listing(dir.path()).is_empty());
    assert!(
        stapes_image::delete(dir.path(), "../etc").is_err(),
        "not a fingerprint"
    );
}
