//! What a run produces: rows of the table (devd figure, baseline figure,
//! ratio), the checks against devd's performance targets, the raw samples, and
//! the machine it ran on. Serialized as `results.json`.

use serde::Serialize;
use std::collections::BTreeMap;

/// One figure: a number, its unit, and how it reads in the table.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    pub value: f64,
    pub unit: String,
    pub text: String,
}

impl Figure {
    /// A figure with its display text.
    pub fn new(value: f64, unit: &str, text: impl Into<String>) -> Self {
        Self {
            value,
            unit: unit.into(),
            text: text.into(),
        }
    }
}

/// One row of the results table.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Scenario number and name, e.g. `1 edit → applied`.
    pub scenario: String,
    /// What is measured, e.g. `p50 (n = 200 / 20)`.
    pub metric: String,
    pub devd: Option<Figure>,
    /// Name of the baseline, e.g. `rsync -a --delete (daemon)`.
    pub baseline_name: String,
    pub baseline: Option<Figure>,
    /// How many times devd is better (> 1) or worse (< 1) than the baseline;
    /// infinite (`null` in JSON) when devd's figure is 0.
    pub ratio: Option<f64>,
}

impl Row {
    /// A row; `higher_is_better` selects how the ratio is formed.
    pub fn new(
        scenario: &str,
        metric: impl Into<String>,
        devd: Option<Figure>,
        baseline_name: &str,
        baseline: Option<Figure>,
        higher_is_better: bool,
    ) -> Self {
        let ratio = match (&devd, &baseline) {
            (Some(d), Some(b)) if d.value > 0.0 && b.value > 0.0 => Some(if higher_is_better {
                d.value / b.value
            } else {
                b.value / d.value
            }),
            // Below the measurement's resolution (e.g. no CPU tick at all).
            (Some(d), Some(b)) if d.value == 0.0 && b.value > 0.0 && !higher_is_better => {
                Some(f64::INFINITY)
            }
            _ => None,
        };
        Self {
            scenario: scenario.into(),
            metric: metric.into(),
            devd,
            baseline_name: baseline_name.into(),
            baseline,
            ratio,
        }
    }
}

/// One performance target (e.g. edit → applied under 100 ms) and whether
/// this run met it.
#[derive(Clone, Debug, Serialize)]
pub struct TargetCheck {
    pub target: String,
    pub measured: String,
    /// `None`: not judged in this run (quick runs use the 1k-file tree).
    pub met: Option<bool>,
}

/// The machine a run happened on.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub memory: String,
    pub kernel: String,
    pub disk: String,
    pub rotational: Option<bool>,
    pub git: String,
    pub rsync: String,
    /// buildah, podman, runc versions (scenario 7 only).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub container_tools: String,
    pub loadavg_start: String,
    pub loadavg_end: String,
    /// `git describe --always --dirty` of the source tree at run time.
    pub devd_commit: String,
    /// The devd binary and how long before the run it was built.
    pub devd_binary: String,
}

/// A whole run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Results {
    pub mode: String,
    pub command: String,
    pub machine: Machine,
    /// Repository facts: files, dirs, bytes, generation time.
    pub repo: BTreeMap<String, serde_json::Value>,
    pub rows: Vec<Row>,
    pub targets: Vec<TargetCheck>,
    /// Per-scenario details and raw samples.
    pub details: BTreeMap<String, serde_json::Value>,
    /// Edit → applied samples in ms, for the chart.
    pub latency_ms: BTreeMap<String, Vec<f64>>,
    /// Failures: scenario → message. A non-empty map fails the run.
    pub errors: BTreeMap<String, String>,
    pub duration_s: f64,
}
