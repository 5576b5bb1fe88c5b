use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use stapes_storage::{Owner, Volume, VolumeType};

use crate::{is_root, setup};

const CONTAINER_ROOT: Owner = Owner {
    uid: 1_000_000,
    gid: 1_000_000,
};

/// A root file system with one of everything a copy must keep.
fn fill(rootfs: &Path) {
    std::fs::create_dir_all(rootfs.join("etc")).expect("etc");
    std::fs::create_dir_all(rootfs.join("home/user")).expect("home");
    std::fs::write(rootfs.join("etc/hostname"), b"c1\n").expect("hostname");
    std::fs::write(rootfs.join("home/user/big"), vec![7u8; 300_000]).expect("big");
    rustix::fs::chown(
        rootfs.join("home/user"),
        Some(uid(1_001_000)),
        Some(gid(1_001_000)),
    )
    .expect("chown");
    rustix::fs::chown(
        rootfs.join("home/user/big"),
        Some(uid(1_001_000)),
        Some(gid(1_001_005)),
    )
    .expect("chown");
    std::fs::set_permissions(rootfs.join("home/user"), std::fs::Permissions::from_mode(0o700))
        .expect("chmod");
    std::fs::write(rootfs.join("passwd"), b"setuid").expect("passwd");
    std::fs::set_permissions(rootfs.join("passwd"), std::fs::Permissions::from_mode(0o4755)).expect("chmod");
    std::fs::hard_link(rootfs.join("passwd"), rootfs.join("etc/chsh")).expect("hard link");
    std::os::unix::fs::symlink("/etc/hostname", rootfs.join("abs-link")).expect("symlink");
    std::os::unix::fs::symlink("../../../../outside", rootfs.join("rel-link")).expect("symlink");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        rootfs.join("etc/fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .expect("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        rootfs.join("null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .expect("device");
    match rustix::fs::setxattr(
        rootfs.join("etc/hostname"),
        "user.origin",
        b"test",
        rustix::fs::XattrFlags::empty(),
    ) {
        Ok(()) | Err(rustix::io::Errno::NOTSUP) => {}
        Err(e) => panic!("xattr: {e}"),
    }
    let old = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 1_500_000_000,
            tv_nsec: 0,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: 1_500_000_000,
            tv_nsec: 0,
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        rootfs.join("etc"),
        &old,
        rustix::fs::AtFlags::empty(),
    )
    .expect("utimes");
}

fn uid(n: u32) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(n)
}

fn gid(n: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(n)
}

#[test]
fn t10_container_volume_layout() {
    if !is_root() {
        return;
    }
    let (state, pool) = setup("pool1", None);
    pool.create().expect("create");
    let c1 = Volume::container("c1");
    let path = pool.create_volume(&c1, CONTAINER_ROOT).expect("volume");
    assert_eq!(path, state.path().join("storage-pools/pool1/containers/c1"));
    let m = std::fs::symlink_metadata(&path).expect("stat");
    assert_eq!(
        m.permissions().mode() & 0o7777,
        0o100,
        "d--x------ as Incus makes it"
    );
    assert_eq!(
        (m.uid(), m.gid()),
        (1_000_000, 1_000_000),
        "the container's root passes through"
    );
    assert_eq!(pool.volume_path(&c1).expect("path"), path);
    assert_eq!(pool.volumes().expect("list"), vec![c1.clone()]);
    pool.set_volume_owner(&c1, Owner::ROOT).expect("privileged");
    assert_eq!(std::fs::symlink_metadata(&path).expect("stat").uid(), 0);
    let e = pool.create_volume(&c1, Owner::ROOT).expect_err("exists");
    assert!(e.to_string().contains("already exists"), "{e}");
}

