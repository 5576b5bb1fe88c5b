//! Images with the official client on a three-member cluster, each step through a
//! member other than the one that holds the data: import (unified and split), list,
//! info, show, edit, set-property, export, aliases; the files copied to
//! `cluster.images_minimal_replica` members, fetched verified by a member that lacks
//! them, removed everywhere on delete (a member down at the time cleans up when it
//! returns); bad uploads refused with nothing left. And one large import through the
//! official client, with the receiving member's memory flat.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use stapes_testkit::{eventually, have_tool, memory, ClientCert, Cluster, Member, Target};

use super::{incus, incus_stdin, ok};

const LONG: Duration = Duration::from_secs(60);
const MIB: u64 = 1024 * 1024;

fn sha256_file(path: &Path) -> String {
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_concat(a: &Path, b: &Path) -> String {
    let mut bytes = std::fs::read(a).unwrap();
    bytes.extend(std::fs::read(b).unwrap());
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `tar ARGS` in `dir`.
fn tar(dir: &Path, args: &[&str]) {
    let st = std::process::Command::new("tar")
        .current_dir(dir)
        .args(args)
        .status()
        .expect("tar runs");
    assert!(st.success(), "tar {args:?}");
}

/// A small image tree in `dir/tree` (`metadata.yaml`, `rootfs/etc/hostname`), with
/// `release` in its properties so two images differ.
fn image_tree(dir: &Path, release: &str) -> PathBuf {
    let tree = dir.join(format!("tree-{release}"));
    std::fs::create_dir_all(tree.join("rootfs/etc")).unwrap();
    std::fs::write(
        tree.join("metadata.yaml"),
        format!(
            "architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  description: Test {release}\n  os: Debian\n  release: {release}\ntemplates: {{}}\n"
        ),
    )
    .unwrap();
    std::fs::write(tree.join("rootfs/etc/hostname"), release).unwrap();
    tree
}

fn holds(m: &Member, fp: &str) -> bool {
    m.dir.join("images").join(fp).is_file()
}

fn fingerprint_from(out: &str) -> String {
    out.lines()
        .find_map(|l| {
            l.trim_start_matches('\r')
                .strip_prefix("Image imported with fingerprint: ")
        })
        .unwrap_or_else(|| panic!("no fingerprint in {out:?}"))
        .trim()
        .to_string()
}

/// The output of `incus ARGS` once it succeeds and `wanted` accepts it: a member
/// answers reads from its own replica, which follows a write made through another one
/// within moments.
async fn seen(conf: &Path, args: &[&str], wanted: impl Fn(&str) -> bool) -> String {
    eventually(LONG, &format!("incus {args:?} to show the change"), || async {
        let (success, out, _) = incus(conf, None, args).await;
        (success && wanted(&out)).then_some(out)
    })
    .await
}

/// A client configuration trusted by the cluster, with remotes `n1`, `n2` and `n3`.
async fn client(c: &Cluster) -> (tempfile::TempDir, ClientCert) {
    let conf = tempfile::tempdir().unwrap();
    let cert = ClientCert::generate("cli");
    std::fs::write(conf.path().join("client.crt"), &cert.cert_pem).unwrap();
    std::fs::write(conf.path().join("client.key"), &cert.key_pem).unwrap();
    c.members[0].trust(&cert).await;
    for (i, m) in c.members.iter().enumerate() {
        let t = Target::tls(&m.address().await, Some(&cert));
        eventually(LONG, "the client trusted everywhere", || async {
            (t.get("/1.0").await.ok()?.metadata()["auth"] == "trusted").then_some(())
        })
        .await;
        let addr = m.address().await;
        ok(
            conf.path(),
            None,
            &[
                "remote",
                "add",
                &format!("n{}", i + 1),
                &format!("https://{addr}"),
                "--accept-certificate",
            ],
        )
        .await;
    }
    (conf, cert)
}

#[tokio::test]
async fn t60_images_across_a_cluster_with_the_official_client() {
    if !have_tool("incus") {
        return;
    }
    let mut c = Cluster::start_env(
        3,
        &[("cluster.offline_threshold", "3")],
        &[("STAPES_TEST_ROUTES", "true")],
    )
    .await;
    c.wait_healthy(3, LONG).await;
    let (conf, cert) = client(&c).await;
    let conf = conf.path();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();

    // A unified image through node1: the fingerprint is the file's sha256, and with the
    // default of three replicas every member holds it once the import returns.
    let tree = image_tree(w, "bookworm");
    tar(&tree, &["-czf", "../unified.tar.gz", "metadata.yaml", "rootfs"]);
    let unified = w.join("unified.tar.gz");
    let out = ok(
        conf,
        None,
        &[
            "image",
            "import",
            unified.to_str().unwrap(),
            "n1:",
            "--alias",
            "bb",
        ],
    )
    .await;
    let fp = fingerprint_from(&out);
    assert_eq!(fp, sha256_file(&unified), "{out}");
    for m in &c.members {
        let logs: String = c
            .members
            .iter()
            .map(|m| m.log())
            .collect::<Vec<_>>()
            .join("\n----\n");
        assert!(
            holds(m, &fp),
            "a replica on {:?}: {:?}\n{}",
            m.dir,
            m.image_files(),
            logs
        );
    }
    // Listed and shown through node3, with Incus's fields.
    let row = format!("bb,{},no,Test bookworm,x86_64,CONTAINER,", &fp[..12]);
    seen(conf, &["image", "list", "n3:", "--format", "csv"], |l| {
        l.starts_with(&row)
    })
    .await;
    let json: Value =
        serde_json::from_str(&ok(conf, None, &["image", "list", "n3:", "--format", "json"]).await).unwrap();
    assert_eq!(json[0]["fingerprint"], fp.as_str());
    assert_eq!(json[0]["properties"]["os"], "Debian");
    assert_eq!(json[0]["profiles"][0], "default");
    assert_eq!(json[0]["type"], "container");
    assert_eq!(json[0]["size"], std::fs::metadata(&unified).unwrap().len());
    let info = ok(conf, None, &["image", "info", "n3:bb"]).await;
    assert!(
        info.contains(&format!("Fingerprint: {fp}")) && info.contains("release: bookworm"),
        "{info}"
    );
    // Filters are the server's.
    let none = ok(
        conf,
        None,
        &["image", "list", "n2:", "os=Alpine", "--format", "csv"],
    )
    .await;
    assert!(none.trim().is_empty(), "{none}");
    // A duplicate is refused as Incus refuses it, through another member.
    let (success, _, err) = incus(conf, None, &["image", "import", unified.to_str().unwrap(), "n2:"]).await;
    assert!(
        !success && err.contains("Image with same fingerprint already exists"),
        "{err}"
    );

    // Fewer replicas: the key is validated as Incus does, then a split image imported
    // through node3 stays on node3 alone.
    let (success, _, err) = incus(
        conf,
        None,
        &["config", "set", "n1:", "cluster.images_minimal_replica", "0"],
    )
    .await;
    assert!(
        !success && err.contains("Invalid value for image replica count"),
        "{err}"
    );
    ok(
        conf,
        None,
        &["config", "set", "n2:", "cluster.images_minimal_replica", "1"],
    )
    .await;
    seen(
        conf,
        &["config", "get", "n3:", "cluster.images_minimal_replica"],
        |v| v.trim() == "1",
    )
    .await;
    let tree = image_tree(w, "trixie");
    tar(&tree, &["-cf", "../meta.tar", "metadata.yaml"]);
    tar(&tree, &["-czf", "../rootfs.tar.gz", "rootfs"]);
    let (meta, rootfs) = (w.join("meta.tar"), w.join("rootfs.tar.gz"));
    let out = ok(
        conf,
        None,
        &[
            "image",
            "import",
            meta.to_str().unwrap(),
            rootfs.to_str().unwrap(),
            "n3:",
            "--alias",
            "split",
        ],
    )
    .await;
    let split = fingerprint_from(&out);
    assert_eq!(split, sha256_concat(&meta, &rootfs));
    assert!(holds(&c.members[2], &split));
    assert!(c.members[2]
        .dir
        .join("images")
        .join(format!("{split}.rootfs"))
        .is_file());
    assert!(!holds(&c.members[0], &split) && !holds(&c.members[1], &split));
    let info = seen(conf, &["image", "info", "n1:split"], |_| true).await;
    assert!(info.contains(&format!("Fingerprint: {split}")), "{info}");

    // Export through node1, which lacks it: the files come from node3, whole.
    let out_dir = w.join("export");
    std::fs::create_dir(&out_dir).unwrap();
    ok(
        conf,
        None,
        &["image", "export", "n1:split", out_dir.to_str().unwrap()],
    )
    .await;
    let exported_meta = out_dir.join(format!("meta-{split}.tar"));
    let exported_rootfs = out_dir.join(format!("{split}.tar.gz"));
    assert_eq!(sha256_concat(&exported_meta, &exported_rootfs), split);
    assert!(
        !holds(&c.members[0], &split),
        "an export through node1 leaves no copy there"
    );

    // node1 needs it (as instance creation will): it fetches it from node3, verified.
    let n1 = Target::tls(&c.members[0].address().await, Some(&cert));
    // A copy that does not hash to its fingerprint is refused, and nothing of it kept.
    let ensure = format!("/internal/test/images/{split}/ensure?target=node1");
    let held = c.members[2].dir.join("images").join(format!("{split}.rootfs"));
    let good = std::fs::read(&held).unwrap();
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    std::fs::write(&held, &bad).unwrap();
    let r = n1
        .send_json("POST", &ensure, &serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 500);
    assert!(
        r.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("fingerprints don't match")),
        "{}",
        r.json()
    );
    let left = c.members[0].image_files();
    assert!(
        left.iter()
            .all(|f| !f.starts_with(&split) && !f.starts_with(".partial")),
        "{left:?}"
    );
    std::fs::write(&held, &good).unwrap();

    // Two callers at once: one fetch, both answered once the copy is there.
    let empty = serde_json::json!({});
    let (a, b) = tokio::join!(
        n1.send_json("POST", &ensure, &empty),
        n1.send_json("POST", &ensure, &empty)
    );
    for r in [a.unwrap(), b.unwrap()] {
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    assert!(holds(&c.members[0], &split) && !holds(&c.members[1], &split));
    let fetched = |n: usize| move |log: &str| log.matches("fetching image from member").count() >= n;
    let log = c.members[0]
        .log_when(LONG, "the second fetch logged", fetched(2))
        .await;
    let fetches = log.matches("fetching image from member").count();
    assert_eq!(fetches, 2, "one fetch for two callers (after the refused one)");
    let copy = c.members[0].dir.join("images");
    assert_eq!(
        sha256_concat(&copy.join(&split), &copy.join(format!("{split}.rootfs"))),
        split
    );
    // Image files are not synced: a power loss may leave one shorter than it was. Such
    // a copy counts as missing and is fetched again, whole.
    let rootfs = copy.join(format!("{split}.rootfs"));
    let len = std::fs::metadata(&rootfs).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&rootfs)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let r = n1.send_json("POST", &ensure, &empty).await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let log = c.members[0]
        .log_when(LONG, "the third fetch logged", fetched(3))
        .await;
    let fetches = log.matches("fetching image from member").count();
    assert_eq!(fetches, 3, "a copy cut short is fetched again");
    assert_eq!(
        sha256_concat(&copy.join(&split), &copy.join(format!("{split}.rootfs"))),
        split
    );
    // Made public, a stranger exports it through node2, which does not hold it: the
    // request goes to a holder with the stranger's (untrusted) identity.
    let r = n1
        .send_json(
            "PATCH",
            &format!("/1.0/images/{split}"),
            &serde_json::json!({"public": true}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let via_n2 = Target::tls(&c.members[1].address().await, Some(&ClientCert::generate("y")));
    let path = format!("/1.0/images/{split}/export");
    let export = eventually(LONG, "the public image exported through node2", || async {
        let r = via_n2.get(&path).await.ok()?;
        (r.status == 200).then_some(r)
    })
    .await;
    assert!(!holds(&c.members[1], &split), "served by a holder");
    assert!(
        export
            .header("content-type")
            .is_some_and(|t| t.starts_with("multipart/form-data")),
        "{:?}",
        export.headers
    );
    assert_eq!(via_n2.get("/1.0/images/aliases").await.unwrap().status, 403);
    let r = n1
        .send_json(
            "PATCH",
            &format!("/1.0/images/{split}"),
            &serde_json::json!({"public": false}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    eventually(LONG, "private again", || async {
        (via_n2.get(&path).await.ok()?.status == 404).then_some(())
    })
    .await;
    // Back to three replicas: the periodic top-up copies it to node2 as well.
    ok(
        conf,
        None,
        &["config", "set", "n1:", "cluster.images_minimal_replica=-1"],
    )
    .await;
    let r = n1
        .send_json("POST", "/internal/test/images/sync", &serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(holds(&c.members[1], &split), "{:?}", c.members[1].image_files());
    ok(
        conf,
        None,
        &["config", "set", "n1:", "cluster.images_minimal_replica", "1"],
    )
    .await;

    // A stranger cannot ask a member for an image's files.
    let stranger = Target::tls(&c.members[2].address().await, Some(&ClientCert::generate("x")));
    assert_eq!(
        stranger
            .get(&format!("/internal/images/{split}"))
            .await
            .unwrap()
            .status,
        403
    );
    let client_on_member_route = Target::tls(&c.members[2].address().await, Some(&cert));
    assert_eq!(
        client_on_member_route
            .get(&format!("/internal/images/{split}"))
            .await
            .unwrap()
            .status,
        403,
        "member-only, even for a trusted client"
    );

    // Edit, set-property and aliases through different members, seen through others.
    ok(conf, None, &["image", "set-property", "n2:bb", "os", "Devuan"]).await;
    let show = seen(conf, &["image", "show", "n3:bb"], |s| s.contains("os: Devuan")).await;
    let edited = show.replace("public: false", "public: true");
    let (success, _, err) = incus_stdin(conf, None, &["image", "edit", "n1:bb"], Some(&edited)).await;
    assert!(success, "{err}");
    let public = format!("bb,{}", &fp[..12]);
    seen(
        conf,
        &[
            "image",
            "list",
            "n2:",
            "public=true",
            "--format",
            "csv",
            "-c",
            "lf",
        ],
        |l| l.trim() == public,
    )
    .await;
    ok(conf, None, &["image", "alias", "create", "n1:deb", &fp[..8]]).await;
    seen(conf, &["image", "alias", "list", "n2:", "--format", "csv"], |l| {
        l.contains("deb,")
    })
    .await;
    ok(conf, None, &["image", "alias", "rename", "n2:deb", "debian"]).await;
    let renamed = format!("debian,{},CONTAINER,", &fp[..12]);
    seen(conf, &["image", "alias", "list", "n3:", "--format", "csv"], |l| {
        l.contains(&renamed) && !l.contains("deb,")
    })
    .await;
    let (success, _, err) = incus(conf, None, &["image", "alias", "create", "n3:debian", &fp]).await;
    assert!(!success && err.contains("already exists"), "{err}");
    ok(conf, None, &["image", "alias", "delete", "n3:debian"]).await;

    // Bad uploads through node2: a clear error, and nothing left anywhere.
    let before = ok(conf, None, &["image", "list", "n1:", "--format", "csv"]).await;
    let files_before: Vec<Vec<String>> = c.members.iter().map(Member::image_files).collect();
    std::fs::write(
        w.join("garbage.tar.gz"),
        b"\x1f\x8b\x08\x00garbage that is no gzip stream",
    )
    .unwrap();
    let bytes = std::fs::read(&unified).unwrap();
    std::fs::write(w.join("truncated.tar.gz"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(w.join("text.txt"), b"just some text, not an image at all").unwrap();
    std::fs::create_dir_all(w.join("nometa/rootfs")).unwrap();
    tar(&w.join("nometa"), &["-czf", "../nometa.tar.gz", "rootfs"]);
    for (name, metadata) in [
        ("z80", "architecture: z80\ncreation_date: 1700000000\n"),
        ("undated", "architecture: x86_64\nproperties: {}\n"),
    ] {
        let d = w.join(name);
        std::fs::create_dir_all(d.join("rootfs")).unwrap();
        std::fs::write(d.join("metadata.yaml"), metadata).unwrap();
        tar(
            &d,
            &["-czf", &format!("../{name}.tar.gz"), "metadata.yaml", "rootfs"],
        );
    }
    for (file, message) in [
        ("z80.tar.gz", "Architecture isn't supported: z80"),
        ("undated.tar.gz", "Missing creation date"),
        ("garbage.tar.gz", "Invalid image file"),
        ("truncated.tar.gz", "Invalid image file"),
        ("text.txt", "Unsupported compression"),
        ("nometa.tar.gz", "metadata.yaml"),
    ] {
        let path = w.join(file);
        let (success, _, err) = incus(conf, None, &["image", "import", path.to_str().unwrap(), "n2:"]).await;
        assert!(!success && err.contains(message), "{file}: {err}");
    }
    assert_eq!(
        ok(conf, None, &["image", "list", "n1:", "--format", "csv"]).await,
        before
    );
    let files_after: Vec<Vec<String>> = c.members.iter().map(Member::image_files).collect();
    assert_eq!(files_after, files_before, "no partial file, no record");

    // Delete while node2 is down: every member that is up drops its copy at once, and
    // node2 drops its own when it returns.
    assert!(holds(&c.members[1], &fp));
    c.members[1].kill9();
    ok(conf, None, &["image", "delete", "n3:bb"]).await;
    for m in [&c.members[0], &c.members[2]] {
        eventually(LONG, "the deleted image's files removed", || async {
            (!holds(m, &fp)).then_some(())
        })
        .await;
    }
    assert!(holds(&c.members[1], &fp), "node2 was down");
    c.members[1].start_again().await;
    let n2 = &c.members[1];
    eventually(LONG, "node2 drops the deleted image", || async {
        (!holds(n2, &fp)).then_some(())
    })
    .await;
    seen(conf, &["image", "list", "n2:", "--format", "csv"], |l| {
        !l.contains("bb,") && l.contains("split,")
    })
    .await;
    ok(conf, None, &["image", "delete", "n2:split"]).await;
    for m in &c.members {
        eventually(LONG, "the split image removed everywhere", || async {
            (!holds(m, &split) && m.image_files().is_empty()).then_some(())
        })
        .await;
    }
}

/// Runs `incus ARGS` with a bound of its own (a large upload outlasts the usual one).
async fn incus_within(conf: &Path, socket: &Path, args: &[&str], limit: Duration) -> (bool, String) {
    let out = tokio::process::Command::new("incus")
        .args(args)
        .env("INCUS_CONF", conf)
        .env("HOME", conf)
        .env("INCUS_SOCKET", socket)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(limit, out)
        .await
        .expect("incus finished in time")
        .expect("incus runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The large import: `STAPES_TEST_IMAGE_MIB` MiB (2 GiB by default) of root file system in
/// an uncompressed tarball, through the official client; the member's peak memory grows
/// by less than 64 MiB.
#[tokio::test]
async fn t65_a_large_import_streams_to_disk() {
    if !have_tool("incus") {
        return;
    }
    let mib: u64 = std::env::var("STAPES_TEST_IMAGE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    let m = Member::start().await;
    let work = tempfile::tempdir().unwrap();
    let tree = image_tree(work.path(), "big");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(tree.join("rootfs/big")).unwrap();
        let chunk: Vec<u8> = (0..MIB).map(|k| (k % 251) as u8).collect();
        for _ in 0..mib {
            f.write_all(&chunk).unwrap();
        }
    }
    tar(&tree, &["-cf", "../big.tar", "metadata.yaml", "rootfs"]);
    std::fs::remove_file(tree.join("rootfs/big")).unwrap();
    let file = work.path().join("big.tar");
    let conf = tempfile::tempdir().unwrap();
    let before = memory(m.pid());
    let (success, out) = incus_within(
        conf.path(),
        &m.socket(),
        &["image", "import", file.to_str().unwrap(), "--alias", "big"],
        Duration::from_secs(900),
    )
    .await;
    assert!(success, "{out}");
    assert_eq!(fingerprint_from(&out), sha256_file(&file));
    let (rss, peak) = memory(m.pid());
    let allowed = before.1.max(before.0 + 64 * MIB);
    assert!(
        peak <= allowed,
        "importing {mib} MiB: peak RSS {} MiB, was {} MiB (peak {} MiB) before; now {} MiB",
        peak / MIB,
        before.0 / MIB,
        before.1 / MIB,
        rss / MIB
    );
}
