//! `stapes file push/pull/delete` against a three-member `stapesd` cluster on the fake
//! driver, through a member that does not hold the container (run `cargo build --bins`
//! first): a few MiB both ways, owner and mode, `-p`, `-r` with a link, delete, a missing
//! file in the incus CLI's words.

mod common;

use std::path::{Path, PathBuf};

use common::{Stapes, CONVERGE_LIMIT};
use testkit::{eventually, have_root, Member, FAKE_DRIVER};

async fn settle(sockets: &[PathBuf]) {
    eventually(CONVERGE_LIMIT, "members applied alike", || async {
        let mut applied = std::collections::BTreeSet::new();
        for s in sockets {
            let r = testkit::Target::Unix(s.clone())
                .get("/internal/ready")
                .await
                .ok()?;
            applied.insert(r.metadata()["applied"].to_string());
        }
        (applied.len() == 1).then_some(())
    })
    .await
}

fn attrs(p: &Path) -> (u32, u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.mode() & 0o7777, m.uid(), m.gid())
}

#[tokio::test]
async fn t40_file_push_pull_delete_through_a_member_without_the_container() {
    if !have_root() {
        return;
    }
    let cluster = testkit::Cluster::start_env(3, &[], &[FAKE_DRIVER]).await;
    cluster.wait_healthy(3, CONVERGE_LIMIT).await;
    let cli = Stapes::new();
    let s: Vec<PathBuf> = cluster.members.iter().map(Member::socket).collect();
    let work = tempfile::tempdir().unwrap();
    for name in ["node1", "node2", "node3"] {
        cli.ok(&s[0], &["storage", "create", "pool1", "dir", "--target", name])
            .await;
    }
    settle(&s).await;
    cli.ok(&s[0], &["storage", "create", "pool1", "dir"]).await;
    settle(&s).await;
    cli.ok(
        &s[0],
        &[
            "profile",
            "device",
            "add",
            "default",
            "root",
            "disk",
            "path=/",
            "pool=pool1",
        ],
    )
    .await;
    let img = common::test_image(work.path());
    cli.ok(
        &s[0],
        &["image", "import", img.to_str().unwrap(), "--alias", "img"],
    )
    .await;
    settle(&s).await;
    cli.ok(&s[0], &["launch", "img", "c1", "--target", "node2"]).await;
    settle(&s).await;
    let rootfs = cluster.members[1]
        .dir
        .join("storage-pools/pool1/containers/c1/rootfs");

    // A few MiB both ways, with owner and mode, through node1.
    let big = work.path().join("big.bin");
    let data: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&big, &data).unwrap();
    let b = big.to_str().unwrap();
    cli.ok(
        &s[0],
        &[
            "file",
            "push",
            "--uid",
            "1000",
            "--gid",
            "1001",
            "--mode",
            "0600",
            b,
            "c1/root/big.bin",
        ],
    )
    .await;
    assert_eq!(std::fs::read(rootfs.join("root/big.bin")).unwrap(), data);
    assert_eq!(attrs(&rootfs.join("root/big.bin")), (0o600, 1000, 1001));
    let back = work.path().join("back.bin");
    cli.ok(
        &s[0],
        &["file", "pull", "c1/root/big.bin", back.to_str().unwrap()],
    )
    .await;
    assert_eq!(std::fs::read(&back).unwrap(), data);

    // -p creates the parents; -r carries a tree and its link both ways.
    cli.ok(&s[2], &["file", "push", "-p", b, "c1/root/a/b/c.bin"])
        .await;
    assert!(rootfs.join("root/a/b/c.bin").is_file());
    let tree = work.path().join("tree2/d");
    std::fs::create_dir_all(tree.join("e")).unwrap();
    std::fs::write(tree.join("e/f"), b"f").unwrap();
    std::os::unix::fs::symlink("e/f", tree.join("link")).unwrap();
    cli.ok(&s[0], &["file", "push", "-r", tree.to_str().unwrap(), "c1/root/"])
        .await;
    assert_eq!(std::fs::read(rootfs.join("root/d/e/f")).unwrap(), b"f");
    assert_eq!(
        std::fs::read_link(rootfs.join("root/d/link")).unwrap(),
        Path::new("e/f")
    );
    let out = work.path().join("out");
    std::fs::create_dir(&out).unwrap();
    cli.ok(&s[0], &["file", "pull", "-r", "c1/root/d", out.to_str().unwrap()])
        .await;
    assert_eq!(std::fs::read(out.join("d/e/f")).unwrap(), b"f");

    // Delete, then the missing file in the incus CLI's words.
    cli.ok(&s[0], &["file", "delete", "c1/root/big.bin"]).await;
    assert!(!rootfs.join("root/big.bin").exists());
    let err = cli
        .fails(
            &s[0],
            &["file", "pull", "c1/root/big.bin", back.to_str().unwrap()],
        )
        .await;
    assert_eq!(err, "Error: file does not exist\n");
}
