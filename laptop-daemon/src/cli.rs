//! Command-line interface: argument definitions and the commands.

use crate::config::{devd_home, repo_state_dir};
use crate::control::{self, Request};
use crate::daemon::{self, Options};
use crate::repo::Repo;
use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const EXAMPLES: &str = "\
Examples:
  devd start --wait      start syncing this repository, return after the first sync
  devd status            what is synced, where, how fast
  devd sync --json       push the current state now and wait until it is applied
  devd stop              stop the daemon";

/// devd: your worktree, on the receiver, as you save.
#[derive(Parser, Debug)]
#[command(version, about, after_help = EXAMPLES)]
pub struct Cli {
    /// Run as if started in DIR.
    #[arg(short = 'C', global = true, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Start the background daemon for the repository here.
    Start {
        /// Return only once the first sync is acknowledged.
        #[arg(long)]
        wait: bool,
    },
    /// Stop the daemon.
    Stop,
    /// Sync the current state now; returns once the receiver applied it.
    Sync {
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show what the daemon is doing.
    Status {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Run the daemon in the foreground (what `start` runs in the background).
    Run,
}

struct Ctx {
    workdir: PathBuf,
    home: PathBuf,
    state_dir: PathBuf,
}

impl Ctx {
    fn new(dir: Option<PathBuf>) -> anyhow::Result<Self> {
        let dir = match dir {
            Some(d) => d,
            None => std::env::current_dir().context("current directory")?,
        };
        let repo = Repo::discover(&dir)?;
        let workdir = repo.workdir().to_owned();
        let home = devd_home()?;
        let state_dir = repo_state_dir(&home, &workdir);
        Ok(Self {
            workdir,
            home,
            state_dir,
        })
    }

    fn socket(&self) -> PathBuf {
        control::socket_path(&self.state_dir)
    }
}

/// Run the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = Ctx::new(cli.dir)?;
    match cli.cmd {
        Cmd::Start { wait } => start(&ctx, wait).await,
        Cmd::Stop => stop(&ctx).await,
        Cmd::Sync { json } => sync(&ctx, json).await,
        Cmd::Status { json } => status(&ctx, json).await,
        Cmd::Run => run_foreground(&ctx).await,
    }
}

fn print_report(v: &serde_json::Value, json: bool) {
    if json {
        println!("{v}");
    } else {
        println!(
            "synced generation {} (overlay {}): {} files, {} B sent, {} B received, {} ms",
            v["generation"],
            v["overlay_digest"]
                .as_str()
                .map(|s| &s[..12.min(s.len())])
                .unwrap_or("-"),
            v["files"],
            v["bytes_sent"],
            v["bytes_received"],
            v["latency_ms"]
        );
    }
}

async fn start(ctx: &Ctx, wait: bool) -> anyhow::Result<()> {
    if let Some(r) = control::request(&ctx.socket(), &Request::Status).await? {
        println!(
            "devd is already running for {} (pid {})",
            ctx.workdir.display(),
            r.data["pid"]
        );
        return Ok(());
    }
    std::fs::create_dir_all(&ctx.state_dir)?;
    let log_path = ctx.state_dir.join("daemon.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let exe = std::env::current_exe().context("locating the devd binary")?;
    let mut child = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(exe)
            .arg("-C")
            .arg(&ctx.workdir)
            .arg("run")
            .env("DEVD_HOME", &ctx.home)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting the daemon")?
    };
    let started = Instant::now();
    loop {
        if control::request(&ctx.socket(), &Request::Status)
            .await?
            .is_some()
        {
            break;
        }
        if let Some(st) = child.try_wait()? {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = tail
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            bail!(
                "the daemon exited ({st}) while starting; log {}:\n{}",
                log_path.display(),
                tail.join("\n")
            );
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "the daemon did not come up within 60 s; see {}",
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "devd started for {} (log: {})",
        ctx.workdir.display(),
        log_path.display()
    );
    if wait {
        let r = control::request(&ctx.socket(), &Request::Sync)
            .await?
            .context("daemon went away")?;
        if !r.ok {
            bail!("first sync failed: {}", r.error.unwrap_or_default());
        }
        print_report(&r.data, false);
    }
    Ok(())
}

async fn stop(ctx: &Ctx) -> anyhow::Result<()> {
    if control::request(&ctx.socket(), &Request::Stop)
        .await?
        .is_none()
    {
        println!("devd is not running for {}", ctx.workdir.display());
        return Ok(());
    }
    let started = Instant::now();
    while ctx.socket().exists() && started.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The lock is released when the process exits.
    let lock = lock_path(&ctx.state_dir);
    while started.elapsed() < Duration::from_secs(15) {
        if try_lock(&lock)?.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("devd stopped");
    Ok(())
}

async fn sync(ctx: &Ctx, json: bool) -> anyhow::Result<()> {
    if let Some(r) = control::request(&ctx.socket(), &Request::Sync).await? {
        if !r.ok {
            bail!("sync failed: {}", r.error.unwrap_or_default());
        }
        print_report(&r.data, json);
        return Ok(());
    }
    // One-shot, without a daemon.
    let h = daemon::start(Options {
        workdir: ctx.workdir.clone(),
        home: ctx.home.clone(),
        watch: false,
    })
    .await?;
    let res = h.sync(Duration::from_secs(8)).await;
    h.shutdown().await;
    let report = res.map_err(|e| anyhow::anyhow!("sync failed: {e}"))?;
    print_report(&serde_json::to_value(report)?, json);
    Ok(())
}

async fn status(ctx: &Ctx, json: bool) -> anyhow::Result<()> {
    let Some(r) = control::request(&ctx.socket(), &Request::Status).await? else {
        if json {
            println!(
                "{}",
                serde_json::json!({"state": "stopped", "workdir": ctx.workdir})
            );
        } else {
            println!(
                "devd is not running for {} (start it with `devd start`)",
                ctx.workdir.display()
            );
        }
        return Ok(());
    };
    let v = r.data;
    if json {
        println!("{v}");
        return Ok(());
    }
    let s = |k: &serde_json::Value| k.as_str().map(str::to_owned).unwrap_or_else(|| "-".into());
    println!("state       {}", s(&v["state"]));
    println!("worktree    {}", s(&v["workdir"]));
    println!(
        "base        {} ({}, upstream {})",
        s(&v["base"]),
        s(&v["base_mode"]),
        s(&v["upstream"])
    );
    if let Some(why) = v["base_mode_reason"].as_str() {
        println!("            {why}");
    }
    println!(
        "generation  {}  overlay {} ({} entries)",
        v["generation"],
        s(&v["overlay_digest"]),
        v["overlay_entries"]
    );
    println!(
        "receiver    {} workspace {} {}{}",
        s(&v["receiver"]["address"]),
        s(&v["receiver"]["workspace"]),
        if v["receiver"]["connected"].as_bool() == Some(true) {
            "connected"
        } else {
            "not connected"
        },
        if v["receiver"]["embedded"].as_bool() == Some(true) {
            " (embedded)"
        } else {
            ""
        }
    );
    if let Some(w) = v["receiver"]["worktree"].as_str() {
        println!("            worktree {w}");
    }
    if let Some(e) = v["receiver"]["last_error"].as_str() {
        println!("            last error: {e}");
    }
    let ls = &v["last_sync"];
    if !ls.is_null() {
        println!(
            "last sync   {} files, {} B sent, {} B received, {} ms",
            ls["files"], ls["bytes_sent"], ls["bytes_received"], ls["latency_ms"]
        );
    }
    if let Some(sk) = v["skipped"].as_array().filter(|a| !a.is_empty()) {
        println!(
            "not synced  {}",
            sk.iter().map(s).collect::<Vec<_>>().join("; ")
        );
    }
    if let Some(e) = v["catalog_error"].as_str() {
        println!("catalog     {e}");
    }
    for svc in v["services"].as_array().into_iter().flatten() {
        let digest = svc["digest"]
            .as_str()
            .map(|d| d.trim_start_matches("sha256:").chars().take(12).collect())
            .unwrap_or_else(|| "-".to_owned());
        let build = match (svc["reused"].as_bool(), svc["last_build_ms"].as_u64()) {
            (Some(true), _) => "reused".to_owned(),
            (_, Some(ms)) => format!("built in {:.1}s", ms as f64 / 1000.0),
            _ => "-".to_owned(),
        };
        println!(
            "service     {:<16} {:<10} {:<12} {:<16} {}",
            s(&svc["name"]),
            s(&svc["state"]),
            digest,
            build,
            s(&svc["url"])
        );
        if let Some(e) = svc["error"].as_str() {
            println!("            {e}");
            let lines = svc["log_tail"].as_array().cloned().unwrap_or_default();
            for l in &lines[lines.len().saturating_sub(5)..] {
                println!("            | {}", s(l));
            }
        }
    }
    Ok(())
}

fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join("daemon.lock")
}

/// Take the daemon lock; `None` if another process holds it.
fn try_lock(path: &Path) -> anyhow::Result<Option<std::fs::File>> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
    }
}

async fn run_foreground(ctx: &Ctx) -> anyhow::Result<()> {
    let Some(_lock) = try_lock(&lock_path(&ctx.state_dir))? else {
        println!("devd is already running for {}", ctx.workdir.display());
        return Ok(());
    };
    let h = Arc::new(
        daemon::start(Options {
            workdir: ctx.workdir.clone(),
            home: ctx.home.clone(),
            watch: true,
        })
        .await?,
    );
    tracing::info!(workdir = %ctx.workdir.display(), state = %ctx.state_dir.display(), "devd running");
    let ctl = tokio::spawn(control::serve(h.clone(), ctx.socket()));
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = h.cancel.cancelled() => {}
        }
    }
    let failed = h.status().state == "error";
    let err = h.status().last_error;
    h.cancel.cancel();
    let _ = ctl.await;
    if let Ok(h) = Arc::try_unwrap(h) {
        h.shutdown().await;
    }
    if failed {
        bail!("{}", err.unwrap_or_else(|| "daemon failed".into()));
    }
    Ok(())
}
