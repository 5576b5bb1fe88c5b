//! The benchmark: stapesd next to the real Incus daemon and next to a minimal
//! hyper+rustls server (the ceiling), on loopback, in one run, with the same client,
//! the same certificate and the same load tool (oha), so that every figure is read as a
//! ratio to the others measured minutes apart on the same machine.
//!
//! It is run by hand (`scripts/bench.sh`, `scripts/bench-failover.sh`), never by the
//! tests or CI, which only build and lint it; its pure parts (medians, ratios, targets,
//! oha's JSON) have unit tests.
//!
//! ```text
//!  settings (env knobs) ─> lab: temp dir, client cert, daemons started/stopped by PID
//!                              │  single | cluster (formation, leader loss) | failover
//!                              v
//!             cases (trait Case; Load = oha against a side's first member)
//!                              │  rounds x cases x variants x sides, interleaved
//!                              v
//!             results (samples, figures) ─> targets (PASS/MISS) ─> report (text)
//! ```
//!
//! Module map: [`settings`] (knobs), [`lab`] and [`cluster`] (the one place that starts
//! and stops daemons and clusters), [`procs`] (processes, /proc), [`oha`] (the load
//! tool), [`listeners`] (event listeners held during the load), [`cases`] (what is
//! measured), [`import`] (image import with the official client), [`instances`]
//! (launch, stop/start, delete and list of real containers), [`exec`] (exec through a
//! non-owner member with the official client), [`files`] (file push and pull the same
//! way), [`migrate`] (move and evacuation between members), [`run`] (the load
//! modes), [`failover`] (the
//! client failover mode), [`results`], [`stats`], [`targets`], [`report`] (the one place
//! that prints), and [`ceiling`] (the `stapes-ceiling` server).

pub mod cases;
pub mod ceiling;
pub mod cluster;
pub mod exec;
pub mod failover;
pub mod files;
pub mod import;
pub mod instances;
pub mod lab;
pub mod listeners;
pub mod migrate;
pub mod oha;
pub mod procs;
pub mod report;
pub mod results;
pub mod run;
pub mod settings;
pub mod stats;
pub mod targets;
