//! Snapshots of container volumes: taken, restored (an atomic swap), renamed, copied
//! and removed, in Incus's `containers-snapshots/<instance>/<snapshot>` layout.

use std::fs;

use stapes_storage::{Owner, Tree, Volume};

use super::setup;

#[test]
fn t20_snapshot_restore_rename_delete() {
    let (_state, pool) = setup("p", None);
    pool.create().unwrap();
    let vol = pool.create_volume(&Volume::container("c1"), Owner::ROOT).unwrap();
    fs::create_dir(vol.join("rootfs")).unwrap();
    fs::write(vol.join("rootfs/f"), "before").unwrap();

    let snap = pool
        .copy_tree(Tree::Container("c1"), Tree::Snapshot("c1", "s1"))
        .unwrap();
    assert_eq!(snap, pool.source().join("containers-snapshots/c1/s1"));
    assert_eq!(fs::read_to_string(snap.join("rootfs/f")).unwrap(), "before");
    // A name taken is refused, and nothing hidden stays behind.
    assert!(pool
        .copy_tree(Tree::Container("c1"), Tree::Snapshot("c1", "s1"))
        .is_err());

    fs::write(vol.join("rootfs/f"), "after").unwrap();
    fs::write(vol.join("rootfs/new"), "x").unwrap();
    pool.restore_snapshot("c1", "s1").unwrap();
    assert_eq!(fs::read_to_string(vol.join("rootfs/f")).unwrap(), "before");
    assert!(!vol.join("rootfs/new").exists());

    pool.rename_snapshot("c1", "s1", "s2").unwrap();
    assert!(pool.tree_path(Tree::Snapshot("c1", "s2")).unwrap().is_dir());
    let copy = pool
        .copy_tree(Tree::Snapshot("c1", "s2"), Tree::Container("c3"))
        .unwrap();
    assert_eq!(fs::read_to_string(copy.join("rootfs/f")).unwrap(), "before");

    pool.delete_tree(Tree::Snapshot("c1", "s2")).unwrap();
    assert!(!pool.source().join("containers-snapshots/c1").exists());
    let hidden: Vec<_> = ["containers", "containers-snapshots"]
        .iter()
        .flat_map(|d| fs::read_dir(pool.source().join(d)).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");
}

#[test]
fn t20_staged_trees_commit_or_vanish() {
    let (_state, pool) = setup("p", None);
    pool.create().unwrap();
    let staged = pool.stage_tree(Tree::Snapshot("c1", "s1")).unwrap();
    fs::write(staged.join("x"), "y").unwrap();
    // Left behind by a crash: removed at start.
    assert_eq!(pool.remove_partial().unwrap(), 1);
    let staged = pool.stage_tree(Tree::Container("c2")).unwrap();
    let placed = pool
        .commit_tree(&staged, Tree::Container("c2"), Owner::ROOT)
        .unwrap();
    assert!(placed.is_dir());
    assert!(pool.stage_tree(Tree::Container("c2")).is_err());
}

#[test]
fn t90_snapshot_names_never_escape() {
    let (_state, pool) = setup("p", None);
    pool.create().unwrap();
    pool.create_volume(&Volume::container("c1"), Owner::ROOT).unwrap();
    for bad in ["..", ".", "a/b", "", ".hidden"] {
        assert!(pool.tree_path(Tree::Snapshot("c1", bad)).is_err(), "{bad:?}");
        assert!(pool
            .copy_tree(Tree::Container("c1"), Tree::Snapshot("c1", bad))
            .is_err());
        assert!(pool.tree_path(Tree::Snapshot(bad, "s1")).is_err(), "{bad:?}");
    }
}
