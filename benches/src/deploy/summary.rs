//! Scenario 7's table rows and details: save → served percentiles per
//! variant and tool, build and deploy shares, and the notes.

use super::*;

fn ms_fig(v: f64) -> Figure {
    Figure::new(v, "ms", human_ms(v))
}

fn pct(v: &[f64], p: f64) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (!s.is_empty()).then(|| percentile(&s, p))
}

/// Rows and details.
pub(super) fn summarize(cfg: &Config, out: &Outcome, results: &mut Results) {
    let s = Scenario::Deploy.key();
    let mut rows = Vec::new();
    let mut details = serde_json::Map::new();
    for run in &out.variants {
        let v = run.variant;
        let manual_served: Vec<f64> = run.manual.iter().map(|m| m.served_ms).collect();
        let manual_build: Vec<f64> = run.manual.iter().map(|m| m.build_ms).collect();
        let manual_median = |f: fn(&ManualEdit) -> f64| {
            (!run.manual.is_empty()).then(|| median(&run.manual.iter().map(f).collect::<Vec<_>>()))
        };
        let served: Vec<f64> = run.edits.iter().map(|e| e.served_ms).collect();
        let deploy: Vec<f64> = run.edits.iter().filter_map(|e| e.deploy_ms).collect();
        let build: Vec<f64> = run.edits.iter().filter_map(|e| e.build_ms).collect();
        let revert: Vec<f64> = run.reverts.iter().map(|e| e.served_ms).collect();
        let revert_deploy: Vec<f64> = run.reverts.iter().filter_map(|e| e.deploy_ms).collect();
        let n = format!(
            "devd n = {}, manual n = {}",
            served.len(),
            manual_served.len()
        );
        for (label, p) in [("p50", 50.0), ("p95", 95.0)] {
            rows.push(Row::new(
                s,
                format!(
                    "{label} save → new content served at the stable URL ({}; {n})",
                    v.label()
                ),
                pct(&served, p).map(ms_fig),
                BASELINE,
                pct(&manual_served, p).map(ms_fig),
                false,
            ));
        }
        let of =
            |f: fn(&Edit) -> Option<f64>| -> Vec<f64> { run.edits.iter().filter_map(f).collect() };
        rows.push(Row::new(
            s,
            format!(
                "p50 devd's own figure: applied on the receiver → deployed (last_deploy_ms; {})",
                v.name()
            ),
            pct(&deploy, 50.0).map(ms_fig),
            "—",
            None,
            false,
        ));
        rows.push(Row::new(
            s,
            format!(
                "p50 of which save → applied: noticed, synced over QUIC, applied \
                 (served − last_deploy_ms; {})",
                v.name()
            ),
            pct(&of(Edit::to_applied_ms), 50.0).map(ms_fig),
            "— (the manual loop builds from the laptop's files)",
            None,
            false,
        ));
        rows.push(Row::new(
            s,
            format!(
                "p50 of which the image build as devd reports it (last_build_ms: buildah bud \
                 --layers + {}; {})",
                match v {
                    Variant::Embedded => "digest lookup",
                    Variant::Registry => "push",
                },
                v.name()
            ),
            pct(&build, 50.0).map(ms_fig),
            "buildah bud --isolation chroot alone (manual loop)",
            pct(&manual_build, 50.0).map(ms_fig),
            false,
        ));
        rows.push(Row::new(
            s,
            format!(
                "p50 of which buildah bud alone (receiver log; {})",
                v.name()
            ),
            pct(&of(|e| e.bud_ms), 50.0).map(ms_fig),
            "buildah bud --isolation chroot alone (manual loop)",
            pct(&manual_build, 50.0).map(ms_fig),
            false,
        ));
        let manual_after: Vec<f64> = run
            .manual
            .iter()
            .map(|m| m.served_ms - m.build_ms)
            .collect();
        rows.push(Row::new(
            s,
            format!(
                "p50 of which image built → new container serving (receiver log: podman run, \
                 wait until it accepts, proxy switch; {})",
                v.name()
            ),
            pct(&of(|e| e.start_ms), 50.0).map(ms_fig),
            "podman rm -f -t 0 + podman run -d -p + until served (manual loop)",
            pct(&manual_after, 50.0).map(ms_fig),
            false,
        ));
        let down: Vec<f64> = run.edits.iter().map(|e| e.unavailable_ms).collect();
        let manual_down: Vec<f64> = run.manual.iter().map(|m| m.unavailable_ms).collect();
        rows.push(Row::new(
            s,
            format!(
                "p50 time the URL answered nothing during the redeploy (polled every {} ms; \
                 devd max {}; {})",
                POLL.as_millis(),
                pct(&down, 100.0).map_or("—".into(), human_ms),
                v.name()
            ),
            pct(&down, 50.0).map(ms_fig),
            "the manual loop (down from podman rm until the new container serves)",
            pct(&manual_down, 50.0).map(ms_fig),
            false,
        ));
        let real = pct(&served, 50.0);
        let reuse = pct(&revert, 50.0);
        let saved = real.zip(reuse).map(|(a, b)| a - b);
        rows.push(Row::new(
            s,
            format!(
                "p50 reuse hit: write back an earlier edit's content, its image exists → served \
                 (n = {}; {}){}",
                revert.len(),
                v.name(),
                saved.map_or(String::new(), |d| format!(
                    "; saves {} per save",
                    human_ms(d)
                ))
            ),
            reuse.map(ms_fig),
            "devd, a new content with a real build (p50 above)",
            real.map(ms_fig),
            false,
        ));
        rows.push(Row::new(
            s,
            format!("p50 reuse hit → served ({})", v.name()),
            reuse.map(ms_fig),
            &format!("{BASELINE} (it rebuilds every time)"),
            pct(&manual_served, 50.0).map(ms_fig),
            false,
        ));
        if let Some(st) = run.startup_ms {
            rows.push(Row::new(
                s,
                format!(
                    "`devd start` → all 3 demo services built and deployed (base image present; {})",
                    v.name()
                ),
                Some(ms_fig(st)),
                "—",
                None,
                false,
            ));
        }
        details.insert(
            v.name().into(),
            json!({
                "label": v.label(),
                "startup_ms": run.startup_ms,
                "served_ms": served,
                "last_deploy_ms": deploy,
                "last_build_ms": build,
                "revert_served_ms": revert,
                "revert_last_deploy_ms": revert_deploy,
                "saved_per_reuse_ms": saved,
                "reuse_speedup": real.zip(reuse).map(|(a, b)| a / b),
                "warmup": run.warmup,
                "edits": run.edits,
                "reverts": run.reverts,
                "loadavg_start_end": run.loadavg,
                "manual": {
                    "commands": ["buildah bud --isolation chroot -t IMG ctx",
                                 "podman rm -f -t 0 OLD",
                                 "podman run -d --name NEW -p 127.0.0.1:PORT:8080 IMG"],
                    "served_ms": manual_served,
                    "build_ms": manual_build,
                    "median_rm_ms": manual_median(|m| m.rm_ms),
                    "median_run_ms": manual_median(|m| m.run_ms),
                    "warmup": run.manual_warmup,
                    "edits": run.manual,
                },
            }),
        );
    }
    details.insert(
        "settings".into(),
        json!({"edits": cfg.deploy_edits, "reverts": cfg.deploy_reverts,
               "registry_variant": cfg.deploy_registry, "poll_ms": ms(POLL),
               "warmup_edits_per_tool": 1}),
    );
    results
        .details
        .insert("deploy".into(), Value::Object(details));
    results.rows.extend(rows);
}
