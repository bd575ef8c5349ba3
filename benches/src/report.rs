//! Output of a run: the table on stdout, `results.json`, `RESULTS.md`
//! (table, targets, machine, command) and `latency.svg` (edit → applied
//! latency distribution of devd next to rsync).

use crate::bench::describe_ratio;
use crate::results::Results;
use crate::util::{human_ms, percentile};
use anyhow::Context;
use std::fmt::Write as _;
use std::path::Path;

fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// The results table as markdown.
pub fn table(r: &Results) -> String {
    let mut s = String::new();
    s.push_str("| scenario | metric | devd | baseline | baseline figure | ratio |\n");
    s.push_str("|---|---|---:|---|---:|---:|\n");
    for row in &r.rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            cell(&row.scenario),
            cell(&row.metric),
            row.devd.as_ref().map_or("**missing**", |f| f.text.as_str()),
            cell(&row.baseline_name),
            row.baseline.as_ref().map_or("—", |f| f.text.as_str()),
            describe_ratio(row)
        );
    }
    s
}

/// The target checks as markdown.
pub fn targets(r: &Results) -> String {
    let mut s = String::new();
    s.push_str("| target | measured | met |\n|---|---|---|\n");
    for t in &r.targets {
        let met = match t.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not judged (quick run: the targets are for the 100k-file tree)",
        };
        let _ = writeln!(s, "| {} | {} | {met} |", cell(&t.target), cell(&t.measured));
    }
    s
}

