//! A client that never stalls on a sick member: `stapes` against a real three-member
//! cluster (started by the testkit from the workspace's build directory: run
//! `cargo build --bins` first) through a remote whose first address is refused, hung
//! (accepts and never answers) or a stopped member (SIGSTOP); and member discovery,
//! which keeps a remote working when the member it was added through is gone.
//!
//! Every wait is bounded: each command by [`common::COMMAND_LIMIT`], convergence by
//! [`testkit::eventually`] polling; a stopped member is continued before its test ends.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{add_remote, member_urls, Stapes};
use nix::sys::signal::Signal;
use testkit::{free_port, Cluster};
/// What one command may take with a sick first address: the per-attempt deadline (3 s)
/// would be the worst case; racing should make it far less. Generous for slow CI.
const SICK_LIMIT: Duration = Duration::from_secs(5);

impl Stapes {
    /// Runs `args` with no remembered connection state, expecting success within
    /// [`SICK_LIMIT`]; returns the time taken.
    async fn ok_fresh_timed(&self, socket: &Path, args: &[&str], what: &str) -> Duration {
        let _ = std::fs::remove_dir_all(self.conf.path().join("remote-state"));
        let started = Instant::now();
        self.ok(socket, args).await;
        let took = started.elapsed();
        println!("{what}: stapes {args:?} took {took:?}");
        assert!(took < SICK_LIMIT, "{what}: {took:?}");
        took
    }

    /// The stored addresses of a remote.
    async fn addrs(&self, socket: &Path, remote: &str) -> Vec<String> {
        let json = self.ok(socket, &["remote", "list", "--format", "json"]).await;
        let v: serde_json::Value = serde_json::from_str(&json).expect("remote list JSON");
        v[remote]["Addr"]
            .as_str()
            .unwrap_or_default()
            .split(',')
            .map(str::to_string)
            .collect()
    }
}

/// A TCP listener that accepts and never answers: a hung member.
async fn hung_member() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    (format!("https://{addr}"), task)
}

#[tokio::test]
async fn t30_a_sick_first_address_never_stalls_the_client() {
    let cluster = Cluster::start(3).await;
    let urls = member_urls(&cluster, 3).await;
    let s1 = cluster.members[0].socket();
    let cli = Stapes::new();
    add_remote(&cli, &s1, "c", &urls[0]).await;
    let info = ["info", "c:"];

    // (a) Nothing listens on the first address: refused at once.
    let refused = format!("https://127.0.0.1:{}", free_port());
    let mut set_url = vec!["remote", "set-url", "c", refused.as_str()];
    set_url.extend(urls.iter().map(String::as_str));
    cli.ok(&s1, &set_url).await;
    for _ in 0..3 {
        cli.ok_fresh_timed(&s1, &info, "refused first address").await;
    }

    // (b) The first address accepts and never answers.
    let (hung, task) = hung_member().await;
    set_url[3] = hung.as_str();
    cli.ok(&s1, &set_url).await;
    for _ in 0..3 {
        cli.ok_fresh_timed(&s1, &info, "hung first address").await;
    }
    // Remembered: the next run goes to the member that answered, and does not wait.
    let again = Instant::now();
    cli.ok(&s1, &info).await;
    println!("hung first address, remembered: {:?}", again.elapsed());
    task.abort();

    // (c) The first address is a real member, stopped with SIGSTOP.
    let mut set_url = vec!["remote", "set-url", "c"];
    set_url.extend(urls.iter().map(String::as_str));
    cli.ok(&s1, &set_url).await;
    cluster.members[0].stop_process().await;
    let mut results = Vec::new();
    for _ in 0..3 {
        let _ = std::fs::remove_dir_all(cli.conf.path().join("remote-state"));
        let started = Instant::now();
        let out = cli.run(&s1, &info, None).await;
        results.push((out.success, started.elapsed(), out.stderr));
    }
    cluster.members[0].signal(Signal::SIGCONT);
    for (success, took, stderr) in &results {
        println!("stopped first member: stapes {info:?} took {took:?}");
        assert!(*success, "{stderr}");
        assert!(*took < SICK_LIMIT, "{took:?}");
    }
}

#[tokio::test]
async fn t20_discovered_members_keep_a_remote_working_without_its_first_member() {
    let mut cluster = Cluster::start(3).await;
    let urls = member_urls(&cluster, 3).await;
    let s2 = cluster.members[1].socket();
    let cli = Stapes::new();
    add_remote(&cli, &s2, "d", &urls[0]).await;
    cli.ok(&s2, &["info", "d:"]).await;
    let stored = cli.addrs(&s2, "d").await;
    println!("stored addresses of d: {stored:?}");
    assert_eq!(stored[0], urls[0], "the given address stays first");
    for url in &urls {
        assert!(stored.contains(url), "{url} missing from {stored:?}");
    }

    // node1 is gone for good: the remote still works, through the other members.
    cluster.members[0].kill9();
    for _ in 0..2 {
        let started = Instant::now();
        let out = cli.ok(&s2, &["info", "d:"]).await;
        println!("without node1: {:?}", started.elapsed());
        assert!(out.contains("server_clustered: true"), "{out}");
        assert!(started.elapsed() < SICK_LIMIT);
    }
}

