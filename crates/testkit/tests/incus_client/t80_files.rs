//! Files with the official client on a three-member cluster of fake-driver members,
//! always through node1 while the container lives on node2: `incus file push/pull/delete`
//! over the SFTP upgrade (a 100 MiB file whole, modes and owners, `-p`, `-r`), `incus file
//! mount` (sshfs), the older files API, every way out of the container's root refused,
//! and the owner killed mid-transfer.

use std::path::{Path, PathBuf};

use stapes_testkit::{have_root, have_tool, memory, Cluster, Target};

use super::t60_storage_profiles::Via;
use super::t70_instances::cluster_with_image;

/// Pseudo-random bytes (xorshift), so a file compresses to nothing and no two runs of a
/// bug look alike.
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub(crate) fn sha256(path: &Path) -> String {
    let data = std::fs::read(path).unwrap();
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &data).as_ref())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Links out of a container toward the host's `secret` file and its directory `host`
/// (absolute, by `..` chains, through `/proc/self/root`), by name.
pub(crate) fn escape_links(secret: &Path, host: &Path) -> Vec<(&'static str, String)> {
    let (secret, host) = (secret.to_str().unwrap(), host.to_str().unwrap());
    let up = "../".repeat(20);
    vec![
        ("abs", secret.to_string()),
        ("rel", format!("{up}{}", secret.trim_start_matches('/'))),
        ("proc", format!("/proc/self/root{secret}")),
        ("absdir", host.to_string()),
        ("reldir", format!("{up}{}", host.trim_start_matches('/'))),
        ("procdir", format!("/proc/self/root{host}")),
    ]
}

/// The paths to try for `links` made in `/root`: each link alone, and each link to a
/// directory as a step on the way to the secret.
pub(crate) fn through(links: &[(&str, String)]) -> Vec<String> {
    links
        .iter()
        .map(|(name, _)| match name.strip_suffix("dir") {
            Some(_) => format!("root/{name}/secret"),
            None => format!("root/{name}"),
        })
        .collect()
}

/// Swaps `path` between a regular file and a link to `target`, as fast as it can, until
/// dropped.
pub(crate) struct Swapper {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Swapper {
    pub(crate) fn start(path: &Path, target: &Path) -> Swapper {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (path, target, flag) = (path.to_path_buf(), target.to_path_buf(), stop.clone());
        let thread = std::thread::spawn(move || {
            let (f, l) = (path.with_extension("f"), path.with_extension("l"));
            let mut n = 0u64;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) && n < 10_000_000 {
                n += 1;
                let _ = std::fs::write(&f, b"inside");
                let _ = std::fs::rename(&f, &path);
                let _ = std::os::unix::fs::symlink(&target, &l);
                let _ = std::fs::rename(&l, &path);
            }
        });
        Swapper {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Swapper {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// c1 on node2 (running), and its root file system on node2's disk.
async fn with_c1(work: &Path) -> (Cluster, Via, PathBuf) {
    let (c, v) = cluster_with_image(work).await;
    v.ok(0, &["launch", "img", "c1", "--target", "node2"]).await;
    let rootfs = c.members[1].dir.join("storage-pools/pool1/containers/c1/rootfs");
    assert!(rootfs.join("etc/hostname").is_file());
    // The test image has no home for root.
    std::fs::create_dir(rootfs.join("root")).unwrap();
    (c, v, rootfs)
}

fn mode_of(p: &Path) -> (u32, u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.mode() & 0o7777, m.uid(), m.gid())
}

#[tokio::test]
async fn t80_push_pull_delete_through_a_member_without_the_container() {
    if !have_tool("incus") || !have_root() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (c, v, rootfs) = with_c1(work.path()).await;

    // 100 MiB in and out again, byte for byte, and neither member holds it in memory.
    let big = work.path().join("big");
    std::fs::write(&big, noise(100 << 20, 80)).unwrap();
    let (_, peak1) = memory(c.members[0].pid());
    let (_, peak2) = memory(c.members[1].pid());
    v.ok(0, &["file", "push", big.to_str().unwrap(), "c1/root/big"])
        .await;
    assert_eq!(sha256(&rootfs.join("root/big")), sha256(&big));
    let back = work.path().join("back");
    v.ok(0, &["file", "pull", "c1/root/big", back.to_str().unwrap()])
        .await;
    assert_eq!(sha256(&back), sha256(&big));
    let (_, after1) = memory(c.members[0].pid());
    let (_, after2) = memory(c.members[1].pid());
    for (before, after, who) in [(peak1, after1, "node1"), (peak2, after2, "node2")] {
        assert!(
            after < before + (48 << 20),
            "{who}'s peak memory grew from {before} to {after} bytes"
        );
    }

    // Owner and mode as asked, relative and nested paths with -p.
    let small = work.path().join("small");
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
            "1001",
            "--mode",
            "0640",
        ],
    )
    .await;
    assert_eq!(mode_of(&rootfs.join("root/owned")), (0o640, 1000, 1001));
    v.ok(0, &["file", "push", "-p", s, "c1/root/x/y/z.txt"]).await;
    assert_eq!(std::fs::read(rootfs.join("root/x/y/z.txt")).unwrap(), b"hello\n");
    assert!(rootfs.join("root/x/y").is_dir());

