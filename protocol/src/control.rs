//! The control socket's messages: `devd status`, `devd sync`, `devd stop`
//! and `devd logs` ask the running daemon over a Unix socket, one JSON line
//! each way (`logs` answers with a line per chunk). The socket and the
//! daemon's answers are the daemon's (`devd::control`); the encoding is
//! here, with the other wire formats, so it can be fuzzed on its own.

use serde::{Deserialize, Serialize};

/// A request.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status,
    Sync,
    /// Stop the daemon, and the services' local containers unless
    /// `keep_running`. Answers what it stopped (`stopped`), what it left
    /// running (`kept`), and whether the receiver is embedded.
    Stop {
        #[serde(default)]
        keep_running: bool,
    },
    /// Build and deploy these services (all if empty) again at the
    /// current content. Answers the names queued (`queued`).
    Retry {
        #[serde(default)]
        services: Vec<String>,
    },
    /// Remove what the receiver deployed for this worktree, then stop.
    /// Answers what was removed (`removed`).
    Down,
    /// Become the workspace's writer (`devd start --take-over`), then sync.
    #[serde(rename = "take_over")]
    TakeOver,
    /// A service's logs, streamed.
    Logs {
        service: String,
        build: bool,
        follow: bool,
    },
    /// Run `command` (the container's shell if empty) in a running
    /// container of `service`, with a terminal of `tty`'s size if given.
    /// Answered with one [`Response`] line (`ok`: it runs); then the socket
    /// carries [`ExecFrame`]s both ways until [`ExecFrame::Exit`].
    Exec {
        service: String,
        #[serde(default)]
        command: Vec<String>,
        #[serde(default)]
        tty: Option<crate::message::TermSize>,
    },
}

/// What an exec's socket carries after its answer line, each way: a kind
/// byte, a big-endian `u32` length, then that many bytes. Kinds 0–2 go from
/// the CLI to the daemon, 3–5 back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecFrame {
    /// Bytes for the command's input.
    Stdin(Vec<u8>),
    /// The command's input ends.
    StdinEnd,
    /// The terminal changed size.
    Resize(crate::message::TermSize),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The command ended with this exit status (or could not run: then
    /// `error` says why).
    Exit {
        code: i32,
        error: Option<String>,
    },
}

/// The largest exec frame's body.
pub const MAX_EXEC_FRAME: usize = 1 << 20;

impl ExecFrame {
    /// The frame on the socket.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, body): (u8, Vec<u8>) = match self {
            ExecFrame::Stdin(d) => (0, d.clone()),
            ExecFrame::StdinEnd => (1, Vec::new()),
            ExecFrame::Resize(s) => (2, [s.cols.to_be_bytes(), s.rows.to_be_bytes()].concat()),
            ExecFrame::Stdout(d) => (3, d.clone()),
            ExecFrame::Stderr(d) => (4, d.clone()),
            ExecFrame::Exit { code, error } => {
                let mut b = code.to_be_bytes().to_vec();
                b.extend_from_slice(error.as_deref().unwrap_or("").as_bytes());
                (5, b)
            }
        };
        let mut out = Vec::with_capacity(5 + body.len());
        out.push(kind);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// The length of the frame starting `head` (its first 5 bytes), or why
    /// it is not one.
    pub fn body_len(head: [u8; 5]) -> Result<usize, String> {
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if head[0] > 5 {
            return Err(format!("unknown exec frame kind {}", head[0]));
        }
        if len > MAX_EXEC_FRAME {
            return Err(format!(
                "exec frame of {len} bytes exceeds {MAX_EXEC_FRAME}"
            ));
        }
        Ok(len)
    }

    /// The frame of kind `kind` with `body`.
    pub fn decode(kind: u8, body: Vec<u8>) -> Result<Self, String> {
        Ok(match kind {
            0 => ExecFrame::Stdin(body),
            1 if body.is_empty() => ExecFrame::StdinEnd,
            2 if body.len() == 4 => ExecFrame::Resize(crate::message::TermSize {
                cols: u16::from_be_bytes([body[0], body[1]]),
                rows: u16::from_be_bytes([body[2], body[3]]),
            }),
            3 => ExecFrame::Stdout(body),
            4 => ExecFrame::Stderr(body),
            5 if body.len() >= 4 => {
                let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                let text = String::from_utf8(body[4..].to_vec())
                    .map_err(|_| "exec exit message is not UTF-8".to_string())?;
                ExecFrame::Exit {
                    code,
                    error: (!text.is_empty()).then_some(text),
                }
            }
            k => return Err(format!("malformed exec frame of kind {k}")),
        })
    }
}

/// An answer: `ok` with data, or an error message.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default)]
    pub data: serde_json::Value,
    #[serde(default)]
    pub error: Option<String>,
}

/// One line of the socket: the JSON text and its newline.
pub fn encode_line<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec(msg).expect("control messages serialize");
    out.push(b'\n');
    out
}

/// The request in one line read from the socket.
pub fn decode_request(line: &str) -> Result<Request, serde_json::Error> {
    serde_json::from_str(line)
}

/// The answer in one line read from the socket.
pub fn decode_response(line: &str) -> Result<Response, serde_json::Error> {
    serde_json::from_str(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::TermSize;

    fn roundtrip(f: ExecFrame) -> ExecFrame {
        let bytes = f.encode();
        let head: [u8; 5] = bytes[..5].try_into().unwrap();
        let len = ExecFrame::body_len(head).unwrap();
        assert_eq!(len, bytes.len() - 5);
        ExecFrame::decode(head[0], bytes[5..].to_vec()).unwrap()
    }

    #[test]
    fn exec_frames_round_trip() {
        for f in [
            ExecFrame::Stdin(b"ls\n".to_vec()),
            ExecFrame::StdinEnd,
            ExecFrame::Resize(TermSize {
                cols: 132,
                rows: 43,
            }),
            ExecFrame::Stdout(vec![0, 255, 10]),
            ExecFrame::Stderr(Vec::new()),
            ExecFrame::Exit {
                code: -1,
                error: None,
            },
            ExecFrame::Exit {
                code: 127,
                error: Some("no service named \"x\"".into()),
            },
        ] {
            assert_eq!(roundtrip(f.clone()), f);
        }
    }

    #[test]
    fn bad_exec_frames_are_refused_with_why() {
        assert!(
            ExecFrame::body_len([9, 0, 0, 0, 0])
                .unwrap_err()
                .contains("kind 9")
        );
        assert!(
            ExecFrame::body_len([0, 0xff, 0, 0, 0])
                .unwrap_err()
                .contains("exceeds")
        );
        assert!(ExecFrame::decode(2, vec![1, 2, 3]).is_err());
        assert!(ExecFrame::decode(1, vec![1]).is_err());
        assert!(
            ExecFrame::decode(5, vec![0, 0, 0, 1, 0xff])
                .unwrap_err()
                .contains("UTF-8")
        );
    }
}
