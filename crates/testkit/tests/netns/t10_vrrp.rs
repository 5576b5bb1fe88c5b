use std::time::{Duration, Instant};

use stapes_testkit::netns::{failover, Lab, Probe};
use stapes_testkit::{eventually, ClientCert};

use crate::{can_run, cluster_in, lan_ip, report, slot, PORT};

/// The virtual IP.
const VIP: &str = "198.51.100.100";

/// keepalived runs a check script at most once a second; polling `/ready` four times
/// within that second finds a member that turned not-ready within about 250 ms.
fn check_script() -> String {
    format!(
        "#!/bin/sh\n\
         for i in 1 2 3 4; do\n\
         \x20 curl -sfk --max-time 0.2 -o /dev/null https://127.0.0.1:{PORT}/ready || exit 1\n\
         \x20 [ $i = 4 ] || sleep 0.2\n\
         done\n"
    )
}

/// VRRPv3 with 100 ms adverts; the instance faults (and gives the VIP up) when the
/// member's `/ready` fails.
fn keepalived_conf(host: &str, priority: u8, script: &str) -> String {
    format!(
        "global_defs {{\n\
         \x20   router_id {host}\n\
         \x20   vrrp_version 3\n\
         \x20   script_user root\n\
         \x20   vrrp_garp_master_delay 1\n\
         \x20   vrrp_garp_master_repeat 3\n\
         }}\n\
         vrrp_script ready {{\n\
         \x20   script \"/bin/sh {script}\"\n\
         \x20   interval 1\n\
         \x20   timeout 3\n\
         \x20   fall 1\n\
         \x20   rise 2\n\
         }}\n\
         vrrp_instance api {{\n\
         \x20   state BACKUP\n\
         \x20   interface eth0\n\
         \x20   virtual_router_id 51\n\
         \x20   priority {priority}\n\
         \x20   advert_int 0.1\n\
         \x20   virtual_ipaddress {{\n\
         \x20       {VIP}/24 dev eth0\n\
         \x20   }}\n\
         \x20   track_script {{\n\
         \x20       ready\n\
         \x20   }}\n\
         }}\n"
    )
}

/// Whichever host holds the VIP now.
/// The one live host holding the VIP (`None` if none or several do). A host killed
/// with SIGKILL may keep the address on its unplugged interface: whether keepalived had
/// time to drop it depends on which of its processes the kill reached first, and a dead
/// host's addresses do not matter, so `dead` hosts are not asked.
fn owner(lab: &Lab, dead: &[&str]) -> Option<String> {
    let holders: Vec<_> = ["m1", "m2", "m3"]
        .into_iter()
        .filter(|h| !dead.contains(h) && lab.has_address(h, VIP))
        .collect();
    match holders[..] {
        [one] => Some(one.to_string()),
        _ => None,
    }
}

/// keepalived on three member hosts (priorities 150, 100, 50) moves the VIP away from a
/// host that dies, and from a host whose stapesd turns not-ready (SIGTERM with drain).
#[tokio::test]
async fn vrrp_moves_the_vip_when_a_host_dies_or_its_member_turns_not_ready() {
    if !can_run(&["ip", "keepalived", "curl"]) {
        return;
    }
    let _slot = slot().await;
    let mut lab = Lab::new("v").expect("lab");
    let members = cluster_in(&mut lab, &[]).await;
    lab.host("c", &format!("{}/24", lan_ip(2))).expect("client host");
    let cert = ClientCert::generate("vrrp-client");
    members[0].trust(&cert).await;

    let script = lab.path("ready.sh");
    std::fs::write(&script, check_script()).unwrap();
    for (i, prio) in [(1, 150), (2, 100), (3, 50)] {
        let host = format!("m{i}");
        let conf = lab.path(&format!("keepalived-{host}.conf"));
        std::fs::write(&conf, keepalived_conf(&host, prio, script.to_str().unwrap())).unwrap();
        let (pid, vrrp_pid) = (
            lab.path(&format!("keepalived-{host}.pid")),
            lab.path(&format!("vrrp-{host}.pid")),
        );
        lab.spawn(
            &host,
            &format!("keepalived-{host}"),
            &[
                "keepalived",
                "--dont-fork",
                "--log-console",
                "--log-detail",
                "--vrrp",
                "-f",
                conf.to_str().unwrap(),
                "-p",
                pid.to_str().unwrap(),
                "-r",
                vrrp_pid.to_str().unwrap(),
            ],
        )
        .expect("keepalived");
    }
    let started = Instant::now();
    eventually(Duration::from_secs(15), "m1 holds the VIP", || {
        let o = owner(&lab, &[]);
        async move { (o.as_deref() == Some("m1")).then_some(()) }
    })
    .await;
    println!(
        "VRRP: m1 holds the VIP {} ms after keepalived started",
        started.elapsed().as_millis()
    );

    let vip = format!("{VIP}:{PORT}").parse().unwrap();
    let probe = Probe::start(
        &lab,
        "c",
        vip,
        &cert,
        Duration::from_millis(20),
        Duration::from_millis(200),
        Duration::from_secs(60),
    )
    .expect("probe");
    assert_eq!(probe.wait_answering(10, Duration::from_secs(10)).await, "m1");

    // 1. The master host dies: cable pulled, every process killed.
    let mark = Instant::now();
    lab.kill_host("m1").expect("kill m1");
    let f = eventually(
        Duration::from_secs(10),
        "another member answers on the VIP",
        || {
            let f = failover(&probe.samples(), mark);
            async move { f.after.is_some().then_some(f) }
        },
    )
    .await;
    report("VRRP failover, master host dies", &f);
    assert_eq!(f.after.as_deref(), Some("m2"), "{f:?}");
    // A bound against "never moved", not a speed target: the figure is printed above.
    assert!(f.time.unwrap() < Duration::from_secs(8), "{f:?}");
    // m2 takes the address a few milliseconds around its first answer: wait for it
    // rather than race it.
    eventually(Duration::from_secs(10), "m2 alone holds the VIP", || {
        let o = owner(&lab, &["m1"]);
        async move { (o.as_deref() == Some("m2")).then_some(()) }
    })
    .await;
    probe.wait_answering(10, Duration::from_secs(10)).await;

    // 2. The new master's stapesd turns not-ready (SIGTERM, draining): keepalived's
    // check fails and the VIP moves on, while m2 still serves what it has.
    let mark = Instant::now();
    members[1].signal(nix::sys::signal::Signal::SIGTERM);
    let f = eventually(Duration::from_secs(10), "m3 answers on the VIP", || {
        let f = failover(&probe.samples(), mark);
        async move { f.after.is_some().then_some(f) }
    })
    .await;
    report("VRRP failover, member turns not-ready", &f);
    assert_eq!(f.after.as_deref(), Some("m3"), "{f:?}");
    // A bound against "never moved", not a speed target: the figure is printed above.
    assert!(f.time.unwrap() < Duration::from_secs(8), "{f:?}");
    eventually(Duration::from_secs(10), "m3 alone holds the VIP", || {
        let o = owner(&lab, &["m1"]);
        async move { (o.as_deref() == Some("m3")).then_some(()) }
    })
    .await;
    probe.wait_answering(5, Duration::from_secs(5)).await;
    let samples = probe.stop();
    assert!(
        samples.len() > 20,
        "the probe kept running: {} attempts",
        samples.len()
    );
}
