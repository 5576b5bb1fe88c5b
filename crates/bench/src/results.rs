//! What a run measured: the samples of every case, per side and round, and the figures
//! that are not cases (memory, start-up, formation, leader loss). The report and the
//! targets read medians from here.

use std::collections::BTreeMap;

use crate::lab::Kind;
use crate::stats;

/// One thing a case measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    pub name: &'static str,
    pub unit: &'static str,
    /// Decimal places shown.
    pub decimals: usize,
}

/// What one run of a case against one side gave: a value per metric of the case, and
/// how many answers were not the expected one.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub values: Vec<f64>,
    pub unexpected: u64,
}

/// One case at one variant (a concurrency): its samples, per side, in round order.
#[derive(Debug, Clone)]
pub struct Row {
    pub case: &'static str,
    pub label: &'static str,
    pub variant: String,
    pub metrics: &'static [Metric],
    pub samples: BTreeMap<Kind, Vec<Sample>>,
}

impl Row {
    fn values(&self, kind: Kind, metric: usize) -> Vec<f64> {
        self.samples
            .get(&kind)
            .into_iter()
            .flatten()
            .filter_map(|s| s.values.get(metric).copied())
            .collect()
    }

    /// The median of `metric` over the rounds for `kind`.
    pub fn median(&self, kind: Kind, metric: usize) -> Option<f64> {
        stats::median(&self.values(kind, metric))
    }

    pub fn range(&self, kind: Kind, metric: usize) -> Option<(f64, f64)> {
        stats::range(&self.values(kind, metric))
    }

    /// Answers that were not the expected one, over all rounds.
    pub fn unexpected(&self, kind: Kind) -> u64 {
        self.samples
            .get(&kind)
            .into_iter()
            .flatten()
            .map(|s| s.unexpected)
            .sum()
    }

    pub fn measured(&self, kind: Kind) -> bool {
        self.samples.get(&kind).is_some_and(|s| !s.is_empty())
    }

    pub fn metric_index(&self, name: &str) -> Option<usize> {
        self.metrics.iter().position(|m| m.name == name)
    }
}

/// Figures that are not cases. Stored in the unit the name says; shown in
/// [`Fig::unit`] (divided by [`Fig::scale`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fig {
    /// VmRSS after the load (single mode), kB.
    RssKb,
    /// VmHWM after the load (single mode), kB.
    HwmKb,
    /// Restart to first 200 on `GET /1.0`, ms.
    ReadyMs,
    /// First start on an empty state directory, ms.
    FirstMs,
    /// Three daemons started, bootstrapped and joined, ms.
    FormMs,
    /// Of which: all three answering, ms.
    UpMs,
    /// One join call, ms.
    JoinMs,
    /// VmRSS of each member after forming, kB.
    FormRssKb,
    /// VmRSS of each member after the load (cluster mode), kB.
    LoadRssKb,
    /// Leader SIGKILL to a successful write, ms.
    RecoverMs,
    /// Forwarded p50 minus direct p50 at c=1, ms.
    FwdOverheadMs,
}

impl Fig {
    pub fn label(self) -> &'static str {
        match self {
            Fig::RssKb => "RSS after load",
            Fig::HwmKb => "peak RSS, VmHWM",
            Fig::ReadyMs => "start-to-ready, median",
            Fig::FirstMs => "first start, empty state dir",
            Fig::FormMs => "form 3-member cluster",
            Fig::UpMs => "  of which: 3 daemons answer",
            Fig::JoinMs => "join one member",
            Fig::FormRssKb => "RSS per member after forming",
            Fig::LoadRssKb => "RSS per member after load",
            Fig::RecoverMs => "leader SIGKILL -> write OK",
            Fig::FwdOverheadMs => "forwarding overhead, p50 c=1",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Fig::RssKb | Fig::HwmKb | Fig::FormRssKb | Fig::LoadRssKb => "MB",
            _ => "ms",
        }
    }

    /// What the stored value is divided by to show it in [`Fig::unit`].
    pub fn scale(self) -> f64 {
        match self.unit() {
            "MB" => 1024.0,
            _ => 1.0,
        }
    }

    pub fn decimals(self) -> usize {
        match self {
            Fig::FwdOverheadMs => 3,
            _ => 1,
        }
    }
}

#[derive(Debug, Default)]
pub struct Results {
    pub rows: Vec<Row>,
    pub figures: BTreeMap<(Fig, Kind), Vec<f64>>,
}

impl Results {
    /// Adds the sample of `case` at `variant` for `kind` (rows keep first-seen order).
    pub fn add(&mut self, case: &dyn crate::cases::Case, variant: &str, kind: Kind, sample: Sample) {
        let i = match self
            .rows
            .iter()
            .position(|r| r.case == case.name() && r.variant == variant)
        {
            Some(i) => i,
            None => {
                self.rows.push(Row {
                    case: case.name(),
                    label: case.label(),
                    variant: variant.to_string(),
                    metrics: case.metrics(),
                    samples: BTreeMap::new(),
                });
                self.rows.len() - 1
            }
        };
        self.rows[i].samples.entry(kind).or_default().push(sample);
    }

    pub fn row(&self, case: &str, variant: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.case == case && r.variant == variant)
    }

    /// The median of `metric` of `case` at `variant` for `kind`.
    pub fn case_median(&self, case: &str, variant: &str, metric: &str, kind: Kind) -> Option<f64> {
        let row = self.row(case, variant)?;
        row.median(kind, row.metric_index(metric)?)
    }

    pub fn add_figure(&mut self, fig: Fig, kind: Kind, value: f64) {
        self.figures.entry((fig, kind)).or_default().push(value);
    }

    /// The median of a figure, in the unit it is shown in.
    pub fn figure(&self, fig: Fig, kind: Kind) -> Option<f64> {
        stats::median(self.figures.get(&(fig, kind))?).map(|v| v / fig.scale())
    }

    /// Lowest and highest value of a figure, in the unit it is shown in.
    pub fn figure_range(&self, fig: Fig, kind: Kind) -> Option<(f64, f64)> {
        stats::range(self.figures.get(&(fig, kind))?).map(|(a, b)| (a / fig.scale(), b / fig.scale()))
    }

    pub fn figure_count(&self, fig: Fig, kind: Kind) -> usize {
        self.figures.get(&(fig, kind)).map_or(0, Vec::len)
    }

    /// Derived figures: the forwarding overhead (forwarded p50 minus direct p50, c=1),
    /// for each side that ran both.
    pub fn derive(&mut self) {
        for kind in Kind::ALL {
            let fwd = self.case_median("fwd", "c=1", "p50", kind);
            let direct = self.case_median("direct", "c=1", "p50", kind);
            if let (Some(f), Some(d)) = (fwd, direct) {
                self.figures.insert((Fig::FwdOverheadMs, kind), vec![f - d]);
            }
        }
    }
}
