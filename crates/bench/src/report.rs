//! The one place that formats what the benchmark prints: the side-by-side table of the
//! cases, the figures, the targets as PASS/MISS lines, and the failover summary. It
//! returns text; the caller prints it and writes it to `summary.txt`.

use std::fmt::Write as _;

use crate::lab::Kind;
use crate::results::{Fig, Results, Row};
use crate::targets::{Outcome, Quantity, Rule, Target};

/// What the header says about the run.
#[derive(Debug, Clone, Default)]
pub struct RunInfo {
    /// e.g. "2026-12-02T10:00Z, 2 cores, kernel 6.1.0".
    pub when: String,
    pub oha: String,
    pub duration: u32,
    pub rounds: u32,
    /// Percent of the machine busy just before the load.
    pub busy: f64,
    /// Extra header lines (mode, addresses).
    pub context: Vec<String>,
    /// One line per side: binary, version, address, body sizes.
    pub sides: Vec<(Kind, String)>,
    /// Lines after the figures.
    pub notes: Vec<String>,
    /// The figures to show, in order.
    pub figures: Vec<Fig>,
    /// Figures shown with their range too.
    pub ranges: Vec<Fig>,
}

/// The sides that ran, in column order.
fn kinds(info: &RunInfo) -> Vec<Kind> {
    Kind::ALL
        .into_iter()
        .filter(|k| info.sides.iter().any(|(s, _)| s == k))
        .collect()
}

fn num(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "-".to_string(),
    }
}

fn times(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |r| format!("{r:.2}x"))
}

fn ratio_to(row: &Row, kind: Kind) -> Option<f64> {
    crate::stats::ratio(row.median(Kind::Stapes, 0)?, row.median(kind, 0)?)
}

/// The whole report of a single or cluster run; also returns the number of targets
/// missed.
pub fn render(info: &RunInfo, r: &Results, targets: &[Target]) -> (String, usize) {
    let mut out = String::new();
    let kinds = kinds(info);
    let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
    let _ = writeln!(out, "== {}: {}", names.join(" vs "), info.when);
    let _ = writeln!(
        out,
        "   oha {}, {}s per run, median of {} interleaved rounds",
        info.oha, info.duration, info.rounds
    );
    let _ = writeln!(
        out,
        "   CPU busy just before the load, all daemons idle (2 s sample): {:.0}%",
        info.busy
    );
    for l in &info.context {
        let _ = writeln!(out, "   {l}");
    }
    for (_, l) in &info.sides {
        let _ = writeln!(out, "   {l}");
    }
    out.push('\n');
    cases_table(&mut out, r, &kinds);
    out.push('\n');
    figures_table(&mut out, info, r, &kinds);
    let _ = writeln!(
        out,
        "   ratios are stapes / the other side; latencies in ms; RSS is VmRSS of the daemon process"
    );
    for l in &info.notes {
        let _ = writeln!(out, "   {l}");
    }
    for row in &r.rows {
        for k in &kinds {
            let n = row.unexpected(*k);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "   WARNING: {} {} {} had {n} answers other than 200",
                    k.name(),
                    row.case,
                    row.variant
                );
            }
        }
    }
    let mut misses = 0;
    for (title, ceiling) in [
        ("targets", false),
        ("targets against the ceiling (issue 13 point 9)", true),
    ] {
        let lines: Vec<String> = targets
            .iter()
            .filter(|t| (t.other() == Kind::Ceiling) == ceiling)
            .filter(|t| matches!(t.rule, Rule::Below(_)) || kinds.contains(&t.other()))
            .filter_map(|t| {
                let o = t.check(r)?;
                if !o.pass {
                    misses += 1;
                }
                Some(target_line(t, &o, r))
            })
            .collect();
        if !lines.is_empty() {
            let _ = writeln!(out, "\n== {title}");
            for l in lines {
                let _ = writeln!(out, "{l}");
            }
        }
    }
    (out, misses)
}

