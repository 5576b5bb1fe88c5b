//! The stapes CLI driving a real Incus 6.0 daemon over its unix socket: the reference
//! server for every instance, image, profile and storage command, until stapesd serves
//! them. Images are uploaded and exported streamed, exec runs over the operation's
//! websockets, files go over SFTP, exactly as against stapesd later.
//!
//! Needs root, Debian's `incusd` (package incus-base), and `busybox-static` for the test
//! image; skips without them locally and fails under `CI=true`. The daemon runs in a
//! temporary directory; everything it started is deleted and it is stopped by PID, also
//! when a check fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::Stapes;
use testkit::{eventually, have_tool};

const INCUSD: &str = "/usr/libexec/incus/incusd";

/// Whether this machine can run the test (root, incusd, busybox).
fn can_run() -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("the tests against a real Incus need root under CI=true");
        }
        eprintln!("SKIP: the tests against a real Incus need root");
        return false;
    }
    have_tool(INCUSD)
        && have_tool("incus")
        && have_tool("lxc-stop")
        && have_tool("busybox")
        && have_tool("tar")
        && have_tool("script")
}

/// A standalone incusd in a temporary directory, with a `dir` pool and the default
/// profile's root disk on it. Dropping it deletes the instances it holds and stops it.
struct Incusd {
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl Incusd {
    async fn start() -> Incusd {
        let dir = tempfile::Builder::new()
            .prefix("stapes-vs-incus-")
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir_all(dir.path().join("d")).expect("incus dir");
        let log = std::fs::File::create(dir.path().join("out.log")).expect("log");
        let child = Command::new(INCUSD)
            .args(["--group", "root", "--logfile"])
            .arg(dir.path().join("d.log"))
            .env("INCUS_DIR", dir.path().join("d"))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("incusd starts");
        let incusd = Incusd { dir, child };
        let socket = incusd.socket();
        eventually(Duration::from_secs(60), "incusd ready", || {
            let socket = socket.clone();
            async move { incus_ready(&socket).then_some(()) }
        })
        .await;
        incusd.incus(&["admin", "init", "--preseed"], Some(
            "storage_pools:\n- name: default\n  driver: dir\nprofiles:\n- name: default\n  devices:\n    root:\n      path: /\n      pool: default\n      type: disk\n",
        ));
        incusd
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("d/unix.socket")
    }

    /// The official client on this daemon (for setup and cleanup only).
    fn incus(&self, args: &[&str], stdin: Option<&str>) -> String {
        use std::io::Write;
        let mut child = Command::new("incus")
            .args(args)
            .env("INCUS_DIR", self.dir.path().join("d"))
            .env("INCUS_CONF", self.dir.path().join("conf"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("incus runs");
        let mut pipe = child.stdin.take().expect("stdin");
        if let Some(text) = stdin {
            pipe.write_all(text.as_bytes()).expect("write stdin");
        }
        drop(pipe);
        let out = child.wait_with_output().expect("incus runs");
        assert!(
            out.status.success(),
            "incus {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Incusd {
    fn drop(&mut self) {
        // Containers outlive the daemon: delete them first, then stop it. Every step is
        // bounded, so a hung daemon cannot hang the test's cleanup.
        let d = self.dir.path().join("d");
        let incus = |args: &[&str], limit: u64| {
            let mut cmd = Command::new("incus");
            cmd.args(args)
                .env("INCUS_DIR", &d)
                .env("INCUS_CONF", self.dir.path().join("conf"));
            common::bounded(cmd, Duration::from_secs(limit))
        };
        if let Some(list) = incus(&["list", "-c", "n", "-f", "csv"], 60) {
            for name in list.lines().filter(|l| !l.is_empty()) {
                incus(&["delete", "--force", name], 120);
            }
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..150 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A container the daemon could not delete is stopped through its LXC monitor.
        let lxcpath = d.join("containers");
        for entry in std::fs::read_dir(&lxcpath).into_iter().flatten().flatten() {
            let mut cmd = Command::new("lxc-stop");
            cmd.arg("-k")
                .arg("-P")
                .arg(&lxcpath)
                .arg("-n")
                .arg(entry.file_name());
            common::bounded(cmd, Duration::from_secs(30));
        }
        // Whatever the daemon mounted under its directory, innermost first.
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&*self.dir.path().to_string_lossy()))
            .map(str::to_string)
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            common::bounded(
                {
                    let mut cmd = Command::new("umount");
                    cmd.arg("-l").arg(m);
                    cmd
                },
                Duration::from_secs(30),
            );
        }
    }
}

fn incus_ready(socket: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket).is_ok()
        && Command::new("incus")
            .args(["admin", "waitready", "--timeout", "1"])
            .env(
                "INCUS_DIR",
                socket.parent().expect("the socket is in the incus dir"),
            )
            .output()
            .is_ok_and(|o| o.status.success())
}

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_the_cli_drives_a_real_incus() {
    if !can_run() {
        return;
    }
    let incusd = Incusd::start().await;
    let sock = incusd.socket();
    // Names unique to this run: the containers' cgroups are named after them, host-wide.
    let (c1, c2, c3) = {
        let pid = std::process::id();
        (format!("v{pid}a"), format!("v{pid}b"), format!("v{pid}c"))
    };
    let (c1, c2, c3) = (c1.as_str(), c2.as_str(), c3.as_str());
    let cli = Stapes::new();
    let work = tempfile::tempdir().expect("work dir");
    let image = common::busybox_image(work.path());
    let image_arg = image.to_string_lossy().into_owned();

    // Images: a streamed upload, the alias made afterwards, export checked by sha256.
    let out = cli
        .ok(&sock, &["image", "import", &image_arg, "--alias", "bb"])
        .await;
    let fingerprint = sha256_of(&image);
    assert_eq!(out, format!("Image imported with fingerprint: {fingerprint}\n"));
    let list = cli.ok(&sock, &["image", "list", "-f", "csv", "-c", "lFt"]).await;
    assert_eq!(list, format!("bb,{fingerprint},CONTAINER\n"));
    let export_dir = work.path().join("export");
    std::fs::create_dir(&export_dir).expect("mkdir");
    cli.ok(&sock, &["image", "export", "bb", &export_dir.to_string_lossy()])
        .await;
    let exported: Vec<PathBuf> = std::fs::read_dir(&export_dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(exported.len(), 1, "{exported:?}");
    assert_eq!(sha256_of(&exported[0]), fingerprint);

    // Storage pools and profiles.
    cli.ok(
        &sock,
        &["storage", "create", "pool2", "dir", "--description", "second"],
    )
    .await;
    assert_eq!(
        cli.ok(&sock, &["storage", "list", "-f", "csv"]).await,
        "default,dir,,1,CREATED\npool2,dir,second,0,CREATED\n"
    );
    cli.ok(&sock, &["profile", "create", "p1"]).await;
    cli.ok(&sock, &["profile", "set", "p1", "user.greeting=hello"])
        .await;
    assert_eq!(
        cli.ok(&sock, &["profile", "get", "p1", "user.greeting"]).await,
        "hello\n"
    );

    // Launch, list, config.
    let out = cli
        .run(&sock, &["launch", "bb", c1, "-p", "default", "-p", "p1"], None)
        .await;
    assert!(out.success, "{}", out.stderr);
    assert_eq!(out.stdout, format!("Launching {c1}\n"));
    assert!(
        out.stderr.contains("doesn't have any network attached"),
        "{}",
        out.stderr
    );
    assert_eq!(
        cli.ok(&sock, &["list", "-c", "ns", "-f", "csv"]).await,
        format!("{c1},RUNNING\n")
    );
    assert_eq!(
        cli.ok(&sock, &["config", "get", "-e", c1, "user.greeting"]).await,
        "hello\n"
    );
    cli.ok(&sock, &["config", "set", c1, "user.x=y"]).await;
    assert!(cli
        .ok(&sock, &["config", "show", c1])
        .await
        .contains("  user.x: \"y\"\n"));
    let info = cli.ok(&sock, &["info", c1]).await;
    assert!(
        info.starts_with(&format!(
            "Name: {c1}\nDescription: \nStatus: RUNNING\nType: container\n"
        )),
        "{info}"
    );

    // Exec: streams apart, exit codes, stdin, Incus's failure for a missing command.
    let out = cli
        .run(
            &sock,
            &["exec", c1, "--", "sh", "-c", "echo out; echo err >&2; exit 7"],
            None,
        )
        .await;
    assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("out\n", "err\n"));
    let out = cli
        .run(&sock, &["exec", c1, "--", "cat"], Some("from-stdin\n"))
        .await;
    assert_eq!(out.stdout, "from-stdin\n");
    let out = cli.run(&sock, &["exec", c1, "--", "/nonexistent"], None).await;
    assert!(!out.success);
    assert_eq!(out.stderr, "Error: Command not found\n");
    let out = cli
        .run(
            &sock,
            &[
                "exec",
                c1,
                "--env",
                "FOO=bar",
                "--cwd",
                "/tmp",
                "--",
                "sh",
                "-c",
                "echo $FOO $(pwd) $(id -u)",
            ],
            None,
        )
        .await;
    assert_eq!(out.stdout, "bar /tmp 0\n");

    // Files over SFTP: a few MiB both ways, owner and mode, a missing file.
    let big = work.path().join("big.bin");
    let data: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&big, &data).expect("write");
    let big_arg = big.to_string_lossy().into_owned();
    cli.ok(
        &sock,
        &[
            "file",
            "push",
            "--uid",
            "1000",
            "--gid",
            "1000",
            "--mode",
            "0600",
            &big_arg,
            &format!("{c1}/root/big.bin"),
        ],
    )
    .await;
    let ls = cli
        .ok(&sock, &["exec", c1, "--", "ls", "-ln", "/root/big.bin"])
        .await;
    assert!(ls.starts_with("-rw-------") && ls.contains(" 1000 "), "{ls}");
    let back = work.path().join("back.bin");
    cli.ok(
        &sock,
        &[
            "file",
            "pull",
            &format!("{c1}/root/big.bin"),
            &back.to_string_lossy(),
        ],
    )
    .await;
    assert_eq!(std::fs::read(&back).expect("read"), data);
    cli.ok(
        &sock,
        &["file", "push", "-p", &big_arg, &format!("{c1}/root/a/b/c.bin")],
    )
    .await;
    cli.ok(&sock, &["file", "delete", &format!("{c1}/root/big.bin")])
        .await;
    let err = cli
        .fails(
            &sock,
            &[
                "file",
                "pull",
                &format!("{c1}/root/big.bin"),
                &back.to_string_lossy(),
            ],
        )
        .await;
    assert_eq!(err, "Error: file does not exist\n");

    // Snapshots: a change undone by a restore.
    cli.ok(&sock, &["snapshot", "create", c1, "s1"]).await;
    assert!(cli
        .ok(&sock, &["snapshot", "list", c1, "-f", "csv"])
        .await
        .starts_with("s1,"));
    cli.ok(
        &sock,
        &["exec", c1, "--", "sh", "-c", "echo changed > /root/marker"],
    )
    .await;
    cli.ok(&sock, &["stop", "-f", c1]).await;
    cli.ok(&sock, &["snapshot", "restore", c1, "s1"]).await;
    cli.ok(&sock, &["start", c1]).await;
    let out = cli
        .run(&sock, &["exec", c1, "--", "cat", "/root/marker"], None)
        .await;
    assert!(!out.success, "the restore brought the file back: {}", out.stdout);

    // An interactive session under a real terminal: a PTY, its size, the exit code.
    let script = format!(
        "{} exec {c1} -- sh -c 'tty; stty size; exit 3'",
        env!("CARGO_BIN_EXE_stapes")
    );
    let out = tokio::process::Command::new("script")
        .args(["-qec", &script, "/dev/null"])
        .env("STAPES_CONF", cli.conf.path())
        .env("STAPES_SOCKET", &sock)
        .env("HOME", cli.conf.path())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(common::COMMAND_LIMIT, out)
        .await
        .expect("an interactive exec ends with its command")
        .expect("script runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains("/dev/pts/"), "{text}");

    // Copy and rename, then delete: a running instance needs --force.
    cli.ok(&sock, &["copy", c1, c2]).await;
    cli.ok(&sock, &["rename", c2, c3]).await;
    assert_eq!(
        cli.ok(&sock, &["list", "-c", "ns", "-f", "csv"]).await,
        format!("{c1},RUNNING\n{c3},STOPPED\n")
    );
    let err = cli.fails(&sock, &["delete", c1]).await;
    assert_eq!(
        err,
        "Error: The instance is currently running, stop it first or pass --force\n"
    );
    cli.ok(&sock, &["delete", "-f", c1, c3]).await;
    assert_eq!(cli.ok(&sock, &["list", "-f", "json"]).await, "[]\n");
    let err = cli.fails(&sock, &["storage", "delete", "default"]).await;
    assert!(err.starts_with("Error: "), "{err}");
    drop(incusd);
}
