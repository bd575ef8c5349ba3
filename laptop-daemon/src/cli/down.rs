//! `devd down [--yes]`: stop the daemon and remove everything devd
//! created for this worktree: what the receiver deployed (local: the
//! services' containers and devd's images of them; a remote receiver: the
//! Kubernetes objects devd applied in its namespace) and devd's state for
//! the worktree (the embedded receiver's copy and build logs, the hash
//! cache, the daemon's log). Asks first, unless `--yes`.

use super::Ctx;
use super::stop::wait_gone;
use crate::config::{Config, ReceiverMode};
use crate::control::{self, Request};
use anyhow::{Context, bail};

pub(super) async fn run(ctx: &Ctx, yes: bool) -> anyhow::Result<()> {
    let remote = Config::load(&ctx.workdir)?.receiver.mode == ReceiverMode::Remote;
    let running = control::request(&ctx.socket(), &Request::Status)
        .await?
        .is_some();
    if !running && !ctx.state_dir.exists() {
        println!(
            "nothing to remove: devd has no state for {}",
            ctx.workdir.display()
        );
        return Ok(());
    }
    let what = if remote {
        "the Deployments, Services and Ingresses devd created on the receiver (Deployments devd only patched stay)"
    } else {
        "the services' containers and devd's images of them"
    };
    if !yes
        && !confirm(&format!(
            "devd down stops devd for {} and removes {what}, and devd's state for this worktree ({}). Continue? [y/N] ",
            ctx.workdir.display(),
            ctx.state_dir.display()
        ))?
    {
        println!("Nothing removed.");
        return Ok(());
    }
    let removed = if running {
        let r = control::request(&ctx.socket(), &Request::Down)
            .await?
            .context("the daemon stopped before answering; run `devd down` again")?;
        if !r.ok {
            bail!(
                "cannot remove what was deployed: {}\nnothing else was removed; the daemon keeps running",
                r.error.unwrap_or_default()
            );
        }
        wait_gone(ctx).await?;
        r.data["removed"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    } else {
        remove_without_daemon(ctx, remote).await?
    };
    std::fs::remove_dir_all(&ctx.state_dir)
        .with_context(|| format!("removing {}", ctx.state_dir.display()))?;
    for line in &removed {
        println!("removed {line}");
    }
    println!(
        "removed devd's state for this worktree ({})",
        ctx.state_dir.display()
    );
    if remote {
        println!(
            "the receiver's workspace stays (its copy of the worktree); `devd workspace delete` removes a workspace namespace"
        );
    }
    println!("devd is down for {}", ctx.workdir.display());
    Ok(())
}

/// Ask on the terminal; refuses without one.
fn confirm(question: &str) -> anyhow::Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to confirm on: rerun with --yes to remove everything devd created here");
    }
    eprint!("{question}");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// No daemon runs: the embedded receiver is started on its own (no sync,
/// so nothing new is built meanwhile) to remove what it deployed; a remote
/// receiver is reached with a one-shot sync first.
async fn remove_without_daemon(ctx: &Ctx, remote: bool) -> anyhow::Result<Vec<String>> {
    if !remote {
        #[cfg(feature = "embedded")]
        {
            let repo = crate::repo::Repo::discover(&ctx.workdir)?;
            let cancel = tokio_util::sync::CancellationToken::new();
            let receiver = crate::embedded::Embedded::start(&repo, &ctx.state_dir, &cancel)
                .await
                .context("starting the embedded receiver to remove what it deployed")?;
            let removed = receiver.remove_deployed().await;
            cancel.cancel();
            receiver.drain(std::time::Duration::from_secs(5)).await;
            return removed.map_err(|e| anyhow::anyhow!("cannot remove what was deployed: {e}"));
        }
        #[cfg(not(feature = "embedded"))]
        return Ok(Vec::new());
    }
    let h = crate::daemon::start(crate::daemon::Options {
        workdir: ctx.workdir.clone(),
        home: ctx.home.clone(),
        watch: false,
        // `down` removes what the workspace's writer deployed; it does not
        // take the workspace from another writer.
        take_over: false,
    })
    .await?;
    let res = match h.sync(std::time::Duration::from_secs(8)).await {
        Ok(_) => h.remove_deployed().await,
        Err(e) => Err(format!("cannot reach the receiver: {e}")),
    };
    h.shutdown().await;
    res.map_err(|e| anyhow::anyhow!("cannot remove what was deployed: {e}"))
}