fn cases_table(out: &mut String, r: &Results, kinds: &[Kind]) {
    let mut last_metrics = None;
    for row in &r.rows {
        let primary = row.metrics[0];
        let details: Vec<&str> = row.metrics[1..].iter().map(|m| m.name).collect();
        let detail_unit = row.metrics.get(1).map_or("", |m| m.unit);
        let same_unit = row.metrics[1..].iter().all(|m| m.unit == detail_unit);
        if last_metrics != Some(row.metrics) {
            let _ = write!(out, "{:<34} {:>5}", "case", "");
            for k in kinds {
                let _ = write!(out, " {:>14}", format!("{} {}", k.name(), primary.name));
            }
            for k in kinds.iter().skip(1) {
                let _ = write!(out, " {:>9}", format!("s/{}", short(*k)));
            }
            if !details.is_empty() {
                for k in kinds {
                    let _ = write!(out, " {:>19}", format!("{} {}", k.name(), details.join("/")));
                }
            }
            out.push('\n');
            last_metrics = Some(row.metrics);
        }
        let _ = write!(out, "{:<34} {:>5}", row.label, row.variant);
        for k in kinds {
            let _ = write!(out, " {:>14}", num(row.median(*k, 0), primary.decimals));
        }
        for k in kinds.iter().skip(1) {
            let _ = write!(out, " {:>9}", times(ratio_to(row, *k)));
        }
        if !details.is_empty() {
            for k in kinds {
                let shown: Vec<String> = (1..row.metrics.len())
                    .map(|i| num(row.median(*k, i), row.metrics[i].decimals))
                    .collect();
                let text = if !row.measured(*k) {
                    "-".to_string()
                } else if same_unit {
                    format!("{} {detail_unit}", shown.join("/"))
                } else {
                    // Mixed units (an import: seconds, MB): each value with its own.
                    let each: Vec<String> = shown
                        .iter()
                        .zip(&row.metrics[1..])
                        .map(|(v, m)| format!("{v} {}", m.unit).trim_end().to_string())
                        .collect();
                    each.join(" / ")
                };
                let _ = write!(out, " {text:>19}");
            }
        }
        out.push('\n');
    }
    let mut last_metric = None;
    for row in &r.rows {
        let metric = row.metrics[0].name;
        if last_metric != Some(metric) {
            out.push('\n');
            let head = format!("{metric}, lowest-highest round");
            let _ = write!(out, "{head:<34} {:>5}", "");
            for k in kinds {
                let _ = write!(out, " {:>15}", k.name());
            }
            out.push('\n');
            last_metric = Some(metric);
        }
        let _ = write!(out, "{:<34} {:>5}", row.label, row.variant);
        let d = row.metrics[0].decimals;
        for k in kinds {
            let text = row
                .range(*k, 0)
                .map_or_else(|| "-".to_string(), |(lo, hi)| format!("{lo:.d$}-{hi:.d$}"));
            let _ = write!(out, " {text:>15}");
        }
        out.push('\n');
    }
}

fn short(k: Kind) -> &'static str {
    match k {
        Kind::Stapes => "stapes",
        Kind::Incus => "incus",
        Kind::Ceiling => "ceil",
    }
}

