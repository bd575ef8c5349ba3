//! What the daemon asks of the receiver beside syncing, each on a stream
//! of its own on the live connection: build and deploy services again
//! (`devd retry`, and the daemon's start) and remove what was deployed
//! (`devd down`). The receiver answers `Done` with what it concerned, or
//! `Rejected` with why not.

use crate::transport::Link;
use devd_protocol::message::{ClientMsg, ServerMsg};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The uplink's current connection, shared with the daemon's tasks.
pub type Live = Arc<Mutex<Option<Link>>>;

/// How long the receiver may take to answer (a removal deletes
/// containers, images or Kubernetes objects one by one).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// Send `msg` on a new stream of the live connection and wait for its
/// answer: the `Done` items, or the error to show.
pub async fn ask(live: &Live, msg: ClientMsg) -> Result<Vec<String>, String> {
    let conn = live
        .lock()
        .expect("live connection")
        .clone()
        .ok_or_else(|| {
            "not connected to the receiver right now; `devd status` shows why".to_string()
        })?;
    let mut io = conn.open_side().await?;
    io.send(&msg)
        .await
        .map_err(|e| format!("cannot reach the receiver: {e}"))?;
    let answer = tokio::time::timeout(ANSWER_TIMEOUT, io.recv::<ServerMsg>()).await;
    io.finish().await;
    match answer {
        Err(_) => Err(format!(
            "the receiver did not answer within {} s",
            ANSWER_TIMEOUT.as_secs()
        )),
        Ok(Ok(Some(ServerMsg::Done { items }))) => Ok(items),
        Ok(Ok(Some(ServerMsg::Rejected { message, .. }))) => Err(message),
        Ok(Ok(Some(other))) => Err(format!("unexpected answer from the receiver: {other:?}")),
        // An older receiver closes a stream it does not understand.
        Ok(Ok(None)) => Err(
            "the receiver closed the request without an answer: it may be older than this devd; upgrade it"
                .into(),
        ),
        Ok(Err(e)) => Err(format!("lost the receiver's answer: {e}")),
    }
}