#[test]
fn t10_rename_copy_delete() {
    if !is_root() {
        return;
    }
    let (_state, pool) = setup("pool1", None);
    pool.create().expect("create");
    let c1 = Volume::container("c1");
    let path = pool.create_volume(&c1, CONTAINER_ROOT).expect("volume");
    std::fs::create_dir(path.join("rootfs")).expect("rootfs");
    fill(&path.join("rootfs"));
    let used = pool.volume_usage(&c1).expect("usage");
    assert!(used >= 300_000, "{used}: the file's blocks count");
    assert!(used < 2 * 300_000 + 200_000, "{used}: the hard link counts once");

    let copy_path = pool.copy_volume(&c1, "c2").expect("copy");
    let (a, b) = (path.join("rootfs"), copy_path.join("rootfs"));
    for rel in [
        "",
        "etc",
        "etc/hostname",
        "home/user",
        "home/user/big",
        "passwd",
        "etc/chsh",
        "abs-link",
        "rel-link",
        "etc/fifo",
        "null",
    ] {
        let (ma, mb) = (
            std::fs::symlink_metadata(a.join(rel)).expect(rel),
            std::fs::symlink_metadata(b.join(rel)).expect(rel),
        );
        assert_eq!(
            (ma.mode(), ma.uid(), ma.gid(), ma.mtime(), ma.rdev(), ma.len()),
            (mb.mode(), mb.uid(), mb.gid(), mb.mtime(), mb.rdev(), mb.len()),
            "{rel}: kept by the copy"
        );
    }
    let top = std::fs::symlink_metadata(&copy_path).expect("top");
    assert_eq!(
        (top.mode() & 0o7777, top.uid()),
        (0o100, 1_000_000),
        "the volume's own directory too"
    );
    assert_eq!(
        std::fs::symlink_metadata(b.join("passwd")).expect("passwd").ino(),
        std::fs::symlink_metadata(b.join("etc/chsh")).expect("chsh").ino(),
        "hard links stay linked"
    );
    assert_ne!(
        std::fs::symlink_metadata(a.join("passwd")).expect("a").ino(),
        std::fs::symlink_metadata(b.join("passwd")).expect("b").ino(),
        "and are not linked to the source"
    );
    assert!(std::fs::symlink_metadata(b.join("etc/fifo"))
        .expect("fifo")
        .file_type()
        .is_fifo());
    assert!(std::fs::symlink_metadata(b.join("null"))
        .expect("null")
        .file_type()
        .is_char_device());
    assert_eq!(
        std::fs::read_link(b.join("rel-link")).expect("link"),
        Path::new("../../../../outside")
    );
    assert_eq!(
        std::fs::read(b.join("home/user/big")).expect("big"),
        vec![7u8; 300_000]
    );
    let mut buf = [0u8; 16];
    if let Ok(n) = rustix::fs::getxattr(b.join("etc/hostname"), "user.origin", &mut buf[..]) {
        assert_eq!(&buf[..n], b"test", "extended attributes copied");
    }

    pool.rename_volume(&c1, "c3").expect("rename");
    assert!(!path.exists());
    let names: Vec<String> = pool
        .volumes()
        .expect("list")
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, ["c2", "c3"]);
    let e = pool
        .rename_volume(&Volume::container("c3"), "c2")
        .expect_err("taken");
    assert!(e.to_string().contains("already exists"), "{e}");
    let e = pool
        .copy_volume(&Volume::container("c3"), "c2")
        .expect_err("taken");
    assert!(e.to_string().contains("already exists"), "{e}");

    // A copy cut short by a crash is hidden, then cleared at start.
    let leftover = pool.source().join("containers/.copying-c9-0123456789ab");
    std::fs::create_dir_all(leftover.join("rootfs/etc")).expect("leftover");
    assert_eq!(pool.volumes().expect("list").len(), 2, "not a volume");
    assert_eq!(pool.remove_partial().expect("cleanup"), 1);
    assert!(!leftover.exists());

    for name in ["c2", "c3"] {
        pool.delete_volume(&Volume::container(name)).expect("delete");
    }
    assert!(pool.volumes().expect("list").is_empty());
    let containers = pool.source().join(VolumeType::Container.dir());
    assert_eq!(
        std::fs::read_dir(&containers).expect("list").count(),
        0,
        "nothing hidden left behind"
    );
    pool.delete().expect("pool");
}
