//! Files in a real, unprivileged LXC container on a three-member cluster with the
//! official client, always through node1 while the container runs on node2: a 100 MiB
//! file pushed and pulled whole, owners as the container sees them, `-p` and `-r`, the
//! container's own mounts (its `/tmp` is a tmpfs the host's disk never sees), delete,
//! and every way out of the container refused through SFTP and the files API: links to
//! a host file, `..` chains, `/proc/self/root`, and a path swapped for a link while
//! transfers go on.
//!
//! Needs root, `lxc`, `incus` and `busybox-static` (skipped with a message without them,
//! failing under `CI=true`); whatever the test made is purged afterwards.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use futures_util::FutureExt;
use stapes_testkit::{memory, Cluster, Target};

use super::t60_storage_profiles::Via;
use super::t76_instances_lxc::{busybox_image, purge_after, ready, real_cluster};
use super::t80_files::{escape_links, noise, sha256, through, Swapper};

async fn api_get(t: &Target, path: &str) -> stapes_testkit::Resp {
    t.request("GET", &format!("/1.0/instances/c1/files?path={path}"), None, &[])
        .await
        .unwrap()
}

async fn body(c: &mut Cluster, work: &Path) {
    let v = Via::new(c);
    super::t70_instances::prepare(&v, &busybox_image(work), "bb").await;
    v.ok(0, &["launch", "bb", "c1", "--target", "node2"]).await;
    let rootfs = c.members[1].dir.join("storage-pools/pool1/containers/c1/rootfs");
    let node1 = Target::Unix(v.sock[0].clone());

    // 100 MiB in and back out, whole, without either member holding it.
    let big = work.join("big");
    std::fs::write(&big, noise(100 << 20, 82)).unwrap();
    let (_, peak1) = memory(c.members[0].pid());
    let (_, peak2) = memory(c.members[1].pid());
    v.ok(0, &["file", "push", big.to_str().unwrap(), "c1/root/big"])
        .await;
    let back = work.join("back");
    v.ok(0, &["file", "pull", "c1/root/big", back.to_str().unwrap()])
        .await;
    assert_eq!(sha256(&back), sha256(&big));
    let (_, after1) = memory(c.members[0].pid());
    let (_, after2) = memory(c.members[1].pid());
    for (before, after, who) in [(peak1, after1, "node1"), (peak2, after2, "node2")] {
        assert!(after < before + (48 << 20), "{who}: peak {before} -> {after}");
    }

    // Owners are the container's own ids.
    let small = work.join("small");
    std::fs::write(&small, b"hello\n").unwrap();
    let s = small.to_str().unwrap();
    v.ok(
        0,
        &[
            "file",
            "push",
            s,
            "c1/root/owned",
            "--uid",
            "1000",
            "--gid",
            "1000",
            "--mode",
            "0600",
        ],
    )
    .await;
    let r = api_get(&node1, "/root/owned").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        (
            r.header("X-Incus-uid"),
            r.header("X-Incus-gid"),
            r.header("X-Incus-mode")
        ),
        (Some("1000"), Some("1000"), Some("0600"))
    );
    let r = api_get(&node1, "/root").await;
    assert_eq!(
        r.header("X-Incus-uid"),
        Some("0"),
        "the container's root owns /root"
    );

    // -p, -r, relative paths, delete.
    v.ok(0, &["file", "push", "-p", s, "c1/root/x/y/z.txt"]).await;
    let tree = work.join("tree");
    std::fs::create_dir_all(tree.join("a/b")).unwrap();
    std::fs::write(tree.join("a/b/two"), b"22").unwrap();
    v.ok(
        0,
        &["file", "push", "-r", tree.join("a").to_str().unwrap(), "c1/root/"],
    )
    .await;
    let out = work.join("out");
    std::fs::create_dir(&out).unwrap();
    v.ok(0, &["file", "pull", "-r", "c1/root/a", out.to_str().unwrap()])
        .await;
    assert_eq!(std::fs::read(out.join("a/b/two")).unwrap(), b"22");
    v.ok(0, &["file", "delete", "c1/root/x/y/z.txt"]).await;
    assert_eq!(api_get(&node1, "/root/x/y/z.txt").await.status, 404);

    // The container's own view: its /tmp is a tmpfs, not the directory on the host.
    v.ok(0, &["file", "push", s, "c1/tmp/in-tmpfs"]).await;
    assert!(
        !rootfs.join("tmp/in-tmpfs").exists(),
        "written to the host's disk"
    );
    assert_eq!(&api_get(&node1, "/tmp/in-tmpfs").await.body[..], b"hello\n");

    // A stopped container is served from its disk, with the same owners.
    v.ok(2, &["stop", "c1", "--force"]).await;
    v.ok(
        0,
        &[
            "file",
            "push",
            s,
            "c1/root/cold",
            "--uid",
            "1000",
            "--gid",
            "1000",
            "--mode",
            "0640",
        ],
    )
    .await;
    let r = api_get(&node1, "/root/cold").await;
    assert_eq!(
        (r.header("X-Incus-uid"), r.header("X-Incus-mode"), &r.body[..]),
        (Some("1000"), Some("0640"), &b"hello\n"[..])
    );
    v.ok(0, &["start", "c1"]).await;
    let r = api_get(&node1, "/root/cold").await;
    assert_eq!(
        (r.header("X-Incus-uid"), &r.body[..]),
        (Some("1000"), &b"hello\n"[..])
    );

    // No way out. A host file, and the container's own /etc/shadow at a known content.
    let host = work.join("host");
    std::fs::create_dir(&host).unwrap();
    std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = host.join("secret");
    std::fs::write(&secret, b"HOST SECRET").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o666)).unwrap();
    let shadow = work.join("shadow");
    std::fs::write(&shadow, b"container shadow").unwrap();
    v.ok(0, &["file", "push", shadow.to_str().unwrap(), "c1/etc/shadow"])
        .await;
    let secret_s = secret.to_str().unwrap().to_string();
    let up = "../".repeat(20);
    let mut links = escape_links(&secret, &host);
    links.push(("proc1", format!("/proc/1/root{secret_s}")));
    for (name, target) in &links {
        let r = node1
            .request(
                "POST",
                &format!("/1.0/instances/c1/files?path=/root/{name}"),
                Some(target.as_bytes().to_vec()),
                &[("X-Incus-type", "symlink")],
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{name}: {:?}", r.body);
    }
    let mut through = through(&links);
    through.push(format!("{up}{}", secret_s.trim_start_matches('/')));
    let got = work.join("got");
    let g = got.to_str().unwrap();
    let payload = work.join("payload");
    std::fs::write(&payload, b"written by the test").unwrap();
    let p = payload.to_str().unwrap();
    for name in &through {
        let _ = std::fs::remove_file(&got);
        let (ok, _, _) = v
            .stdin(0, &["file", "pull", &format!("c1/{name}"), g], None)
            .await;
        if ok && std::fs::symlink_metadata(&got).is_ok_and(|m| m.file_type().is_file()) {
            assert_ne!(std::fs::read(&got).unwrap(), b"HOST SECRET", "{name}");
        }
        let r = api_get(&node1, &format!("/{name}")).await;
        assert!(
            !String::from_utf8_lossy(&r.body).contains("HOST SECRET"),
            "{name}"
        );
        let _ = v
            .stdin(0, &["file", "push", p, &format!("c1/{name}")], None)
            .await;
        let _ = node1
            .request(
                "POST",
                &format!("/1.0/instances/c1/files?path=/{name}"),
                Some(b"written by the api".to_vec()),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(std::fs::read(&secret).unwrap(), b"HOST SECRET", "{name}");
    }
    assert_eq!(
        std::fs::read_dir(&host).unwrap().count(),
        1,
        "nothing new on the host"
    );
    let _ = std::fs::remove_file(&got);
    v.ok(0, &["file", "pull", &format!("c1/{up}etc/shadow"), g]).await;
    assert_eq!(std::fs::read(&got).unwrap(), b"container shadow");

    // A path swapped between a file and a link to the host's file, from the host side of
    // the container's disk, while transfers go on.
    let swap = rootfs.join("root/swap");
    let swapper = Swapper::start(&swap, &secret);
    for i in 0..10 {
        let _ = std::fs::remove_file(&got);
        let pulled = v.stdin(0, &["file", "pull", "c1/root/swap", g], None).await.0;
        // The client may leave nothing when the path changed kind under it.
        let local = std::fs::symlink_metadata(&got);
        if pulled && local.is_ok_and(|m| m.file_type().is_file()) {
            assert_ne!(std::fs::read(&got).unwrap(), b"HOST SECRET", "round {i}");
        }
        let r = api_get(&node1, "/root/swap").await;
        assert!(
            !String::from_utf8_lossy(&r.body).contains("HOST SECRET"),
            "round {i}"
        );
        let _ = v.stdin(0, &["file", "push", p, "c1/root/swap"], None).await;
        assert_eq!(std::fs::read(&secret).unwrap(), b"HOST SECRET", "round {i}");
    }
    drop(swapper);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t82_files_in_a_real_container_through_a_member_that_does_not_hold_it() {
    if !ready() {
        return;
    }
    let mut c = real_cluster().await;
    let work = tempfile::tempdir().unwrap();
    let outcome = std::panic::AssertUnwindSafe(body(&mut c, work.path()))
        .catch_unwind()
        .await;
    purge_after(&c, outcome).await;
}
