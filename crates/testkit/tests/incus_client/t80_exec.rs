//! `incus exec` and `incus console` on three members running the in-process fake
//! driver, always through members that do not hold the instance: streams apart, exit
//! codes, stdin, environment, working directory and ids, a terminal (run under a real
//! pseudo-terminal made here) with its size, resizes and ^C, signals, the console and
//! its detach; who may attach (each refusal through a member other than the owner,
//! forged forwarding headers included) and the bound on websockets that never connect;
//! the owner killed and the relaying member stopped mid-session.
//!
//! The helpers ([`run`], [`Term`]) are shared with the real-container suite
//! (`t80_exec_lxc`).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use stapes_testkit::{eventually, have_root, have_tool, ClientCert, Target};

use super::t60_storage_profiles::Via;

const LONG: Duration = Duration::from_secs(60);

/// What one `incus` run gave.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) code: Option<i32>,
    pub(crate) out: String,
    pub(crate) err: String,
}

fn incus_command(v: &Via, i: usize, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("incus");
    cmd.args(args)
        .env("INCUS_CONF", v.conf.path())
        .env("HOME", v.conf.path())
        .env("INCUS_SOCKET", &v.sock[i])
        .env_remove("INCUS_DIR")
        .kill_on_drop(true);
    cmd
}

