//! `devd start`: the daemon in the background, and `--wait` for its first
//! sync.

use super::Ctx;
use super::progress::{Source, with_progress};
use super::sync::print_report;
use crate::control::{self, Request};
use anyhow::{Context, bail};
use devd_protocol::ServiceState;
use std::time::{Duration, Instant};

pub(super) async fn run(
    ctx: &Ctx,
    wait: bool,
    wait_deployed: bool,
    take_over: bool,
) -> anyhow::Result<()> {
    let wait = wait || wait_deployed;
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
        if !wait_deployed {
            println!(
                "the services build and deploy in the background: `devd status` shows them (`devd start --wait-deployed` waits for them)"
            );
        }
    }
    if wait_deployed {
        return wait_for_services(ctx).await;
    }
    Ok(())
}

/// `--wait-deployed`: poll the daemon until this start has deployed every
/// service or seen it fail (its boot is over), printing each service once
/// it is; fails if one failed.
async fn wait_for_services(ctx: &Ctx) -> anyhow::Result<()> {
    let mut shown = std::collections::BTreeSet::new();
    loop {
        let Some(r) = control::request(&ctx.socket(), &Request::Status).await? else {
            bail!(
                "the daemon stopped while the services were coming up; see its log {}",
                ctx.state_dir.join("daemon.log").display()
            );
        };
        let st: crate::status::Status = serde_json::from_value(r.data)?;
        if let Some(e) = &st.catalog_error {
            bail!("devd.toml: {e}");
        }
        for s in &st.services {
            let settled = matches!(s.state, ServiceState::Deployed | ServiceState::Failed);
            if settled && st.boot.is_some() && shown.insert(s.name.clone()) {
                match (s.state, &s.url, &s.error) {
                    (ServiceState::Deployed, Some(url), _) => {
                        println!("{} deployed: {url}", s.name)
                    }
                    (ServiceState::Deployed, None, _) => println!("{} deployed", s.name),
                    (_, _, e) => println!(
                        "{} failed: {}",
                        s.name,
                        e.as_deref().and_then(|e| e.lines().next()).unwrap_or("")
                    ),
                }
            }
        }
        if let Some(b) = st.boot.as_ref().filter(|b| b.ms.is_some()) {
            let took = crate::status_view::human_duration(b.ms.unwrap_or(0));
            if b.failed > 0 {
                bail!(
                    "{} of {} service{} failed within {took}: `devd status` shows why, `devd retry` tries again once fixed",
                    b.failed,
                    b.services,
                    if b.services == 1 { "" } else { "s" }
                );
            }
            println!(
                "all {} service{} deployed in {took}",
                b.services,
                if b.services == 1 { "" } else { "s" }
            );
            return Ok(());
        }
        if st.services.is_empty() && st.generation > 0 && st.boot.is_none() {
            println!(
                "no services: declare them in devd.toml (`devd init` proposes one from your Dockerfiles)"
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
