//! One service's build events read back from the receiver's log: when each
//! generation was queued, started (after the context snapshot), built or
//! reused, and deployed, and how long `buildah bud` alone took — so that
//! scenario 7 can say where devd's save → deployed time goes.

use crate::bench::{ms_field, parse_ts, strip_ansi};
use std::collections::BTreeMap;

/// Unix times (s) of one generation's steps.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Steps {
    pub(super) queued: Option<f64>,
    pub(super) started: Option<f64>,
    /// The local backend's `built … ms=` line: end and duration of `buildah bud`.
    pub(super) bud_end: Option<f64>,
    pub(super) bud_ms: Option<f64>,
    /// `Built` or `Reused`.
    pub(super) built: Option<f64>,
    pub(super) deployed: Option<f64>,
}

fn between(from: Option<f64>, to: Option<f64>) -> Option<f64> {
    Some((to? - from?) * 1000.0)
}

impl Steps {
    /// Queued → Started: the context snapshot and its digest.
    pub(super) fn snapshot_ms(&self) -> Option<f64> {
        between(self.queued, self.started)
    }

    /// `buildah bud` finished → Built: the digest lookup, or the push.
    pub(super) fn after_bud_ms(&self) -> Option<f64> {
        between(self.bud_end, self.built)
    }

    /// Built (or Reused) → Deployed: new container, wait until it accepts
    /// connections, proxy switch.
    pub(super) fn start_ms(&self) -> Option<f64> {
        between(self.built, self.deployed)
    }
}

/// `key=<u64>` in a log line.
fn u64_field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|v| v.parse().ok())
}

/// The steps of `service` per generation.
pub(super) fn read(log: &str, service: &str) -> BTreeMap<u64, Steps> {
    let tag = format!("service={service} ");
    let mut out: BTreeMap<u64, Steps> = BTreeMap::new();
    let mut last_bud = None;
    for line in log.lines().map(strip_ansi) {
        if !line.contains(&tag) {
            continue;
        }
        let Some(ts) = line.split_whitespace().next().and_then(parse_ts) else {
            continue;
        };
        if line.contains("backend::local: built ") {
            last_bud = ms_field(&line).map(|ms| (ts, ms));
            continue;
        }
        let (Some(generation), Some((_, event))) =
            (u64_field(&line, "generation="), line.split_once(" event="))
        else {
            continue;
        };
        let s = out.entry(generation).or_default();
        if event.starts_with("Queued") {
            s.queued.get_or_insert(ts);
        } else if event.starts_with("Started") {
            s.started = Some(ts);
        } else if event.starts_with("Built") {
            s.built = Some(ts);
            if let Some((end, ms)) = last_bud.take() {
                s.bud_end = Some(end);
                s.bud_ms = Some(ms);
            }
        } else if event.starts_with("Reused") {
            s.built = Some(ts);
        } else if event.starts_with("Deployed") {
            s.deployed = Some(ts);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_build_and_a_reuse() {
        let log = "\
2026-01-01T00:00:01.000Z  INFO devd_receiver::build::pipeline: build event workspace=local service=web generation=4 event=Queued
2026-01-01T00:00:01.002Z  INFO devd_receiver::build::pipeline: build event workspace=local service=web generation=4 event=Started { context: \"57\", tag: \"devd-57\" }
2026-01-01T00:00:01.002Z  INFO devd_receiver::build::pipeline: build event workspace=local service=api generation=4 event=Queued
2026-01-01T00:00:01.400Z  INFO devd_receiver::build::backend::local: built service=web reference=localhost/demo/web:devd-57 ms=390
2026-01-01T00:00:01.460Z  INFO devd_receiver::build::pipeline: build event workspace=local service=web generation=4 event=Built { image: \"x\", duration_ms: 458 }
2026-01-01T00:00:02.000Z  INFO devd_receiver::build::pipeline: build event workspace=local service=web generation=4 event=Deployed { image: \"x\", url: None, total_ms: 1000 }
\u{1b}[2m2026-01-01T00:00:03.000Z\u{1b}[0m  INFO devd_receiver::build::pipeline: build event workspace=local service=web generation=5 event=Queued
2026-01-01T00:00:03.001Z  INFO devd_receiver::build::pipeline: build event workspace=local service=web generation=5 event=Started { context: \"c1\", tag: \"devd-c1\" }
2026-01-01T00:00:03.040Z  INFO devd_receiver::build::pipeline: build event workspace=local service=web generation=5 event=Reused { context: \"c1\", image: \"y\" }
2026-01-01T00:00:03.440Z  INFO devd_receiver::build::pipeline: build event workspace=local service=web generation=5 event=Deployed { image: \"y\", url: None, total_ms: 440 }
";
        let t = read(log, "web");
        assert_eq!(t.len(), 2);
        let b = &t[&4];
        let close = |a: Option<f64>, b: f64| (a.unwrap() - b).abs() < 0.01;
        assert!(close(b.snapshot_ms(), 2.0));
        assert_eq!(b.bud_ms, Some(390.0));
        assert!(close(b.after_bud_ms(), 60.0));
        assert!(close(b.start_ms(), 540.0));
        let r = &t[&5];
        assert_eq!(r.bud_ms, None);
        assert!(close(r.start_ms(), 400.0));
        assert!(close(r.snapshot_ms(), 1.0));
    }
}