/// Starts `incus ARGS` through member `i` with `stdin` on a pipe (or nothing), stdout
/// and stderr kept.
pub(crate) fn spawn(v: &Via, i: usize, args: &[&str], stdin: bool) -> tokio::process::Child {
    incus_command(v, i, args)
        .stdin(if stdin {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("incus runs")
}

/// Waits (bounded) for a spawned `incus` to end.
pub(crate) async fn finish(child: tokio::process::Child) -> Run {
    let out = tokio::time::timeout(LONG, child.wait_with_output())
        .await
        .expect("incus finished within its bound")
        .expect("incus runs");
    Run {
        code: out.status.code(),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `incus ARGS` through member `i`, `stdin` piped in when given.
pub(crate) async fn run(v: &Via, i: usize, args: &[&str], stdin: Option<&str>) -> Run {
    v.settle().await;
    let mut child = spawn(v, i, args, stdin.is_some());
    if let Some(text) = stdin {
        use tokio::io::AsyncWriteExt;
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(text.as_bytes()).await.expect("stdin written");
    }
    finish(child).await
}

/// `incus ARGS` under a pseudo-terminal made here (its controlling terminal, through
/// `setsid --ctty`): what it prints is collected, keys are typed, the window resized.
pub(crate) struct Term {
    primary: Arc<OwnedFd>,
    output: Arc<Mutex<Vec<u8>>>,
    seen: Mutex<usize>,
    child: tokio::process::Child,
}

impl Term {
    pub(crate) fn spawn(v: &Via, i: usize, args: &[&str], rows: u16, cols: u16) -> Term {
        use rustix::pty::OpenptFlags;
        let primary = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
            .expect("a terminal");
        rustix::pty::grantpt(&primary).unwrap();
        rustix::pty::unlockpt(&primary).unwrap();
        let secondary = rustix::pty::ioctl_tiocgptpeer(&primary, OpenptFlags::RDWR | OpenptFlags::NOCTTY)
            .expect("its other side");
        let primary = Arc::new(primary);
        let term = |fd: &OwnedFd| std::process::Stdio::from(fd.try_clone().unwrap());
        let mut cmd = tokio::process::Command::new("setsid");
        cmd.args(["--ctty", "--wait", "incus"])
            .args(args)
            .env("INCUS_CONF", v.conf.path())
            .env("HOME", v.conf.path())
            .env("INCUS_SOCKET", &v.sock[i])
            .env("TERM", "xterm")
            .env_remove("INCUS_DIR")
            .stdin(term(&secondary))
            .stdout(term(&secondary))
            .stderr(term(&secondary))
            .kill_on_drop(true);
        let t = Term {
            primary,
            output: Default::default(),
            seen: Mutex::new(0),
            child: cmd.spawn().expect("setsid and incus run"),
        };
        drop(secondary);
        t.resize(rows, cols);
        let (fd, out) = (t.primary.clone(), t.output.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with EIO once the client and its children have closed the terminal.
            while let Ok(n @ 1..) = rustix::io::read(fd.as_fd(), &mut buf) {
                out.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        t
    }

    pub(crate) fn type_in(&self, keys: &str) {
        let mut rest = keys.as_bytes();
        while !rest.is_empty() {
            let n = rustix::io::write(self.primary.as_fd(), rest).expect("typed");
            rest = &rest[n..];
        }
    }

    /// A new window size: the client gets SIGWINCH from the kernel.
    pub(crate) fn resize(&self, rows: u16, cols: u16) {
        rustix::termios::tcsetwinsize(
            self.primary.as_fd(),
            rustix::termios::Winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            },
        )
        .expect("resized");
    }

    /// Everything printed so far, carriage returns dropped.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).replace('\r', "")
    }

    /// Waits until `needle` is printed after what earlier calls found; what was printed
    /// up to and including it.
    pub(crate) async fn expect(&self, needle: &str) -> String {
        let from = *self.seen.lock().unwrap();
        let text = eventually(LONG, &format!("{needle:?} on the terminal"), || async {
            let all = self.text();
            let pos = all.get(from..)?.find(needle)?;
            Some(all[..from + pos + needle.len()].to_string())
        })
        .await;
        *self.seen.lock().unwrap() = text.len();
        text[from..].to_string()
    }

    /// Whether `needle` shows up within a short while (for retried keys).
    pub(crate) async fn shows_soon(&self, needle: &str) -> bool {
        let from = *self.seen.lock().unwrap();
        for _ in 0..10 {
            let all = self.text();
            if let Some(pos) = all.get(from..).and_then(|t| t.find(needle)) {
                *self.seen.lock().unwrap() = from + pos + needle.len();
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Detaches from a console with <ctrl>+a q. The client reads one byte at a time
    /// and drops the rest of a read, so the two keys must arrive apart: they are typed
    /// again, further apart each time, until the client ends. Its exit code.
    pub(crate) async fn detach(&mut self) -> Option<i32> {
        for pause in 1..=20u64 {
            self.type_in("\x01");
            tokio::time::sleep(Duration::from_millis(50 * pause)).await;
            self.type_in("q");
            if let Ok(status) = tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await {
                return status.expect("wait").code();
            }
        }
        panic!("the client did not detach; it printed:\n{}", self.text());
    }

    /// The client's exit code, once it ends (bounded).
    pub(crate) async fn wait(&mut self) -> Option<i32> {
        let status = tokio::time::timeout(LONG, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the client ended; it printed:\n{}", self.text()))
            .expect("wait");
        status.code()
    }
}

/// An interactive shell through member `i`: the terminal, its size and resizes, ^C
/// reaching the command in the foreground, and the shell's exit code.
pub(crate) async fn interactive_shell(v: &Via, i: usize, name: &str) {
    let mut t = Term::spawn(v, i, &["exec", name, "--", "sh"], 24, 80);
    t.expect("# ").await;
    t.type_in("tty\r");
    t.expect("/dev/pts/").await;
    t.type_in("stty size\r");
    t.expect("24 80").await;
    t.resize(40, 120);
    // The resize travels as a control message; the size is asked until it shows.
    let resized = eventually(LONG, "the new size inside", || async {
        t.type_in("stty size\r");
        t.shows_soon("40 120").await.then_some(())
    })
    .await;
    let () = resized;
    // ^C reaches the foreground command: the sleep ends long before its time. The key
    // may come before the sleep starts (and a terminal drops typed-ahead input on ^C),
    // so both are typed again until the shell answers.
    t.type_in("sleep 600\r");
    eventually(LONG, "^C to end the sleep", || async {
        t.type_in("\x03");
        t.type_in("echo $HOME-after\r");
        t.shows_soon("/root-after").await.then_some(())
    })
    .await;
    t.type_in("exit 5\r");
    assert_eq!(t.wait().await, Some(5), "{}", t.text());
}

/// The non-interactive cases every driver must pass through member `i`.
pub(crate) async fn streams_and_codes(v: &Via, i: usize, name: &str) {
    let r = run(v, i, &["exec", name, "--", "hostname"], None).await;
    assert_eq!((r.code, r.out.trim()), (Some(0), name), "{r:?}");
    let r = run(
        v,
        i,
        &["exec", name, "--", "sh", "-c", "echo out; echo err >&2; exit 7"],
        None,
    )
    .await;
    assert_eq!(
        (r.code, r.out.as_str(), r.err.as_str()),
        (Some(7), "out\n", "err\n")
    );
    let r = run(v, i, &["exec", name, "--", "cat"], Some("piped in\nand more\n")).await;
    assert_eq!(
        (r.code, r.out.as_str()),
        (Some(0), "piped in\nand more\n"),
        "{r:?}"
    );
    let r = run(v, i, &["exec", name, "--", "no-such-command"], None).await;
    assert_eq!(r.code, Some(127), "{r:?}");
    assert!(r.err.contains("Error: Command not found"), "{r:?}");
    let r = run(
        v,
        i,
        &[
            "exec",
            name,
            "--env",
            "FOO=bar baz",
            "--",
            "sh",
            "-c",
            "echo \"$FOO\"",
        ],
        None,
    )
    .await;
    assert_eq!(r.out, "bar baz\n", "{r:?}");
    for (var, want) in [("HOME", "/root"), ("LANG", "C.UTF-8"), ("USER", "root")] {
        let script = format!("echo ${var}");
        let r = run(v, i, &["exec", name, "--", "sh", "-c", &script], None).await;
        assert_eq!(r.out.trim(), want, "{var}: {r:?}");
    }
    let r = run(v, i, &["exec", name, "--cwd", "/etc", "--", "pwd"], None).await;
    assert_eq!(r.out.trim(), "/etc", "{r:?}");
    let r = run(
        v,
        i,
        &[
            "exec", name, "--user", "1000", "--group", "1000", "--", "id", "-u",
        ],
        None,
    )
    .await;
    assert_eq!(r.out.trim(), "1000", "{r:?}");
    let r = run(
        v,
        i,
        &[
            "exec", name, "--user", "1000", "--group", "1000", "--", "id", "-g",
        ],
        None,
    )
    .await;
    assert_eq!(r.out.trim(), "1000", "{r:?}");
}

/// `incus exec NAME -- sleep 600` through member `i`, once the command runs (the
/// instance's process count goes up by one, seen through member `i`).
pub(crate) async fn sleeping(v: &Via, i: usize, name: &str) -> tokio::process::Child {
    let before = processes(v, i, name).await;
    let child = spawn(v, i, &["exec", name, "--", "sleep", "600"], false);
    eventually(LONG, "the sleep to run", || async {
        (processes(v, i, name).await > before).then_some(())
    })
    .await;
    child
}

async fn processes(v: &Via, i: usize, name: &str) -> i64 {
    let r = run(v, i, &["query", &format!("/1.0/instances/{name}/state")], None).await;
    let st: Value = serde_json::from_str(&r.out).unwrap_or(Value::Null);
    st["processes"].as_i64().unwrap_or(0)
}

/// A signal to the client is forwarded to the command, which it kills: 128+15.
pub(crate) async fn signals_are_forwarded(v: &Via, i: usize, name: &str) {
    let child = sleeping(v, i, name).await;
    let pid = child.id().expect("running") as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM).unwrap();
    let r = finish(child).await;
    assert_eq!(r.code, Some(143), "{r:?}");
}

#[tokio::test]
async fn t80_exec_through_members_that_do_not_hold_the_instance() {
    if !have_tool("incus") || !have_root() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (_c, v) = super::t70_instances::cluster_with_image(work.path()).await;
    v.ok(0, &["launch", "img", "c1", "--target", "node2"]).await;
    streams_and_codes(&v, 0, "c1").await;
    signals_are_forwarded(&v, 2, "c1").await;
    interactive_shell(&v, 2, "c1").await;
    // `-t` without a terminal still gets one; `-T` on a terminal gets none.
    let r = run(&v, 0, &["exec", "c1", "-t", "--", "tty"], None).await;
    assert_eq!((r.code, r.out.trim()), (Some(0), "/dev/pts/0"), "{r:?}");
    let mut t = Term::spawn(&v, 2, &["exec", "c1", "-T", "--", "tty"], 24, 80);
    assert_eq!(t.wait().await, Some(1), "{}", t.text());
    // The terminal's reader may get the last bytes after the client has exited.
    t.expect("not a tty").await;

    // A stopped instance, in Incus's words.
    v.ok(2, &["stop", "c1"]).await;
    let r = run(&v, 0, &["exec", "c1", "--", "true"], None).await;
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.err.contains("Instance is not running"), "{r:?}");
    let r = run(&v, 0, &["exec", "c9", "--", "true"], None).await;
    assert!(r.err.contains("not found"), "{r:?}");
}

#[tokio::test]
async fn t81_console_through_another_member_and_detach() {
    if !have_tool("incus") || !have_root() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (_c, v) = super::t70_instances::cluster_with_image(work.path()).await;
    v.ok(0, &["launch", "img", "c1", "--target", "node2"]).await;
    let mut t = Term::spawn(&v, 2, &["console", "c1"], 30, 100);
    t.expect("To detach from the console, press: <ctrl>+a q").await;
    t.expect("# ").await;
    t.type_in("stty size\r");
    t.expect("30 100").await;
    assert_eq!(t.detach().await, Some(0), "{}", t.text());
    // The log, through another member too.
    let r = run(&v, 0, &["console", "c1", "--show-log"], None).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    v.ok(2, &["stop", "c1"]).await;
    let r = run(&v, 0, &["console", "c1"], None).await;
    assert_ne!(r.code, Some(0), "{r:?}");
}

/// Trusted clients `a` (who starts the exec) and `b` (another), and the HTTPS address
/// of each member.
async fn two_clients(c: &stapes_testkit::Cluster) -> (ClientCert, ClientCert, Vec<String>) {
    let (a, b) = (ClientCert::generate("alice"), ClientCert::generate("bob"));
    c.members[0].trust(&a).await;
    c.members[0].trust(&b).await;
    let mut addrs = Vec::new();
    for m in &c.members {
        addrs.push(m.address().await);
    }
    (a, b, addrs)
}

async fn start_exec(on: &Target, body: Value) -> Value {
    let r = on
        .send_json("POST", "/1.0/instances/c1/exec", &body)
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.json());
    r.metadata()
}

/// The operation `id` once it ended (waited on through `on`).
async fn wait_op(on: &Target, id: &str) -> Value {
    on.get(&format!("/1.0/operations/{id}/wait?timeout=30"))
        .await
        .unwrap()
        .metadata()
}

type Ws = tokio_tungstenite::WebSocketStream<transport::tls::ClientTlsStream<tokio::net::TcpStream>>;

async fn websocket(
    addr: &str,
    cert: Option<&ClientCert>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let tls = stapes_testkit::tls_stream(addr, cert, b"http/1.1")
        .await
        .expect("TLS");
    let mut req = format!("wss://{addr}{path}").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    tokio::time::timeout(LONG, tokio_tungstenite::client_async(req, tls))
        .await
        .expect("a websocket answer")
        .map(|(ws, _)| ws)
}

fn refusal(e: tokio_tungstenite::tungstenite::Error) -> (u16, String) {
    match e {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            let body: Value = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            (
                resp.status().as_u16(),
                body["error"].as_str().unwrap_or("").to_string(),
            )
        }
        other => panic!("not an HTTP refusal: {other}"),
    }
}

#[tokio::test]
async fn t90_who_may_attach_and_sockets_that_never_connect() {
    if !have_tool("incus") || !have_root() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (c, v) = super::t70_instances::cluster_with_image(work.path()).await;
    v.ok(0, &["launch", "img", "c1", "--target", "node2"]).await;
    let (alice, bob, addr) = two_clients(&c).await;
    v.settle().await;
    let body = json!({"command": ["cat"], "wait-for-websocket": true, "interactive": false,
        "environment": {}, "width": 0, "height": 0, "record-output": false, "user": 0, "group": 0, "cwd": ""});
    // Made through node1, attached through node3; the owner is node2.
    let op = start_exec(&Target::tls(&addr[0], Some(&alice)), body.clone()).await;
    assert_eq!(
        (op["class"].as_str(), op["location"].as_str()),
        (Some("websocket"), Some("node2"))
    );
    assert_eq!(op["description"], "Executing command");
    let fds = op["metadata"]["fds"].as_object().unwrap().clone();
    let mut names: Vec<&str> = fds.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["0", "1", "2", "control"]);
    assert_eq!(
        op["metadata"]["environment"]["PATH"],
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    let id = op["id"].as_str().unwrap();
    let path = |secret: &str| format!("/1.0/operations/{id}/websocket?secret={secret}");
    let s0 = fds["0"].as_str().unwrap();
    let third = &addr[2];

    let e = websocket(
        third,
        Some(&alice),
        &format!("/1.0/operations/{id}/websocket"),
        &[],
    )
    .await
    .unwrap_err();
    assert_eq!(refusal(e), (400, "Missing websocket secret".into()));
    let wrong = "0".repeat(64);
    let e = websocket(third, Some(&alice), &path(&wrong), &[])
        .await
        .unwrap_err();
    assert_eq!(refusal(e).0, 403);
    let e = websocket(third, Some(&bob), &path(s0), &[]).await.unwrap_err();
    assert_eq!(refusal(e), (403, "Requestor mismatch".into()));
    let e = websocket(third, None, &path(s0), &[]).await.unwrap_err();
    assert_eq!(refusal(e), (403, "Requestor mismatch".into()));
    // Claiming to be alice in the headers members use between them gets nothing.
    let alice_fp = alice.fingerprint.clone();
    let forged = [
        ("X-Incus-forwarded-username", alice_fp.as_str()),
        ("X-Incus-forwarded-protocol", "tls"),
        ("X-Incus-forwarded-address", "127.0.0.1"),
    ];
    for (who, cert) in [("nobody", None), ("bob", Some(&bob))] {
        let e = websocket(third, cert, &path(s0), &forged).await.unwrap_err();
        assert_eq!(refusal(e), (403, "Requestor mismatch".into()), "{who}");
    }
    // The right caller, through the third member: the whole dance.
    let mut control = websocket(third, Some(&alice), &path(fds["control"].as_str().unwrap()), &[])
        .await
        .expect("control");
    let mut stdin = websocket(third, Some(&alice), &path(s0), &[])
        .await
        .expect("stdin");
    let e = websocket(third, Some(&alice), &path(s0), &[]).await.unwrap_err();
    assert_eq!(refusal(e).0, 400, "an fd connects once");
    let mut stdout = websocket(third, Some(&alice), &path(fds["1"].as_str().unwrap()), &[])
        .await
        .expect("stdout");
    let mut stderr = websocket(third, Some(&alice), &path(fds["2"].as_str().unwrap()), &[])
        .await
        .expect("stderr");
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    stdin
        .send(Message::Binary(b"through node3\n".to_vec().into()))
        .await
        .unwrap();
    stdin.send(Message::Text("".into())).await.unwrap();
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(LONG, stdout.next())
            .await
            .expect("stdout moves")
        {
            Some(Ok(Message::Binary(b))) => got.extend_from_slice(&b),
            Some(Ok(Message::Text(t))) if t.is_empty() => break,
            other => panic!("unexpected on stdout: {other:?}"),
        }
    }
    assert_eq!(got, b"through node3\n");
    assert!(matches!(
        tokio::time::timeout(LONG, stderr.next()).await.unwrap(),
        Some(Ok(Message::Text(t))) if t.is_empty()
    ));
    let done = wait_op(&Target::tls(&addr[0], Some(&alice)), id).await;
    assert_eq!(
        (done["status"].as_str(), done["metadata"]["return"].as_i64()),
        (Some("Success"), Some(0)),
        "{done}"
    );
    let _ = control.close(None).await;
    // Gone with the operation: the secret opens nothing any more.
    let e = websocket(third, Some(&alice), &path(fds["control"].as_str().unwrap()), &[])
        .await
        .unwrap_err();
    assert_ne!(refusal(e).0, 101);

    // Nobody connects: the operation fails after its bound, and nothing runs on.
    let op = start_exec(&Target::tls(&addr[2], Some(&alice)), body.clone()).await;
    let id = op["id"].as_str().unwrap();
    let done = wait_op(&Target::tls(&addr[0], Some(&alice)), id).await;
    assert_eq!(
        (done["status"].as_str(), done["err"].as_str()),
        (
            Some("Failure"),
            Some("Timed out waiting for websockets to connect")
        ),
        "{done}"
    );
    // Requests the owner refuses, relayed.
    let mut bad = body.clone();
    bad["record-output"] = json!(true);
    let r = Target::tls(&addr[2], Some(&alice))
        .send_json("POST", "/1.0/instances/c1/exec", &bad)
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.json());
    let mut bad = body.clone();
    bad["command"] = json!([]);
    let r = Target::tls(&addr[2], Some(&alice))
        .send_json("POST", "/1.0/instances/c1/exec", &bad)
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.json());
    let r = Target::tls(&addr[2], None)
        .send_json("POST", "/1.0/instances/c1/exec", &body)
        .await
        .unwrap();
    assert_eq!(r.status, 403, "a stranger makes no exec: {}", r.json());

    // The console: the same rules for its two sockets, through the third member.
    let console = json!({"width": 80, "height": 24, "type": "console", "force": false});
    let r = Target::tls(&addr[2], None)
        .send_json("POST", "/1.0/instances/c1/console", &console)
        .await
        .unwrap();
    assert_eq!(r.status, 403, "a stranger opens no console: {}", r.json());
    let r = Target::tls(&addr[0], Some(&alice))
        .send_json("POST", "/1.0/instances/c1/console", &console)
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.json());
    let op = r.metadata();
    assert_eq!(op["description"], "Showing console");
    let id = op["id"].as_str().unwrap();
    let s0 = op["metadata"]["fds"]["0"].as_str().unwrap();
    let path = format!("/1.0/operations/{id}/websocket?secret={s0}");
    let e = websocket(third, Some(&bob), &path, &[]).await.unwrap_err();
    assert_eq!(refusal(e), (403, "Requestor mismatch".into()));
    let e = websocket(third, None, &path, &forged).await.unwrap_err();
    assert_eq!(refusal(e), (403, "Requestor mismatch".into()));
    let e = websocket(
        third,
        Some(&alice),
        &format!("/1.0/operations/{id}/websocket?secret={wrong}"),
        &[],
    )
    .await
    .unwrap_err();
    assert_eq!(refusal(e).0, 403);
    let done = wait_op(&Target::tls(&addr[0], Some(&alice)), id).await;
    assert_eq!(
        done["err"].as_str(),
        Some("Timed out waiting for websockets to connect"),
        "{done}"
    );
    let mut bad = console.clone();
    bad["type"] = json!("vga");
    let r = Target::tls(&addr[2], Some(&alice))
        .send_json("POST", "/1.0/instances/c1/console", &bad)
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.json());

    // record-output without websockets: the output lands in the instance's logs.
    let mut rec = body.clone();
    rec["command"] = json!(["sh", "-c", "echo kept; echo also >&2"]);
    rec["wait-for-websocket"] = json!(false);
    rec["record-output"] = json!(true);
    let op = start_exec(&Target::tls(&addr[2], Some(&alice)), rec).await;
    let id = op["id"].as_str().unwrap();
    let done = wait_op(&Target::tls(&addr[0], Some(&alice)), id).await;
    assert_eq!(done["metadata"]["return"], 0, "{done}");
    let out = done["metadata"]["output"]["1"].as_str().unwrap().to_string();
    let r = Target::tls(&addr[0], Some(&alice)).get(&out).await.unwrap();
    assert_eq!(
        (r.status, String::from_utf8_lossy(&r.body).as_ref()),
        (200, "kept\n")
    );
    let list = Target::tls(&addr[2], Some(&alice))
        .get("/1.0/instances/c1/logs/exec-output")
        .await
        .unwrap();
    assert_eq!(
        list.metadata().as_array().map(Vec::len),
        Some(2),
        "{}",
        list.json()
    );
    let r = Target::tls(&addr[2], Some(&alice))
        .request("DELETE", &out, None, &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let r = Target::tls(&addr[2], Some(&alice)).get(&out).await.unwrap();
    assert_eq!(r.status, 404);
    for evil in ["..%2F..%2Fserver.crt", "lxc.log", "exec_x.stdout%2F"] {
        let r = Target::tls(&addr[2], Some(&alice))
            .get(&format!("/1.0/instances/c1/logs/exec-output/{evil}"))
            .await
            .unwrap();
        assert_eq!(r.status, 404, "{evil}");
    }
}

