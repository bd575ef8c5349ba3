//! A side stream that runs a command in a service's running container
//! (`devd exec`): `ClientMsg::Exec` opened it; `ExecInput` and
//! `ExecResize` follow from the laptop, `ExecOutput` chunks go back, and
//! one `ExecExit` ends it. The backend runs the command; this file only
//! relays, with the command's input held back (not read off the stream)
//! while the backend has not taken the previous piece.

use crate::build::backend::exec::{ExecInput, ExecIo, ExecOutput, ExecRequest};
use crate::sync::workspace::Workspace;
use devd_protocol::message::{ClientMsg, ServerMsg, TermSize};
use devd_sync::framed::Framed;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The exit status for a command that could not be run, as a shell's.
const CANNOT_RUN: i32 = 126;
const NOT_FOUND: i32 = 127;

/// Serve an exec stream of `ws` until the command ends, the laptop goes
/// away, or the receiver stops.
pub(super) async fn serve(
    io: &mut Framed,
    ws: &Arc<Workspace>,
    service: &str,
    command: Vec<String>,
    tty: Option<TermSize>,
    cancel: CancellationToken,
) {
    let exit = |code: i32, error: Option<String>| ServerMsg::ExecExit { code, error };
    let Some(p) = ws.pipeline() else {
        let m = "builds are off on this receiver: it runs no containers";
        let _ = io.send(&exit(CANNOT_RUN, Some(m.into()))).await;
        return;
    };
    let Some(svc) = p.service(service) else {
        let m = format!(
            "no service named {service:?}; devd.toml declares: {}",
            p.service_names().join(", ")
        );
        let _ = io.send(&exit(NOT_FOUND, Some(m))).await;
        return;
    };
    let (input_tx, input) = mpsc::channel::<ExecInput>(16);
    let (output, mut output_rx) = mpsc::channel::<ExecOutput>(16);
    let backend = p.backend().clone();
    let workspace = ws.name.clone();
    let req = ExecRequest { command, tty };
    tracing::info!(%service, command = ?req.command, tty = tty.is_some(), "exec");
    let mut task = tokio::spawn(async move {
        backend
            .exec(&workspace, &svc, req, ExecIo { input, output })
            .await
    });
    let mut input_tx = Some(input_tx);
    let mut held: Option<ExecInput> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                task.abort();
                let _ = io.send(&exit(255, Some("the receiver is stopping".into()))).await;
                return;
            }
            // The backend took the held piece: pass it on, read the next.
            permit = async { input_tx.clone()?.reserve_owned().await.ok() }, if held.is_some() => {
                match permit {
                    Some(permit) => {
                        permit.send(held.take().expect("held input"));
                    }
                    None => { held = None; input_tx = None; }
                }
            }
            msg = io.recv::<ClientMsg>(), if held.is_none() => match msg {
                Ok(Some(ClientMsg::ExecInput { data })) if data.is_empty() => held = Some(ExecInput::End),
                Ok(Some(ClientMsg::ExecInput { data })) => held = Some(ExecInput::Data(data)),
                Ok(Some(ClientMsg::ExecResize(size))) => held = Some(ExecInput::Resize(size)),
                Ok(Some(other)) => {
                    task.abort();
                    let m = format!("unexpected message on an exec stream: {}", kind(&other));
                    let _ = io.send(&exit(255, Some(m))).await;
                    return;
                }
                // The laptop went away: the command is ended (the
                // backend's process is killed when dropped).
                Ok(None) | Err(_) => {
                    task.abort();
                    return;
                }
            },
            chunk = output_rx.recv() => match chunk {
                Some(ExecOutput { stderr, data }) => {
                    if io.send(&ServerMsg::ExecOutput { stderr, data }).await.is_err() {
                        task.abort();
                        return;
                    }
                }
                // The command's output ended: so did the backend's run.
                None => break,
            },
        }
        if held.is_some() && input_tx.is_none() {
            held = None; // the command no longer reads input
        }
    }
    let msg = match (&mut task).await {
        Ok(Ok(code)) => exit(code, None),
        Ok(Err(f)) => exit(CANNOT_RUN, Some(f.error)),
        Err(e) => exit(255, Some(format!("the exec task failed: {e}"))),
    };
    drop(input_tx);
    let _ = io.send(&msg).await;
}

fn kind(m: &ClientMsg) -> &'static str {
    match m {
        ClientMsg::Exec { .. } => "Exec",
        ClientMsg::Logs { .. } => "Logs",
        ClientMsg::Subscribe => "Subscribe",
        _ => "a sync message",
    }
}