#[tokio::test]
async fn t30_monitor_moves_to_another_member_when_its_stream_breaks() {
    use tokio::io::AsyncBufReadExt;
    let mut cluster = Cluster::start(3).await;
    let urls = member_urls(&cluster, 3).await;
    let s2 = cluster.members[1].socket();
    let cli = Stapes::new();
    add_remote(&cli, &s2, "m", &urls[0]).await;
    let mut set_url = vec!["remote", "set-url", "m"];
    set_url.extend(urls.iter().map(String::as_str));
    cli.ok(&s2, &set_url).await;
    let _ = std::fs::remove_dir_all(cli.conf.path().join("remote-state"));

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_stapes"))
        .args(["monitor", "m:", "--type", "lifecycle"])
        .env("STAPES_CONF", cli.conf.path())
        .env("STAPES_SOCKET", &s2)
        .env("HOME", cli.conf.path())
        .env_remove("STAPES_DIR")
        .env_remove("XDG_CONFIG_HOME")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("stapes monitor starts");
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    // Once the monitor is connected to node1 (the first address), kill node1. Members
    // relay events to one another on /internal/events, so this request is the monitor's.
    let first = &cluster.members[0];
    testkit::eventually(Duration::from_secs(20), "the monitor connected to node1", || {
        let connected = first.log().contains("path=/1.0/events");
        async move { connected.then_some(()) }
    })
    .await;
    cluster.members[0].kill9();
    let (reconnected, seen) = monitor_reconnects(&mut stderr).await;
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    println!("monitor stderr: {seen:#?}");
    assert!(reconnected, "{seen:?}");
    assert!(
        seen.iter()
            .any(|l| l.contains("broke") && l.contains("reconnecting to another member")),
        "{seen:?}"
    );
}

/// A remote with one address (a virtual IP, an anycast address, a load balancer) is
/// followed too: when the stream breaks, `monitor` reconnects through that address,
/// where another member (here: the same one, restarted) answers.
#[tokio::test]
async fn t30_monitor_reconnects_through_a_single_address() {
    use tokio::io::AsyncBufReadExt;
    let mut m = testkit::Member::start().await;
    let url = format!("https://{}", m.listen().await);
    let socket = m.socket();
    let cli = Stapes::new();
    add_remote(&cli, &socket, "one", &url).await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_stapes"))
        .args(["monitor", "one:", "--type", "lifecycle", "--format", "json"])
        .env("STAPES_CONF", cli.conf.path())
        .env("HOME", cli.conf.path())
        .env_remove("STAPES_DIR")
        .env_remove("STAPES_SOCKET")
        .env_remove("XDG_CONFIG_HOME")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("stapes monitor starts");
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    // Changes are made until the monitor shows one: then it is connected.
    let unix = m.unix();
    let mut n = 0;
    assert!(
        monitor_shows_a_change(&unix, &mut stdout, &mut n).await,
        "the monitor never showed an event"
    );

    m.restart().await;
    let (reconnected, seen) = monitor_reconnects(&mut stderr).await;
    println!("monitor stderr: {seen:#?}");
    assert!(reconnected, "{seen:?}");
    assert!(
        seen.iter()
            .any(|l| l.contains("broke") && l.contains("reconnecting")),
        "{seen:?}"
    );
    // And events flow again.
    let flowing = monitor_shows_a_change(&unix, &mut stdout, &mut n).await;
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    assert!(flowing, "no event after reconnecting");
}

/// Reads a monitor's `stderr` until it says it receives events again: whether it did
/// within 20 s, and the lines it printed.
async fn monitor_reconnects(
    stderr: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
) -> (bool, Vec<String>) {
    let mut seen = Vec::new();
    let reconnected = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = stderr.next_line().await {
            seen.push(line.clone());
            if line.starts_with("Receiving events from") {
                return true;
            }
        }
        false
    })
    .await;
    (reconnected == Ok(true), seen)
}

