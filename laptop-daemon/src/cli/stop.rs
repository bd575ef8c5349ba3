//! `devd stop [--keep-running]`: stop the daemon and (unless
//! `--keep-running`) the services' local containers, say what stopped,
//! and wait until the daemon is gone.

use super::Ctx;
use super::lock::{lock_path, try_lock};
use crate::control::{self, Request};
use std::time::{Duration, Instant};

/// `a, b and c`.
pub(super) fn list(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// `1 service`, `3 services`.
fn services(n: usize) -> String {
    format!("{n} service{}", if n == 1 { "" } else { "s" })
}

pub(super) async fn run(ctx: &Ctx, keep_running: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let Some(r) = control::request(&ctx.socket(), &Request::Stop { keep_running }).await? else {
        println!("devd is not running for {}", ctx.workdir.display());
        return Ok(());
    };
    wait_gone(ctx).await?;
    let names = |key: &str| -> Vec<String> {
        r.data[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (stopped, kept) = (names("stopped"), names("kept"));
    let embedded = r.data["embedded"].as_bool().unwrap_or(false);
    let took = super::super::status_view::human_duration(started.elapsed().as_millis() as u64);
    let mut out = format!("devd stopped for {} in {took}", ctx.workdir.display());
    if !stopped.is_empty() {
        out.push_str(&format!(
            "\nstopped the containers of {}: {} (`devd start` runs them again from their images, without building)",
            services(stopped.len()),
            list(&stopped)
        ));
    }
    if let Some(e) = r.data["stop_error"].as_str() {
        out.push_str(&format!("\ncould not stop the services' containers: {e}"));
    }
    if !kept.is_empty() {
        out.push_str(&format!(
            "\nleft running: {} ({})",
            list(&kept),
            if embedded {
                "their devd URLs answer again after `devd start`; `devd stop` without --keep-running stops them"
            } else {
                "on the receiver; `devd down` removes them"
            }
        ));
    }
    println!("{out}");
    Ok(())
}

/// Wait until the daemon's socket is gone and its lock released (the
/// process exited), at most 15 s.
pub(super) async fn wait_gone(ctx: &Ctx) -> anyhow::Result<()> {
    let started = Instant::now();
    while ctx.socket().exists() && started.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The lock is released when the process exits.
    let lock = lock_path(&ctx.state_dir);
    while started.elapsed() < Duration::from_secs(15) {
        if try_lock(&lock)?.is_some() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!(
        "the daemon was asked to stop but is still running after 15 s; see its log {}",
        ctx.state_dir.join("daemon.log").display()
    )
}