#[tokio::test]
async fn t50_the_owner_killed_or_the_relay_stopped_mid_session() {
    if !have_tool("incus") || !have_root() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (mut c, v) = super::t70_instances::cluster_with_image(work.path()).await;
    v.ok(0, &["launch", "img", "c1", "--target", "node2"]).await;
    // The owner dies: the session through node1 ends with an error naming it.
    let child = sleeping(&v, 0, "c1").await;
    c.members[1].kill9();
    let r = finish(child).await;
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(r.err.contains("\"node2\""), "{r:?}");
    c.members[1].start_again().await;
    c.wait_healthy(3, LONG).await;
    // The relaying member stops: the session ends, naming it.
    let child = sleeping(&v, 2, "c1").await;
    let code = c.members[2].terminate().expect("node3 stops");
    assert_eq!(code, 0);
    let r = finish(child).await;
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(r.err.contains("node3"), "{r:?}");
}

/// How long the owner is paused when it must not count as lost: well inside the default
/// `cluster.forward_timeout` (10 s), the silence after which a member is declared lost.
const SHORT_PAUSE: Duration = Duration::from_secs(3);

/// Continues a stopped member when dropped, so that a failing test leaves nothing stopped.
pub(crate) struct Continue(pub(crate) i32);

impl Drop for Continue {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGCONT,
        );
    }
}

