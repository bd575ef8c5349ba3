//! Turning the measurements into table rows and target checks, and the
//! small readers they need (daemon log, pack size, `git diff | zstd`).

use super::{Bench, Scenario};
use crate::results::{Figure, Row, TargetCheck};
use crate::util::{human_bytes, human_ms, median, percentile};
use devd_testkit::git;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

const RSYNC: &str = "rsync -a --delete → rsync daemon on 127.0.0.1";

fn ms_fig(v: f64) -> Figure {
    Figure::new(v, "ms", human_ms(v))
}

fn bytes_fig(v: f64) -> Figure {
    Figure::new(v, "B", human_bytes(v))
}

fn opt(v: &[f64], f: impl Fn(&[f64]) -> f64) -> Option<f64> {
    (!v.is_empty()).then(|| f(v))
}

fn pct(v: &[f64], p: f64) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    opt(&s, |s| percentile(s, p))
}

/// `git diff -- rel | zstd -3`, in bytes: what a tool that ships diff files
/// (a patch per change, compressed) would send.
pub(super) fn git_diff_zstd(repo: &Path, rel: &str) -> anyhow::Result<f64> {
    let diff = git(repo, &["diff", "--", rel])?;
    Ok(zstd::encode_all(diff.as_bytes(), 3)?.len() as f64)
}

/// Total size of the files under `dir`.
pub(super) fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Unix time (s) of an RFC 3339 UTC timestamp `YYYY-MM-DDTHH:MM:SS.fffZ`.
pub(crate) fn parse_ts(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    let ss: f64 = t.next()?.parse().ok()?;
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + hh * 3600.0 + mm * 60.0 + ss)
}

pub(crate) fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            for c in it.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The `ms=N` field of a log line.
pub(crate) fn ms_field(line: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("ms="))
        .and_then(|v| v.parse().ok())
}

/// Milliseconds from `since` to the first log line containing each marker,
/// and the `ms=` durations the receiver logs for its fetch and apply.
pub(super) fn log_breakdown(log: &str, since: SystemTime) -> Value {
    let t0 = since
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let markers = [
        ("daemon_running", "devd running"),
        ("base_resolved", "sync base"),
        ("receiver_fetching_base", "fetching base commit"),
        ("receiver_fetched_base", "fetched base commit"),
        ("receiver_applied", " applied"),
        ("daemon_synced", " synced"),
    ];
    let durations = [
        ("receiver_fetch_ms", "fetched base commit"),
        ("receiver_apply_ms", " applied"),
    ];
    let mut out = serde_json::Map::new();
    for line in log.lines().map(strip_ansi) {
        let Some(ts) = line.split_whitespace().next().and_then(parse_ts) else {
            continue;
        };
        if ts < t0 - 1.0 {
            continue;
        }
        for (k, m) in markers {
            if !out.contains_key(k) && line.contains(m) {
                out.insert(k.into(), json!(((ts - t0) * 1000.0).round()));
            }
        }
        for (k, m) in durations {
            if !out.contains_key(k)
                && line.contains(m)
                && let Some(v) = ms_field(&line)
            {
                out.insert(k.into(), json!(v));
            }
        }
    }
    Value::Object(out)
}

fn ratio_text(r: f64, better: &str, worse: &str) -> String {
    let f = |x: f64| {
        if x >= 10.0 {
            format!("{x:.0}")
        } else {
            format!("{x:.1}")
        }
    };
    if r >= 1.0 {
        format!("{}× {better}", f(r))
    } else {
        format!("{}× {worse}", f(1.0 / r))
    }
}

/// How a row's ratio reads: `26× faster`, `1500× fewer`, `3.2× slower`.
pub fn describe_ratio(row: &Row) -> String {
    let Some(r) = row.ratio else {
        return "—".into();
    };
    if r.is_infinite() {
        return "∞ (devd: 0)".into();
    }
    let unit = row.devd.as_ref().map_or("", |f| f.unit.as_str());
    match unit {
        "ms" | "MB/s" => ratio_text(r, "faster", "slower"),
        "B" => ratio_text(r, "fewer", "more"),
        _ => ratio_text(r, "less", "more"),
    }
}

