//! The cases: one thing measured the same way on every side that can do it.
//!
//! A case says what it is called, at which variants it runs (for load, the
//! concurrencies), which metrics it reports (the first one is the one ratios are taken
//! of), which sides it applies to, and how to run once against one side. The runner
//! ([`crate::run`]) interleaves sides and rounds and keeps every sample; the report
//! prints them side by side. Adding a case is a struct implementing [`Case`] and a line
//! in [`all`]; its targets are lines in [`crate::targets`].
//!
//! The load cases are one struct, [`Load`], run by oha against the side's first member:
//! over TLS with the client certificate and keep-alive, or over the unix socket.
//! Cases that time something else (an image import, a launch, an exec) implement
//! [`Case`] with their own `run`, and report their own metrics (seconds, MB/s, peak
//! RSS of a member read through [`RunCtx::lab`]).

use std::path::Path;

use futures_util::future::BoxFuture;

use crate::exec::{ExecCat, ExecLatency};
use crate::import::Import;
use crate::instances::{Launch, List, Restart, Shared, Sizes};
use crate::lab::{Kind, Lab, Side};
use crate::oha::Oha;
use crate::results::{Metric, Sample};

/// What a case's run gets to work with.
pub struct RunCtx<'a> {
    pub lab: &'a Lab,
    pub oha: &'a Oha,
    /// Seconds per load run.
    pub duration: u32,
}

/// One variant of a case: for load cases, a concurrency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    /// As shown in the report and used in file names (`c=32`).
    pub label: String,
    pub conc: u32,
}

impl Variant {
    pub fn conc(c: u32) -> Variant {
        Variant {
            label: format!("c={c}"),
            conc: c,
        }
    }

    /// The label as it goes into a file name.
    pub fn file_part(&self) -> String {
        self.label.replace('=', "")
    }
}

pub trait Case: Send + Sync {
    /// The name `CASES` uses.
    fn name(&self) -> &'static str;
    /// What the report calls it.
    fn label(&self) -> &'static str;
    fn variants(&self) -> Vec<Variant>;
    /// What a [`Sample`] of this case holds, in order; ratios are of the first.
    fn metrics(&self) -> &'static [Metric];
    /// Whether the case applies to a side of this kind: by default stapes and Incus,
    /// not the ceiling (which serves `GET /1.0` only).
    fn measures(&self, kind: Kind) -> bool {
        matches!(kind, Kind::Stapes | Kind::Incus)
    }
    /// Runs once against `side`; `raw` is where the raw result (oha's JSON) goes.
    fn run<'a>(
        &'a self,
        ctx: &'a RunCtx<'a>,
        side: &'a Side,
        variant: &'a Variant,
        raw: &'a Path,
    ) -> BoxFuture<'a, anyhow::Result<Sample>>;

    /// Removes what the case made on `side` once every round has run (instances).
    fn cleanup<'a>(&'a self, _ctx: &'a RunCtx<'a>, _side: &'a Side) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// What every load case reports.
pub const LOAD_METRICS: &[Metric] = &[
    Metric {
        name: "req/s",
        unit: "",
        decimals: 0,
    },
    Metric {
        name: "p50",
        unit: "ms",
        decimals: 3,
    },
    Metric {
        name: "p99",
        unit: "ms",
        decimals: 3,
    },
];

/// How a load case reaches the side's first member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// HTTPS with the client certificate, keep-alive.
    Tls,
    /// HTTPS with the client certificate, a new connection (TLS handshake) per request.
    TlsHandshake,
    /// The unix socket.
    Unix,
}

/// `GET path` under oha for `DURATION` seconds at each concurrency.
pub struct Load {
    pub name: &'static str,
    pub label: &'static str,
    pub path: &'static str,
    pub via: Via,
    pub concs: &'static [u32],
    pub sides: &'static [Kind],
}

const ALL_SIDES: &[Kind] = &[Kind::Stapes, Kind::Incus, Kind::Ceiling];

impl Load {
    /// oha's arguments for one run against `side` at `conc`.
    pub fn oha_args(&self, lab: &Lab, side: &Side, conc: u32) -> Vec<String> {
        let mut args = vec!["-c".to_string(), conc.to_string()];
        let tls = |args: &mut Vec<String>| {
            args.extend([
                "--insecure".to_string(),
                "--cert".to_string(),
                lab.identity.cert_file.display().to_string(),
                "--key".to_string(),
                lab.identity.key_file.display().to_string(),
            ])
        };
        match self.via {
            Via::Tls => tls(&mut args),
            Via::TlsHandshake => {
                args.push("--disable-keepalive".into());
                tls(&mut args);
            }
            Via::Unix => {
                args.push("--unix-socket".into());
                args.push(side.front().socket.display().to_string());
            }
        }
        args.push(match self.via {
            Via::Unix => format!("http://unix.socket{}", self.path),
            _ => format!("https://{}{}", side.front().https, self.path),
        });
        args
    }
}

impl Case for Load {
    fn name(&self) -> &'static str {
        self.name
    }

    fn label(&self) -> &'static str {
        self.label
    }

    fn variants(&self) -> Vec<Variant> {
        self.concs.iter().copied().map(Variant::conc).collect()
    }

    fn metrics(&self) -> &'static [Metric] {
        LOAD_METRICS
    }

    fn measures(&self, kind: Kind) -> bool {
        self.sides.contains(&kind)
    }

    fn run<'a>(
        &'a self,
        ctx: &'a RunCtx<'a>,
        side: &'a Side,
        variant: &'a Variant,
        raw: &'a Path,
    ) -> BoxFuture<'a, anyhow::Result<Sample>> {
        Box::pin(async move {
            let args = self.oha_args(ctx.lab, side, variant.conc);
            let run = ctx
                .oha
                .run(ctx.duration, &args, raw, &ctx.lab.logs.join("oha.err"))
                .await?;
            Ok(Sample {
                values: vec![run.rps, run.p50_ms, run.p99_ms],
                unexpected: run.unexpected(200),
            })
        })
    }
}