/// `RESULTS.md`.
pub fn markdown(r: &Results, svg_name: &str) -> String {
    let m = &r.machine;
    let mut s = String::new();
    // Scenarios 1–6 run on the generated repository; 7 and 8 on the demo.
    // By the scenario's number (`10 …` is not `1 …`).
    let has = |numbers: &[&str]| {
        r.rows
            .iter()
            .any(|row| numbers.contains(&row.scenario.split(' ').next().unwrap_or_default()))
    };
    let on_repo = has(&["1", "2", "3", "4", "5", "6"]);
    let deploy = has(&["7"]);
    let live = has(&["9"]);
    let boot = has(&["8"]);
    let manifests = has(&["10"]);
    if on_repo {
        let _ = writeln!(
            s,
            "## Benchmark results ({} run: {} files of ~2 KB in {} directories, {} in all)\n",
            r.mode,
            r.repo.get("files").map_or("?".into(), |v| v.to_string()),
            r.repo.get("dirs").map_or("?".into(), |v| v.to_string()),
            r.repo
                .get("bytes")
                .and_then(|v| v.as_f64())
                .map_or("?".into(), crate::util::human_bytes),
        );
        s.push_str(
            "devd with its embedded receiver over loopback QUIC vs baselines measured in the same run \
             on the same machine. Ratio: how many times devd is better (or worse) than the baseline. \
             Every measured step ends with a check of the receiver's file contents; devd's bytes are \
             UDP payload bytes in both directions from quinn's connection stats (QUIC headers, \
             encryption and ACKs included), rsync's are its `--stats` totals.\n\n",
        );
    } else {
        let which: Vec<&str> = [
            (deploy, "scenario 7, save → deployed"),
            (boot, "scenario 8, fresh workspace boot"),
            (live, "scenario 9, save → served with live update"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        let _ = writeln!(
            s,
            "## Benchmark results ({} run: {})\n",
            r.mode,
            which.join("; ")
        );
        s.push_str(
            "Ratio: how many times devd is better (or worse) than the baseline measured in the \
             same run on the same machine.\n\n",
        );
    }
    if deploy {
        s.push_str(crate::deploy::NOTES);
        s.push_str("\n\n");
    }
    if boot {
        s.push_str(crate::boot::NOTES);
        s.push_str("\n\n");
    }
    if live {
        s.push_str(crate::live::NOTES);
        s.push_str("\n\n");
    }
    if manifests {
        s.push_str(crate::manifests::NOTES);
        s.push_str("\n\n");
    }
    s.push_str(&table(r));
    s.push('\n');
    if on_repo {
        let _ = writeln!(s, "![edit → applied latency]({svg_name})\n");
        s.push_str("### Targets (issue 5)\n\n");
        s.push_str(&targets(r));
    }
    if !r.errors.is_empty() {
        s.push_str("\n### Failures\n\n");
        for (k, v) in &r.errors {
            let _ = writeln!(s, "- {k}: {v}");
        }
    }
    s.push_str("\n### Machine\n\n");
    let _ = writeln!(s, "- cores: {} ({})", m.cores, m.cpu);
    let _ = writeln!(s, "- memory: {}", m.memory);
    let _ = writeln!(
        s,
        "- disk: {}{}",
        m.disk,
        match m.rotational {
            Some(true) => ", rotational",
            Some(false) => ", non-rotational",
            None => "",
        }
    );
    let _ = writeln!(s, "- kernel: {}; {}; {}", m.kernel, m.git, m.rsync);
    if !m.container_tools.is_empty() {
        let _ = writeln!(s, "- container tools: {}", m.container_tools);
    }
    let _ = writeln!(
        s,
        "- load average at start / end: {} / {}",
        m.loadavg_start, m.loadavg_end
    );
    let _ = writeln!(
        s,
        "- devd source: {}; binary {}",
        m.devd_commit, m.devd_binary
    );
    let _ = writeln!(s, "- run took {:.0} s\n", r.duration_s);
    s.push_str("Reproduce:\n\n```sh\n");
    let _ = writeln!(s, "cargo build --release --bins\n{}", r.command);
    s.push_str("```\n");
    s
}

/// `latency.svg`: empirical CDF of edit → applied latency, log time axis.
pub fn latency_svg(r: &Results, path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let series: Vec<(&str, Vec<f64>, RGBColor)> = [
        ("devd", RGBColor(0x1f, 0x77, 0xb4)),
        ("rsync", RGBColor(0xd6, 0x27, 0x28)),
    ]
    .into_iter()
    .filter_map(|(name, c)| {
        let mut v = r.latency_ms.get(name)?.clone();
        v.retain(|x| x.is_finite() && *x > 0.0);
        v.sort_by(f64::total_cmp);
        (!v.is_empty()).then_some((name, v, c))
    })
    .collect();
    let all: Vec<f64> = series
        .iter()
        .flat_map(|(_, v, _)| v.iter().copied())
        .collect();
    let (lo, hi) = if all.is_empty() {
        // Scenario 1 did not run: an empty chart with a sane axis.
        (1.0, 1000.0)
    } else {
        let lo = all.iter().copied().fold(f64::INFINITY, f64::min).max(0.1);
        let hi = all.iter().copied().fold(0.0, f64::max).max(lo * 10.0);
        (
            10f64.powf(lo.log10().floor()),
            10f64.powf(hi.log10().ceil()),
        )
    };
    let root = SVGBackend::new(path, (860, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let title = format!(
        "edit → applied latency, {} files (CDF; {} run)",
        r.repo
            .get("small_files")
            .map_or("?".into(), |v| v.to_string()),
        r.mode
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..1f64)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc(
            "time from the write returning to the change visible on the receiver (ms, log scale)",
        )
        .y_desc("fraction of edits")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{:.0} %", v * 100.0))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (name, v, color) in &series {
        let n = v.len() as f64;
        let mut pts = Vec::with_capacity(v.len() * 2);
        for (i, x) in v.iter().enumerate() {
            pts.push((*x, i as f64 / n));
            pts.push((*x, (i + 1) as f64 / n));
        }
        let label = format!(
            "{name}: p50 {}, p95 {}, max {} (n = {})",
            human_ms(percentile(v, 50.0)),
            human_ms(percentile(v, 95.0)),
            human_ms(percentile(v, 100.0)),
            v.len()
        );
        let c = *color;
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// Write `results.json`, `RESULTS.md` and `latency.svg` into `out`.
pub fn write_all(r: &Results, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(r)?)?;
    std::fs::write(out.join("RESULTS.md"), markdown(r, "latency.svg"))?;
    latency_svg(r, &out.join("latency.svg")).context("drawing latency.svg")?;
    Ok(())
}
