//! `stapes exec` and `stapes console` against three `stapesd` members running the
//! in-process fake driver (started by the testkit from the build directory: run
//! `cargo build --bins` first), every session through a member that does not hold the
//! instance: streams apart and exit codes, stdin, an interactive session and a console
//! under a real terminal (`script`), and an HTTPS remote whose first address is a member
//! that does not hold the instance.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Stapes, COMMAND_LIMIT, CONVERGE_LIMIT};
use testkit::{eventually, have_tool, Cluster, FAKE_DRIVER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `stapes ARGS` through `socket`: exit code, stdout, stderr.
async fn code(
    cli: &Stapes,
    socket: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> (Option<i32>, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_stapes"));
    cmd.args(args)
        .env("STAPES_CONF", cli.conf.path())
        .env("STAPES_SOCKET", socket)
        .env("HOME", cli.conf.path())
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
        let mut pipe = child.stdin.take().expect("piped");
        pipe.write_all(text.as_bytes()).await.expect("stdin");
    }
    let out = tokio::time::timeout(COMMAND_LIMIT, child.wait_with_output())
        .await
        .expect("stapes finished")
        .expect("stapes runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `stapes ARGS` under `script` (a real terminal): keys typed in, output collected.
struct Scripted {
    child: tokio::process::Child,
    keys: tokio::process::ChildStdin,
    output: Arc<Mutex<String>>,
}

impl Scripted {
    fn spawn(cli: &Stapes, socket: &Path, args: &str) -> Scripted {
        let line = format!("{} {args}", env!("CARGO_BIN_EXE_stapes"));
        let mut child = tokio::process::Command::new("script")
            .args(["-qfec", &line, "/dev/null"])
            .env("STAPES_CONF", cli.conf.path())
            .env("STAPES_SOCKET", socket)
            .env("HOME", cli.conf.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("script runs");
        let keys = child.stdin.take().expect("piped");
        let mut out = child.stdout.take().expect("piped");
        let output = Arc::new(Mutex::new(String::new()));
        let sink = output.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = out.read(&mut buf).await {
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Scripted { child, keys, output }
    }

    fn text(&self) -> String {
        self.output.lock().unwrap().replace('\r', "")
    }

    async fn expect(&self, needle: &str) {
        eventually(CONVERGE_LIMIT, &format!("{needle:?} on the terminal"), || async {
            self.text().contains(needle).then_some(())
        })
        .await;
    }

    async fn type_in(&mut self, keys: &str) {
        self.keys.write_all(keys.as_bytes()).await.expect("typed");
        self.keys.flush().await.expect("typed");
    }

    async fn wait(mut self) -> (Option<i32>, String) {
        let status = tokio::time::timeout(COMMAND_LIMIT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("ended; printed:\n{}", self.text()))
            .expect("wait");
        (status.code(), self.text())
    }
}

#[tokio::test]
async fn t80_exec_and_console_through_members_that_do_not_hold_the_instance() {
    if !have_tool("script") {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("script (util-linux) is required under CI=true");
        }
        eprintln!("SKIP: this test needs script (util-linux)");
        return;
    }
    let c = Cluster::start_env(3, &[], &[FAKE_DRIVER]).await;
    c.wait_healthy(3, Duration::from_secs(60)).await;
    let sock: Vec<PathBuf> = c.members.iter().map(|m| m.socket()).collect();
    let cli = Stapes::new();
    let work = tempfile::tempdir().unwrap();
    common::prepare_pools(&cli, &sock).await;
    let file = common::test_image(work.path());
    cli.ok(
        &sock[0],
        &["image", "import", file.to_str().unwrap(), "--alias", "img"],
    )
    .await;
    cli.ok(&sock[0], &["launch", "img", "c1", "--target", "node2"])
        .await;

    // Non-interactive through node3 (once it has applied the launch).
    let script = ["exec", "c1", "--", "sh", "-c", "echo out; echo err >&2; exit 7"];
    let r = eventually(CONVERGE_LIMIT, "exec through node3", || async {
        let r = code(&cli, &sock[2], &script, None).await;
        (r.0 == Some(7)).then_some(r)
    })
    .await;
    assert_eq!((r.1.as_str(), r.2.as_str()), ("out\n", "err\n"));
    let r = code(&cli, &sock[0], &["exec", "c1", "--", "cat"], Some("from stdin\n")).await;
    assert_eq!((r.0, r.1.as_str()), (Some(0), "from stdin\n"));
    let r = code(&cli, &sock[2], &["exec", "c1", "--", "no-such-command"], None).await;
    assert_eq!(r.0, Some(127), "{r:?}");
    assert!(r.2.ends_with("Error: Command not found\n"), "{r:?}");
    let r = code(
        &cli,
        &sock[0],
        &[
            "exec",
            "c1",
            "--env",
            "FOO=bar",
            "--cwd",
            "/etc",
            "--user",
            "1000",
            "--",
            "sh",
            "-c",
            "echo $FOO; pwd; id -u",
        ],
        None,
    )
    .await;
    assert_eq!(r.1, "bar\n/etc\n1000\n", "{r:?}");

    // Interactive under a terminal: a PTY, its size, the exit code.
    let t = Scripted::spawn(&cli, &sock[2], "exec c1 -- sh -c 'tty; stty size; exit 3'");
    let (status, text) = t.wait().await;
    assert_eq!(status, Some(3), "{text}");
    assert!(text.contains("/dev/pts/"), "{text}");

    // The console through node1, detached with <ctrl>+a q.
    let mut t = Scripted::spawn(&cli, &sock[0], "console c1");
    t.expect("To detach from the console, press: <ctrl>+a q").await;
    t.expect("# ").await;
    t.type_in("hostname\r").await;
    t.expect("c1").await;
    t.type_in("\x01q").await;
    let (status, text) = t.wait().await;
    assert_eq!(status, Some(0), "{text}");

    // An HTTPS remote whose address is node1: exec and console go through it too.
    let urls = common::member_urls(&c, 3).await;
    common::add_remote(&cli, &sock[0], "cl", &urls[0]).await;
    let r = code(&cli, &sock[0], &["exec", "cl:c1", "--", "hostname"], None).await;
    assert_eq!((r.0, r.1.as_str()), (Some(0), "c1\n"), "{r:?}");
    let r = code(&cli, &sock[0], &["console", "cl:c1", "--show-log"], None).await;
    assert_eq!(r.0, Some(0), "{r:?}");
}