/// Every case, by name. Single mode runs `tls unix` by default, cluster mode `members
/// fwd direct unix`; each works in both (in cluster mode the first member is node1).
/// The image imports (`import256`, `import2g`), the instance cases (`launch`,
/// `list`, `restart`: cluster mode, real containers) and the exec and file cases
/// (`exec`, `exec_cat`, `file`: cluster mode, real containers) and the cases between
/// members (`move`, `evacuate`: cluster mode, real containers) run only when named.
pub fn all() -> Vec<Box<dyn Case>> {
    let shared = std::sync::Arc::new(Shared::new());
    let sizes = Sizes::from_env().unwrap_or_else(|e| {
        crate::lab::log(format!("{e}; using the default instance counts"));
        Sizes::DEFAULT
    });
    let restart_running = Restart::running_from_env().unwrap_or_else(|e| {
        crate::lab::log(format!("{e}; using 30"));
        30
    });
    let exec = std::sync::Arc::new(crate::exec::Shared::new(shared.clone()));
    vec![
        Box::new(Load {
            name: "tls",
            label: "GET /1.0 TLS keep-alive",
            path: "/1.0",
            via: Via::Tls,
            concs: &[1, 32],
            sides: ALL_SIDES,
        }),
        Box::new(Load {
            name: "unix",
            label: "GET /1.0 unix socket",
            path: "/1.0",
            via: Via::Unix,
            concs: &[1, 32],
            sides: ALL_SIDES,
        }),
        Box::new(Load {
            name: "tls_handshake",
            label: "GET /1.0 TLS, new handshake each",
            path: "/1.0",
            via: Via::TlsHandshake,
            concs: &[1],
            sides: ALL_SIDES,
        }),
        Box::new(Load {
            name: "members",
            label: "GET /1.0/cluster/members (node1)",
            path: "/1.0/cluster/members",
            via: Via::Tls,
            concs: &[1, 32],
            // The ceiling serves /1.0 only.
            sides: &[Kind::Stapes, Kind::Incus],
        }),
        Box::new(Load {
            name: "fwd",
            label: "GET /1.0?target=node2 via node1",
            path: "/1.0?target=node2",
            via: Via::Tls,
            concs: &[1, 32],
            sides: ALL_SIDES,
        }),
        Box::new(Load {
            name: "direct",
            label: "GET /1.0 direct on node1",
            path: "/1.0",
            via: Via::Tls,
            concs: &[1, 32],
            sides: ALL_SIDES,
        }),
        Box::new(Import::new("import256", "incus image import, first member", 256)),
        Box::new(Import::new("import2g", "incus image import, first member", 2048)),
        Box::new(Launch::new(shared.clone())),
        Box::new(List::new(shared.clone(), sizes)),
        Box::new(Restart::new(shared.clone(), restart_running)),
        Box::new(ExecLatency(exec.clone())),
        Box::new(ExecCat(exec.clone())),
        Box::new(crate::files::Files::new(exec)),
        Box::new(crate::migrate::Move::new(shared.clone())),
        Box::new(crate::migrate::Evacuate::new(shared)),
    ]
}

/// The cases named, in that order; an unknown name is an error that lists the known.
pub fn select(names: &[String]) -> Result<Vec<Box<dyn Case>>, String> {
    let mut known = all();
    let list: Vec<&str> = known.iter().map(|c| c.name()).collect();
    let list = list.join(" ");
    let mut chosen = Vec::new();
    for n in names {
        let i = known
            .iter()
            .position(|c| c.name() == n)
            .ok_or_else(|| format!("unknown case {n:?} (known: {list})"))?;
        chosen.push(known.remove(i));
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_cases_are_selected_in_order() {
        let names: Vec<String> = ["fwd", "tls"].iter().map(|s| s.to_string()).collect();
        let chosen = select(&names).unwrap();
        let got: Vec<&str> = chosen.iter().map(|c| c.name()).collect();
        assert_eq!(got, ["fwd", "tls"]);
    }

    #[test]
    fn t30_unknown_and_repeated_names_are_refused() {
        let err = select(&["tls".into(), "nope".into()]).err().unwrap();
        assert!(
            err.contains("unknown case \"nope\"") && err.contains("tls_handshake"),
            "{err}"
        );
        assert!(select(&["tls".into(), "tls".into()]).is_err());
    }

    #[test]
    fn t10_the_ceiling_is_not_asked_for_what_it_does_not_serve() {
        let all = all();
        let members = all.iter().find(|c| c.name() == "members").unwrap();
        assert!(!members.measures(Kind::Ceiling));
        assert!(all
            .iter()
            .filter(|c| {
                c.name() != "members"
                    && !c.name().starts_with("import")
                    && !c.name().starts_with("exec")
                    && !c.name().starts_with("file")
                    && !["launch", "list", "restart", "move", "evacuate"].contains(&c.name())
            })
            .all(|c| c.measures(Kind::Ceiling)));
        assert!(all
            .iter()
            .filter(|c| c.name().starts_with("import") || ["launch", "list", "restart"].contains(&c.name()))
            .all(|c| !c.measures(Kind::Ceiling) && c.measures(Kind::Incus)));
    }

    #[test]
    fn t10_variant_labels() {
        let v = Variant::conc(32);
        assert_eq!((v.label.as_str(), v.file_part().as_str()), ("c=32", "c32"));
    }
}
