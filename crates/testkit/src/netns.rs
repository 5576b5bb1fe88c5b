//! Network namespaces for high-availability tests: a LAN (a bridge in a namespace of its
//! own), hosts plugged into it, point-to-point links, processes run inside them, and a
//! probe that asks a service address from inside a host, again and again.
//!
//! ```text
//!   <prefix>lan: br0 ── v<host> ═══ eth0 in <prefix><host>     (Lab::host)
//!   <prefix><a>: <if_a> ═══ <if_b> in <prefix><b>               (Lab::link)
//! ```
//!
//! Nothing gets a route out: no default route, no NAT, no link to the test's own
//! namespace, and tests use documentation ranges only. Namespace names carry the test
//! process's PID, so two runs never meet. Dropping the lab kills every process inside its
//! namespaces (all of them started by the lab or the test) and deletes the namespaces.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::{ClientCert, Target};

/// The iproute2 command.
pub const IP: &str = "ip";

/// Namespaces, links and processes of one test.
pub struct Lab {
    prefix: String,
    dir: tempfile::TempDir,
    namespaces: Vec<String>,
    children: Vec<Child>,
}

impl Lab {
    /// A lab whose namespaces are named `stp<PID><tag>-<host>`, with an empty LAN.
    pub fn new(tag: &str) -> anyhow::Result<Lab> {
        let mut lab = Lab {
            prefix: format!("stp{}{tag}-", std::process::id()),
            dir: tempfile::Builder::new().prefix("stapes-netns-").tempdir()?,
            namespaces: Vec::new(),
            children: Vec::new(),
        };
        lab.add_ns("lan")?;
        lab.ip("lan", &["link", "add", "br0", "type", "bridge"])?;
        // Multicast (VRRP adverts) must reach every port; no STP delay.
        lab.ip(
            "lan",
            &[
                "link",
                "set",
                "br0",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
                "stp_state",
                "0",
                "forward_delay",
                "0",
            ],
        )?;
        lab.ip("lan", &["link", "set", "br0", "up"])?;
        Ok(lab)
    }

    /// The namespace name of `host`.
    pub fn ns(&self, host: &str) -> String {
        format!("{}{host}", self.prefix)
    }