impl Bench {
    /// Fill `results.rows`, `results.targets`, details and chart samples.
    pub(super) fn summarize(&mut self) {
        let m = &self.m;
        let cfg = &self.cfg;
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        let tree = format!("{}-file tree", cfg.files);

        if self.on(Scenario::Latency) {
            let s = Scenario::Latency.key();
            let n = format!(
                "devd n = {}, rsync n = {}",
                m.lat_devd.ms.len(),
                m.lat_rsync.ms.len()
            );
            for (label, p) in [("p50", 50.0), ("p95", 95.0), ("max", 100.0)] {
                rows.push(Row::new(
                    s,
                    format!("{label} write → visible in the receiver's file ({n})"),
                    pct(&m.lat_devd.ms, p).map(ms_fig),
                    RSYNC,
                    pct(&m.lat_rsync.ms, p).map(ms_fig),
                    false,
                ));
            }
            let p50 = pct(&m.lat_devd.ms, 50.0);
            let p95 = pct(&m.lat_devd.ms, 95.0);
            let r50 = pct(&m.lat_rsync.ms, 50.0);
            targets.push(TargetCheck {
                target: format!("edit→applied p50 ≤ 50 ms ({tree})"),
                measured: p50.map_or("—".into(), human_ms),
                met: p50.map(|v| v <= 50.0),
            });
            targets.push(TargetCheck {
                target: format!("edit→applied p95 ≤ 150 ms ({tree})"),
                measured: p95.map_or("—".into(), human_ms),
                met: p95.map(|v| v <= 150.0),
            });
            let ratio = p50.zip(r50).map(|(d, r)| r / d);
            targets.push(TargetCheck {
                target: "≥ 20× faster than rsync per edit (p50)".into(),
                measured: ratio.map_or("—".into(), |r| format!("{r:.1}×")),
                met: ratio.map(|r| r >= 20.0),
            });
            self.results
                .latency_ms
                .insert("devd".into(), m.lat_devd.ms.clone());
            self.results
                .latency_ms
                .insert("rsync".into(), m.lat_rsync.ms.clone());
        }

        if self.on(Scenario::Bytes) {
            let s = Scenario::Bytes.key();
            let small = opt(&m.bytes_devd_small, median);
            let big = opt(&m.bytes_devd_big, median);
            let zd = "git diff | zstd -3 (a compressed patch per change)";
            rows.push(Row::new(
                s,
                format!(
                    "one-line edit in a 2 KB file, both directions (median, devd n = {}, rsync n = {})",
                    m.bytes_devd_small.len(),
                    m.bytes_rsync_small.len()
                ),
                small.map(bytes_fig),
                &format!("{RSYNC}, --stats sent + received"),
                opt(&m.bytes_rsync_small, median).map(bytes_fig),
                false,
            ));
            rows.push(Row::new(
                s,
                "one-line edit in a 2 KB file",
                small.map(bytes_fig),
                zd,
                opt(&m.gitdiff_small, median).map(bytes_fig),
                false,
            ));
            rows.push(Row::new(
                s,
                format!(
                    "one-line edit in a 1 MB file, both directions (median, devd n = {}, rsync n = {})",
                    m.bytes_devd_big.len(),
                    m.bytes_rsync_big.len()
                ),
                big.map(bytes_fig),
                &format!("{RSYNC}, --stats sent + received"),
                opt(&m.bytes_rsync_big, median).map(bytes_fig),
                false,
            ));
            rows.push(Row::new(
                s,
                "one-line edit in a 1 MB file",
                big.map(bytes_fig),
                zd,
                opt(&m.gitdiff_big, median).map(bytes_fig),
                false,
            ));
            targets.push(TargetCheck {
                target: "≤ 2 KB on the wire for a one-line edit in a 1 MB file".into(),
                measured: big.map_or("—".into(), human_bytes),
                met: big.map(|b| b <= 2048.0),
            });
            let ratio = small
                .zip(opt(&m.bytes_rsync_small, median))
                .map(|(d, r)| r / d);
            targets.push(TargetCheck {
                target: format!("≥ 1000× fewer bytes than rsync per single-file edit ({tree})"),
                measured: ratio.map_or("—".into(), |r| format!("{r:.0}×")),
                met: ratio.map(|r| r >= 1000.0),
            });
            self.results.details.insert(
                "bytes".into(),
                json!({"devd_small": m.bytes_devd_small, "devd_big": m.bytes_devd_big,
                       "rsync_small": m.bytes_rsync_small, "rsync_big": m.bytes_rsync_big,
                       "git_diff_zstd_small": m.gitdiff_small, "git_diff_zstd_big": m.gitdiff_big}),
            );
        }

        if self.on(Scenario::ColdStart) {
            let s = Scenario::ColdStart.key();
            let metric = format!(
                "`devd start` → first acknowledged sync ({} files modified, receiver empty)",
                cfg.cold_modified
            );
            rows.push(Row::new(
                s,
                metric.clone(),
                m.cold_ms.map(ms_fig),
                "git status -uall (median of 3, warm cache)",
                m.git_status_ms.map(ms_fig),
                false,
            ));
            rows.push(Row::new(
                s,
                metric,
                m.cold_ms.map(ms_fig),
                &format!("{RSYNC}: initial copy"),
                m.rsync_initial
                    .map(|r| ms_fig(r.elapsed.as_secs_f64() * 1000.0)),
                false,
            ));
            rows.push(Row::new(
                s,
                "bytes from the laptop",
                m.cold_bytes.map(bytes_fig),
                &format!("{RSYNC}: initial copy"),
                m.rsync_initial.map(|r| bytes_fig(r.bytes() as f64)),
                false,
            ));
            rows.push(Row::new(
                s,
                "receiver's shallow fetch of the base from origin (datacenter traffic, not the laptop's)",
                m.receiver_pack_bytes.map(bytes_fig),
                "—",
                None,
                false,
            ));
            let b = &m.cold_breakdown["log_ms_since_start"];
            let scan = m.cold_breakdown["last_scan"]["ms"].as_f64();
            let fetch = b["receiver_fetch_ms"].as_f64();
            let checkout = b["receiver_applied"]
                .as_f64()
                .zip(b["receiver_fetched_base"].as_f64())
                .map(|(a, f)| a - f);
            rows.push(Row::new(
                s,
                "of which: the daemon's full scan of the worktree (status last_scan.ms)",
                scan.map(ms_fig),
                "git status -uall",
                m.git_status_ms.map(ms_fig),
                false,
            ));
            rows.push(Row::new(
                s,
                "of which: the receiver's shallow fetch of the base (datacenter)",
                fetch.map(ms_fig),
                "git fetch --depth 1 of the same commit from the same origin",
                m.git_fetch_ms.map(ms_fig),
                false,
            ));
            rows.push(Row::new(
                s,
                "of which: the receiver's checkout of the base + overlay (fetched → applied, daemon log)",
                checkout.map(ms_fig),
                "git checkout of the same commit into an empty worktree",
                m.git_checkout_ms.map(ms_fig),
                false,
            ));
            let budget = m.git_status_ms.zip(fetch).map(|(g, t)| 1.5 * g + t);
            targets.push(TargetCheck {
                target: "cold start ≤ 1.5 × git status -uall + transfer time (transfer = the receiver's base fetch)".into(),
                measured: match (m.cold_ms, budget, m.git_status_ms, fetch) {
                    (Some(c), Some(b), Some(g), Some(t)) => format!(
                        "{} vs budget {} (1.5 × {} + {}); the receiver's checkout alone took {}",
                        human_ms(c),
                        human_ms(b),
                        human_ms(g),
                        human_ms(t),
                        checkout.map_or("?".into(), human_ms)
                    ),
                    (Some(c), ..) => format!("{} (no fetch time in the daemon log)", human_ms(c)),
                    _ => "—".into(),
                },
                met: m.cold_ms.zip(budget).map(|(c, b)| c <= b),
            });
            self.results.details.insert(
                "cold_start".into(),
                json!({"breakdown": m.cold_breakdown, "git_status_ms": m.git_status_ms,
                       "git_fetch_ms": m.git_fetch_ms, "git_checkout_ms": m.git_checkout_ms,
                       "rsync_initial_ms": m.rsync_initial.map(|r| r.elapsed.as_secs_f64() * 1000.0),
                       "rsync_initial_bytes": m.rsync_initial.map(|r| r.bytes()),
                       "receiver_objects_bytes": m.receiver_pack_bytes}),
            );
        }

        if self.on(Scenario::Idle) {
            let s = Scenario::Idle.key();
            let pct_fig = |v: f64| Figure::new(v, "%", format!("{v:.3} % of one core"));
            rows.push(Row::new(
                s,
                format!(
                    "daemon CPU (utime + stime) over {} s idle, watching the {tree}",
                    cfg.idle.as_secs()
                ),
                m.idle_cpu_pct.map(pct_fig),
                "polling: git status -uall every 10 s (Mutagen's Linux poll interval)",
                m.idle_poll_cpu_pct.map(pct_fig),
                false,
            ));
            rows.push(Row::new(
                s,
                format!(
                    "daemon RSS (VmRSS, embedded receiver included; anon {}, file-backed {})",
                    m.idle_rss_anon.map_or("?".into(), human_bytes),
                    m.idle_rss_file.map_or("?".into(), human_bytes)
                ),
                m.idle_rss.map(bytes_fig),
                "—",
                None,
                false,
            ));
            targets.push(TargetCheck {
                target: format!("idle CPU ≤ 0.5 % of one core ({tree})"),
                measured: m.idle_cpu_pct.map_or("—".into(), |v| format!("{v:.3} %")),
                met: m.idle_cpu_pct.map(|v| v <= 0.5),
            });
            targets.push(TargetCheck {
                target: format!("RSS ≤ 100 MB ({tree})"),
                measured: m.idle_rss.map_or("—".into(), human_bytes),
                met: m.idle_rss.map(|v| v <= 100e6),
            });
        }

        if self.on(Scenario::Bulk) {
            let s = Scenario::Bulk.key();
            let total = (cfg.bulk_files * cfg.bulk_file_bytes) as f64;
            let what = format!(
                "{} files × {} rewritten at once",
                cfg.bulk_files,
                human_bytes(cfg.bulk_file_bytes as f64)
            );
            let rs = m.bulk_rsync.map(|r| r.elapsed.as_secs_f64() * 1000.0);
            rows.push(Row::new(
                s,
                format!("{what}: last write → all applied"),
                m.bulk_devd_ms.map(ms_fig),
                RSYNC,
                rs.map(ms_fig),
                false,
            ));
            let mbs = |ms: f64| {
                let v = total / 1e6 / (ms / 1000.0);
                Figure::new(v, "MB/s", format!("{v:.0} MB/s"))
            };
            rows.push(Row::new(
                s,
                format!("{what}: effective throughput"),
                m.bulk_devd_ms.map(mbs),
                RSYNC,
                rs.map(mbs),
                true,
            ));
            self.results.details.insert(
                "bulk".into(),
                json!({"bytes": total, "devd_ms_after_last_write": m.bulk_devd_ms,
                       "devd_ms_after_first_write": m.bulk_devd_from_first_ms,
                       "write_burst_ms": m.bulk_write_ms,
                       "rsync_ms": rs, "rsync_bytes": m.bulk_rsync.map(|r| r.bytes())}),
            );
        }

        if self.on(Scenario::Churn) {
            let s = Scenario::Churn.key();
            for (k, what) in ["main → feature", "feature → main"].iter().enumerate() {
                rows.push(Row::new(
                    s,
                    format!(
                        "git checkout {what} ({} paths differ): checkout returned → all applied",
                        cfg.churn_files
                    ),
                    m.churn_devd_ms[k].map(ms_fig),
                    RSYNC,
                    m.churn_rsync[k].map(|r| ms_fig(r.elapsed.as_secs_f64() * 1000.0)),
                    false,
                ));
            }
            self.results.details.insert(
                "churn".into(),
                json!({"devd_ms": m.churn_devd_ms, "checkout_ms": m.churn_checkout_ms,
                       "rsync_ms": m.churn_rsync.map(|r| r.map(|r| r.elapsed.as_secs_f64() * 1000.0)),
                       "rsync_bytes": m.churn_rsync.map(|r| r.map(|r| r.bytes()))}),
            );
        }
        if cfg.quick {
            // The targets are stated for the 100k-file tree.
            for t in &mut targets {
                t.met = None;
            }
        }
        self.results.rows = rows;
        self.results.targets = targets;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_breakdown() {
        assert_eq!(parse_ts("1970-01-01T00:00:01.5Z"), Some(1.5));
        assert_eq!(parse_ts("2000-03-01T00:00:00Z"), Some(951_868_800.0));
        let since = UNIX_EPOCH + std::time::Duration::from_secs(951_868_800);
        let log = "2000-03-01T00:00:00.250000Z  INFO devd: devd running workdir=/x\n\
                   2000-03-01T00:00:00.500000Z  INFO devd_receiver::git_store: fetched base commit commit=ab objects=3 ms=240\n\
                   \u{1b}[2m2000-03-01T00:00:01.000000Z\u{1b}[0m  INFO devd_receiver: applied generation=1 files=2 ms=400\n";
        let b = log_breakdown(log, since);
        assert_eq!(b["daemon_running"], json!(250.0));
        assert_eq!(b["receiver_fetched_base"], json!(500.0));
        assert_eq!(b["receiver_applied"], json!(1000.0));
        assert_eq!(b["receiver_fetch_ms"], json!(240.0));
        assert_eq!(b["receiver_apply_ms"], json!(400.0));
    }

    #[test]
    fn ratios_read_naturally() {
        let r = Row::new(
            "x",
            "m",
            Some(ms_fig(50.0)),
            "b",
            Some(ms_fig(1300.0)),
            false,
        );
        assert_eq!(describe_ratio(&r), "26× faster");
        let r = Row::new(
            "x",
            "m",
            Some(ms_fig(400.0)),
            "b",
            Some(ms_fig(100.0)),
            false,
        );
        assert_eq!(describe_ratio(&r), "4.0× slower");
        let r = Row::new("x", "m", Some(bytes_fig(2.0)), "b", None, false);
        assert_eq!(describe_ratio(&r), "—");
    }
}
