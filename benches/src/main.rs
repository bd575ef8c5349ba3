//! `devd-benches`: run the scenarios, print the table, write the reports.

use clap::{Parser, ValueEnum};
use devd_benches::bench::{self, Bench, Config, Scenario};
use devd_benches::{boot, deploy, live, manifests, report};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

/// Which scenarios to run.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Which {
    /// Every scenario.
    All,
    /// 1: edit → applied latency.
    Latency,
    /// 2: bytes per one-line edit (2 KB and 1 MB files).
    Bytes,
    /// 3: cold start on a repository with modified files.
    ColdStart,
    /// 4: idle CPU and memory.
    Idle,
    /// 5: bulk rewrite of many large files.
    Bulk,
    /// 6: git checkout between two branches.
    Churn,
    /// 7: save → deployed (examples/demo, real buildah/podman builds).
    Deploy,
    /// 8: a fresh workspace boots, without and with `devd prebuild`.
    Boot,
    /// 9: save → served with live update vs an image build.
    Live,
    /// 10: the repository's own manifests: render time, manifest-only edits.
    Manifests,
}

/// devd end-to-end benchmarks, each with its baseline measured in the same run.
#[derive(Parser, Debug)]
#[command(
    about,
    after_help = "Build the binaries first: cargo build --release --bins\n\
                  Scenario 7 (deploy) also needs buildah, podman, runc, busybox-static and, for its\n\
                  registry variant, docker-registry and devd-receiver; scenario 8 (boot) needs all of them.\n\
                  Example: cargo run --release -p devd-benches -- all --quick --out target/bench-quick"
)]
struct Args {
    /// Scenario to run.
    #[arg(value_enum, default_value = "all")]
    which: Which,
    /// The 1k-file versions with fewer iterations (the CI smoke test).
    #[arg(long)]
    quick: bool,
    /// Where results.json, RESULTS.md and latency.svg go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Scratch directory for the repositories (default: a temporary one).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the scratch directory.
    #[arg(long)]
    keep: bool,
    /// The devd binary (default: next to this runner).
    #[arg(long, env = "DEVD_BIN")]
    devd_bin: Option<PathBuf>,
    /// Override the number of devd edits in scenario 1.
    #[arg(long)]
    edits: Option<usize>,
    /// Override the number of rsync edits in scenario 1.
    #[arg(long)]
    rsync_edits: Option<usize>,
    /// Override the idle window of scenario 4, in seconds.
    #[arg(long)]
    idle_secs: Option<u64>,
    /// Override the number of measured edits per variant in scenario 7.
    #[arg(long)]
    deploy_edits: Option<usize>,
    /// Run scenario 7's second variant (devd-receiver pushing to a local
    /// docker-registry) too; default: in full runs only.
    #[arg(long, value_name = "BOOL")]
    deploy_registry: Option<bool>,
    /// Override how many times scenario 8 boots each variant (default: 1
    /// quick, 5 full).
    #[arg(long)]
    boot_reps: Option<usize>,
    /// Boot the generated 10-service repository in scenario 8 too; default:
    /// in full runs only.
    #[arg(long, value_name = "BOOL")]
    boot_large: Option<bool>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("devd-benches: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    let which: BTreeSet<Scenario> = match args.which {
        Which::All => Scenario::ALL.into_iter().collect(),
        Which::Latency => [Scenario::Latency].into(),
        Which::Bytes => [Scenario::Bytes].into(),
        Which::ColdStart => [Scenario::ColdStart].into(),
        Which::Idle => [Scenario::Idle].into(),
        Which::Bulk => [Scenario::Bulk].into(),
        Which::Churn => [Scenario::Churn].into(),
        Which::Deploy => [Scenario::Deploy].into(),
        Which::Boot => [Scenario::Boot].into(),
        Which::Live => [Scenario::Live].into(),
        Which::Manifests => [Scenario::Manifests].into(),
    };
    let started = std::time::Instant::now();
    let devd_bin = match args.devd_bin {
        Some(b) => b,
        None => std::env::current_exe()?
            .parent()
            .map(|d| d.join("devd"))
            .unwrap_or_else(|| PathBuf::from("devd")),
    };
    let mut tmp = None;
    let work = match &args.work_dir {
        Some(w) => {
            std::fs::create_dir_all(w)?;
            w.canonicalize()?
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("devd-bench-")
                .tempdir_in(std::env::temp_dir())?;
            let p = t.path().canonicalize()?;
            tmp = Some(t);
            p
        }
    };
    let command = format!(
        "cargo run --release -p devd-benches -- {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    let mut cfg = Config::new(args.quick, work.clone(), devd_bin, command);
    if let Some(n) = args.edits {
        cfg.devd_edits = n;
    }
    if let Some(n) = args.rsync_edits {
        cfg.rsync_edits = n;
    }
    if let Some(s) = args.idle_secs {
        cfg.idle = std::time::Duration::from_secs(s);
    }
    if let Some(n) = args.deploy_edits {
        cfg.deploy_edits = n.max(1);
    }
    if let Some(r) = args.deploy_registry {
        cfg.deploy_registry = r;
    }
    if let Some(n) = args.boot_reps {
        cfg.boot_reps = n.max(1);
    }
    if let Some(l) = args.boot_large {
        cfg.boot_large = l;
    }
    let on_repo: BTreeSet<Scenario> = which
        .iter()
        .copied()
        .filter(|s| s.uses_generated_repo())
        .collect();
    bench::check_tools(&cfg, !on_repo.is_empty())?;
    if which.contains(&Scenario::Deploy) {
        deploy::check_tools(&cfg)?;
    }
    if which.contains(&Scenario::Boot) {
        boot::check_tools(&cfg)?;
    }
    if which.contains(&Scenario::Live) {
        live::check_tools(&cfg)?;
    }
    if which.contains(&Scenario::Manifests) {
        manifests::check_tools(&cfg)?;
    }
    let mut results = if on_repo.is_empty() {
        bench::new_results(&cfg)
    } else {
        Bench::new(cfg.clone(), on_repo)?.run()
    };
    if which.contains(&Scenario::Deploy) {
        deploy::run(&cfg, &mut results);
    }
    if which.contains(&Scenario::Boot) {
        boot::run(&cfg, &mut results);
    }
    if which.contains(&Scenario::Live) {
        live::run(&cfg, &mut results);
    }
    if which.contains(&Scenario::Manifests) {
        manifests::run(&cfg, &mut results);
    }
    results.machine.loadavg_end = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned();
    results.duration_s = started.elapsed().as_secs_f64();

    println!("\n{}", report::table(&results));
    if !results.targets.is_empty() {
        println!("{}", report::targets(&results));
    }
    report::write_all(&results, &args.out)?;
    println!(
        "wrote {}/results.json, RESULTS.md, latency.svg ({:.0} s)",
        args.out.display(),
        results.duration_s
    );
    if args.keep {
        if let Some(t) = tmp.take() {
            let _ = t.keep();
        }
        println!("kept {}", work.display());
    }
    drop(tmp);

    // The smoke test: every selected scenario produced its devd figure and
    // no check failed.
    let missing: Vec<String> = results
        .rows
        .iter()
        .filter(|r| r.devd.is_none())
        .map(|r| format!("{}: {}", r.scenario, r.metric))
        .collect();
    if !missing.is_empty() || !results.errors.is_empty() {
        for m in &missing {
            eprintln!("missing figure: {m}");
        }
        for (k, v) in &results.errors {
            eprintln!("failed: {k}: {v}");
        }
        return Ok(ExitCode::FAILURE);
    }
    println!("all {} scenarios produced figures", which.len());
    Ok(ExitCode::SUCCESS)
}
