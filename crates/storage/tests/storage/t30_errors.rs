use stapes_storage::{open, Error, Owner, PoolConfig, Volume};

use crate::{is_root, setup};

#[test]
fn t30_sources_refused() {
    let state = tempfile::tempdir().expect("tempdir");
    let cfg = |source: Option<std::path::PathBuf>| PoolConfig {
        name: "p".into(),
        driver: "dir".into(),
        source,
    };
    let missing = state.path().join("nope");
    let e = open(state.path(), &cfg(Some(missing.clone())))
        .expect("open")
        .create()
        .expect_err("missing");
    assert_eq!(
        e.to_string(),
        format!("Source path '{}' doesn't exist", missing.display())
    );

    let outside = tempfile::tempdir().expect("tempdir");
    std::fs::write(outside.path().join("file"), b"x").expect("file");
    let e = open(state.path(), &cfg(Some(outside.path().to_path_buf())))
        .expect("open")
        .create()
        .expect_err("not empty");
    assert_eq!(
        e.to_string(),
        format!("Source path '{}' isn't empty", outside.path().display())
    );
    assert_eq!(
        std::fs::read_dir(outside.path()).expect("list").count(),
        1,
        "nothing added"
    );

    let inside = state.path().join("elsewhere");
    std::fs::create_dir(&inside).expect("dir");
    let e = open(state.path(), &cfg(Some(inside)))
        .expect("open")
        .create()
        .expect_err("inside");
    assert!(matches!(e, Error::SourceInStateDir(_)), "{e}");

    let e = open(state.path(), &cfg(Some("relative/dir".into()))).expect_err("relative");
    assert!(matches!(e, Error::SourceNotAbsolute(_)), "{e}");

    let e = open(
        state.path(),
        &PoolConfig {
            name: "p".into(),
            driver: "zfs".into(),
            source: None,
        },
    )
    .expect_err("driver");
    assert_eq!(e.to_string(), "Unknown driver");
    let e = open(
        state.path(),
        &PoolConfig {
            name: "../p".into(),
            driver: "dir".into(),
            source: None,
        },
    )
    .expect_err("name");
    assert!(e.to_string().starts_with("Invalid storage pool name"), "{e}");
}

#[test]
fn t30_volume_names_and_missing() {
    if !is_root() {
        return;
    }
    let (_state, pool) = setup("pool1", None);
    pool.create().expect("create");
    for bad in ["../escape", "a/b", "..", ".hidden", ""] {
        let e = pool
            .create_volume(&Volume::container(bad), Owner::ROOT)
            .expect_err(bad);
        assert!(matches!(e, Error::InvalidVolumeName { .. }), "{bad}: {e}");
    }
    assert!(!pool.source().join("escape").exists());
    let e = pool
        .delete_volume(&Volume::container("ghost"))
        .expect_err("missing");
    assert!(matches!(e, Error::VolumeNotFound(_)), "{e}");
    let e = pool
        .rename_volume(&Volume::container("ghost"), "x")
        .expect_err("missing");
    assert!(matches!(e, Error::VolumeNotFound(_)), "{e}");
    let e = pool
        .copy_volume(&Volume::container("ghost"), "x")
        .expect_err("missing");
    assert!(matches!(e, Error::VolumeNotFound(_)), "{e}");
    pool.create_volume(&Volume::container("c1"), Owner::ROOT)
        .expect("c1");
    let e = pool
        .rename_volume(&Volume::container("c1"), "../../x")
        .expect_err("bad name");
    assert!(matches!(e, Error::InvalidVolumeName { .. }), "{e}");
    pool.delete_volume(&Volume::container("c1")).expect("delete");
    pool.delete().expect("delete pool");
}

#[test]
fn t30_a_symlinked_volume_is_not_followed() {
    if !is_root() {
        return;
    }
    // A volume directory replaced by a link to somewhere else is not a volume.
    let (_state, pool) = setup("pool1", None);
    pool.create().expect("create");
    let elsewhere = tempfile::tempdir().expect("tempdir");
    std::fs::write(elsewhere.path().join("keep"), b"keep").expect("keep");
    std::os::unix::fs::symlink(elsewhere.path(), pool.source().join("containers/evil")).expect("link");
    let evil = Volume::container("evil");
    assert!(matches!(pool.delete_volume(&evil), Err(Error::VolumeNotFound(_))));
    assert!(matches!(
        pool.copy_volume(&evil, "c2"),
        Err(Error::VolumeNotFound(_))
    ));
    assert!(matches!(pool.volume_usage(&evil), Err(Error::VolumeNotFound(_))));
    assert!(elsewhere.path().join("keep").exists());
}
