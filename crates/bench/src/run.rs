//! The two load modes, start to report.
//!
//! ```text
//!  single:  stapesd, incusd (each started, timed, given its address, the client
//!           certificate trusted), then the ceiling serving stapes's own body
//!  cluster: FORMS formations of a stapes and an Incus cluster (alternating which goes
//!           first; RSS read once both are formed), the certificate trusted through
//!           node1, forwarding checked; then the two ceiling members
//!      │
//!      v
//!  rounds: for each round, case, variant: every side in turn (the order reverses
//!          every other round, so no side always runs first)
//!      │
//!      v
//!  single:  RSS after the load, STARTS restarts of stapesd and incusd, interleaved
//!  cluster: RSS after the load, then the leader of each cluster SIGKILLed
//!      │
//!      v
//!  report (one place: [`crate::report`]) and targets
//! ```

use std::time::Duration;

use anyhow::{bail, Context as _};
use client::Method;

use crate::cases::{self, Case, RunCtx};
use crate::lab::{call, log, tls_client, unix_client, Bodies, Kind, Lab, Member, Side};
use crate::oha::Oha;
use crate::report::{self, RunInfo};
use crate::results::{Fig, Results};
use crate::settings::Settings;
use crate::targets;

/// Runs every case at every variant against every side that it applies to, `ROUNDS`
/// times, keeping the raw results in the lab's output directory.
pub async fn rounds(
    s: &Settings,
    lab: &Lab,
    oha: &Oha,
    cases: &[Box<dyn Case>],
    sides: &[Side],
    results: &mut Results,
) -> anyhow::Result<()> {
    let ctx = RunCtx {
        lab,
        oha,
        duration: s.duration,
    };
    let runs: usize = cases
        .iter()
        .map(|c| c.variants().len() * sides.iter().filter(|sd| c.measures(sd.kind)).count())
        .sum();
    log(format!(
        "cases: {runs} runs x {} rounds (a load run lasts {}s)",
        s.rounds, s.duration
    ));
    for r in 1..=s.rounds {
        let mut order: Vec<&Side> = sides.iter().collect();
        if r % 2 == 0 {
            order.reverse();
        }
        for case in cases {
            for v in case.variants() {
                for side in order.iter().filter(|sd| case.measures(sd.kind)) {
                    let raw = lab.out.join(format!(
                        "{}_{}_{}_r{r}.json",
                        side.kind.name(),
                        case.name(),
                        v.file_part()
                    ));
                    let sample = case.run(&ctx, side, &v, &raw).await.with_context(|| {
                        format!("{} {} against {}", case.name(), v.label, side.kind.name())
                    })?;
                    let shown: Vec<String> = case
                        .metrics()
                        .iter()
                        .zip(&sample.values)
                        .map(|(m, x)| format!("{} {x:.prec$} {}", m.name, m.unit, prec = m.decimals))
                        .collect();
                    let warn = if sample.unexpected > 0 {
                        format!("  WARNING: {} answers other than 200", sample.unexpected)
                    } else {
                        String::new()
                    };
                    log(format!(
                        "round {r}/{} {} {} {}: {}{warn}",
                        s.rounds,
                        case.name(),
                        v.label,
                        side.kind.name(),
                        shown.join(", ")
                    ));
                    results.add(case.as_ref(), &v.label, side.kind, sample);
                }
            }
        }
    }
    // A failed cleanup costs no figures: it is reported, and the lab kills whatever
    // containers are left when it is finished.
    for case in cases {
        for side in sides.iter().filter(|sd| case.measures(sd.kind)) {
            if let Err(e) = case.cleanup(&ctx, side).await {
                log(format!(
                    "warning: cleaning up {} on {}: {e:#}",
                    case.name(),
                    side.kind.name()
                ));
            }
        }
    }
    Ok(())
}