fn figures_table(out: &mut String, info: &RunInfo, r: &Results, kinds: &[Kind]) {
    let shown: Vec<Fig> = info
        .figures
        .iter()
        .copied()
        .filter(|f| kinds.iter().any(|k| r.figure(*f, *k).is_some()))
        .collect();
    if shown.is_empty() {
        return;
    }
    let _ = write!(out, "{:<40}", "median");
    for k in kinds {
        let _ = write!(out, " {:>15}", k.name());
    }
    for k in kinds.iter().skip(1) {
        let _ = write!(out, " {:>9}", format!("s/{}", short(*k)));
    }
    out.push('\n');
    for f in shown {
        let n = r.figure_count(f, Kind::Stapes);
        let label = if n > 1 {
            format!("{} ({}, n={n})", f.label(), f.unit())
        } else {
            format!("{} ({})", f.label(), f.unit())
        };
        let _ = write!(out, "{label:<40}");
        for k in kinds {
            let _ = write!(out, " {:>15}", num(r.figure(f, *k), f.decimals()));
        }
        for k in kinds.iter().skip(1) {
            let ratio = r
                .figure(f, Kind::Stapes)
                .zip(r.figure(f, *k))
                .and_then(|(s, o)| crate::stats::ratio(s, o));
            let _ = write!(out, " {:>9}", times(ratio));
        }
        out.push('\n');
    }
    for f in &info.ranges {
        if !kinds.iter().any(|k| r.figure_range(*f, *k).is_some()) {
            continue;
        }
        let _ = write!(
            out,
            "{:<40}",
            format!("  range: {} ({})", f.label().trim(), f.unit())
        );
        for k in kinds {
            let text = r
                .figure_range(*f, *k)
                .map_or_else(|| "-".to_string(), |(lo, hi)| format!("{lo:.1}-{hi:.1}"));
            let _ = write!(out, " {text:>15}");
        }
        out.push('\n');
    }
}

/// What a target is about, in words, with its unit.
fn describe(q: &Quantity, r: &Results) -> (String, String) {
    match q {
        Quantity::Case {
            case,
            variant,
            metric,
        } => {
            let row = r.row(case, variant);
            let label = row.map_or(*case, |r| r.label);
            let unit = row
                .and_then(|r| r.metric_index(metric).map(|i| r.metrics[i].unit))
                .unwrap_or("");
            (format!("{label} {variant} {metric}"), unit.to_string())
        }
        Quantity::Fig(f) => (f.label().trim().to_string(), f.unit().to_string()),
    }
}

fn target_line(t: &Target, o: &Outcome, r: &Results) -> String {
    let verdict = if o.pass { "PASS" } else { "MISS" };
    let (what, unit) = describe(&t.what, r);
    let u = if unit.is_empty() {
        String::new()
    } else {
        format!(" {unit}")
    };
    let d = |v: f64| {
        if v.abs() >= 100.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.3}")
        }
    };
    let other = o.other.map_or_else(|| "-".to_string(), d);
    let ratio = times(o.ratio);
    match t.rule {
        Rule::AtLeast(k, f) => format!(
            "{verdict}  {what}: stapes {}{u} >= {f} x {} {other}{u} ({ratio})",
            d(o.stapes),
            k.name()
        ),
        Rule::AtMost(k, f) => format!(
            "{verdict}  {what}: stapes {}{u} <= {f} x {} {other}{u} ({ratio})",
            d(o.stapes),
            k.name()
        ),
        Rule::Below(limit) => format!(
            "{verdict}  {what}: stapes {}{u} < {}{u} (incus {other}{u})",
            d(o.stapes),
            d(limit)
        ),
    }
}

/// One line of the failover summary.
#[derive(Debug, Clone)]
pub struct FailoverRow {
    pub mode: String,
    pub client: String,
    /// Seconds per invocation.
    pub times: Vec<f64>,
    pub failures: usize,
    /// For stapes rows: whether the target holds (p99 < 0.5 s, no failures).
    pub pass: Option<bool>,
}

pub fn failover_line(row: &FailoverRow) -> String {
    let p = |q| num(crate::stats::percentile(&row.times, q), 3);
    let max = num(row.times.iter().copied().reduce(f64::max), 3);
    let verdict = match row.pass {
        Some(true) => "PASS (p99 < 0.5 s, 0 failures)",
        Some(false) => "MISS (p99 < 0.5 s, 0 failures)",
        None => "",
    };
    format!(
        "{:<9} {:<10} n={:<3} p50={:>7} s  p99={:>7} s  max={:>7} s  failures={}  {verdict}",
        row.mode,
        row.client,
        row.times.len(),
        p(50),
        p(99),
        max,
        row.failures
    )
    .trim_end()
    .to_string()
}

