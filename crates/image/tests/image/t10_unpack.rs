//! Unpacks that succeed: the volume layout, owners (as they are, or shifted), modes,
//! links, special files, extended attributes, times, and progress.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use stapes_image::{import, unpack, ImportOptions, Ownership, Progress, UnpackOptions, Upload};
use tar::EntryType as T;

use crate::common::*;

fn volume() -> (tempfile::TempDir, std::path::PathBuf) {
    let top = tempfile::tempdir().expect("tempdir");
    let vol = top.path().join("c1");
    std::fs::create_dir(&vol).expect("volume");
    (top, vol)
}

fn rich_image() -> Vec<u8> {
    let mut t = Tar::new();
    t.file("metadata.yaml", META.as_bytes())
        .dir("templates/")
        .file("templates/hostname.tpl", b"x")
        .owned("rootfs/", T::Directory, b"", 0o755, 0, 0)
        .owned("rootfs/home/", T::Directory, b"", 0o755, 0, 0)
        .owned("rootfs/home/user/", T::Directory, b"", 0o700, 1000, 1000)
        .owned(
            "rootfs/home/user/notes",
            T::Regular,
            b"secret notes",
            0o600,
            1000,
            1001,
        )
        .owned("rootfs/usr/bin/passwd", T::Regular, b"setuid", 0o4755, 0, 0)
        .owned("rootfs/tmp/", T::Directory, b"", 0o1777, 0, 0)
        .owned("rootfs/run/fifo", T::Fifo, b"", 0o640, 0, 5)
        .symlink("rootfs/etc-link", "/etc")
        .symlink("rootfs/dangling", "../../../../nowhere")
        .hardlink("rootfs/usr/bin/chsh", "rootfs/usr/bin/passwd")
        .file_xattrs(
            "rootfs/usr/bin/ping",
            b"ping",
            &[("user.origin", b"test"), ("trusted.overlay.redirect", b"/x")],
        )
        .device("rootfs/dev/sda", T::Block, 8, 0)
        .device("rootfs/dev/null", T::Char, 1, 3)
        .device("rootfs/opt/null", T::Char, 1, 3);
    gzip(&t.finish())
}

#[tokio::test]
async fn t10_unpack_keeps_the_image() {
    if !is_root() {
        return;
    }
    let (_images, files) = stored(&rich_image()).await;
    let (_top, vol) = volume();
    let mut seen = Vec::new();
    let stats = unpack(&files, &vol, &UnpackOptions::default(), &mut |p: Progress| {
        seen.push(p)
    })
    .expect("unpack");
    assert_eq!(
        listing(&vol),
        ["metadata.yaml", "rootfs", "templates"],
        "Incus's container volume layout"
    );
    let root = vol.join("rootfs");
    let meta = |p: &str| std::fs::symlink_metadata(root.join(p)).expect(p);

    let notes = meta("home/user/notes");
    assert_eq!(
        (notes.uid(), notes.gid(), notes.mode() & 0o7777),
        (1000, 1001, 0o600)
    );
    assert_eq!(
        std::fs::read(root.join("home/user/notes")).expect("read"),
        b"secret notes"
    );
    assert_eq!(notes.mtime(), 1_600_000_000);
    let home = meta("home/user");
    assert_eq!((home.uid(), home.mode() & 0o7777), (1000, 0o700));
    assert_eq!(
        home.mtime(),
        1_600_000_000,
        "a directory's time survives what was written into it"
    );
    assert_eq!(meta("tmp").mode() & 0o7777, 0o1777);
    assert_eq!(
        meta("usr/bin/passwd").mode() & 0o7777,
        0o4755,
        "set-uid kept after chown"
    );
    assert_eq!(
        meta("usr/bin/passwd").ino(),
        meta("usr/bin/chsh").ino(),
        "hard link"
    );
    assert!(meta("run/fifo").file_type().is_fifo());
    assert_eq!(meta("run/fifo").gid(), 5);
    assert_eq!(
        std::fs::read_link(root.join("etc-link")).expect("link"),
        Path::new("/etc")
    );
    assert_eq!(
        std::fs::read_link(root.join("dangling")).expect("link"),
        Path::new("../../../../nowhere"),
        "symbolic links are stored as they are"
    );
    assert!(meta("opt/null").file_type().is_char_device(), "an allowed device");
    assert!(root.join("dev").is_dir() || !root.join("dev").exists());
    assert!(
        !root.join("dev/sda").exists() && !root.join("dev/null").exists(),
        "rootfs/dev/* skipped"
    );
    assert_eq!(stats.skipped_dev, 2);

    let xattr = rustix::fs::lgetxattr(root.join("usr/bin/ping"), "user.origin", &mut [0u8; 64][..]);
    match xattr {
        Ok(n) => assert_eq!(n, 4),
        Err(rustix::io::Errno::NOTSUP) => eprintln!("note: this file system has no user xattrs"),
        Err(e) => panic!("xattr: {e}"),
    }
    assert!(
        rustix::fs::lgetxattr(
            root.join("usr/bin/ping"),
            "trusted.overlay.redirect",
            &mut [0u8; 64][..]
        )
        .is_err(),
        "trusted.* is not taken from an image"
    );
    assert!(stats.skipped_xattrs >= 1);

    assert!(!seen.is_empty());
    assert_eq!(seen.last().expect("last").percent(), 100);
    assert!(
        seen.windows(2).all(|w| w[0].bytes <= w[1].bytes),
        "progress only goes forward"
    );
}

