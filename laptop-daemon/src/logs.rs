//! `devd logs SERVICE [--build] [--follow]`: a service's runtime log (what
//! its container prints) or its last build's log, streamed from the
//! receiver over the daemon's existing connection: the CLI asks the daemon
//! on the control socket, the daemon opens a stream on its connection
//! (`ClientMsg::Logs`) and relays the chunks back line by line.

use crate::config::repo_state_dir;
use crate::control::{self, Request, Response};
use crate::daemon::Handle;
use devd_protocol::message::{ClientMsg, ServerMsg};
use std::io::Write;
use std::path::Path;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
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

/// Daemon side of the control socket's `logs` request: one JSON line per
/// chunk (`{"ok":true,"data":{"log":"…"}}`), then one closing line
/// (`{"ok":…,"data":{"end":true},"error":…}`).
pub async fn answer(
    handle: &Handle,
    service: &str,
    build: bool,
    follow: bool,
    mut w: impl tokio::io::AsyncWrite + Unpin,
) -> std::io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
    let relay = relay(handle, service, build, follow, tx);
    tokio::pin!(relay);
    let mut result = None;
    loop {
        tokio::select! {
            r = &mut relay, if result.is_none() => result = Some(r),
            chunk = rx.recv() => match chunk {
                Some(data) => {
                    let line = Response {
                        ok: true,
                        data: serde_json::json!({ "log": String::from_utf8_lossy(&data) }),
                        error: None,
                    };
                    let mut out = serde_json::to_vec(&line).expect("response");
                    out.push(b'\n');
                    // The CLI went away: dropping `rx` ends the relay.
                    w.write_all(&out).await?;
                }
                None => break,
            },
        }
    }
    let result = match result {
        Some(r) => r,
        None => relay.await,
    };
    let end = Response {
        ok: result.is_ok(),
        data: serde_json::json!({ "end": true }),
        error: result.err(),
    };
    let mut out = serde_json::to_vec(&end).expect("response");
    out.push(b'\n');
    w.write_all(&out).await?;
    w.shutdown().await
}

/// CLI side: print `service`'s log as the daemon relays it.
pub async fn logs(
    workdir: &Path,
    home: &Path,
    service: &str,
    build: bool,
    follow: bool,
) -> anyhow::Result<()> {
    let socket = control::socket_path(&repo_state_dir(home, workdir));
    let req = Request::Logs {
        service: service.to_owned(),
        build,
        follow,
    };
    let Some(lines) = control::stream(&socket, &req).await? else {
        anyhow::bail!(
            "devd is not running for {}; start it with `devd start`, then try again",
            workdir.display()
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
