//! oha, the load tool: found once, run as a subprocess per measurement, its JSON output
//! kept as the raw result and read into an [`OhaRun`].
//!
//! oha runs on the same cores as the daemons it loads. Its figures are those of the
//! client: requests per second over the whole run (errors included, as oha counts
//! them), and latency percentiles of every request.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context as _};
use serde::Deserialize;

/// What one oha run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct OhaRun {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Answers per HTTP status.
    pub statuses: BTreeMap<u16, u64>,
}

impl OhaRun {
    /// Answers with a status other than `expected`.
    pub fn unexpected(&self, expected: u16) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| **s != expected)
            .map(|(_, n)| n)
            .sum()
    }

    pub fn answers(&self) -> u64 {
        self.statuses.values().sum()
    }
}

#[derive(Deserialize)]
struct Raw {
    summary: RawSummary,
    #[serde(rename = "latencyPercentiles")]
    latency: BTreeMap<String, Option<f64>>,
    #[serde(rename = "statusCodeDistribution", default)]
    statuses: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
struct RawSummary {
    #[serde(rename = "requestsPerSec")]
    rps: Option<f64>,
}

/// Reads oha's `--output-format json` document. Latencies there are in seconds; a run
/// without a single answer has no percentiles (NaN, written as null) and reads as NaN.
pub fn parse(json: &[u8]) -> anyhow::Result<OhaRun> {
    let raw: Raw = serde_json::from_slice(json).context("oha output is not the JSON expected")?;
    let ms = |k: &str| {
        raw.latency
            .get(k)
            .copied()
            .flatten()
            .map_or(f64::NAN, |s| s * 1000.0)
    };
    let statuses = raw
        .statuses
        .iter()
        .map(|(k, v)| {
            k.parse::<u16>()
                .map(|s| (s, *v))
                .with_context(|| format!("oha status code {k:?}"))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(OhaRun {
        rps: raw.summary.rps.unwrap_or(f64::NAN),
        p50_ms: ms("p50"),
        p99_ms: ms("p99"),
        statuses,
    })
}

/// The oha binary and how it wants to be asked for JSON.
#[derive(Debug, Clone)]
pub struct Oha {
    pub path: PathBuf,
    pub version: String,
    json_flag: Vec<&'static str>,
}

impl Oha {
    /// `explicit`, else `oha` on PATH, else `~/.cargo/bin/oha` (where `cargo install`
    /// puts it). Checks that it can do what the cases ask (`--unix-socket`).
    pub fn find(explicit: Option<&Path>) -> anyhow::Result<Oha> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => crate::procs::find_tool("oha")
                .or_else(|| {
                    let home = std::env::var_os("CARGO_HOME")
                        .map(PathBuf::from)
                        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))?;
                    let p = home.join("bin/oha");
                    p.is_file().then_some(p)
                })
                .context("oha not found: cargo install oha --locked (or set OHA)")?,
        };
        let help = std::process::Command::new(&path)
            .arg("--help")
            .output()
            .with_context(|| format!("running {} --help", path.display()))?;
        let help = String::from_utf8_lossy(&help.stdout);
        if !help.contains("--unix-socket") {
            bail!(
                "{} has no --unix-socket; cargo install oha --locked",
                path.display()
            );
        }
        // oha >= 1.5 spells it --output-format json; older ones -j.
        let json_flag = if help.contains("--output-format") {
            vec!["--output-format", "json"]
        } else {
            vec!["-j"]
        };
        let version = std::process::Command::new(&path)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let version = version.rsplit(' ').next().unwrap_or("?").to_string();
        Ok(Oha {
            path,
            version,
            json_flag,
        })
    }

    /// One run of `seconds` with `args` (concurrency, TLS options, the URL). The JSON goes
    /// to `out` and stays there; oha's stderr is appended to `err_log`.
    pub async fn run(
        &self,
        seconds: u32,
        args: &[String],
        out: &Path,
        err_log: &Path,
    ) -> anyhow::Result<OhaRun> {
        let stdout = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(err_log)
            .with_context(|| format!("opening {}", err_log.display()))?;
        let mut cmd = tokio::process::Command::new(&self.path);
        cmd.arg("--no-tui")
            .arg("-z")
            .arg(format!("{seconds}s"))
            .args(&self.json_flag)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("starting oha")?;
        // The run lasts `seconds`; oha then waits for answers in flight. Bounded anyway.
        let limit = std::time::Duration::from_secs(u64::from(seconds) + 60);
        let status = match tokio::time::timeout(limit, child.wait()).await {
            Ok(s) => s.context("waiting for oha")?,
            Err(_) => {
                let _ = child.kill().await;
                bail!("oha did not finish within {limit:?} ({})", args.join(" "));
            }
        };
        if !status.success() {
            bail!(
                "oha failed ({status}) for {}; see {}",
                args.join(" "),
                err_log.display()
            );
        }
        let json = std::fs::read(out).with_context(|| format!("reading {}", out.display()))?;
        parse(&json).with_context(|| format!("in {}", out.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape oha 1.16 writes (abridged: fields the benchmark does not read are cut).
    const SAMPLE: &str = r#"{
      "summary": {"successRate": 1.0, "total": 2.0004, "slowest": 0.0041, "fastest": 0.00004,
                  "average": 0.0001, "requestsPerSec": 9123.4, "totalData": 1000,
                  "sizePerRequest": 2443, "sizePerSec": 100.0},
      "metrics": {"success_rate": 1.0, "requests_per_sec": 9123.4,
                  "latency_ms": {"min": 0.04, "mean": 0.1, "p50": 0.096, "p95": 0.15, "p99": 0.216, "max": 4.1}},
      "responseTimeHistogram": {"0.0001": 10},
      "latencyPercentiles": {"p10": 0.00005, "p25": 0.00007, "p50": 0.000096, "p75": 0.0001,
                             "p90": 0.00013, "p95": 0.00015, "p99": 0.000216, "p99.9": 0.001, "p99.99": 0.004},
      "rps": {"mean": 9100.0, "stddev": 100.0, "max": 9500.0, "min": 8000.0, "percentiles": {}},
      "statusCodeDistribution": {"200": 18240, "503": 7},
      "errorDistribution": {"aborted due to deadline": 1}
    }"#;

    #[test]
    fn t10_reads_rate_latencies_in_ms_and_statuses() {
        let r = parse(SAMPLE.as_bytes()).unwrap();
        assert_eq!(r.rps, 9123.4);
        assert!((r.p50_ms - 0.096).abs() < 1e-9, "{}", r.p50_ms);
        assert!((r.p99_ms - 0.216).abs() < 1e-9, "{}", r.p99_ms);
        assert_eq!(r.answers(), 18247);
        assert_eq!(r.unexpected(200), 7);
    }

    #[test]
    fn t30_a_run_without_answers_reads_as_nan() {
        let r = parse(
            br#"{"summary": {"requestsPerSec": 0.0}, "latencyPercentiles": {"p50": null, "p99": null},
                 "statusCodeDistribution": {}}"#,
        )
        .unwrap();
        assert!(r.p50_ms.is_nan() && r.p99_ms.is_nan());
        assert_eq!(r.answers(), 0);
    }

    #[test]
    fn t30_other_documents_are_refused() {
        assert!(parse(b"not json").is_err());
        assert!(parse(br#"{"summary": {}}"#).is_err());
        assert!(parse(
            br#"{"summary": {"requestsPerSec": 1.0}, "latencyPercentiles": {}, "statusCodeDistribution": {"OK": 1}}"#
        )
        .is_err());
    }
}
