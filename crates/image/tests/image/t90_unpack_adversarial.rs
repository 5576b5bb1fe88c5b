//! Archives built to write outside the volume. Each runs in a sandbox directory holding
//! the volume and an `outside/` directory with a secret: whatever the archive tries,
//! nothing outside the volume changes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use stapes_image::{import, unpack, Error, ImageFiles, ImportOptions, UnpackOptions, Upload};
use tar::EntryType as T;

use crate::common::*;

struct Sandbox {
    top: tempfile::TempDir,
    vol: PathBuf,
    before: BTreeMap<PathBuf, (u64, Vec<u8>)>,
}

impl Sandbox {
    fn new() -> Sandbox {
        let top = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(top.path().join("outside")).expect("outside");
        std::fs::write(top.path().join("outside/secret"), b"do not touch").expect("secret");
        std::fs::create_dir(top.path().join("outside/sub")).expect("outside/sub");
        std::fs::write(top.path().join("outside/sub/secret2"), b"also secret").expect("secret2");
        let vol = top.path().join("volumes/c1");
        std::fs::create_dir_all(&vol).expect("volume");
        let before = snapshot(top.path(), &vol);
        Sandbox { top, vol, before }
    }

    fn outside(&self) -> PathBuf {
        self.top.path().join("outside")
    }

    /// Everything outside the volume is as it was.
    fn check_untouched(&self, case: &str) {
        assert_eq!(
            snapshot(self.top.path(), &self.vol),
            self.before,
            "{case}: something outside the volume changed"
        );
    }
}

