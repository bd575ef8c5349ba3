//! `devd exec SERVICE [-- CMD…]`: a command, or an interactive shell, in a
//! running container of a service, streamed over the daemon's existing
//! connection to the receiver (no kubeconfig on the laptop). The CLI asks
//! the daemon on the control socket (`Request::Exec`); once answered,
//! the socket carries [`ExecFrame`]s both ways, which the daemon relays
//! to and from a stream on its connection (`ClientMsg::Exec`).
//!
//! This module is the daemon's relay ([`serve`]) and the frame reading
//! both ends of the socket share ([`frames`]).

use crate::daemon::Handle;
use devd_protocol::control::{ExecFrame, Response, encode_line};
use devd_protocol::message::{ClientMsg, ServerMsg, TermSize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Read [`ExecFrame`]s from `r` on a task of their own (so that reading is
/// never cut off half-way by a `select!`): each frame, then `Err` with why
/// the socket cannot be read any more, or the channel closes at its end.
pub fn frames(
    mut r: impl AsyncRead + Send + Unpin + 'static,
) -> mpsc::Receiver<Result<ExecFrame, String>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let mut head = [0u8; 5];
            match r.read_exact(&mut head).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string())).await;
                    return;
                }
            }
            let frame = match ExecFrame::body_len(head) {
                Err(e) => Err(e),
                Ok(len) => {
                    let mut body = vec![0u8; len];
                    match r.read_exact(&mut body).await {
                        Ok(_) => ExecFrame::decode(head[0], body),
                        Err(e) => Err(format!("exec frame cut short: {e}")),
                    }
                }
            };
            let failed = frame.is_err();
            if tx.send(frame).await.is_err() || failed {
                return;
            }
        }
    });
    rx
}

/// The daemon's side of an exec request: answer the request line, then
/// relay frames until the command exits (its [`ExecFrame::Exit`] is the
/// last thing written), the CLI goes away, or the daemon stops.
pub async fn serve(
    handle: &Handle,
    service: String,
    command: Vec<String>,
    tty: Option<TermSize>,
    r: impl AsyncRead + Send + Unpin + 'static,
    mut w: impl AsyncWrite + Unpin,
) -> std::io::Result<()> {
    let opened = open(handle, service, command, tty).await;
    let answer = Response {
        ok: opened.is_ok(),
        data: serde_json::Value::Null,
        error: opened.as_ref().err().cloned(),
    };
    w.write_all(&encode_line(&answer)).await?;
    let Ok(mut io) = opened else {
        return w.shutdown().await;
    };
    let mut input = frames(r);
    let exit = loop {
        tokio::select! {
            () = handle.cancel.cancelled() => {
                break ExecFrame::Exit { code: 255, error: Some("the daemon stopped".into()) };
            }
            frame = input.recv() => {
                let msg = match frame {
                    // The CLI went away (or sent garbage): the command's
                    // input ends and its output has nowhere to go.
                    None | Some(Err(_)) => {
                        io.finish().await;
                        return Ok(());
                    }
                    Some(Ok(ExecFrame::Stdin(data))) if data.is_empty() => continue,
                    Some(Ok(ExecFrame::Stdin(data))) => ClientMsg::ExecInput { data },
                    Some(Ok(ExecFrame::StdinEnd)) => ClientMsg::ExecInput { data: Vec::new() },
                    Some(Ok(ExecFrame::Resize(size))) => ClientMsg::ExecResize(size),
                    Some(Ok(_)) => continue, // output kinds mean nothing from the CLI
                };
                if let Err(e) = io.send(&msg).await {
                    break ExecFrame::Exit { code: 255, error: Some(format!("lost the receiver: {e}")) };
                }
            }
            msg = io.recv::<ServerMsg>() => {
                let frame = match msg {
                    Ok(Some(ServerMsg::ExecOutput { stderr: false, data })) => ExecFrame::Stdout(data),
                    Ok(Some(ServerMsg::ExecOutput { stderr: true, data })) => ExecFrame::Stderr(data),
                    Ok(Some(ServerMsg::ExecExit { code, error })) => break ExecFrame::Exit { code, error },
                    Ok(Some(ServerMsg::Rejected { message, .. })) => {
                        break ExecFrame::Exit { code: 255, error: Some(message) };
                    }
                    Ok(Some(other)) => {
                        break ExecFrame::Exit {
                            code: 255,
                            error: Some(format!("unexpected answer from the receiver: {other:?}")),
                        };
                    }
                    Ok(None) => break ExecFrame::Exit {
                        code: 255,
                        error: Some("the receiver ended the command's stream without its exit status (a receiver older than devd exec?)".into()),
                    },
                    Err(e) => break ExecFrame::Exit { code: 255, error: Some(format!("lost the receiver: {e}")) },
                };
                // The CLI went away: the relay ends.
                if w.write_all(&frame.encode()).await.is_err() {
                    io.finish().await;
                    return Ok(());
                }
            }
        }
    };
    io.finish().await;
    w.write_all(&exit.encode()).await?;
    w.shutdown().await
}

/// Open the receiver stream and ask it to run the command.
async fn open(
    handle: &Handle,
    service: String,
    command: Vec<String>,
    tty: Option<TermSize>,
) -> Result<devd_sync::framed::Framed, String> {
    let conn = handle
        .live
        .lock()
        .expect("live connection")
        .clone()
        .ok_or_else(|| {
            "not connected to the receiver right now; `devd status` shows why".to_string()
        })?;
    let mut io = conn.open_side().await?;
    io.send(&ClientMsg::Exec {
        service,
        command,
        tty,
    })
    .await
    .map_err(|e| format!("cannot ask the receiver to run the command: {e}"))?;
    Ok(io)
}