#[tokio::test]
async fn t10_unpack_shifted() {
    if !is_root() {
        return;
    }
    let (_images, files) = stored(&rich_image()).await;
    let (_top, vol) = volume();
    let opts = UnpackOptions {
        ownership: Ownership::Shifted {
            base: 1_000_000,
            range: 1_000_000_000,
        },
        ..Default::default()
    };
    unpack(&files, &vol, &opts, &mut |_| {}).expect("unpack");
    let root = vol.join("rootfs");
    let m = std::fs::symlink_metadata(root.join("home/user/notes")).expect("notes");
    assert_eq!((m.uid(), m.gid()), (1_001_000, 1_001_001));
    let m = std::fs::symlink_metadata(root.join("etc-link")).expect("link");
    assert_eq!(m.uid(), 1_000_000, "links are shifted too, not followed");
    let m = std::fs::metadata(&root).expect("rootfs");
    assert_eq!(m.uid(), 1_000_000, "the container's root owns its /");
    assert_eq!(
        std::fs::metadata(root.join("usr")).expect("implicit dir").uid(),
        1_000_000,
        "directories the archive did not list belong to the container's root"
    );

    // An id past the range is refused.
    let mut t = Tar::unified();
    t.owned("rootfs/far", T::Regular, b"x", 0o644, 2_000_000_000, 0);
    let (_images, files) = stored(&gzip(&t.finish())).await;
    let (_top, vol) = volume();
    let e = unpack(&files, &vol, &opts, &mut |_| {}).expect_err("refused");
    assert!(e.to_string().contains("id range"), "{e}");
    assert!(
        listing(&vol).is_empty(),
        "a failed unpack leaves the volume empty"
    );
}

#[tokio::test]
async fn t10_unpack_split_and_squashfs() {
    let mut m = Tar::new();
    m.file("metadata.yaml", META.as_bytes()).dir("templates/");
    let meta = gzip(&m.finish());
    let mut r = Tar::new();
    r.dir("./")
        .dir("./bin/")
        .file("./bin/busybox", b"bb")
        .symlink("./bin/sh", "busybox");
    let rootfs_tar = r.finish();
    let mut rootfs_parts = vec![("tar.xz", xz(&rootfs_tar))];
    let scratch = tempfile::tempdir().expect("tempdir");
    if have_tool("tar2sqfs") && have_tool("sqfs2tar") {
        rootfs_parts.push(("squashfs", squashfs(&rootfs_tar, scratch.path())));
    }
    for (kind, rootfs) in rootfs_parts {
        let data = multipart(&[("metadata", "m", &meta), ("rootfs", "r", &rootfs)]);
        let dir = tempfile::tempdir().expect("tempdir");
        let upload = Upload::from_content_type(Some(&content_type()), body(&data, 8192)).expect("multipart");
        let img = import(dir.path(), upload, &ImportOptions::default())
            .await
            .expect("import");
        let (_top, vol) = volume();
        unpack(&img.files, &vol, &UnpackOptions::default(), &mut |_| {}).expect(kind);
        assert_eq!(listing(&vol), ["metadata.yaml", "rootfs", "templates"], "{kind}");
        assert_eq!(std::fs::read(vol.join("rootfs/bin/busybox")).expect(kind), b"bb");
        assert_eq!(
            std::fs::read_link(vol.join("rootfs/bin/sh")).expect(kind),
            Path::new("busybox")
        );
        assert_eq!(
            std::fs::metadata(vol.join("rootfs"))
                .expect(kind)
                .permissions()
                .mode()
                & 0o777,
            0o755
        );
    }
}

#[tokio::test]
async fn t30_target_must_be_empty() {
    let (_images, files) = stored(&gzip(&Tar::unified().finish())).await;
    let (_top, vol) = volume();
    std::fs::write(vol.join("something"), b"x").expect("write");
    let e = unpack(&files, &vol, &UnpackOptions::default(), &mut |_| {}).expect_err("refused");
    assert!(matches!(e, stapes_image::Error::TargetNotEmpty(_)), "{e}");
    assert_eq!(listing(&vol), ["something"], "nothing of the caller's removed");
}
