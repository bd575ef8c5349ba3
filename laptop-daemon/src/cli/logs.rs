//! `devd logs SERVICE [--build] [--follow]`: a service's log, relayed by
//! the daemon from the receiver.

use super::Ctx;

pub(super) async fn run(ctx: &Ctx, service: &str, build: bool, follow: bool) -> anyhow::Result<()> {
    crate::logs::logs(&ctx.workdir, &ctx.home, service, build, follow).await
}