/// The failover summary; also returns the number of sick-mode stapes rows that missed.
pub fn failover(header: &[String], rows: &[FailoverRow]) -> (String, usize) {
    let mut out = String::new();
    for l in header {
        let _ = writeln!(out, "{l}");
    }
    let _ = writeln!(
        out,
        "\nsummary (stapes: remote-state cleared before each run; stapes-mem: kept)"
    );
    for row in rows {
        let _ = writeln!(out, "{}", failover_line(row));
    }
    let misses = rows
        .iter()
        .filter(|r| r.mode != "healthy" && r.pass == Some(false))
        .count();
    if misses == 0 {
        let _ = writeln!(
            out,
            "TARGET: PASS (stapes p99 < 0.5 s, 0 failures, every sick mode)"
        );
    } else {
        let _ = writeln!(out, "TARGET: MISS ({misses} sick-mode stapes rows)");
    }
    (out, misses)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::Sample;

    fn results() -> Results {
        let mut r = Results::default();
        let all = crate::cases::all();
        let tls = all.iter().find(|c| c.name() == "tls").unwrap();
        for (kind, rps) in [
            (Kind::Stapes, 11000.0),
            (Kind::Incus, 2000.0),
            (Kind::Ceiling, 18000.0),
        ] {
            for round in 0..3 {
                r.add(
                    tls.as_ref(),
                    "c=1",
                    kind,
                    Sample {
                        values: vec![rps + f64::from(round), 0.1, 0.2],
                        unexpected: 0,
                    },
                );
            }
        }
        r.add_figure(Fig::RssKb, Kind::Stapes, 17.0 * 1024.0);
        r.add_figure(Fig::RssKb, Kind::Incus, 70.0 * 1024.0);
        r
    }

    fn info() -> RunInfo {
        RunInfo {
            sides: Kind::ALL
                .iter()
                .map(|k| (*k, format!("{}: test", k.name())))
                .collect(),
            figures: vec![Fig::RssKb, Fig::ReadyMs],
            ..RunInfo::default()
        }
    }

    #[test]
    fn t10_sides_ratios_and_targets_in_one_report() {
        let (text, misses) = render(&info(), &results(), &crate::targets::single());
        assert!(text.contains("stapes vs incus vs ceiling"), "{text}");
        assert!(text.contains("5.50x"), "stapes / incus: {text}");
        assert!(text.contains("0.61x"), "stapes / ceiling: {text}");
        assert!(
            text.contains("PASS  GET /1.0 TLS keep-alive c=1 req/s: stapes 11001 >= 5 x incus 2001"),
            "{text}"
        );
        assert!(
            text.contains("MISS  GET /1.0 TLS keep-alive c=1 req/s: stapes 11001 >= 0.7 x ceiling 18001"),
            "{text}"
        );
        assert!(
            text.contains("PASS  RSS after load: stapes 17.000 MB <= 0.25 x incus 70.000 MB"),
            "{text}"
        );
        assert!(
            !text.contains("start-to-ready"),
            "not measured, not shown: {text}"
        );
        assert_eq!(misses, 1, "{text}");
    }

    #[test]
    fn t10_without_the_ceiling_its_column_and_targets_are_absent() {
        let mut i = info();
        i.sides.retain(|(k, _)| *k != Kind::Ceiling);
        let (text, misses) = render(&i, &results(), &crate::targets::single());
        assert!(!text.contains("ceiling"), "{text}");
        assert_eq!(misses, 0, "{text}");
    }

    #[test]
    fn t10_failover_lines_and_verdict() {
        let rows = vec![
            FailoverRow {
                mode: "refuse".into(),
                client: "stapes".into(),
                times: vec![0.06, 0.05, 0.09],
                failures: 0,
                pass: Some(true),
            },
            FailoverRow {
                mode: "hang".into(),
                client: "stapes".into(),
                times: vec![0.3, 0.6],
                failures: 0,
                pass: Some(false),
            },
        ];
        let (text, misses) = failover(&[], &rows);
        assert!(
            text.contains("refuse    stapes     n=3   p50=  0.060 s  p99=  0.090 s"),
            "{text}"
        );
        assert!(text.contains("TARGET: MISS (1 sick-mode stapes rows)"), "{text}");
        assert_eq!(misses, 1);
    }
}
