//! `devd start`: the daemon in the background, and `--wait` for its first
//! sync.

use super::Ctx;
use super::progress::{Source, with_progress};
use super::sync::print_report;
use crate::control::{self, Request};
use anyhow::{Context, bail};
use std::time::{Duration, Instant};

pub(super) async fn run(ctx: &Ctx, wait: bool, take_over: bool) -> anyhow::Result<()> {
    if take_over && let Some(r) = control::request(&ctx.socket(), &Request::TakeOver).await? {
        // A daemon runs here (superseded, most likely): it takes over.
        if !r.ok {
            bail!(
                "taking the workspace over failed: {}\n`devd status` shows the receiver's state",
                r.error.unwrap_or_default()
            );
        }
        println!("devd took the workspace over for {}", ctx.workdir.display());
        print_report(&r.data, false);
        return Ok(());
    }
    if let Some(r) = control::request(&ctx.socket(), &Request::Status).await? {
        println!(
            "devd is already running for {} (pid {}); `devd sync` pushes the current state now, `devd status` shows it",
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
            .args(take_over.then_some("--take-over"))
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
            // Another `devd start` won the race for the lock: that daemon runs.
            if st.success()
                && let Some(r) = control::request(&ctx.socket(), &Request::Status).await?
            {
                println!(
                    "devd is already running for {} (pid {})",
                    ctx.workdir.display(),
                    r.data["pid"]
                );
                return Ok(());
            }
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
                "the daemon did not come up within 60 s; see its log {} \
                 (`devd run` runs it in the foreground, logging to the terminal)",
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
        let r = with_progress(
            Source::Socket(ctx.socket()),
            control::request(&ctx.socket(), &Request::Sync),
        )
        .await?
        .with_context(|| {
            format!(
                "the daemon stopped during the first sync; see its log {}",
                log_path.display()
            )
        })?;
        if !r.ok {
            bail!(
                "first sync failed: {}\nthe daemon keeps retrying; `devd status` shows the receiver's state, its log is {}",
                r.error.unwrap_or_default(),
                log_path.display()
            );
        }
        print_report(&r.data, false);
        println!("next: `devd status` for the services' state and URLs");
    }
    Ok(())
}
