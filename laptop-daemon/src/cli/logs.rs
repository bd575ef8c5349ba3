//! `devd logs SERVICE [--build] [--follow]`: a service's log, relayed by
//! the daemon from the receiver over the control socket.

use super::Ctx;
use crate::control::{self, Request, Response};
use std::io::Write;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Print `service`'s log as the daemon relays it: one JSON line per chunk
/// (`data.log`), then a closing line (`data.end`, with the error if any).
pub(super) async fn run(ctx: &Ctx, service: &str, build: bool, follow: bool) -> anyhow::Result<()> {
    let socket = ctx.socket();
    let req = Request::Logs {
        service: service.to_owned(),
        build,
        follow,
    };
    let Some(lines) = control::stream(&socket, &req).await? else {
        anyhow::bail!(
            "devd is not running for {}; start it with `devd start`, then try again",
            ctx.workdir.display()
        );
    };
    let mut lines = BufReader::new(lines).lines();
    let mut stdout = std::io::stdout().lock();
    while let Some(line) = lines.next_line().await? {
        let r: Response = serde_json::from_str(&line)?;
        if let Some(text) = r.data.get("log").and_then(|v| v.as_str()) {
            stdout.write_all(text.as_bytes())?;
            stdout.flush()?;
            continue;
        }
        if r.data.get("end").is_some() {
            if let Some(e) = r.error {
                anyhow::bail!("{e}");
            }
            return Ok(());
        }
    }
    anyhow::bail!("the daemon ended the log stream unexpectedly; see its log")
}
