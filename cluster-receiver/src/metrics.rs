//! The receiver's Prometheus metrics, served as OpenMetrics text on
//! `GET /metrics` of the HTTP server (`build/http.rs`, which calls
//! [`encode`]; this module imports nothing of the crate).
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `devd_receiver_syncs_applied_total` | counter | `workspace` | generations applied to a worktree |
//! | `devd_receiver_received_bytes_total` | counter | `workspace` | blob bytes received from laptops, as sent (compressed, inline or chunked) |
//! | `devd_receiver_apply_duration_seconds` | histogram | `workspace` | time to apply one generation (journal, worktree, commit) |
//! | `devd_receiver_builds_total` | counter | `workspace`, `result` | builds that ended: `built`, `reused` (the image existed), `unchanged` (same context as deployed), `failed` (build or deploy) |
//! | `devd_receiver_build_duration_seconds` | histogram | `workspace` | time of the builds that produced an image |
//! | `devd_receiver_build_queue_depth` | gauge | `workspace` | services whose build is queued and not started yet (waiting for a build slot) |
//!
//! The counters live in one process-wide registry, so the code that syncs
//! and builds records with a one-line call ([`sync_applied`],
//! [`bytes_received`], [`build_event`]); the queue depth is read from the
//! pipelines when scraped ([`encode`]).

use devd_protocol::event::EventKind;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::sync::LazyLock;

/// `Content-Type` of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkspaceLabel {
    workspace: String,
}

/// How a build ended: the `result` label of `devd_receiver_builds_total`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum BuildResult {
    Built,
    /// The image existed.
    Reused,
    /// Same context as deployed.
    Unchanged,
    /// Build or deploy failed.
    Failed,
}

impl BuildResult {
    const ALL: [Self; 4] = [Self::Built, Self::Reused, Self::Unchanged, Self::Failed];

    fn as_str(self) -> &'static str {
        match self {
            Self::Built => "built",
            Self::Reused => "reused",
            Self::Unchanged => "unchanged",
            Self::Failed => "failed",
        }
    }
}

impl EncodeLabelValue for BuildResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    workspace: String,
    result: BuildResult,
}

fn ws(workspace: &str) -> WorkspaceLabel {
    WorkspaceLabel {
        workspace: workspace.to_owned(),
    }
}

fn apply_histogram() -> Histogram {
    // 1 ms … 33 s: a one-file edit applies in milliseconds, a branch
    // switch of thousands of files in seconds.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 16,
    ))
}

fn build_histogram() -> Histogram {
    Histogram::new([
        1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0,
    ])
}

struct Metrics {
    registry: Registry,
    syncs_applied: Family<WorkspaceLabel, Counter>,
    received_bytes: Family<WorkspaceLabel, Counter>,
    apply_seconds: Family<WorkspaceLabel, Histogram, fn() -> Histogram>,
    builds: Family<BuildLabels, Counter>,
    build_seconds: Family<WorkspaceLabel, Histogram, fn() -> Histogram>,
    queue_depth: Family<WorkspaceLabel, Gauge>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("devd_receiver");
    let m = Metrics {
        registry: Registry::default(),
        syncs_applied: Family::default(),
        received_bytes: Family::default(),
        apply_seconds: Family::new_with_constructor(apply_histogram as fn() -> Histogram),
        builds: Family::default(),
        build_seconds: Family::new_with_constructor(build_histogram as fn() -> Histogram),
        queue_depth: Family::default(),
    };
    registry.register(
        "syncs_applied",
        "Generations applied to a worktree",
        m.syncs_applied.clone(),
    );
    registry.register_with_unit(
        "received",
        "Blob bytes received from laptops, as sent (compressed)",
        Unit::Bytes,
        m.received_bytes.clone(),
    );
    registry.register_with_unit(
        "apply_duration",
        "Time to apply one generation to the worktree",
        Unit::Seconds,
        m.apply_seconds.clone(),
    );
    registry.register(
        "builds",
        "Builds that ended, by result (built, reused, unchanged, failed)",
        m.builds.clone(),
    );
    registry.register_with_unit(
        "build_duration",
        "Time of the builds that produced an image",
        Unit::Seconds,
        m.build_seconds.clone(),
    );
    registry.register(
        "build_queue_depth",
        "Services whose build is queued and not started yet",
        m.queue_depth.clone(),
    );
    Metrics { registry, ..m }
});