/// Every path under `top` except inside `skip`, with its size and (for files) content.
fn snapshot(top: &Path, skip: &Path) -> BTreeMap<PathBuf, (u64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![top.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("list") {
            let p = e.expect("entry").path();
            if p.starts_with(skip) {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).expect("stat");
            let content = if m.is_file() {
                std::fs::read(&p).expect("read")
            } else {
                Vec::new()
            };
            out.insert(p.clone(), (m.len(), content));
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

/// A unified image whose rootfs members are added by `f`.
fn image(f: impl FnOnce(&mut Tar, &Sandbox), sandbox: &Sandbox) -> Vec<u8> {
    let mut t = Tar::new();
    t.file("metadata.yaml", META.as_bytes())
        .dir("rootfs/")
        .file("rootfs/ok", b"fine");
    f(&mut t, sandbox);
    gzip(&t.finish())
}

async fn must_refuse(case: &str, f: impl FnOnce(&mut Tar, &Sandbox)) {
    let sb = Sandbox::new();
    let (_images, files) = stored(&image(f, &sb)).await;
    let err = unpack(&files, &sb.vol, &UnpackOptions::default(), &mut |_| {}).expect_err(case);
    assert!(matches!(err, Error::Unsafe { .. }), "{case}: {err}");
    assert!(
        listing(&sb.vol).is_empty(),
        "{case}: the volume is emptied after a refusal"
    );
    sb.check_untouched(case);
}

#[tokio::test]
async fn t90_dot_dot_and_absolute() {
    must_refuse("../../etc/x", |t, _| {
        t.file("../../etc/x", b"pwned");
    })
    .await;
    must_refuse("rootfs/../../../outside/pwned", |t, _| {
        t.file("rootfs/../../../outside/pwned", b"pwned");
    })
    .await;
    must_refuse("absolute path", |t, sb| {
        let abs = sb.outside().join("pwned");
        t.file(abs.to_str().expect("utf-8"), b"pwned");
    })
    .await;
    must_refuse("absolute directory", |t, sb| {
        t.dir(&format!("{}/", sb.outside().join("newdir").display()));
    })
    .await;
}

#[tokio::test]
async fn t90_symlink_then_write() {
    must_refuse("relative link out, then a file through it", |t, _| {
        t.symlink("rootfs/escape", "../../../outside")
            .file("rootfs/escape/pwned", b"pwned");
    })
    .await;
    must_refuse("absolute link out, then a file through it", |t, sb| {
        t.symlink("rootfs/escape", sb.outside().to_str().expect("utf-8"))
            .file("rootfs/escape/pwned", b"pwned");
    })
    .await;
    must_refuse("relative link out, then a file two levels through it", |t, _| {
        t.symlink("rootfs/escape", "../../../outside")
            .file("rootfs/escape/sub/pwned", b"pwned");
    })
    .await;
    must_refuse("absolute link out, then a file two levels through it", |t, sb| {
        t.symlink("rootfs/escape", sb.outside().to_str().expect("utf-8"))
            .file("rootfs/escape/sub/pwned", b"pwned");
    })
    .await;
    must_refuse("link, then a directory through it", |t, _| {
        t.symlink("rootfs/escape", "../../../outside")
            .dir("rootfs/escape/newdir/");
    })
    .await;
    must_refuse("link, then a directory two levels through it", |t, _| {
        t.symlink("rootfs/escape", "../../../outside")
            .dir("rootfs/escape/sub/newdir/");
    })
    .await;
    must_refuse("directory replaced by a link, then a file through it", |t, _| {
        t.dir("rootfs/d/")
            .symlink("rootfs/d", "../../../outside")
            .file("rootfs/d/pwned", b"pwned");
    })
    .await;
    must_refuse(
        "link inside, then a file through it (no member is written through a link)",
        |t, _| {
            t.dir("rootfs/usr/")
                .symlink("rootfs/lib", "usr")
                .file("rootfs/lib/x", b"x");
        },
    )
    .await;
    must_refuse("rootfs itself a link", |t, _| {
        t.symlink("rootfs", "../../outside");
    })
    .await;
}

#[tokio::test]
async fn t90_link_as_last_component_is_replaced_not_followed() {
    let sb = Sandbox::new();
    let data = image(
        |t, sb| {
            let secret = sb.outside().join("secret");
            t.symlink("rootfs/target", secret.to_str().expect("utf-8"))
                .file("rootfs/target", b"overwritten");
        },
        &sb,
    );
    let (_images, files) = stored(&data).await;
    unpack(&files, &sb.vol, &UnpackOptions::default(), &mut |_| {})
        .expect("a later member replaces the link");
    let landed = sb.vol.join("rootfs/target");
    assert!(std::fs::symlink_metadata(&landed).expect("stat").is_file());
    assert_eq!(std::fs::read(&landed).expect("read"), b"overwritten");
    sb.check_untouched("link then file of the same name");
}

#[tokio::test]
async fn t90_hard_links_out() {
    must_refuse("hard link with ..", |t, _| {
        t.hardlink("rootfs/hl", "../../outside/secret");
    })
    .await;
    must_refuse("hard link to an absolute path", |t, sb| {
        let secret = sb.outside().join("secret");
        t.hardlink("rootfs/hl", secret.to_str().expect("utf-8"));
    })
    .await;
    must_refuse("hard link through a link", |t, _| {
        t.symlink("rootfs/up", "../../../outside")
            .hardlink("rootfs/hl", "rootfs/up/secret");
    })
    .await;
    must_refuse("hard link two levels through a link", |t, _| {
        t.symlink("rootfs/up", "../../../outside")
            .hardlink("rootfs/hl", "rootfs/up/sub/secret2");
    })
    .await;
    must_refuse("hard link from rootfs to the volume", |t, _| {
        t.hardlink("rootfs/hl", "metadata.yaml");
    })
    .await;
    must_refuse("hard link to nothing", |t, _| {
        t.hardlink("rootfs/hl", "rootfs/missing");
    })
    .await;
}

#[tokio::test]
async fn t90_hard_link_then_write_keeps_the_original() {
    let sb = Sandbox::new();
    let data = image(
        |t, _| {
            t.file("rootfs/original", b"first")
                .hardlink("rootfs/hl", "rootfs/original")
                .file("rootfs/hl", b"second");
        },
        &sb,
    );
    let (_images, files) = stored(&data).await;
    unpack(&files, &sb.vol, &UnpackOptions::default(), &mut |_| {}).expect("unpack");
    assert_eq!(
        std::fs::read(sb.vol.join("rootfs/original")).expect("read"),
        b"first"
    );
    assert_eq!(std::fs::read(sb.vol.join("rootfs/hl")).expect("read"), b"second");
    sb.check_untouched("hard link then write");
}

#[tokio::test]
async fn t90_device_nodes() {
    must_refuse("block device", |t, _| {
        t.device("rootfs/opt/sda", T::Block, 8, 0);
    })
    .await;
    must_refuse("/dev/mem outside /dev", |t, _| {
        t.device("rootfs/opt/mem", T::Char, 1, 1);
    })
    .await;
    must_refuse("device in the volume, outside rootfs", |t, _| {
        t.device("kmsg", T::Char, 1, 11);
    })
    .await;
}

#[tokio::test]
async fn t90_squashfs_goes_through_the_same_rules() {
    if !have_tool("tar2sqfs") || !have_tool("sqfs2tar") {
        return;
    }
    // A squashfs cannot hold `..` names, but it can hold a link and a block device.
    let sb = Sandbox::new();
    let mut r = Tar::new();
    r.dir("opt/").device("opt/sda", T::Block, 8, 0);
    let sqfs = squashfs(&r.finish(), sb.top.path());
    std::fs::remove_file(sb.top.path().join("made.squashfs")).ok();
    let mut m = Tar::new();
    m.file("metadata.yaml", META.as_bytes());
    let meta = gzip(&m.finish());
    let data = multipart(&[("metadata", "m", &meta), ("rootfs", "r", &sqfs)]);
    let dir = tempfile::tempdir().expect("tempdir");
    let upload = Upload::from_content_type(Some(&content_type()), body(&data, 8192)).expect("multipart");
    let img = import(dir.path(), upload, &ImportOptions::default())
        .await
        .expect("import");
    let err = unpack(&img.files, &sb.vol, &UnpackOptions::default(), &mut |_| {}).expect_err("refused");
    assert!(matches!(err, Error::Unsafe { .. }), "{err}");
    sb.check_untouched("squashfs with a block device");
}

#[test]
fn t90_files_outside_the_directory_are_not_images() {
    let dir = tempfile::tempdir().expect("tempdir");
    for fp in [
        "../x",
        "",
        "ABC",
        &"a".repeat(63),
        &format!("{}/", "a".repeat(63)),
    ] {
        assert!(ImageFiles::locate(dir.path(), fp).is_err(), "{fp:?}");
    }
}
