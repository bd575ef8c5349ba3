//! The daemon's progress drawn while a command waits (`devd start --wait`,
//! `devd sync`).

use crate::control::{self, Request};
use crate::daemon;
use crate::progress::{self, Progress};
use std::path::PathBuf;
use std::time::Duration;

/// Where the CLI reads the daemon's progress from.
pub(super) enum Source<'a> {
    /// A background daemon, over its control socket.
    Socket(PathBuf),
    /// The one-shot daemon core of `devd sync` without a daemon.
    Handle(&'a daemon::Handle),
}

impl Source<'_> {
    async fn progress(&self) -> Option<Progress> {
        match self {
            Source::Socket(p) => control::request(p, &Request::Status)
                .await
                .ok()
                .flatten()
                .and_then(|r| serde_json::from_value(r.data["progress"].clone()).ok()),
            Source::Handle(h) => h.status().progress,
        }
    }
}

/// Run `work`, drawing the daemon's progress on stderr meanwhile: a bar on
/// a terminal, plain lines otherwise.
pub(super) async fn with_progress<T>(
    src: Source<'_>,
    work: impl std::future::Future<Output = T>,
) -> T {
    let mut view = progress::View::stderr();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tokio::pin!(work);
    loop {
        tokio::select! {
            r = &mut work => {
                view.finish();
                return r;
            }
            _ = tick.tick() => {
                let p = src.progress().await;
                view.show(p.as_ref());
            }
        }
    }
}
