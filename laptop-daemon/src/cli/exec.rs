//! `devd exec SERVICE [-T] [-- CMD…]`: a command (or the container's shell)
//! in a running container of the service, through the daemon. From a
//! terminal the command gets one too: this terminal goes into raw mode
//! (keys, Ctrl-C included, reach the command as typed) and its size
//! follows along; devd exits with the command's exit status.

use super::Ctx;
use crate::control::{self, Request, Response};
use devd_protocol::control::ExecFrame;
use devd_protocol::message::TermSize;
use std::io::{IsTerminal, Write};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Raw mode for as long as it lives.
struct RawMode;

impl RawMode {
    fn enter() -> anyhow::Result<Self> {
        crossterm::terminal::enable_raw_mode()
            .map_err(|e| anyhow::anyhow!("cannot put the terminal in raw mode: {e}"))?;
        Ok(Self)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

fn term_size() -> TermSize {
    let (cols, rows) = crossterm::terminal::size().unwrap_or((80, 24));
    TermSize { cols, rows }
}

pub(super) async fn run(
    ctx: &Ctx,
    service: &str,
    command: Vec<String>,
    no_tty: bool,
) -> anyhow::Result<()> {
    let tty = (!no_tty && std::io::stdin().is_terminal() && std::io::stdout().is_terminal())
        .then(term_size);
    let req = Request::Exec {
        service: service.to_owned(),
        command,
        tty,
    };
    let Some(stream) = control::stream(&ctx.socket(), &req).await? else {
        anyhow::bail!(
            "devd is not running for {}; start it with `devd start`, then try again",
            ctx.workdir.display()
        );
    };
    let (mut r, mut w) = stream.into_split();
    // The answer line, read a byte at a time so that no frame after it is
    // taken into a buffer.
    let mut line = Vec::new();
    loop {
        let b = r.read_u8().await.map_err(|e| {
            anyhow::anyhow!("the daemon closed the connection without answering: {e}")
        })?;
        if b == b'\n' {
            break;
        }
        line.push(b);
    }
    let answer: Response = serde_json::from_slice(&line)?;
    if !answer.ok {
        anyhow::bail!(
            "{}",
            answer.error.unwrap_or_else(|| "the daemon refused".into())
        );
    }
    let raw = tty.map(|_| RawMode::enter()).transpose()?;
    // Standard input, read on a thread of its own (a blocking read); its
    // end ends the command's.
    let (input_tx, mut input) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = vec![0u8; 16 << 10];
        let mut stdin = std::io::stdin().lock();
        loop {
            let chunk = match stdin.read(&mut buf) {
                Ok(0) | Err(_) => Vec::new(),
                Ok(n) => buf[..n].to_vec(),
            };
            let end = chunk.is_empty();
            if input_tx.blocking_send(chunk).is_err() || end {
                return;
            }
        }
    });
    tokio::spawn(async move {
        let mut resized =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok();
        loop {
            let frame = tokio::select! {
                chunk = input.recv() => match chunk {
                    None => ExecFrame::StdinEnd,
                    Some(d) if d.is_empty() => ExecFrame::StdinEnd,
                    Some(d) => ExecFrame::Stdin(d),
                },
                Some(()) = async { resized.as_mut()?.recv().await }, if tty.is_some() => {
                    ExecFrame::Resize(term_size())
                }
            };
            let end = frame == ExecFrame::StdinEnd;
            if w.write_all(&frame.encode()).await.is_err() {
                return;
            }
            if end {
                // Keep the socket's sending side open: the daemon takes
                // its end for this command going away.
                std::future::pending::<()>().await;
            }
        }
    });
    let mut frames = crate::exec::frames(r);
    let (code, error) = loop {
        match frames.recv().await {
            Some(Ok(ExecFrame::Stdout(data))) => {
                let mut out = std::io::stdout().lock();
                out.write_all(&data)?;
                out.flush()?;
            }
            Some(Ok(ExecFrame::Stderr(data))) => {
                let mut err = std::io::stderr().lock();
                err.write_all(&data)?;
                err.flush()?;
            }
            Some(Ok(ExecFrame::Exit { code, error })) => break (code, error),
            Some(Ok(_)) => {}
            Some(Err(e)) => break (255, Some(format!("bad answer from the daemon: {e}"))),
            None => {
                break (
                    255,
                    Some("the daemon closed the connection before the command ended".into()),
                );
            }
        }
    };
    drop(raw);
    if let Some(e) = error {
        eprintln!("devd exec: {e}");
    }
    // The stdin task may be blocked in a read that never ends: exit here.
    std::process::exit(code)
}
