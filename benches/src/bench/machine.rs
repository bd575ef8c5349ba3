//! Before any scenario: the tools the baselines need, the facts about
//! this machine that go into the report, and the empty results of a run.

use super::*;

/// Check the tools the baselines need (rsync only for the scenarios on the
/// generated repository); the error says what to install.
pub fn check_tools(cfg: &Config, rsync: bool) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    if find_program("git").is_none() {
        missing.push("git (apt-get install -y git)");
    }
    if rsync && find_program("rsync").is_none() {
        missing.push("rsync 3.2+ for the baseline (apt-get install -y rsync)");
    }
    if !missing.is_empty() {
        bail!(
            "missing baseline tools: {}. Install them and run again.",
            missing.join(", ")
        );
    }
    if !cfg.devd_bin.is_file() {
        bail!(
            "devd binary not found at {}: build it first with `cargo build --release --bins` \
             (same CARGO_TARGET_DIR), or point DEVD_BIN at it",
            cfg.devd_bin.display()
        );
    }
    Ok(())
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_owned()
}

/// Facts about this machine.
pub fn machine(work: &Path) -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let memory = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_default();
    let df = output(
        Command::new("df")
            .args(["-h", "--output=source,fstype,size,avail"])
            .arg(work),
    )
    .unwrap_or_default();
    let df_line = df
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>();
    let disk = if df_line.len() >= 4 {
        format!(
            "{} ({}), {} total, {} free",
            df_line[0], df_line[1], df_line[2], df_line[3]
        )
    } else {
        "unknown".into()
    };
    let rotational = df_line.first().and_then(|src| {
        let dev = src.trim_start_matches("/dev/");
        let base: String = dev.trim_end_matches(|c: char| c.is_ascii_digit()).into();
        let base = base.trim_end_matches('p').to_owned();
        [dev.to_owned(), base]
            .iter()
            .find_map(|d| std::fs::read_to_string(format!("/sys/block/{d}/queue/rotational")).ok())
            .map(|s| s.trim() == "1")
    });
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    Machine {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu,
        memory,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        disk,
        rotational,
        git: first_line(&output(Command::new("git").arg("--version")).unwrap_or_default()),
        rsync: first_line(&output(Command::new("rsync").arg("--version")).unwrap_or_default()),
        container_tools: String::new(),
        loadavg_start: read("/proc/loadavg").trim().to_owned(),
        loadavg_end: String::new(),
        // The user's own git, not the fixtures' hermetic one: a checkout
        // owned by someone else needs their `safe.directory`.
        devd_commit: output(
            Command::new("git")
                .current_dir(manifest)
                .args(["describe", "--always", "--dirty"]),
        )
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into()),
        devd_binary: String::new(),
    }
}

/// The results of a run before any scenario: mode, command, machine.
pub fn new_results(cfg: &Config) -> Results {
    let mut results = Results {
        mode: if cfg.quick { "quick" } else { "full" }.into(),
        command: cfg.command.clone(),
        machine: machine(&cfg.work),
        ..Default::default()
    };
    let age = std::fs::metadata(&cfg.devd_bin)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .map_or("?".into(), |d| format!("{:.0} s", d.as_secs_f64()));
    results.machine.devd_binary =
        format!("{} (built {age} before the run)", cfg.devd_bin.display());
    results
}