/// How busy the machine is with every daemon idle; warns above 10 %.
async fn idle_check() -> f64 {
    let busy = crate::procs::cpu_busy(2).await;
    if busy > 10.0 {
        log(format!(
            "warning: the machine is {busy:.0}% busy with the daemons idle; figures will be noisy"
        ));
    }
    busy
}

async fn refuse_busy(addrs: &[&str]) -> anyhow::Result<()> {
    for a in addrs {
        if crate::procs::port_busy(a).await {
            bail!("{a} is already in use");
        }
    }
    Ok(())
}

/// The header line of a side.
fn side_line(lab: &Lab, kind: Kind, addr: &str, bodies: Bodies, args: &str) -> String {
    let t = &lab.tools;
    match kind {
        Kind::Stapes => format!(
            "stapesd: {}{args} on {addr} (GET /1.0 body {} B TLS, {} B unix)",
            t.stapesd.display(),
            bodies.tls,
            bodies.unix
        ),
        Kind::Incus => format!(
            "incusd:  {} {} on {addr} (GET /1.0 body {} B TLS, {} B unix)",
            t.incusd.display(),
            crate::procs::version_of(&t.incusd, "--version"),
            bodies.tls,
            bodies.unix
        ),
        Kind::Ceiling => format!(
            "ceiling: {} on {addr} (stapes's own body: {} B TLS, {} B unix; forwards over one HTTP/2 connection)",
            t.ceiling.display(),
            bodies.tls,
            bodies.unix
        ),
    }
}

/// `GET /1.0` sizes from a side that needs no trust set up (the ceiling).
async fn bodies_of(lab: &Lab, m: &Member) -> anyhow::Result<Bodies> {
    let tls = tls_client(&m.https, Some(&lab.identity.pair), Duration::from_secs(10))?;
    let a = call(&tls, Method::GET, "/1.0", None)
        .await?
        .expect(Some(200), format!("{}: https://{}/1.0", m.key, m.https))?;
    let u = call(
        &unix_client(&m.socket, Duration::from_secs(10)),
        Method::GET,
        "/1.0",
        None,
    )
    .await?;
    Ok(Bodies {
        tls: a.body.len(),
        unix: u.body.len(),
    })
}

/// What every report's header says about the run.
fn run_info(s: &Settings, oha: &Oha) -> RunInfo {
    let now = time::OffsetDateTime::now_utc();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    RunInfo {
        when: format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}Z, {cores} cores, kernel {}",
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            kernel.trim()
        ),
        oha: oha.version.clone(),
        duration: s.duration,
        rounds: s.rounds,
        ..RunInfo::default()
    }
}

fn stapesd_args(s: &Settings) -> String {
    if s.stapesd_args.trim().is_empty() {
        String::new()
    } else {
        format!(" {}", s.stapesd_args.trim())
    }
}

