//! How `devd status` looks to a person: a header block (state, receiver,
//! base, generation, last sync, progress) and a table of the services,
//! followed by the log tail of failed ones. Pure: the caller says whether
//! to use colors and how wide the terminal is, so the output is the same
//! in tests as on a terminal.

use crate::progress::describe;
use crate::status::{DaemonState, ServiceView, Status};
use comfy_table::{Cell, Color, ContentArrangement, Table, presets};
use console::Style;
use devd_protocol::event::ServiceState;
use indicatif::HumanBytes;

/// Log lines of a failed build shown under the table.
pub const LOG_TAIL_LINES: usize = 8;
/// Characters of an error in the table (the whole one follows it).
pub const ERROR_CELL: usize = 48;

/// Rendering options.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// ANSI colors (only on a terminal, never with `NO_COLOR`).
    pub color: bool,
    /// Terminal width: long cells wrap and lines are cut to fit.
    pub width: Option<u16>,
    /// Now, in Unix milliseconds (for the age of deploys).
    pub now_ms: u64,
}

/// The colors of one rendering (no-ops without color).
struct Paint {
    color: bool,
}

impl Paint {
    fn style(&self, s: Style) -> Style {
        s.force_styling(self.color)
    }

    fn key(&self, k: &str) -> String {
        self.style(Style::new().bold())
            .apply_to(format!("{k:<11}"))
            .to_string()
    }

    fn dim(&self, t: &str) -> String {
        self.style(Style::new().dim()).apply_to(t).to_string()
    }

    fn state(&self, state: DaemonState) -> String {
        self.style(state_style(state))
            .apply_to(state.as_str())
            .to_string()
    }
}

/// The daemon's state: green when in sync, yellow while working, red
/// when it cannot sync.
fn state_style(state: DaemonState) -> Style {
    match state {
        DaemonState::Idle => Style::new().green(),
        DaemonState::Scanning | DaemonState::Syncing | DaemonState::Starting => {
            Style::new().yellow()
        }
        DaemonState::Error | DaemonState::Disconnected | DaemonState::Superseded => {
            Style::new().red().bold()
        }
    }
}

/// A service's state in the table: green deployed, yellow on its way,
/// red failed, plain pending.
fn state_color(state: ServiceState) -> Option<Color> {
    match state {
        ServiceState::Deployed => Some(Color::Green),
        ServiceState::Queued | ServiceState::Building | ServiceState::Deploying => {
            Some(Color::Yellow)
        }
        ServiceState::Failed => Some(Color::Red),
        ServiceState::Pending => None,
    }
}

/// First 12 characters of a hex digest, without `sha256:`.
pub fn short_digest(d: &str) -> String {
    d.trim_start_matches("sha256:").chars().take(12).collect()
}

/// `5s`, `3m`, `2h`, `4d`.
pub fn human_age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// How long something took, as people read it: `850 ms`, `12.3 s`, and
/// from a minute on jiff's compact form in whole seconds (`2m 5s`,
/// `1h 3m 20s`). The status table and the notifications both use it.
pub fn human_duration(ms: u64) -> String {
    use jiff::fmt::friendly::{Designator, Spacing, SpanPrinter};
    match ms {
        0..1000 => format!("{ms} ms"),
        1000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => SpanPrinter::new()
            .designator(Designator::Compact)
            .spacing(Spacing::BetweenUnits)
            .duration_to_string(&jiff::SignedDuration::from_secs((ms / 1000) as i64)),
    }
}

fn build_cell(s: &ServiceView) -> String {
    if s.live_files > 0 {
        format!(
            "live: {} file{} since image",
            s.live_files,
            if s.live_files == 1 { "" } else { "s" }
        )
    } else if s.reused {
        "reused".into()
    } else if let Some(ms) = s.last_build_ms {
        human_duration(ms)
    } else {
        "-".into()
    }
}

fn deployed_cell(s: &ServiceView, now_ms: u64) -> String {
    match s.deployed_at_ms {
        Some(t) => format!("{} ago", human_age(now_ms.saturating_sub(t))),
        // Running when this daemon started, taken over as it was.
        None if s.image.is_some() => "before this start".into(),
        None => "-".into(),
    }
}

