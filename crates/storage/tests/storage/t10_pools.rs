use std::os::unix::fs::PermissionsExt;

use stapes_storage::{Owner, Volume};

use crate::{is_root, setup};

fn mode(p: &std::path::Path) -> u32 {
    std::fs::symlink_metadata(p).expect("stat").permissions().mode() & 0o7777
}

#[test]
fn t10_default_pool_lifecycle() {
    if !is_root() {
        return;
    }
    let (state, pool) = setup("pool1", None);
    let source = state.path().join("storage-pools/pool1");
    assert_eq!(pool.source(), source);
    assert_eq!(pool.driver(), "dir");
    assert!(pool.check().is_err(), "not created yet");
    pool.create().expect("create");
    pool.check().expect("check");
    assert_eq!(mode(&source), 0o711);
    assert_eq!(mode(&state.path().join("storage-pools")), 0o711);
    assert_eq!(mode(&source.join("containers")), 0o711);
    assert_eq!(mode(&source.join("images")), 0o700);

    let space = pool.space().expect("space");
    let fs = rustix::fs::statvfs(&source).expect("statvfs");
    assert_eq!(
        space.total,
        fs.f_blocks * fs.f_frsize,
        "from the real file system"
    );
    assert!(space.used > 0 && space.used <= space.total);
    assert!(space.inodes_total >= space.inodes_used);

    pool.create_volume(&Volume::container("c1"), Owner::ROOT)
        .expect("volume");
    let e = pool.delete().expect_err("in use");
    assert_eq!(e.to_string(), "The storage pool is currently in use");
    pool.check().expect("untouched by the refusal");
    pool.delete_volume(&Volume::container("c1"))
        .expect("delete volume");
    // An image volume is a cache: it goes with the pool.
    pool.create_volume(&Volume::image(&"a".repeat(64)), Owner::ROOT)
        .expect("image volume");
    pool.delete().expect("delete");
    assert!(!source.exists(), "the default source goes with the pool");
    assert!(pool.check().is_err());
}

#[test]
fn t10_given_source() {
    if !is_root() {
        return;
    }
    let outside = tempfile::tempdir().expect("tempdir");
    let src = outside.path().join("data");
    std::fs::create_dir(&src).expect("source");
    let (_state, pool) = setup("pool2", Some(src.clone()));
    pool.create().expect("create");
    assert!(src.join("containers").is_dir());
    pool.delete().expect("delete");
    assert!(src.is_dir(), "a given source is kept");
    assert_eq!(std::fs::read_dir(&src).expect("list").count(), 0, "and emptied");
}
