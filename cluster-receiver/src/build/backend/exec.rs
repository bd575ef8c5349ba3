//! What a backend gets to run a command in a running container of a
//! service (`devd exec`): the command, whether it gets a terminal, and the
//! channels its input comes from and its output goes to.

use devd_protocol::message::TermSize;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

/// The shell an empty command means: bash where the image has it, else sh.
pub const SHELL: [&str; 3] = [
    "/bin/sh",
    "-c",
    "if command -v bash >/dev/null 2>&1; then exec bash; else exec sh; fi",
];

/// A command to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecRequest {
    /// The command and its arguments; empty: the container's [`SHELL`].
    pub command: Vec<String>,
    /// Run it on a terminal of this size.
    pub tty: Option<TermSize>,
}

impl ExecRequest {
    /// The command line to run.
    pub fn argv(&self) -> Vec<String> {
        if self.command.is_empty() {
            SHELL.iter().map(|s| s.to_string()).collect()
        } else {
            self.command.clone()
        }
    }
}

/// Input for a running command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecInput {
    Data(Vec<u8>),
    /// Its standard input ends.
    End,
    /// Its terminal changed size.
    Resize(TermSize),
}

/// Output of a running command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    /// From its standard error (else its standard output or terminal).
    pub stderr: bool,
    pub data: Vec<u8>,
}

/// The channels of a running command. When `input` closes, whoever asked
/// went away: the command is ended.
pub struct ExecIo {
    pub input: mpsc::Receiver<ExecInput>,
    pub output: mpsc::Sender<ExecOutput>,
}

/// Copy a command's output `pipe` to `out` in chunks until either ends.
pub async fn copy_output(
    pipe: Option<impl AsyncRead + Unpin>,
    stderr: bool,
    out: mpsc::Sender<ExecOutput>,
) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = vec![0u8; 16 << 10];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            return;
        }
        let chunk = ExecOutput {
            stderr,
            data: buf[..n].to_vec(),
        };
        if out.send(chunk).await.is_err() {
            return;
        }
    }
}
