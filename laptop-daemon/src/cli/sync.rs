//! `devd sync`: push the current state now and wait until it is applied.

use super::Ctx;
use super::progress::{Source, with_progress};
use crate::control::{self, Request};
use crate::daemon::{self, Options};
use anyhow::bail;
use std::time::Duration;

/// Print a sync report: a line for people, or the JSON as the daemon sent it.
pub(super) fn print_report(v: &serde_json::Value, json: bool) {
    if json {
        println!("{v}");
    } else {
        let files = v["files"].as_u64().unwrap_or(0);
        println!(
            "synced generation {} (overlay {}): {files} file{} written on the receiver, {} B sent, {} B received, {} ms",
            v["generation"],
            v["overlay_digest"]
                .as_str()
                .map(|s| &s[..12.min(s.len())])
                .unwrap_or("-"),
            if files == 1 { "" } else { "s" },
            v["bytes_sent"],
            v["bytes_received"],
            v["latency_ms"]
        );
    }
}

pub(super) async fn run(ctx: &Ctx, json: bool) -> anyhow::Result<()> {
    let socket = ctx.socket();
    if let Some(r) = with_progress(
        Source::Socket(socket.clone()),
        control::request(&socket, &Request::Sync),
    )
    .await?
    {
        if !r.ok {
            bail!(
                "sync failed: {}\n`devd status` shows the receiver's state; the daemon's log is {}",
                r.error.unwrap_or_default(),
                ctx.state_dir.join("daemon.log").display()
            );
        }
        print_report(&r.data, json);
        return Ok(());
    }
    // One-shot, without a daemon.
    let h = daemon::start(Options {
        workdir: ctx.workdir.clone(),
        home: ctx.home.clone(),
        watch: false,
        take_over: false,
    })
    .await?;
    let res = with_progress(Source::Handle(&h), h.sync(Duration::from_secs(8))).await;
    h.shutdown().await;
    let report = res.map_err(|e| {
        anyhow::anyhow!(
            "sync failed: {e}\ncheck the receiver settings in devd.local.toml (RUST_LOG=debug shows the details)"
        )
    })?;
    print_report(&serde_json::to_value(report)?, json);
    Ok(())
}