    // A tree with -r, both ways, a link kept as a link.
    let tree = work.path().join("tree");
    std::fs::create_dir_all(tree.join("a/b")).unwrap();
    std::fs::write(tree.join("a/one"), b"1").unwrap();
    std::fs::write(tree.join("a/b/two"), b"22").unwrap();
    std::os::unix::fs::symlink("one", tree.join("a/link")).unwrap();
    v.ok(
        0,
        &["file", "push", "-r", tree.join("a").to_str().unwrap(), "c1/root/"],
    )
    .await;
    assert_eq!(std::fs::read(rootfs.join("root/a/b/two")).unwrap(), b"22");
    assert_eq!(
        std::fs::read_link(rootfs.join("root/a/link")).unwrap(),
        Path::new("one")
    );
    let out = work.path().join("out");
    std::fs::create_dir(&out).unwrap();
    v.ok(0, &["file", "pull", "-r", "c1/root/a", out.to_str().unwrap()])
        .await;
    assert_eq!(std::fs::read(out.join("a/b/two")).unwrap(), b"22");
    assert_eq!(std::fs::read(out.join("a/one")).unwrap(), b"1");

    // Delete, and a missing file in the client's words.
    v.ok(0, &["file", "delete", "c1/root/x/y/z.txt"]).await;
    assert!(!rootfs.join("root/x/y/z.txt").exists());
    let err = v
        .fails(0, &["file", "pull", "c1/root/nothing", out.to_str().unwrap()])
        .await;
    assert!(err.to_lowercase().contains("not exist"), "{err}");
}

#[tokio::test]
async fn t81_the_files_api_through_a_member_without_the_container() {
    if !have_tool("incus") || !have_root() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (_c, v, rootfs) = with_c1(work.path()).await;
    v.settle().await;
    let node1 = Target::Unix(v.sock[0].clone());
    let url = |p: &str| format!("/1.0/instances/c1/files?path={p}");

    // A file with its owner and mode, then read back with Incus's headers.
    let r = node1
        .request(
            "POST",
            &url("/root/api"),
            Some(b"via the api\n".to_vec()),
            &[
                ("X-Incus-uid", "5"),
                ("X-Incus-gid", "6"),
                ("X-Incus-mode", "0600"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(mode_of(&rootfs.join("root/api")), (0o600, 5, 6));
    let r = node1
        .request(
            "POST",
            &url("root/api"),
            Some(b"more\n".to_vec()),
            &[("X-Incus-write", "append")],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let r = node1.request("GET", &url("root/api"), None, &[]).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"via the api\nmore\n");
    assert_eq!(r.header("X-Incus-type"), Some("file"));
    assert_eq!(r.header("X-Incus-mode"), Some("0600"));
    assert_eq!(
        (r.header("X-Incus-uid"), r.header("X-Incus-gid")),
        (Some("5"), Some("6"))
    );
    // Byte ranges, as Incus serves them (Go's ServeContent), through node1.
    for (range, part, content_range) in [
        ("bytes=4-6", &b"the"[..], "bytes 4-6/17"),
        ("bytes=12-", &b"more\n"[..], "bytes 12-16/17"),
        ("bytes=-5", &b"more\n"[..], "bytes 12-16/17"),
    ] {
        let r = node1
            .request("GET", &url("root/api"), None, &[("Range", range)])
            .await
            .unwrap();
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(&r.body[..], part, "{range}");
        assert_eq!(r.header("Content-Range"), Some(content_range), "{range}");
        assert_eq!(r.header("X-Incus-type"), Some("file"));
    }
    let r = node1
        .request("GET", &url("root/api"), None, &[("Range", "bytes=17-")])
        .await
        .unwrap();
    assert_eq!(r.status, 416);
    assert_eq!(r.header("Content-Range"), Some("bytes */17"));

    // A body far above the JSON limit streams through to the owner, and back.
    let big = noise(24 << 20, 81);
    let r = node1
        .request_within(
            "POST",
            &url("/root/big"),
            Some(big.clone()),
            &[],
            std::time::Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert!(std::fs::read(rootfs.join("root/big")).unwrap() == big);
    let r = node1
        .request_within(
            "GET",
            &url("/root/big"),
            None,
            &[],
            std::time::Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert!(r.body[..] == big[..]);
    assert_eq!(r.header("Content-Length"), Some("25165824"));

    // A directory, a link, a listing.
    let r = node1
        .request(
            "POST",
            &url("/root/d"),
            None,
            &[("X-Incus-type", "directory"), ("X-Incus-mode", "0750")],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(mode_of(&rootfs.join("root/d")).0, 0o750);
    let r = node1
        .request(
            "POST",
            &url("/root/d/l"),
            Some(b"../api".to_vec()),
            &[("X-Incus-type", "symlink")],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let r = node1.request("GET", &url("/root/d/l"), None, &[]).await.unwrap();
    assert_eq!(
        (r.header("X-Incus-type"), &r.body[..]),
        (Some("symlink"), &b"/root/api"[..])
    );
    let r = node1.request("GET", &url("/root"), None, &[]).await.unwrap();
    assert_eq!(r.header("X-Incus-type"), Some("directory"));
    let names = r.metadata();
    assert!(names.as_array().unwrap().iter().any(|n| n == "d"), "{names}");

    // Delete: a file, a full directory only when forced.
    let r = node1.request("DELETE", &url("/root/d"), None, &[]).await.unwrap();
    assert_ne!(r.status, 200, "a full directory stays without force");
    let r = node1
        .request("DELETE", &url("/root/d"), None, &[("X-Incus-force", "true")])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(!rootfs.join("root/d").exists());

    // Refusals in Incus's words.
    let r = node1.request("GET", &url("/root/none"), None, &[]).await.unwrap();
    assert_eq!(r.status, 404, "{:?}", r.body);
    let r = node1
        .request("GET", "/1.0/instances/c1/files", None, &[])
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("Missing path argument"));
    let r = node1
        .request("POST", &url("/root/x"), None, &[("X-Incus-type", "fifo")])
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&r.body).contains("Bad file type: fifo"));
    let r = node1
        .request("GET", "/1.0/instances/c1/sftp", None, &[])
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("Missing or invalid upgrade header"));
    let r = node1
        .request("GET", "/1.0/instances/nope/files?path=/", None, &[])
        .await
        .unwrap();
    assert_eq!(r.status, 404);
}

/// Mounts `/proc` inside `rootfs` for the test's span.
struct ProcMount(PathBuf);

impl ProcMount {
    fn new(rootfs: &Path) -> ProcMount {
        let at = rootfs.join("proc");
        std::fs::create_dir_all(&at).unwrap();
        let st = std::process::Command::new("mount")
            .args(["--bind", "/proc", at.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(st.success(), "mount --bind /proc");
        ProcMount(at)
    }
}

impl Drop for ProcMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn t90_no_way_out_of_the_container() {
    if !have_tool("incus") || !have_root() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (_c, v, rootfs) = with_c1(work.path()).await;
    v.settle().await;
    let node1 = Target::Unix(v.sock[0].clone());
    // A host file outside the root, named by an absolute path.
    let secret_dir = work.path().join("host");
    std::fs::create_dir(&secret_dir).unwrap();
    let secret = secret_dir.join("secret");
    std::fs::write(&secret, b"HOST SECRET").unwrap();
    // The container's own files at the same names.
    std::fs::write(rootfs.join("etc/shadow"), b"container shadow").unwrap();
    let up = "../".repeat(20);
    let mut links = escape_links(&secret, &secret_dir);
    links.push(("shadow", "/etc/shadow".to_string()));
    for (name, target) in &links {
        std::os::unix::fs::symlink(target, rootfs.join("root").join(name)).unwrap();
    }
    let through = through(&links);
    let _proc = ProcMount::new(&rootfs);
    let got = work.path().join("got");
    let g = got.to_str().unwrap();
    let payload = work.path().join("payload");
    std::fs::write(&payload, b"written by the test").unwrap();
    let p = payload.to_str().unwrap();

    // Reads through links and `..` stay inside.
    for name in &through {
        let _ = std::fs::remove_file(&got);
        let (ok, _, err) = v
            .stdin(0, &["file", "pull", &format!("c1/{name}"), g], None)
            .await;
        if ok {
            // The client makes a link a link again; only a file's content can leak.
            let local = std::fs::symlink_metadata(&got);
            if local.is_ok_and(|m| m.file_type().is_file()) {
                let data = std::fs::read(&got).unwrap();
                assert_ne!(data, b"HOST SECRET", "pulled the host's file through {name}");
            }
        } else {
            assert!(!err.is_empty());
        }
        let r = node1
            .request("GET", &format!("/1.0/instances/c1/files?path=/{name}"), None, &[])
            .await
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&r.body).contains("HOST SECRET"),
            "{name}"
        );
    }
    let _ = std::fs::remove_file(&got);
    v.ok(0, &["file", "pull", &format!("c1/{up}etc/shadow"), g]).await;
    assert_eq!(std::fs::read(&got).unwrap(), b"container shadow");
    let r = node1
        .request(
            "GET",
            &format!("/1.0/instances/c1/files?path=/{up}etc/shadow"),
            None,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(&r.body[..], b"container shadow");

    // Writes through the same links never reach the host.
    for name in &through {
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
        std::fs::read_dir(&secret_dir).unwrap().count(),
        1,
        "nothing new on the host"
    );

    // A path swapped between a regular file and a link to the host's file while reads
    // and writes go on: never the host's content, never a write to it.
    let swap = rootfs.join("root/swap");
    let swapper = Swapper::start(&swap, &secret);
    for i in 0..15 {
        let _ = std::fs::remove_file(&got);
        let pulled = v.stdin(0, &["file", "pull", "c1/root/swap", g], None).await.0;
        // The client may leave nothing when the path changed kind under it.
        let local = std::fs::symlink_metadata(&got);
        if pulled && local.is_ok_and(|m| m.file_type().is_file()) {
            assert_ne!(std::fs::read(&got).unwrap(), b"HOST SECRET", "round {i}");
        }
        let r = node1
            .request("GET", "/1.0/instances/c1/files?path=/root/swap", None, &[])
            .await
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&r.body).contains("HOST SECRET"),
            "round {i}"
        );
        let _ = v.stdin(0, &["file", "push", p, "c1/root/swap"], None).await;
        let _ = node1
            .request(
                "POST",
                "/1.0/instances/c1/files?path=/root/swap",
                Some(b"api".to_vec()),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(std::fs::read(&secret).unwrap(), b"HOST SECRET", "round {i}");
    }
    drop(swapper);
}

/// How the owner is lost mid-transfer.
#[derive(Clone, Copy)]
enum Loss {
    Killed,
    Hung,
}

/// A 400 MiB pull through node1 with the owner lost once it is under way: the pull
/// fails, having moved only part of the file; what the client said.
async fn pull_losing_the_owner(loss: Loss) -> String {
    let work = tempfile::tempdir().unwrap();
    let (mut c, v, rootfs) = with_c1(work.path()).await;
    std::fs::write(rootfs.join("root/big"), noise(400 << 20, 85)).unwrap();
    v.settle().await;
    let out = work.path().join("out");
    let pull = tokio::process::Command::new("incus")
        .args(["file", "pull", "c1/root/big", out.to_str().unwrap()])
        .env("INCUS_CONF", v.conf.path())
        .env("HOME", v.conf.path())
        .env("INCUS_SOCKET", &v.sock[0])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    stapes_testkit::eventually(
        std::time::Duration::from_secs(30),
        "the pull under way",
        || async {
            let len = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
            (len > 1 << 20).then_some(())
        },
    )
    .await;
    // Continues the owner however the test ends.
    let _cont = super::t80_exec::Continue(c.members[1].pid());
    match loss {
        Loss::Killed => c.members[1].kill9(),
        Loss::Hung => c.members[1].stop_process().await,
    }
    let done = tokio::time::timeout(std::time::Duration::from_secs(60), pull.wait_with_output())
        .await
        .expect("the pull ended after its owner was lost")
        .unwrap();
    let err = String::from_utf8_lossy(&done.stderr).into_owned();
    assert!(!done.status.success(), "a cut pull cannot succeed: {err}");
    assert!(std::fs::metadata(&out).unwrap().len() < 400 << 20);
    err
}

#[tokio::test]
async fn t85_the_owner_killed_mid_transfer_ends_it_with_an_error_naming_the_member() {
    if !have_tool("incus") || !have_root() {
        return;
    }
    let err = pull_losing_the_owner(Loss::Killed).await;
    // The client quotes the server's message (`\"node2\"`).
    assert!(
        err.contains("Cluster member") && err.contains("node2") && err.contains("unreachable"),
        "{err}"
    );
}

/// A stopped owner keeps its connections open and answers nothing: the relaying member
/// declares it lost within its bound and ends the transfer naming it.
#[tokio::test]
async fn t86_the_owner_hung_mid_transfer_ends_it_with_an_error_naming_the_member() {
    if !have_tool("incus") || !have_root() {
        return;
    }
    let err = pull_losing_the_owner(Loss::Hung).await;
    assert!(
        err.contains("Cluster member") && err.contains("node2") && err.contains("stopped answering"),
        "{err}"
    );
}

/// Unmounts a FUSE mount point when dropped.
struct FuseMount(PathBuf);

impl Drop for FuseMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("fusermount")
            .arg("-uz")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn t83_file_mount_through_a_member_without_the_container() {
    if !have_tool("incus") || !have_tool("sshfs") || !have_root() {
        return;
    }
    if !Path::new("/dev/fuse").exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "/dev/fuse is needed under CI=true"
        );
        eprintln!("SKIP: no /dev/fuse for sshfs");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (_c, v, rootfs) = with_c1(work.path()).await;
    std::fs::write(rootfs.join("root/hello"), b"hello from c1\n").unwrap();
    v.settle().await;
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _unmount = FuseMount(mnt.clone());
    let _mount = tokio::process::Command::new("incus")
        .args(["file", "mount", "c1/root", mnt.to_str().unwrap()])
        .env("INCUS_CONF", v.conf.path())
        .env("HOME", v.conf.path())
        .env("INCUS_SOCKET", &v.sock[0])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let hello = mnt.join("hello");
    stapes_testkit::eventually(std::time::Duration::from_secs(30), "the mount", || async {
        std::fs::read(&hello).ok().filter(|d| d == b"hello from c1\n")
    })
    .await;
    // Written, appended, renamed, listed and removed through the mount.
    std::fs::write(mnt.join("new"), b"one").unwrap();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(mnt.join("new"))
            .unwrap();
        f.write_all(b" two").unwrap();
    }
    std::fs::rename(mnt.join("new"), mnt.join("renamed")).unwrap();
    assert_eq!(std::fs::read(rootfs.join("root/renamed")).unwrap(), b"one two");
    std::fs::create_dir(mnt.join("sub")).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["hello", "renamed", "sub"]);
    std::fs::remove_file(mnt.join("renamed")).unwrap();
    std::fs::remove_dir(mnt.join("sub")).unwrap();
    assert!(!rootfs.join("root/renamed").exists() && !rootfs.join("root/sub").exists());
}
