//! What the CLI test binaries share: running `stapes` with a throwaway configuration
//! against a daemon's socket, and forming remotes to a cluster. Each binary uses a part
//! of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testkit::{eventually, Cluster};
use tokio::io::AsyncWriteExt;

/// The bound on one `stapes` invocation.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(60);
/// The bound on a cluster converging (joins, heartbeats, renames, removals).
pub const CONVERGE_LIMIT: Duration = Duration::from_secs(30);

/// What one `stapes` run left behind.
pub struct Out {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// The `stapes` CLI with its own configuration directory.
pub struct Stapes {
    pub conf: tempfile::TempDir,
}

impl Stapes {
    pub fn new() -> Stapes {
        Stapes {
            conf: tempfile::Builder::new()
                .prefix("stapes-cli-test-")
                .tempdir()
                .expect("temp dir"),
        }
    }

    /// Runs `stapes ARGS` against the daemon at `socket`, feeding `stdin` when given
    /// (stdin is then a pipe, not a terminal, as for `edit` and `--preseed`).
    pub async fn run(&self, socket: &Path, args: &[&str], stdin: Option<&str>) -> Out {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_stapes"));
        cmd.args(args)
            .env("STAPES_CONF", self.conf.path())
            .env("STAPES_SOCKET", socket)
            .env("HOME", self.conf.path())
            .env_remove("STAPES_DIR")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("VISUAL")
            .env_remove("EDITOR")
            .stdin(if stdin.is_some() {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("stapes starts");
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().expect("piped stdin");
            pipe.write_all(text.as_bytes()).await.expect("write stdin");
            drop(pipe);
        }
        let out = tokio::time::timeout(COMMAND_LIMIT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("stapes {args:?} did not finish within {COMMAND_LIMIT:?}"))
            .expect("stapes runs");
        Out {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs and expects success; returns stdout.
    pub async fn ok(&self, socket: &Path, args: &[&str]) -> String {
        self.ok_stdin(socket, args, None).await
    }

    pub async fn ok_stdin(&self, socket: &Path, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(socket, args, stdin).await;
        assert!(
            out.success,
            "stapes {args:?} failed:\n{}\n{}",
            out.stdout, out.stderr
        );
        out.stdout
    }

    /// Runs and expects failure; returns stderr.
    pub async fn fails(&self, socket: &Path, args: &[&str]) -> String {
        self.fails_stdin(socket, args, None).await
    }

    pub async fn fails_stdin(&self, socket: &Path, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(socket, args, stdin).await;
        assert!(
            !out.success,
            "stapes {args:?} should have failed:\n{}",
            out.stdout
        );
        out.stderr
    }
}

/// Waits until the first member lists `n` members online; returns their URLs in name
/// order.
pub async fn member_urls(cluster: &Cluster, n: usize) -> Vec<String> {
    eventually(CONVERGE_LIMIT, "every member online", || async {
        let mut list = cluster.members[0].members().await;
        if list.len() != n || list.iter().any(|m| m["status"] != "Online") {
            return None;
        }
        list.sort_by_key(|m| m["server_name"].as_str().unwrap_or_default().to_string());
        Some(
            list.iter()
                .map(|m| m["url"].as_str().unwrap_or_default().to_string())
                .collect::<Vec<_>>(),
        )
    })
    .await
}

/// Adds remote `name` at `url` pinning what it presents, trusting the client with a
/// token issued over `socket`. Retried until the trust has reached that member.
pub async fn add_remote(cli: &Stapes, socket: &Path, name: &str, url: &str) {
    eventually(CONVERGE_LIMIT, "remote added", || async {
        let token = cli
            .ok(socket, &["config", "trust", "add", &format!("{name}-cli"), "-q"])
            .await;
        let out = cli
            .run(
                socket,
                &[
                    "remote",
                    "add",
                    name,
                    url,
                    "--accept-certificate",
                    "--token",
                    token.trim(),
                ],
                None,
            )
            .await;
        out.success.then_some(())
    })
    .await;
}

/// A busybox image (unified tarball) built offline in `dir`.
pub fn busybox_image(dir: &Path) -> PathBuf {
    let root = dir.join("image/rootfs");
    for d in [
        "bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "root", "run", "var/log",
    ] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    let busybox = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v busybox"])
            .output()
            .expect("busybox")
            .stdout,
    )
    .expect("path");
    std::fs::copy(busybox.trim(), root.join("bin/busybox")).expect("copy busybox");
    for applet in [
        "sh",
        "cat",
        "echo",
        "ls",
        "id",
        "pwd",
        "sleep",
        "mount",
        "sha256sum",
        "true",
        "tty",
        "stty",
    ] {
        std::os::unix::fs::symlink("/bin/busybox", root.join("bin").join(applet)).expect("applet");
    }
    std::os::unix::fs::symlink("/bin/busybox", root.join("sbin/init")).expect("init");
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
    std::fs::write(root.join("etc/group"), "root:x:0:\n").expect("group");
    std::fs::write(
        root.join("etc/inittab"),
        "::sysinit:/bin/mount -t tmpfs tmpfs /tmp\n::respawn:/bin/sleep 3600\n",
    )
    .expect("inittab");
    std::fs::write(
        dir.join("image/metadata.yaml"),
        "architecture: x86_64\ncreation_date: 1764620130\nproperties:\n  description: stapes test busybox\n  os: busybox\n  release: \"1.35\"\ntemplates: {}\n",
    )
    .expect("metadata");
    let tarball = dir.join("bb.tar.gz");
    let status = Command::new("tar")
        .arg("-C")
        .arg(dir.join("image"))
        .args(["--numeric-owner", "-czf"])
        .arg(&tarball)
        .args(["metadata.yaml", "rootfs"])
        .status()
        .expect("tar");
    assert!(status.success());
    tarball
}

/// Runs `cmd` with its output captured, killed after `limit`; its stdout if it succeeded.
pub fn bounded(mut cmd: Command, limit: Duration) -> Option<String> {
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let mut stdout = child.stdout.take()?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
        text
    });
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let text = reader.join().unwrap_or_default();
    status.filter(|s| s.success()).map(|_| text)
}

/// `pool1` on every member of three, then the default profile's root disk on it, all
/// with `stapes` through different members.
pub async fn prepare_pools(cli: &Stapes, sockets: &[PathBuf]) {
    for n in ["node1", "node2", "node3"] {
        cli.ok(&sockets[0], &["storage", "create", "pool1", "dir", "--target", n])
            .await;
    }
    cli.ok(&sockets[1], &["storage", "create", "pool1", "dir"]).await;
    cli.ok(
        &sockets[2],
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
}

/// A small unified image (`metadata.yaml`, `rootfs/` with `/etc/hostname`, `/root` and
/// `/sbin`) as a gzip tarball in `dir`, for the test driver.
pub fn test_image(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    for d in ["rootfs/etc", "rootfs/root", "rootfs/sbin"] {
        std::fs::create_dir_all(tree.join(d)).expect("mkdir");
    }
    std::fs::write(
        tree.join("metadata.yaml"),
        "architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  description: Test\n  os: busybox\ntemplates: {}\n",
    )
    .expect("metadata");
    std::fs::write(tree.join("rootfs/etc/hostname"), "test\n").expect("hostname");
    let file = dir.join("image.tar.gz");
    let st = std::process::Command::new("tar")
        .current_dir(&tree)
        .arg("-czf")
        .arg(&file)
        .args(["metadata.yaml", "rootfs"])
        .status()
        .expect("tar runs");
    assert!(st.success());
    file
}
