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
