//! `stapes-bench`: see the crate documentation and `docs/performance.md`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::Parser;
use stapes_bench::failover::Clients;
use stapes_bench::lab::{log, Lab, Tools};
use stapes_bench::oha::Oha;
use stapes_bench::procs::find_tool;
use stapes_bench::settings::{Mode, Settings};

fn main() -> ExitCode {
    let settings = Settings::parse();
    if let Err(e) = settings.validate() {
        eprintln!("stapes-bench: {e}");
        return ExitCode::FAILURE;
    }
    transport::tls::install_default_provider();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("stapes-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench(&settings)) {
        Ok(code) => code,
        Err(e) => {
            log(format!("error: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// What a run ended with.
enum End {
    Done(String, usize),
    Signal(&'static str, u8),
}

/// Resolves on SIGINT or SIGTERM, with the exit status a shell would give.
async fn interrupted() -> (&'static str, u8) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => ("SIGINT", 130),
        _ = term.recv() => ("SIGTERM", 143),
    }
}

/// A program beside this one (the workspace's target directory), unless given.
fn beside_me(given: Option<&PathBuf>, name: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.clone());
    }
    let me = std::env::current_exe().context("finding this program")?;
    Ok(me.parent().unwrap_or(Path::new(".")).join(name))
}

fn need(path: &Path, what: &str) -> anyhow::Result<()> {
    if !path.is_file() {
        bail!("{what} not found at {}", path.display());
    }
    Ok(())
}

async fn bench(s: &Settings) -> anyhow::Result<ExitCode> {
    let stapesd = beside_me(s.stapesd.as_ref(), "stapesd")?;
    need(
        &stapesd,
        "stapesd (build it: cargo build --release -p stapesd, or set STAPESD)",
    )?;
    if stapesd.components().any(|c| c.as_os_str() == "debug") {
        log(format!(
            "warning: {} looks like a debug build; figures are not representative",
            stapesd.display()
        ));
    }
    let ceiling = beside_me(s.ceiling_bin.as_ref(), "stapes-ceiling")?;
    let tools = Tools {
        stapesd,
        stapesd_args: s.stapesd_args.split_whitespace().map(str::to_string).collect(),
        incusd: s.incusd.clone(),
        ceiling,
    };
    let mut failover_clients = None;
    let mut oha = None;
    match s.mode {
        Mode::Failover => {
            let stapes = beside_me(s.stapes.as_ref(), "stapes")?;
            need(
                &stapes,
                "the stapes CLI (cargo build --release -p stapes, or set STAPES)",
            )?;
            failover_clients = Some(Clients {
                stapes,
                incus: find_tool("incus"),
            });
        }
        Mode::Single | Mode::Cluster => {
            if !nix::unistd::geteuid().is_root() {
                bail!("run as root (incusd needs it)");
            }
            need(
                &tools.incusd,
                "incusd (apt install -t bookworm-backports incus, or set INCUSD)",
            )?;
            if s.mode == Mode::Cluster && find_tool("incus").is_none() {
                bail!("the incus client is needed to form the Incus cluster (apt install incus-client)");
            }
            if s.ceiling {
                need(
                    &tools.ceiling,
                    "stapes-ceiling (cargo build --release -p stapes-bench, or set CEILING_BIN)",
                )?;
            }
            oha = Some(Oha::find(s.oha.as_deref())?);
        }
    }
    let mut lab = Lab::new(tools, s.results_dir.clone(), s.keep_dir)?;
    let ended = {
        let work = async {
            match (s.mode, &oha, &failover_clients) {
                (Mode::Single, Some(oha), _) => stapes_bench::run::single(s, &mut lab, oha).await,
                (Mode::Cluster, Some(oha), _) => stapes_bench::run::cluster(s, &mut lab, oha).await,
                (Mode::Failover, _, Some(clients)) => stapes_bench::failover::run(s, &mut lab, clients).await,
                _ => bail!("nothing to run"),
            }
        };
        tokio::select! {
            r = work => r.map(|(text, misses)| End::Done(text, misses)),
            (name, code) = interrupted() => Ok(End::Signal(name, code)),
        }
    };
    if let Ok(End::Done(text, _)) = &ended {
        print!("{text}");
        let summary = lab.out.join("summary.txt");
        if let Err(e) = std::fs::write(&summary, text) {
            log(format!("could not write {}: {e}", summary.display()));
        }
    }
    lab.finish(!matches!(ended, Ok(End::Done(..)))).await;
    match ended? {
        End::Done(_, misses) if s.strict && misses > 0 => {
            log(format!("STRICT=1 and {misses} target(s) missed"));
            Ok(ExitCode::FAILURE)
        }
        End::Done(..) => Ok(ExitCode::SUCCESS),
        End::Signal(name, code) => {
            log(format!("stopped by {name}"));
            Ok(ExitCode::from(code))
        }
    }
}