    /// A file in the lab's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// What a process started with [`Lab::spawn`] as `name` wrote.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default()
    }

    fn add_ns(&mut self, host: &str) -> anyhow::Result<()> {
        let ns = self.ns(host);
        run(Command::new(IP).args(["netns", "add", &ns]))?;
        self.namespaces.push(ns);
        self.ip(host, &["link", "set", "lo", "up"])?;
        Ok(())
    }

    /// A host on the LAN: namespace `host`, `eth0` with `cidr` (e.g. `198.51.100.11/24`).
    pub fn host(&mut self, host: &str, cidr: &str) -> anyhow::Result<()> {
        self.add_ns(host)?;
        let (lan, ns) = (self.ns("lan"), self.ns(host));
        let port = format!("v{host}");
        run(Command::new(IP).args([
            "link", "add", &port, "netns", &lan, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]))?;
        self.ip("lan", &["link", "set", &port, "master", "br0", "up"])?;
        self.ip(host, &["addr", "add", cidr, "dev", "eth0"])?;
        self.ip(host, &["link", "set", "eth0", "up"])?;
        Ok(())
    }

    /// A point-to-point link between two hosts (`b` is created when new).
    pub fn link(&mut self, a: (&str, &str, &str), b: (&str, &str, &str)) -> anyhow::Result<()> {
        if !self.namespaces.contains(&self.ns(b.0)) {
            self.add_ns(b.0)?;
        }
        let (na, nb) = (self.ns(a.0), self.ns(b.0));
        run(Command::new(IP).args([
            "link", "add", a.1, "netns", &na, "type", "veth", "peer", "name", b.1, "netns", &nb,
        ]))?;
        for (host, dev, cidr) in [a, b] {
            self.ip(host, &["addr", "add", cidr, "dev", dev])?;
            self.ip(host, &["link", "set", dev, "up"])?;
        }
        Ok(())
    }

    /// `ip -n <host's namespace> ARGS`; its output.
    pub fn ip(&self, host: &str, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new(IP).arg("-n").arg(self.ns(host)).args(args))
    }

    /// Runs a command to completion inside `host`.
    pub fn exec(&self, host: &str, argv: &[&str]) -> anyhow::Result<String> {
        run(Command::new(IP)
            .args(["netns", "exec", &self.ns(host)])
            .args(argv))
    }

    /// Starts `argv` inside `host`, output to `<name>.log`; returns its PID. It is killed
    /// when the lab is dropped.
    pub fn spawn(&mut self, host: &str, name: &str, argv: &[&str]) -> anyhow::Result<u32> {
        let log = std::fs::File::create(self.path(&format!("{name}.log")))?;
        let child = Command::new(IP)
            .args(["netns", "exec", &self.ns(host)])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {argv:?}"))?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// The PIDs of every process inside `host` (all started by this lab or its test: the
    /// namespace is the lab's own).
    pub fn pids(&self, host: &str) -> Vec<i32> {
        run(Command::new(IP).args(["netns", "pids", &self.ns(host)]))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Pulls `host`'s cable out of the LAN (or plugs it back).
    pub fn set_link(&self, host: &str, up: bool) -> anyhow::Result<()> {
        let port = format!("v{host}");
        self.ip("lan", &["link", "set", &port, if up { "up" } else { "down" }])
            .map(|_| ())
    }

    /// The host dies: its cable is pulled and everything running in it is SIGKILLed.
    pub fn kill_host(&mut self, host: &str) -> anyhow::Result<()> {
        self.set_link(host, false)?;
        for pid in self.pids(host) {
            signal(pid, nix::sys::signal::Signal::SIGKILL);
        }
        self.reap();
        Ok(())
    }

    /// Reaps children that exited, so they do not linger as zombies.
    fn reap(&mut self) {
        self.children.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
    }

    /// Runs `task` on a thread of its own inside `host` (its sockets are there), on a
    /// single-threaded runtime; the thread's handle.
    pub fn run_in<F, Fut, T>(&self, host: &str, task: F) -> anyhow::Result<std::thread::JoinHandle<T>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T>,
        T: Send + 'static,
    {
        let ns = std::fs::File::open(format!("/run/netns/{}", self.ns(host)))?;
        Ok(std::thread::spawn(move || {
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("entering the namespace");
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(task())
        }))
    }

    /// The next hops of `dest` in `host`'s routing table (several with ECMP).
    pub fn next_hops(&self, host: &str, dest: &str) -> BTreeSet<String> {
        let out = self.ip(host, &["route", "show", dest]).unwrap_or_default();
        let words: Vec<&str> = out.split_whitespace().collect();
        words
            .windows(2)
            .filter(|w| w[0] == "via")
            .map(|w| w[1].to_string())
            .collect()
    }

    /// Whether `host` has `addr` on one of its interfaces.
    pub fn has_address(&self, host: &str, addr: &str) -> bool {
        self.ip(host, &["-o", "addr", "show"])
            .unwrap_or_default()
            .split_whitespace()
            .any(|w| w.split('/').next() == Some(addr))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.namespaces.clone() {
            let host = ns.trim_start_matches(&self.prefix).to_string();
            for round in 0..250 {
                let pids = self.pids(&host);
                if pids.is_empty() {
                    break;
                }
                for pid in pids {
                    signal(pid, nix::sys::signal::Signal::SIGCONT);
                    signal(
                        pid,
                        if round == 0 {
                            nix::sys::signal::Signal::SIGTERM
                        } else {
                            nix::sys::signal::Signal::SIGKILL
                        },
                    );
                }
                self.reap();
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new(IP)
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// Runs a command, bounded by its own nature (iproute2 and the like); its stdout.
fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One probe attempt: when it started, and which member answered (or the error).
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub answer: Result<String, String>,
}

/// A client inside a host asking `GET /1.0` of a service address on a new connection
/// every `interval`, recording which member answered. Bounded by `limit`.
pub struct Probe {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Probe {
    pub fn start(
        lab: &Lab,
        host: &str,
        addr: SocketAddr,
        cert: &ClientCert,
        interval: Duration,
        timeout: Duration,
        limit: Duration,
    ) -> anyhow::Result<Probe> {
        let ns = std::fs::File::open(format!("/run/netns/{}", lab.ns(host)))?;
        let (stop, samples) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let (stop2, samples2, cert) = (stop.clone(), samples.clone(), cert.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let entered = nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET);
            let _ = ready_tx.send(entered);
            if entered.is_err() {
                return;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("probe runtime");
            rt.block_on(async move {
                let target = Target::tls(&addr.to_string(), Some(&cert));
                let end = Instant::now() + limit;
                while !stop2.load(Ordering::SeqCst) && Instant::now() < end {
                    let at = Instant::now();
                    let answer = match tokio::time::timeout(timeout, target.get("/1.0")).await {
                        Err(_) => Err("timeout".to_string()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Ok(Ok(r)) if r.status != 200 => Err(format!("status {}", r.status)),
                        Ok(Ok(r)) => Ok(r.metadata()["environment"]["server_name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string()),
                    };
                    samples2.lock().expect("samples").push(Sample { at, answer });
                    tokio::time::sleep_until((at + interval).into()).await;
                }
            });
        });
        ready_rx
            .recv()
            .context("probe thread")?
            .context("entering the probe's namespace")?;
        Ok(Probe {
            stop,
            samples,
            thread: Some(thread),
        })
    }

    /// The samples so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().expect("samples").clone()
    }

    /// Waits (bounded) until the last `n` attempts all succeeded; returns who answered
    /// the last one.
    pub async fn wait_answering(&self, n: usize, limit: Duration) -> String {
        crate::eventually(limit, &format!("{n} probe answers in a row"), || {
            let s = self.samples();
            let last = (s.len() >= n && s[s.len() - n..].iter().all(|x| x.answer.is_ok()))
                .then(|| s[s.len() - 1].answer.clone().ok())
                .flatten();
            async move { last }
        })
        .await
    }

    /// Stops the probe; every sample.
    pub fn stop(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.samples()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// What a failure at `mark` did to the probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failover {
    /// Who answered last before the mark.
    pub before: Option<String>,
    /// Who answered first after the mark, other than `before`.
    pub after: Option<String>,
    /// From the mark to the first attempt `after` answered.
    pub time: Option<Duration>,
    /// Attempts after the mark that failed.
    pub failed: usize,
    /// Attempts after the mark.
    pub attempts: usize,
}

/// Measures a failover from the samples: the time from `mark` until another member
/// answers, and the attempts that failed on the way.
pub fn failover(samples: &[Sample], mark: Instant) -> Failover {
    let before = samples
        .iter()
        .filter(|s| s.at < mark)
        .filter_map(|s| s.answer.as_ref().ok())
        .next_back()
        .cloned();
    let later: Vec<&Sample> = samples.iter().filter(|s| s.at >= mark).collect();
    let first_other = later
        .iter()
        .find(|s| s.answer.as_ref().is_ok_and(|a| Some(a) != before.as_ref()));
    Failover {
        after: first_other.and_then(|s| s.answer.clone().ok()),
        time: first_other.map(|s| s.at.duration_since(mark)),
        failed: later.iter().filter(|s| s.answer.is_err()).count(),
        attempts: later.len(),
        before,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failover_counts_from_the_mark_to_another_member() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let s = |ms, a: Result<&str, &str>| Sample {
            at: at(ms),
            answer: a.map(str::to_string).map_err(str::to_string),
        };
        let samples = vec![
            s(0, Ok("m1")),
            s(20, Ok("m1")),
            s(40, Ok("m1")),
            s(60, Err("timeout")),
            s(80, Ok("m1")),
            s(100, Err("timeout")),
            s(300, Ok("m2")),
            s(320, Ok("m2")),
        ];
        let f = failover(&samples, at(50));
        assert_eq!(f.before.as_deref(), Some("m1"));
        assert_eq!(f.after.as_deref(), Some("m2"));
        assert_eq!(f.time, Some(Duration::from_millis(250)));
        assert_eq!((f.failed, f.attempts), (2, 5));
        let none = failover(&samples[..3], at(50));
        assert_eq!((none.after, none.time, none.attempts), (None, None, 0));
    }
}