/// One standalone daemon per side.
pub async fn single(s: &Settings, lab: &mut Lab, oha: &Oha) -> anyhow::Result<(String, usize)> {
    let cases = cases::select(&s.case_names()).map_err(anyhow::Error::msg)?;
    let mut addrs = vec![s.stapes_https.as_str(), s.incus_https.as_str()];
    if s.ceiling {
        addrs.push(&s.ceiling_https);
    }
    refuse_busy(&addrs).await?;
    let mut results = Results::default();
    let mut info = RunInfo {
        figures: vec![Fig::RssKb, Fig::HwmKb, Fig::ReadyMs, Fig::FirstMs],
        ..run_info(s, oha)
    };
    let mut sides = Vec::new();
    for (kind, addr) in [(Kind::Stapes, &s.stapes_https), (Kind::Incus, &s.incus_https)] {
        let m = lab.member(kind.name(), "node1", addr);
        let ms = lab.start_timed(kind, &m, None).await?;
        results.add_figure(Fig::FirstMs, kind, ms);
        log(format!(
            "{} up (pid {}, {}) after {ms:.1} ms",
            kind.name(),
            lab.pid(&m.key).unwrap_or(0),
            lab.exe(&m.key).unwrap_or_default().display()
        ));
        lab.configure_https(&m).await?;
        let bodies = lab.trust_client(&m, addr).await?;
        info.sides
            .push((kind, side_line(lab, kind, addr, bodies, &stapesd_args(s))));
        sides.push(Side {
            kind,
            members: vec![m],
        });
    }
    if s.ceiling {
        lab.prepare_ceiling(&s.stapes_https).await?;
        let m = lab.member("ceiling", "node1", &s.ceiling_https);
        let ms = lab.start_timed(Kind::Ceiling, &m, None).await?;
        log(format!("ceiling up after {ms:.1} ms"));
        let bodies = bodies_of(lab, &m).await?;
        info.sides
            .push((Kind::Ceiling, side_line(lab, Kind::Ceiling, &m.https, bodies, "")));
        sides.push(Side {
            kind: Kind::Ceiling,
            members: vec![m],
        });
    }
    let mut held = Vec::new();
    if s.listeners > 0 {
        for side in sides.iter().filter(|sd| sd.kind != Kind::Ceiling) {
            held.push((
                side.kind,
                crate::listeners::hold(side.front(), s.listeners).await?,
            ));
        }
        log(format!(
            "holding {} event listeners (every type) on stapesd and incusd",
            s.listeners
        ));
    }
    info.busy = idle_check().await;
    rounds(s, lab, oha, &cases, &sides, &mut results).await?;
    for (kind, h) in held.drain(..) {
        log(format!(
            "{}: {} of {} event listeners still open; {} event frames received",
            kind.name(),
            h.open(),
            s.listeners,
            h.frames()
        ));
    }
    for side in &sides {
        if let Some(mem) = lab.memory(&side.front().key) {
            results.add_figure(Fig::RssKb, side.kind, mem.rss_kb);
            results.add_figure(Fig::HwmKb, side.kind, mem.hwm_kb);
        }
    }
    // Restarts on the same state directory, interleaved.
    for r in 1..=s.starts {
        let mut order = [&sides[0], &sides[1]];
        if r % 2 == 0 {
            order.reverse();
        }
        for side in order {
            let m = side.front();
            lab.stop(&m.key).await;
            let ms = lab.start_timed(side.kind, m, None).await?;
            results.add_figure(Fig::ReadyMs, side.kind, ms);
            log(format!(
                "restart {r}/{} {} (pid {}): GET /1.0 answered after {ms:.1} ms",
                s.starts,
                side.kind.name(),
                lab.pid(&m.key).unwrap_or(0)
            ));
        }
    }
    info.notes.push(format!(
        "start-to-ready: median of {} restarts on the existing state directory, polled every 10 ms",
        s.starts
    ));
    results.derive();
    Ok(report::render(&info, &results, &targets::single()))
}

