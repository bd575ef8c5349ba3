//! `devd exec` on the local backend: `podman exec` in the service's running
//! container. Without a terminal its standard streams are pipes. With one,
//! `podman exec -t` runs on a pseudo-terminal the receiver opens
//! (pty-process), as the leader of a session it controls: podman reads the
//! terminal's size from it and puts it in raw mode itself, and a resize of
//! it reaches podman as SIGWINCH, which passes it on to the command's
//! terminal.

use super::LocalBackend;
use crate::build::backend::Failure;
use crate::build::backend::exec::{ExecInput, ExecIo, ExecOutput, ExecRequest, copy_output};
use devd_protocol::message::TermSize;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a terminal's last output may take to arrive once the command
/// has exited.
const LAST_OUTPUT: Duration = Duration::from_millis(500);

impl LocalBackend {
    /// Run `req` in the first running container of `service`.
    pub(super) async fn exec_in(
        &self,
        workspace: &str,
        service: &devd_sync::catalog::Service,
        req: ExecRequest,
        io: ExecIo,
    ) -> Result<i32, Failure> {
        let list = self.service_containers(workspace, service).await?;
        let Some((name, _, _)) = list.iter().find(|(_, _, running)| *running) else {
            return Err(Failure::new(format!(
                "{} has no running container (see `devd status`)",
                service.name
            )));
        };
        let mut cmd = self.podman().await?.command();
        cmd.arg("exec").arg("-i");
        if req.tty.is_some() {
            cmd.arg("-t");
        }
        cmd.arg(name).args(req.argv()).kill_on_drop(true);
        match req.tty {
            None => piped(cmd, io).await,
            Some(size) => on_terminal(cmd, size, io).await,
        }
    }
}

fn spawn_failure(e: std::io::Error) -> Failure {
    Failure::new(format!("cannot run podman exec: {e}"))
}

/// The exit status of a command podman ran (podman's own when it failed
/// to run it: 125, or 126/127 as a shell's).
fn code(status: std::process::ExitStatus) -> i32 {
    status.code().unwrap_or(255)
}

/// Without a terminal: standard input, output and error are pipes.
async fn piped(mut cmd: tokio::process::Command, io: ExecIo) -> Result<i32, Failure> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(spawn_failure)?;
    let stdin = child.stdin.take();
    let out = tokio::spawn(copy_output(child.stdout.take(), false, io.output.clone()));
    let err = tokio::spawn(copy_output(child.stderr.take(), true, io.output));
    let mut input = io.input;
    let mut stdin = stdin;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.map_err(spawn_failure)?,
            msg = input.recv() => match msg {
                Some(ExecInput::Data(d)) => {
                    if let Some(s) = stdin.as_mut()
                        && s.write_all(&d).await.is_err()
                    {
                        stdin = None;
                    }
                }
                Some(ExecInput::End) => stdin = None,
                Some(ExecInput::Resize(_)) => {}
                // Whoever asked went away: end the command.
                None => {
                    let _ = child.kill().await;
                    return Err(Failure::new("the exec's client went away"));
                }
            },
        }
    };
    let _ = out.await;
    let _ = err.await;
    Ok(code(status))
}

fn pty_size(size: TermSize) -> pty_process::Size {
    pty_process::Size::new(size.rows, size.cols)
}

fn pty_failure(e: pty_process::Error) -> Failure {
    Failure::new(format!("cannot run podman exec on a terminal: {e}"))
}

/// With a terminal: podman runs on a pseudo-terminal, as the leader of a
/// session it controls, so that a resize reaches it as SIGWINCH.
async fn on_terminal(
    cmd: tokio::process::Command,
    size: TermSize,
    io: ExecIo,
) -> Result<i32, Failure> {
    let (pty, pts) = pty_process::open().map_err(pty_failure)?;
    pty.resize(pty_size(size)).map_err(pty_failure)?;
    let mut child = pty_process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn(pts)
        .map_err(pty_failure)?;
    // `spawn` took the terminal's other end: reading ends (EIO) once the
    // command and podman are gone.
    let (mut reader, mut writer) = pty.into_split();
    let ExecIo { mut input, output } = io;
    let mut buf = vec![0u8; 16 << 10];
    let mut status = None;
    loop {
        tokio::select! {
            s = child.wait(), if status.is_none() => {
                status = Some(s.map_err(spawn_failure)?);
            }
            read = reader.read(&mut buf) => match read {
                Ok(n) if n > 0 => {
                    let chunk = ExecOutput { stderr: false, data: buf[..n].to_vec() };
                    if output.send(chunk).await.is_err() {
                        let _ = child.kill().await;
                        return Err(Failure::new("the exec's client went away"));
                    }
                }
                _ => break,
            },
            msg = input.recv(), if status.is_none() => match msg {
                Some(ExecInput::Data(d)) => {
                    let _ = writer.write_all(&d).await;
                }
                // A terminal has no end of input; Ctrl-D is a byte.
                Some(ExecInput::End) => {}
                Some(ExecInput::Resize(size)) => {
                    let _ = writer.resize(pty_size(size));
                }
                None => {
                    let _ = child.kill().await;
                    return Err(Failure::new("the exec's client went away"));
                }
            },
            // The command exited but something still holds the terminal:
            // what it wrote has arrived by now.
            () = tokio::time::sleep(LAST_OUTPUT), if status.is_some() => break,
        }
    }
    let status = match status {
        Some(s) => s,
        None => child.wait().await.map_err(spawn_failure)?,
    };
    Ok(code(status))
}
