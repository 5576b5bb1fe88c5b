//! `stapes image ...` against a real `stapesd` (started by the testkit from the
//! workspace's build directory: run `cargo build --bins` first): import unified and
//! split, list with formats and filters, info, show, edit, set-property, aliases,
//! export checked by sha256, a refused duplicate, delete.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Stapes;
use testkit::Member;

/// sha256 of the files one after the other (Incus's fingerprint of a split image).
fn sha256_of(paths: &[&Path]) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg("cat \"$@\" | sha256sum")
        .arg("sh")
        .args(paths)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A metadata tarball, a rootfs tarball and a unified one, in `dir`.
fn images(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("rootfs/etc")).expect("mkdir");
    std::fs::write(tree.join("rootfs/etc/hostname"), "t\n").expect("write");
    std::fs::write(
        tree.join("metadata.yaml"),
        "architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  description: CLI test\n  os: Debian\ntemplates: {}\n",
    )
    .expect("metadata");
    let tar = |args: &[&str]| {
        let st = Command::new("tar")
            .current_dir(&tree)
            .args(args)
            .status()
            .expect("tar");
        assert!(st.success());
    };
    tar(&["-czf", "../unified.tar.gz", "metadata.yaml", "rootfs"]);
    tar(&["-cf", "../meta.tar", "metadata.yaml"]);
    tar(&["-czf", "../rootfs.tar.gz", "rootfs"]);
    (
        dir.join("unified.tar.gz"),
        dir.join("meta.tar"),
        dir.join("rootfs.tar.gz"),
    )
}

#[tokio::test]
async fn t10_image_commands_against_stapesd() {
    let m = Member::start().await;
    let s = m.socket();
    let cli = Stapes::new();
    let work = tempfile::tempdir().expect("work dir");
    let (unified, meta, rootfs) = images(work.path());
    let arg = |p: &Path| p.to_string_lossy().into_owned();

    let fp = sha256_of(&[&unified]);
    assert_eq!(
        cli.ok(&s, &["image", "import", &arg(&unified), "--alias", "u"])
            .await,
        format!("Image imported with fingerprint: {fp}\n")
    );
    let split = sha256_of(&[&meta, &rootfs]);
    assert_eq!(
        cli.ok(
            &s,
            &["image", "import", &arg(&meta), &arg(&rootfs), "--alias", "s"]
        )
        .await,
        format!("Image imported with fingerprint: {split}\n")
    );
    let out = cli.run(&s, &["image", "import", &arg(&unified)], None).await;
    assert!(
        !out.success && out.stderr.contains("Image with same fingerprint already exists"),
        "{}",
        out.stderr
    );

    let list = cli.ok(&s, &["image", "list", "-f", "csv", "-c", "lFt"]).await;
    assert!(list.contains(&format!("u,{fp},CONTAINER\n")), "{list}");
    assert!(list.contains(&format!("s,{split},CONTAINER\n")), "{list}");
    let info = cli.ok(&s, &["image", "info", "u"]).await;
    assert!(
        info.contains(&format!("Fingerprint: {fp}")) && info.contains("os: Debian"),
        "{info}"
    );

    cli.ok(&s, &["image", "set-property", "u", "os", "Devuan"]).await;
    let show = cli.ok(&s, &["image", "show", "u"]).await;
    assert!(show.contains("os: Devuan"), "{show}");
    let edited = show.replace("public: false", "public: true");
    let out = cli.run(&s, &["image", "edit", "u"], Some(&edited)).await;
    assert!(out.success, "{}", out.stderr);
    assert_eq!(
        cli.ok(&s, &["image", "list", "public=true", "-f", "csv", "-c", "l"])
            .await,
        "u\n"
    );

    cli.ok(&s, &["image", "alias", "create", "v", &split[..10]]).await;
    cli.ok(&s, &["image", "alias", "rename", "v", "w"]).await;
    let aliases = cli.ok(&s, &["image", "alias", "list", "-f", "csv"]).await;
    assert!(
        aliases.contains(&format!("w,{},CONTAINER,", &split[..12])),
        "{aliases}"
    );
    cli.ok(&s, &["image", "alias", "delete", "w"]).await;

    let out_dir = work.path().join("export");
    std::fs::create_dir(&out_dir).expect("mkdir");
    cli.ok(&s, &["image", "export", "s", &arg(&out_dir)]).await;
    let exported_meta = out_dir.join(format!("meta-{split}.tar"));
    let exported_rootfs = out_dir.join(format!("{split}.tar.gz"));
    assert_eq!(sha256_of(&[&exported_meta, &exported_rootfs]), split);

    cli.ok(&s, &["image", "delete", "u", "s"]).await;
    assert_eq!(cli.ok(&s, &["image", "list", "-f", "csv"]).await, "");
    let left: Vec<_> = std::fs::read_dir(m.dir.join("images"))
        .expect("images dir")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
