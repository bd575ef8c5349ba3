//! `devd retry [SERVICE...]`: build and deploy services again at the
//! current content, after fixing what made them fail outside the
//! worktree (a missing base image, the container runtime).

use super::Ctx;
use super::stop::list;
use crate::control::{self, Request};
use anyhow::bail;

pub(super) async fn run(ctx: &Ctx, services: Vec<String>) -> anyhow::Result<()> {
    let Some(r) = control::request(&ctx.socket(), &Request::Retry { services }).await? else {
        bail!(
            "devd is not running for {}; `devd start` builds and deploys every service that is not deployed",
            ctx.workdir.display()
        );
    };
    if !r.ok {
        bail!("retry failed: {}", r.error.unwrap_or_default());
    }
    let queued: Vec<String> = r.data["queued"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    println!(
        "retrying {}: built (or reused) and deployed at the current content unless already deployed at it; `devd status --watch` follows them",
        list(&queued)
    );
    Ok(())
}