/// Create `workspace`'s series at zero, so they are scraped (and rates
/// work) before the first sync or build.
pub fn init_workspace(workspace: &str) {
    let m = &*METRICS;
    let l = ws(workspace);
    let _ = m.syncs_applied.get_or_create(&l);
    let _ = m.received_bytes.get_or_create(&l);
    let _ = m.apply_seconds.get_or_create(&l);
    let _ = m.build_seconds.get_or_create(&l);
    let _ = m.queue_depth.get_or_create(&l);
    for result in BuildResult::ALL {
        let _ = m.builds.get_or_create(&BuildLabels {
            workspace: workspace.to_owned(),
            result,
        });
    }
}

/// A generation was applied to `workspace`'s worktree in `apply_ms`.
pub fn sync_applied(workspace: &str, apply_ms: u64) {
    let m = &*METRICS;
    m.syncs_applied.get_or_create(&ws(workspace)).inc();
    m.apply_seconds
        .get_or_create(&ws(workspace))
        .observe(apply_ms as f64 / 1000.0);
}

/// `n` blob bytes arrived for `workspace`.
pub fn bytes_received(workspace: &str, n: usize) {
    METRICS
        .received_bytes
        .get_or_create(&ws(workspace))
        .inc_by(n as u64);
}

/// A build event of `workspace`: counts the builds that ended and times
/// the ones that built an image.
pub fn build_event(workspace: &str, kind: &EventKind) {
    let m = &*METRICS;
    let result = match kind {
        EventKind::Built { duration_ms, .. } => {
            m.build_seconds
                .get_or_create(&ws(workspace))
                .observe(*duration_ms as f64 / 1000.0);
            BuildResult::Built
        }
        EventKind::Reused { .. } => BuildResult::Reused,
        EventKind::Unchanged { .. } => BuildResult::Unchanged,
        EventKind::Failed { .. } => BuildResult::Failed,
        _ => return,
    };
    m.builds
        .get_or_create(&BuildLabels {
            workspace: workspace.to_owned(),
            result,
        })
        .inc();
}

/// Every metric as OpenMetrics text, with the queue depth of each
/// workspace set from `queue_depths` first.
pub fn encode<'a>(queue_depths: impl IntoIterator<Item = (&'a str, usize)>) -> String {
    let m = &*METRICS;
    for (workspace, depth) in queue_depths {
        m.queue_depth
            .get_or_create(&ws(workspace))
            .set(depth as i64);
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &m.registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `name{labels}` in `text` (labels as rendered).
    fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
        text.lines().find_map(|l| {
            l.strip_prefix(name_and_labels)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
    }

    #[test]
    fn records_syncs_bytes_builds_and_queue_depth() {
        // A workspace name no other test uses: the registry is global.
        let w = "metrics-unit-test";
        sync_applied(w, 250);
        bytes_received(w, 1000);
        bytes_received(w, 24);
        build_event(
            w,
            &EventKind::Built {
                image: "r/x@sha256:00".into(),
                duration_ms: 3_500,
            },
        );
        build_event(
            w,
            &EventKind::Failed {
                error: "boom".into(),
                log_tail: Vec::new(),
            },
        );
        build_event(w, &EventKind::Queued);
        let text = encode([(w, 3)]);
        let l = format!("{{workspace=\"{w}\"}}");
        assert_eq!(
            sample(&text, &format!("devd_receiver_syncs_applied_total{l}")),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, &format!("devd_receiver_received_bytes_total{l}")),
            Some(1024.0)
        );
        assert_eq!(
            sample(
                &text,
                &format!("devd_receiver_apply_duration_seconds_count{l}")
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                &format!("devd_receiver_apply_duration_seconds_sum{l}")
            ),
            Some(0.25)
        );
        assert_eq!(
            sample(
                &text,
                &format!("devd_receiver_builds_total{{workspace=\"{w}\",result=\"built\"}}")
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                &format!("devd_receiver_builds_total{{workspace=\"{w}\",result=\"failed\"}}")
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                &format!("devd_receiver_build_duration_seconds_sum{l}")
            ),
            Some(3.5)
        );
        assert_eq!(
            sample(&text, &format!("devd_receiver_build_queue_depth{l}")),
            Some(3.0)
        );
        assert!(text.contains("# TYPE devd_receiver_apply_duration_seconds histogram"));
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }
}