#[tokio::test]
async fn t51_a_hung_owner_ends_sessions_and_waits_through_other_members() {
    if !have_tool("incus") || !have_root() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (c, v) = super::t70_instances::cluster_with_image(work.path()).await;
    v.ok(0, &["launch", "img", "c1", "--target", "node2"]).await;
    let _cont = Continue(c.members[1].pid());
    // Paused for less than the bound (a member that is only slow): nothing ends.
    let mut child = sleeping(&v, 0, "c1").await;
    c.members[1].stop_process().await;
    // The length of the fault, not a wait for a condition.
    tokio::time::sleep(SHORT_PAUSE).await;
    c.members[1].signal(nix::sys::signal::Signal::SIGCONT);
    c.wait_healthy(3, LONG).await;
    if child.try_wait().unwrap().is_some() {
        let r = finish(child).await;
        panic!(
            "a session survives a short pause of its owner: {r:?}\nnode1:\n{}\nnode2:\n{}",
            c.members[0].log(),
            c.members[1].log()
        );
    }

    // Hung for good: the session through node1 ends naming it, and so does a wait on
    // one of its operations through node3.
    let on = c.members[2].unix();
    let op = start_exec(
        &on,
        json!({"command": ["sleep", "600"], "wait-for-websocket": false, "interactive": false}),
    )
    .await;
    let id = op["id"].as_str().unwrap().to_string();
    let waiter = tokio::spawn(async move {
        let path = format!("/1.0/operations/{id}/wait?timeout=-1");
        on.request_within("GET", &path, None, &[], LONG * 2)
            .await
            .unwrap()
    });
    c.members[1].stop_process().await;
    let r = finish(child).await;
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(r.err.contains("\"node2\""), "{r:?}");
    // Long before the wait's own end (MAX_WAIT), within twice the bound and room.
    let w = tokio::time::timeout(LONG, waiter)
        .await
        .expect("the wait ended")
        .unwrap();
    let body = w.json();
    let said = if w.status == 200 {
        assert_eq!(body["metadata"]["status"], "Failure", "{body}");
        body["metadata"]["err"].as_str().unwrap_or("").to_string()
    } else {
        assert_eq!(w.status, 503, "{body}");
        body["error"].as_str().unwrap_or("").to_string()
    };
    assert!(said.contains("Cluster member \"node2\""), "{body}");
}
