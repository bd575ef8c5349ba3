//! `devd run`: the daemon in the foreground (what `devd start` runs in
//! the background), until SIGTERM, SIGINT or `devd stop`.

use super::Ctx;
use super::lock::{lock_for_daemon, lock_path};
use crate::control;
use crate::daemon::{self, Options};
use anyhow::bail;
use std::sync::Arc;

pub(super) async fn run(ctx: &Ctx, take_over: bool) -> anyhow::Result<()> {
    let _lock = match lock_for_daemon(&lock_path(&ctx.state_dir))? {
        Ok(lock) => lock,
        Err(pid) => {
            let pid = pid.map_or_else(String::new, |p| format!(" (pid {p})"));
            println!("devd is already running for {}{pid}", ctx.workdir.display());
            return Ok(());
        }
    };
    let h = Arc::new(
        daemon::start(Options {
            workdir: ctx.workdir.clone(),
            home: ctx.home.clone(),
            watch: true,
            take_over,
        })
        .await?,
    );
    tracing::info!(workdir = %ctx.workdir.display(), state = %ctx.state_dir.display(), "devd running");
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // The control socket is served alongside (not spawned), so it is over
    // when this returns: it stops once the daemon is cancelled.
    let until_stopped = async {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = h.cancel.cancelled() => {}
        }
        let st = h.status();
        h.cancel.cancel();
        st
    };
    // A daemon nobody can reach (no socket) would only be found by `ps`:
    // when the socket fails, the daemon stops and says why.
    let serve = async {
        let served = control::serve(h.clone(), ctx.socket()).await;
        if served.is_err() {
            h.cancel.cancel();
        }
        served
    };
    let (served, st) = tokio::join!(serve, until_stopped);
    let (failed, err) = match served {
        Err(e) => (
            true,
            Some(format!("control socket {}: {e}", ctx.socket().display())),
        ),
        Ok(()) => (st.state == crate::status::DaemonState::Error, st.last_error),
    };
    if let Ok(h) = Arc::try_unwrap(h) {
        h.shutdown().await;
    }
    if failed {
        bail!("{}", err.unwrap_or_else(|| "daemon failed".into()));
    }
    Ok(())
}
