//! `devd stop`: ask the daemon to stop and wait until it is gone.

use super::Ctx;
use super::lock::{lock_path, try_lock};
use crate::control::{self, Request};
use std::time::{Duration, Instant};

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<()> {
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