/// The services table alone.
pub fn services_table(services: &[ServiceView], opts: &Options) -> Table {
    let mut t = Table::new();
    t.force_no_tty()
        .load_style(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(vec![
            "SERVICE", "STATE", "DIGEST", "URL", "BUILD", "DEPLOYED", "ERROR",
        ]);
    if let Some(w) = opts.width {
        t.set_width(w);
    }
    if opts.color {
        t.enforce_styling();
    }
    for s in services {
        let mut state = Cell::new(s.state.as_str());
        if opts.color
            && let Some(c) = state_color(s.state)
        {
            state = state.fg(c);
        }
        t.add_row(vec![
            Cell::new(&s.name),
            state,
            Cell::new(s.digest.as_deref().map_or("-".into(), short_digest)),
            Cell::new(s.url.as_deref().unwrap_or("-")),
            Cell::new(build_cell(s)),
            Cell::new(deployed_cell(s, opts.now_ms)),
            // The first line, cut: the whole error follows the table.
            Cell::new(
                s.error
                    .as_deref()
                    .and_then(|e| e.lines().next())
                    .map(|e| console::truncate_str(e, ERROR_CELL, "…").into_owned())
                    .unwrap_or_default(),
            ),
        ]);
    }
    t
}

/// The workloads of the repository's manifests (`[deploy]`): each with
/// its state, the devd services it runs, the URL of a Service of the same
/// name, and why it failed.
pub fn workloads_table(stack: &devd_protocol::event::StackStatus, opts: &Options) -> Table {
    let mut t = Table::new();
    t.force_no_tty()
        .load_style(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(vec!["WORKLOAD", "STATE", "RUNS", "URL", "REASON"]);
    if let Some(w) = opts.width {
        t.set_width(w);
    }
    if opts.color {
        t.enforce_styling();
    }
    for w in &stack.workloads {
        let mut state = Cell::new(&w.state);
        if opts.color {
            state = state.fg(match w.state.as_str() {
                "ready" => Color::Green,
                "failed" => Color::Red,
                _ => Color::Yellow,
            });
        }
        let name = w.key.split_once('/').map_or(w.key.as_str(), |(_, n)| n);
        let url = stack
            .urls
            .iter()
            .find(|(svc, _)| svc == name)
            .map_or("-", |(_, u)| u.as_str());
        t.add_row(vec![
            Cell::new(&w.key),
            state,
            Cell::new(if w.services.is_empty() {
                "-".to_owned()
            } else {
                w.services.join(", ")
            }),
            Cell::new(url),
            Cell::new(
                w.reason
                    .as_deref()
                    .map(|e| console::truncate_str(e, ERROR_CELL, "…").into_owned())
                    .unwrap_or_default(),
            ),
        ]);
    }
    t
}

/// `3 of 3 services up in 2.4 s · 3 reused, 0 built`.
fn describe_boot(b: &crate::status::BootStatus) -> String {
    let up = b.reused + b.built + b.running;
    let mut s = match b.ms {
        Some(ms) => format!(
            "{up} of {} service{} up in {}",
            b.services,
            if b.services == 1 { "" } else { "s" },
            human_duration(ms)
        ),
        None => format!(
            "{up} of {} service{} up so far",
            b.services,
            if b.services == 1 { "" } else { "s" }
        ),
    };
    s.push_str(&format!(" · {} reused, {} built", b.reused, b.built));
    if b.running > 0 {
        s.push_str(&format!(", {} already running", b.running));
    }
    if b.failed > 0 {
        s.push_str(&format!(", {} failed", b.failed));
    }
    s
}

/// The whole of `devd status` for a running daemon.
pub fn render(st: &Status, opts: &Options) -> String {
    let p = Paint { color: opts.color };
    let mut out: Vec<String> = Vec::new();
    let r = &st.receiver;
    out.push(format!("{}{}", p.key("state"), p.state(st.state)));
    let mut conn = if r.connected {
        p.style(Style::new().green())
            .apply_to("connected")
            .to_string()
    } else {
        p.style(Style::new().red())
            .apply_to("not connected")
            .to_string()
    };
    conn.push_str(&format!(
        " to {} · workspace {}{}",
        r.address,
        r.workspace,
        if r.embedded { " · embedded" } else { "" }
    ));
    // The embedded receiver is always QUIC on loopback: not worth a word.
    match r.transport.as_deref() {
        _ if r.embedded || !r.connected => {}
        Some("tcp") => conn.push_str(" · over TCP + TLS (UDP did not get through)"),
        Some(t) => conn.push_str(&format!(" · over {}", t.to_uppercase())),
        None => {}
    }
    out.push(format!("{}{conn}", p.key("receiver")));
    if let Some(e) = &r.last_error {
        out.push(format!(
            "{}{}",
            p.key(""),
            p.style(Style::new().red())
                .apply_to(format!("last error: {e}"))
        ));
    }
    out.push(format!("{}{}", p.key("worktree"), st.workdir));
    let base = match &st.base {
        Some(b) => format!(
            "{} ({}{})",
            &b[..12.min(b.len())],
            st.base_mode,
            st.upstream
                .as_deref()
                .map(|u| format!(
                    ", upstream {}",
                    u.strip_prefix("refs/remotes/")
                        .or_else(|| u.strip_prefix("refs/heads/"))
                        .unwrap_or(u)
                ))
                .unwrap_or_default()
        ),
        None => "-".into(),
    };
    out.push(format!("{}{base}", p.key("base")));
    if let Some(why) = &st.base_mode_reason {
        out.push(format!("{}{}", p.key(""), p.dim(why)));
    }
    out.push(format!(
        "{}{}  {}",
        p.key("generation"),
        st.generation,
        p.dim(&format!(
            "overlay {} · {}",
            st.overlay_digest
                .as_deref()
                .map_or("-".into(), short_digest),
            match st.overlay_entries {
                0 => "no path differs from the base".to_string(),
                1 => "1 path differs from the base".to_string(),
                n => format!("{n} paths differ from the base"),
            }
        ))
    ));
    let last = match &st.last_sync {
        Some(l) => format!(
            "{} file{} written on the receiver · {} sent · {} received · {}  {}",
            l.files,
            if l.files == 1 { "" } else { "s" },
            HumanBytes(l.bytes_sent),
            HumanBytes(l.bytes_received),
            human_duration(l.latency_ms),
            p.dim(&format!(
                "({} sync{}, {} sent since start)",
                st.totals.syncs,
                if st.totals.syncs == 1 { "" } else { "s" },
                HumanBytes(st.totals.bytes_sent)
            ))
        ),
        // Connected, and the receiver had this state already.
        None if st.generation > 0 => {
            "nothing to send since this start: the receiver has this state".into()
        }
        None => "none yet".into(),
    };
    out.push(format!("{}{last}", p.key("last sync")));
    if let Some(b) = &st.boot {
        out.push(format!("{}{}", p.key("boot"), describe_boot(b)));
    }
    if let Some(pr) = &st.progress {
        out.push(format!("{}{}", p.key("progress"), describe(pr)));
    }
    if !st.skipped.is_empty() {
        out.push(format!("{}{}", p.key("not synced"), st.skipped.join("; ")));
    }
    if let Some(e) = &st.last_error {
        out.push(format!("{}{}", p.key("error"), e));
    }
    if let Some(e) = &st.catalog_error {
        out.push(format!("{}{}", p.key("catalog"), e));
    }
    if let Some(w) = opts.width {
        out = out
            .into_iter()
            .map(|l| console::truncate_str(&l, w as usize, "…").into_owned())
            .collect();
    }
    out.push(String::new());
    if st.services.is_empty() {
        out.push(
            "no services: declare them in devd.toml (`devd init` proposes one from your Dockerfiles)"
                .into(),
        );
    } else {
        out.push(services_table(&st.services, opts).to_string());
    }
    if let Some(stack) = &st.stack {
        out.push(String::new());
        let mut head = format!(
            "manifests ([deploy]): {}",
            match (&stack.error, stack.applied_ms) {
                (Some(_), _) => "not applied".to_owned(),
                (None, None) => "not applied yet".to_owned(),
                (None, Some(at)) => format!(
                    "applied {} ago{}",
                    human_age(opts.now_ms.saturating_sub(at)),
                    stack
                        .total_ms
                        .map(|ms| format!(", {} from the save", human_duration(ms)))
                        .unwrap_or_default()
                ),
            }
        );
        if stack.deployed() {
            head.push_str(" · every workload ready");
        }
        out.push(head);
        if !stack.workloads.is_empty() {
            out.push(workloads_table(stack, opts).to_string());
        }
        if let Some(e) = &stack.error {
            out.push(format!(
                "{}: {e}",
                p.style(Style::new().red().bold()).apply_to("error")
            ));
        }
        for w in stack.workloads.iter().filter(|w| w.state == "failed") {
            out.push(format!(
                "{}: {}",
                p.style(Style::new().red().bold()).apply_to(&w.key),
                w.reason.as_deref().unwrap_or("not ready")
            ));
            for l in &w.log_tail[w.log_tail.len().saturating_sub(LOG_TAIL_LINES)..] {
                out.push(format!("  │ {l}"));
            }
        }
        for w in &stack.warnings {
            out.push(p.dim(&format!("warning: {w}")));
        }
    }
    for s in st
        .services
        .iter()
        .filter(|s| s.state == ServiceState::Failed)
    {
        out.push(String::new());
        let line = format!(
            "{}: {}",
            p.style(Style::new().red().bold()).apply_to(&s.name),
            s.error
                .as_deref()
                .unwrap_or("failed, without an error message")
        );
        out.push(match opts.width {
            Some(w) => console::truncate_str(&line, w as usize, "…").into_owned(),
            None => line,
        });
        let tail = &s.log_tail[s.log_tail.len().saturating_sub(LOG_TAIL_LINES)..];
        for l in tail {
            let line = format!("  │ {l}");
            out.push(match opts.width {
                Some(w) => console::truncate_str(&line, w as usize, "…").into_owned(),
                None => line,
            });
        }
        // The attempt's log holds the build's output and then the
        // deploy's, so a failed deploy's error is in it too.
        out.push(p.dim(&format!("  the whole log: devd logs {} --build", s.name)));
    }
    out.join("\n")
}

/// What `devd status` prints when no daemon runs.
pub fn not_running(workdir: &std::path::Path) -> String {
    format!(
        "devd is not running for {}\nstart it with `devd start` (or `devd start --wait` to wait for the first sync)",
        workdir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{BaseMode, ReceiverStatus};
    use crate::uplink::SyncReport;

    fn sample() -> Status {
        Status {
            state: DaemonState::Idle,
            pid: 42,
            workdir: "/home/me/app".into(),
            base: Some("0123456789abcdef0123456789abcdef01234567".into()),
            base_mode: BaseMode::Fetched,
            upstream: Some("origin/main".into()),
            generation: 7,
            overlay_digest: Some("ab".repeat(32)),
            overlay_entries: 3,
            receiver: ReceiverStatus {
                address: "127.0.0.1:7447".into(),
                workspace: "local".into(),
                embedded: true,
                connected: true,
                ..Default::default()
            },
            last_sync: Some(SyncReport {
                files: 2,
                bytes_sent: 2048,
                bytes_received: 512,
                latency_ms: 18,
                ..Default::default()
            }),
            services: vec![
                ServiceView {
                    name: "api".into(),
                    state: ServiceState::Deployed,
                    digest: Some(format!("sha256:{}", "cd".repeat(32))),
                    image: Some("demo/api@sha256:cdcd".into()),
                    url: Some("http://127.0.0.1:40001".into()),
                    reused: true,
                    deployed_at_ms: Some(1_000_000),
                    ..Default::default()
                },
                ServiceView {
                    name: "web".into(),
                    state: ServiceState::Failed,
                    last_build_ms: Some(12_300),
                    error: Some("build failed: exit status 1\nmore".into()),
                    log_tail: (1..=12).map(|i| format!("step {i}")).collect(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn renders_header_table_and_the_failed_log_tail_without_color() {
        let out = render(
            &sample(),
            &Options {
                color: false,
                width: None,
                now_ms: 1_000_000 + 125_000,
            },
        );
        assert!(!out.contains('\x1b'), "no escapes without color:\n{out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "state      idle");
        assert_eq!(
            lines[1],
            "receiver   connected to 127.0.0.1:7447 · workspace local · embedded"
        );
        assert!(out.contains("base       0123456789ab (fetched, upstream origin/main)"));
        assert!(out.contains("generation 7  overlay abababababab · 3 paths differ from the base"));
        assert!(out.contains(
            "last sync  2 files written on the receiver · 2.00 KiB sent · 512 B received · 18 ms"
        ));
        let header = lines
            .iter()
            .find(|l| l.contains("SERVICE"))
            .expect("table header");
        for col in ["STATE", "DIGEST", "URL", "BUILD", "DEPLOYED", "ERROR"] {
            assert!(header.contains(col), "{header}");
        }
        let api = lines.iter().find(|l| l.contains(" api ")).expect("api row");
        for cell in [
            "deployed",
            "cdcdcdcdcdcd",
            "http://127.0.0.1:40001",
            "reused",
            "2m ago",
        ] {
            assert!(api.contains(cell), "{cell} in {api}");
        }
        let web = lines.iter().find(|l| l.contains(" web ")).expect("web row");
        for cell in ["failed", "12.3 s", "build failed: exit status 1"] {
            assert!(web.contains(cell), "{cell} in {web}");
        }
        assert!(!web.contains("more"), "only the error's first line");
        assert!(out.contains("\nweb: build failed: exit status 1\nmore\n"));
        assert!(!out.contains("│ step 4\n"), "only the last lines");
        assert!(out.contains("  │ step 5\n") && out.contains("  │ step 12\n"));
        assert!(out.ends_with("the whole log: devd logs web --build"));
        // Every table line has the same width.
        let widths: Vec<usize> = lines
            .iter()
            .filter(|l| l.starts_with(['┌', '│', '╞', '└']))
            .map(|l| console::measure_text_width(l))
            .collect();
        assert!(
            widths.len() >= 5 && widths.iter().all(|w| *w == widths[0]),
            "{out}"
        );
    }

    #[test]
    fn counts_are_singular_for_one_and_say_what_they_count() {
        let mut st = sample();
        st.overlay_entries = 1;
        st.last_sync.as_mut().unwrap().files = 1;
        st.services[0].deployed_at_ms = None;
        st.boot = Some(crate::status::BootStatus {
            services: 1,
            ..Default::default()
        });
        let out = render(&st, &Options::default());
        assert!(
            out.contains("overlay abababababab · 1 path differs from the base"),
            "{out}"
        );
        assert!(
            out.contains("last sync  1 file written on the receiver · "),
            "{out}"
        );
        assert!(out.contains("boot       0 of 1 service up so far"), "{out}");
        assert!(
            !out.contains("entries") && !out.contains("earlier"),
            "{out}"
        );
        // Running before this daemon started, taken over as it was.
        let api = out.lines().find(|l| l.contains(" api ")).unwrap();
        assert!(api.contains("before this start"), "{api}");
        st.overlay_entries = 0;
        st.last_sync = None;
        let out = render(&st, &Options::default());
        assert!(out.contains("no path differs from the base"), "{out}");
        assert!(
            out.contains(
                "last sync  nothing to send since this start: the receiver has this state"
            ),
            "{out}"
        );
    }

    #[test]
    fn fits_a_narrow_terminal_and_colors_only_when_asked() {
        let opts = Options {
            color: true,
            width: Some(60),
            now_ms: 0,
        };
        let out = render(&sample(), &opts);
        assert!(out.contains("\x1b["), "colors when asked");
        for l in out.lines() {
            assert!(
                console::measure_text_width(l) <= 60,
                "{l:?} is wider than 60"
            );
        }
    }

    #[test]
    fn ages_and_durations() {
        assert_eq!(human_age(59_999), "59s");
        assert_eq!(human_age(61_000), "1m");
        assert_eq!(human_age(7_200_000), "2h");
        assert_eq!(human_duration(850), "850 ms");
        assert_eq!(human_duration(125_000), "2m 5s");
        assert_eq!(human_duration(3_800_000), "1h 3m 20s");
    }
}
