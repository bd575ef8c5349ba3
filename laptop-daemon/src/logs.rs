//! `devd logs SERVICE [--build] [--follow]`: a service's runtime log (what
//! its container prints) or its last build's log, streamed from the
//! receiver over the daemon's existing connection: the CLI asks the daemon
//! on the control socket, the daemon opens a stream on its connection
//! (`ClientMsg::Logs`) and relays the chunks back line by line.
//!
//! This module is the daemon's side of the receiver stream ([`relay`]).
//! The control socket's framing of the chunks is in [`crate::control`],
//! the CLI's printing in `cli/logs.rs`; neither is imported here, so
//! control → logs is the only direction.

use crate::daemon::Handle;
use devd_protocol::message::{ClientMsg, ServerMsg};
use tokio::sync::mpsc;

/// Daemon side: open a logs stream on the live connection and send each
/// chunk to `out`. Ends when the receiver ends the stream, or when `out`
/// is closed (the CLI went away).
pub async fn relay(
    handle: &Handle,
    service: &str,
    build: bool,
    follow: bool,
    out: mpsc::Sender<Vec<u8>>,
) -> Result<(), String> {
    let conn = handle
        .live
        .lock()
        .expect("live connection")
        .clone()
        .ok_or_else(|| {
            "not connected to the receiver right now; `devd status` shows why".to_string()
        })?;
    let mut io = conn.open_side().await?;
    io.send(&ClientMsg::Logs {
        service: service.to_owned(),
        build,
        follow,
    })
    .await
    .map_err(|e| format!("cannot ask the receiver for logs: {e}"))?;
    loop {
        let msg = tokio::select! {
            _ = out.closed() => {
                io.finish().await;
                return Ok(());
            }
            m = io.recv::<ServerMsg>() => m,
        };
        match msg {
            Ok(Some(ServerMsg::Log { data })) => {
                if out.send(data).await.is_err() {
                    io.finish().await;
                    return Ok(());
                }
            }
            Ok(Some(ServerMsg::LogEnd { error })) => return error.map_or(Ok(()), Err),
            Ok(Some(ServerMsg::Rejected { message, .. })) => return Err(message),
            Ok(Some(other)) => {
                return Err(format!("unexpected answer from the receiver: {other:?}"));
            }
            Ok(None) => return Err("the receiver ended the log stream".into()),
            Err(e) => return Err(format!("log stream from the receiver lost: {e}")),
        }
    }
}