/// Changes the configuration (value number `n`, counting on: an unchanged value is no
/// event) until the monitor's `stdout` shows a `config-updated` event; false after 20 s.
async fn monitor_shows_a_change(
    unix: &testkit::Target,
    stdout: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    n: &mut u32,
) -> bool {
    let shown = async {
        loop {
            *n += 1;
            let body = serde_json::json!({"config": {"core.remote_token_expiry": format!("{n}H")}});
            let _ = unix.send_json("PATCH", "/1.0", &body).await;
            if let Ok(Ok(Some(line))) =
                tokio::time::timeout(Duration::from_millis(300), stdout.next_line()).await
            {
                if line.contains("config-updated") {
                    return;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), shown).await.is_ok()
}

/// An nftables table of our own that silently drops TCP to one loopback address and
/// port (a blackholed member: SYNs vanish). Deleted when dropped.
struct Blackhole {
    table: String,
}

impl Blackhole {
    fn new(ip: &str, port: u16) -> Option<Blackhole> {
        let table = format!("stapes_blackhole_{}", std::process::id());
        let nft = |args: &[&str]| {
            std::process::Command::new("nft")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        let rule = format!("ip daddr {ip} tcp dport {port} drop");
        let made = nft(&["add", "table", "inet", &table])
            && nft(&[
                "add",
                "chain",
                "inet",
                &table,
                "input",
                "{ type filter hook input priority -10; }",
            ])
            && nft(&["add", "rule", "inet", &table, "input", &rule]);
        let guard = Blackhole { table };
        made.then_some(guard)
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}

#[tokio::test]
async fn t30_a_blackholed_first_address_never_stalls_the_client() {
    let root = nix::unistd::geteuid().is_root();
    if !root || !testkit::have_tool("nft") {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "blackhole test needs root and nft under CI=true"
        );
        eprintln!("SKIP: the blackhole test needs root and nft");
        return;
    }
    let cluster = Cluster::start(3).await;
    let urls = member_urls(&cluster, 3).await;
    let s1 = cluster.members[0].socket();
    let cli = Stapes::new();
    add_remote(&cli, &s1, "c", &urls[0]).await;
    let port = free_port();
    let _hole = Blackhole::new("127.0.0.4", port).expect("nftables rule in place");
    let sick = format!("https://127.0.0.4:{port}");
    let mut set_url = vec!["remote", "set-url", "c", sick.as_str()];
    set_url.extend(urls.iter().map(String::as_str));
    cli.ok(&s1, &set_url).await;
    for _ in 0..3 {
        cli.ok_fresh_timed(&s1, &["info", "c:"], "blackholed first address")
            .await;
    }
}

/// A member that completes TLS with the real member's certificate (so the pin
/// matches), reads the request, and hangs up without answering: a member failing in
/// the middle of a command.
async fn member_that_dies_mid_request(member: &testkit::Member) -> (String, tokio::task::JoinHandle<()>) {
    let cert = std::fs::read_to_string(member.dir.join("server.crt")).expect("server.crt");
    let key = std::fs::read_to_string(member.dir.join("server.key")).expect("server.key");
    let resolver =
        transport::tls::CertResolver::new(transport::tls::certified_key(&cert, &key).expect("key pair"));
    let acceptor =
        transport::tls::TlsAcceptor::from(transport::tls::server_config(resolver).expect("tls config"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        for _ in 0..100 {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut buf = [0u8; 4096];
                    let _ = tokio::io::AsyncReadExt::read(&mut tls, &mut buf).await;
                    // Hang up without a word.
                }
            });
        }
    });
    (format!("https://{addr}"), task)
}

#[tokio::test]
async fn t30_a_member_failing_mid_request_is_retried_for_reads_only() {
    let mut member = testkit::Member::start().await;
    let url = format!("https://{}", member.listen().await);
    let s1 = member.socket();
    let cli = Stapes::new();
    add_remote(&cli, &s1, "c", &url).await;
    let (dying, task) = member_that_dies_mid_request(&member).await;
    cli.ok(&s1, &["remote", "set-url", "c", &dying, &url]).await;

    // A read is answered by the healthy member.
    for _ in 0..3 {
        let _ = std::fs::remove_dir_all(cli.conf.path().join("remote-state"));
        let started = Instant::now();
        let out = cli.run(&s1, &["query", "c:/1.0"], None).await;
        assert!(out.success, "{}", out.stderr);
        assert!(out.stdout.contains("\"auth\": \"trusted\""), "{}", out.stdout);
        assert!(started.elapsed() < SICK_LIMIT);
    }
    // A write is not resent blindly, and the error says what may have happened.
    let _ = std::fs::remove_dir_all(cli.conf.path().join("remote-state"));
    let out = cli
        .run(
            &s1,
            &[
                "query",
                "-X",
                "PATCH",
                "c:/1.0",
                "-d",
                r#"{"config":{"core.remote_token_expiry":"2H"}}"#,
            ],
            None,
        )
        .await;
    assert!(!out.success);
    assert!(
        out.stderr.contains("may or may not have been applied"),
        "{}",
        out.stderr
    );
    task.abort();
}