/// A three-member cluster per side (two members for the ceiling).
pub async fn cluster(s: &Settings, lab: &mut Lab, oha: &Oha) -> anyhow::Result<(String, usize)> {
    let cases = cases::select(&s.case_names()).map_err(anyhow::Error::msg)?;
    let stapes = lab.cluster_members(Kind::Stapes, s.cluster_stapes_port);
    let incus = lab.cluster_members(Kind::Incus, s.cluster_incus_port);
    let ceiling = lab.cluster_members(Kind::Ceiling, s.cluster_ceiling_port);
    let mut all: Vec<&Member> = stapes.iter().chain(&incus).collect();
    if s.ceiling {
        all.extend(&ceiling);
    }
    let addrs: Vec<&str> = all.iter().map(|m| m.https.as_str()).collect();
    refuse_busy(&addrs).await?;
    std::fs::create_dir_all(lab.dir.join("incus-conf"))?;
    let mut results = Results::default();
    let mut info = RunInfo {
        context: vec!["MODE=cluster: 3-member clusters on 127.0.0.1-3 (the ceiling: 2 members); all load through node1 over TLS with the client certificate".into()],
        figures: vec![
            Fig::FormMs,
            Fig::UpMs,
            Fig::JoinMs,
            Fig::FormRssKb,
            Fig::LoadRssKb,
            Fig::FwdOverheadMs,
            Fig::RecoverMs,
        ],
        ranges: vec![Fig::FormMs, Fig::JoinMs, Fig::FormRssKb],
        ..run_info(s, oha)
    };
    let pairs = [(Kind::Stapes, &stapes), (Kind::Incus, &incus)];
    for f in 1..=s.forms {
        if f > 1 {
            lab.stop_cluster(&stapes).await;
            lab.stop_cluster(&incus).await;
        }
        let mut order = pairs;
        if f % 2 == 0 {
            order.reverse();
        }
        for (kind, members) in order {
            log(format!("formation {f}/{}: {}", s.forms, kind.name()));
            let form = lab.form_cluster(kind, members).await?;
            results.add_figure(Fig::FormMs, kind, form.form_ms);
            results.add_figure(Fig::UpMs, kind, form.up_ms);
            for j in form.joins_ms {
                results.add_figure(Fig::JoinMs, kind, j);
            }
        }
        // Read once both are formed, so both sides are read at the same point.
        for (kind, members) in pairs {
            for m in members.iter() {
                if let Some(mem) = lab.memory(&m.key) {
                    results.add_figure(Fig::FormRssKb, kind, mem.rss_kb);
                }
            }
        }
    }
    let mut sides = Vec::new();
    let mut bodies_note = Vec::new();
    for (kind, members) in pairs {
        let front = &members[0];
        let bodies = lab.trust_client(front, &front.https).await?;
        let check = lab.check_cluster(kind, front).await?;
        bodies_note.push(format!(
            "{} /1.0/cluster/members {} B, /1.0?target=node2 {} B",
            kind.name(),
            check.members_body.unwrap_or(0),
            check.fwd_body
        ));
        info.sides
            .push((kind, side_line(lab, kind, &front.https, bodies, &stapesd_args(s))));
        sides.push(Side {
            kind,
            members: members.clone(),
        });
    }
    if s.ceiling {
        lab.prepare_ceiling(&stapes[0].https).await?;
        lab.form_cluster(Kind::Ceiling, &ceiling).await?;
        let check = lab.check_cluster(Kind::Ceiling, &ceiling[0]).await?;
        bodies_note.push(format!("ceiling /1.0?target=node2 {} B", check.fwd_body));
        let bodies = bodies_of(lab, &ceiling[0]).await?;
        info.sides.push((
            Kind::Ceiling,
            side_line(lab, Kind::Ceiling, &ceiling[0].https, bodies, ""),
        ));
        sides.push(Side {
            kind: Kind::Ceiling,
            members: ceiling.clone(),
        });
    }
    info.busy = idle_check().await;
    rounds(s, lab, oha, &cases, &sides, &mut results).await?;
    for side in &sides {
        for m in &side.members {
            if let Some(mem) = lab.memory(&m.key) {
                results.add_figure(Fig::LoadRssKb, side.kind, mem.rss_kb);
            }
        }
    }
    let mut killed = Vec::new();
    for (kind, members) in pairs {
        let loss = lab.leader_loss(kind, members).await?;
        results.add_figure(Fig::RecoverMs, kind, loss.ms);
        killed.push(format!("{} {}->{}", kind.name(), loss.leader, loss.survivor));
    }
    info.notes.push(format!(
        "formation, joins and RSS after forming: medians over {} formation(s) per side",
        s.forms
    ));
    info.notes.push(
        "forwarding overhead = p50 of GET /1.0?target=node2 minus p50 of GET /1.0 on node1, both c=1".into(),
    );
    info.notes
        .push(format!("response bodies via node1: {}", bodies_note.join("; ")));
    info.notes.push(format!(
        "leader killed -> write through: {} (one sample per side)",
        killed.join(", ")
    ));
    results.derive();
    Ok(report::render(&info, &results, &targets::cluster()))
}
