//! The daemon: wires the watcher, the scanner (on its own thread), the
//! uplink and, in local mode, an embedded receiver on loopback. The same
//! core runs in the background (`devd start`/`devd run`) and one-shot
//! (`devd sync` without a running daemon).

use crate::config::{Config, ConfigError, ReceiverMode, repo_state_dir};
use crate::progress::{Phase, Reporter};
use crate::repo::{Repo, RepoError};
use crate::scanner::{ScanConfig, Scanner};
use crate::schedule::{Attempt, IDLE_RECHECK, Schedule};
use crate::status::{BaseMode, DaemonState, ReceiverStatus, ScanStatus, Status};
use crate::uplink::{Snapshot, SyncError, SyncReport, Target, Uplink};
use crate::watcher::{self, Trigger, WatchError};
use devd_protocol::message::{Ack, Base, ClientMsg};
use devd_protocol::session;
use devd_sync::pairing::Pairing;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[cfg(feature = "embedded")]
use crate::embedded::Embedded;

/// Built without the embedded receiver, there is never one to hold.
#[cfg(not(feature = "embedded"))]
enum Embedded {}

#[cfg(not(feature = "embedded"))]
impl Embedded {
    fn worktree(&self) -> PathBuf {
        match *self {}
    }
    async fn drain(self, _grace: Duration) {
        match self {}
    }
    async fn stop_services(&self) -> Result<Vec<String>, String> {
        match *self {}
    }
    async fn remove_deployed(&self) -> Result<Vec<String>, String> {
        match *self {}
    }
}

/// Errors starting the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("{0}")]
    Secrets(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Pairing(#[from] devd_sync::pairing::PairingError),
    #[cfg(feature = "embedded")]
    #[error("embedded receiver: {0}")]
    Receiver(#[from] devd_receiver::RunError),
    #[cfg(not(feature = "embedded"))]
    #[error(
        "this devd was built without the embedded receiver (cargo feature `embedded`): set [receiver] mode = \"remote\" in devd.local.toml, or install devd with default features"
    )]
    NoEmbeddedReceiver,
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error("state directory {path}: {source}")]
    State {
        path: String,
        source: std::io::Error,
    },
    #[error("the repository has no origin remote and no commits the receiver could fetch")]
    NoRemote,
}

/// Messages to the scanner thread.
#[derive(Debug)]
enum ScanMsg {
    /// From the watcher (sent straight into this queue).
    Trigger(Trigger),
    /// Full scan, then answer with the resulting snapshot.
    SyncNow(oneshot::Sender<Snapshot>),
    UploadMode,
    /// A file changed while being sent: hold it (see `Scanner::hold`).
    Hold(crate::unstable::Hold),
    /// These once-unstable files were sent.
    Settled(Vec<devd_protocol::RelPath>),
}

impl From<Trigger> for ScanMsg {
    fn from(t: Trigger) -> Self {
        ScanMsg::Trigger(t)
    }
}

/// How to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub workdir: PathBuf,
    pub home: PathBuf,
    /// Watch the worktree (off for one-shot syncs).
    pub watch: bool,
    /// Take the workspace over from another daemon that writes it.
    pub take_over: bool,
}

/// A running daemon core.
pub struct Handle {
    pub state_dir: PathBuf,
    pub status: Arc<Mutex<Status>>,
    scan_tx: mpsc::Sender<ScanMsg>,
    acked_rx: watch::Receiver<Option<(Ack, Option<SyncReport>)>>,
    /// The receiver's last refusal that retrying will not fix by itself
    /// (a full disk); `None` after a success.
    refusal_rx: watch::Receiver<Option<String>>,
    /// Ends a held-back retry (after a refusal): `devd sync` asks again.
    kick: Arc<tokio::sync::Notify>,
    /// Set to take the workspace over at the next claim.
    take_over: Arc<std::sync::atomic::AtomicBool>,
    pub cancel: CancellationToken,
    tracker: TaskTracker,
    receiver: Option<Embedded>,
    _watcher: Option<watcher::Watcher>,
    /// The uplink's current connection (for `devd logs`, `retry`, `down`).
    pub(crate) live: crate::requests::Live,
    /// Restarts the boot count (`devd retry`).
    boot_restart: Arc<tokio::sync::Notify>,
}

fn update(status: &Arc<Mutex<Status>>, f: impl FnOnce(&mut Status)) {
    f(&mut status.lock().expect("status lock"));
}

fn base_mode(b: Base) -> BaseMode {
    match b {
        Base::Commit(_) => BaseMode::Fetched,
        Base::Uploaded => BaseMode::Uploaded,
    }
}

/// Resolve where the receiver is, starting the embedded one in local mode.
async fn resolve_target(
    cfg: &Config,
    repo: &Repo,
    state_dir: &Path,
    cancel: &CancellationToken,
) -> Result<(Target, Option<Embedded>), DaemonError> {
    let r = &cfg.receiver;
    if r.mode == ReceiverMode::Remote {
        let pairing = match &r.pairing {
            Some(p) => Some(Pairing::load(p)?),
            None => None,
        };
        let pick = |a: &Option<String>, b: Option<&String>| {
            a.clone().or_else(|| b.cloned()).unwrap_or_default()
        };
        let target = Target {
            address: pick(&r.address, pairing.as_ref().map(|p| &p.address)),
            fingerprint: pick(&r.fingerprint, pairing.as_ref().map(|p| &p.fingerprint)),
            token: pick(&r.token, pairing.as_ref().map(|p| &p.token)),
            workspace: r
                .workspace
                .clone()
                .or_else(|| pairing.as_ref().map(|p| p.workspace.clone()))
                .unwrap_or_else(|| "default".into()),
            transport: r.transport,
        };
        return Ok((target, None));
    }
    #[cfg(feature = "embedded")]
    {
        let embedded = crate::embedded::Embedded::start(repo, state_dir, cancel).await?;
        Ok((embedded.target(), Some(embedded)))
    }
    #[cfg(not(feature = "embedded"))]
    {
        let _ = (repo, state_dir, cancel);
        Err(DaemonError::NoEmbeddedReceiver)
    }
}

/// Start the daemon core.
pub async fn start(opts: Options) -> Result<Handle, DaemonError> {
    let started = std::time::Instant::now();
    let repo = Arc::new(Repo::discover(&opts.workdir)?);
    let workdir = repo.workdir().to_owned();
    let cfg = Config::load(&workdir)?;
    // `[secrets]`: refused at start with the Secret and key named (never
    // a value), as a configuration error is.
    // Sent even when empty, so that removed ones go.
    let secrets =
        Some(crate::secrets::collect(&workdir, &cfg.secrets).map_err(DaemonError::Secrets)?);
    let state_dir = repo_state_dir(&opts.home, &workdir);
    // Private: it holds copies of worktree files (sent blobs, the
    // embedded receiver's store) whatever their own modes.
    devd_sync::fsutil::private_dir(&state_dir).map_err(|source| DaemonError::State {
        path: state_dir.display().to_string(),
        source,
    })?;
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (target, receiver) = resolve_target(&cfg, &repo, &state_dir, &cancel).await?;
    let status = Arc::new(Mutex::new(Status {
        state: DaemonState::Starting,
        pid: std::process::id(),
        workdir: workdir.display().to_string(),
        base_mode: BaseMode::Fetched,
        receiver: ReceiverStatus {
            address: target.address.clone(),
            workspace: target.workspace.clone(),
            embedded: receiver.is_some(),
            worktree: receiver
                .as_ref()
                .map(|r| r.worktree().display().to_string()),
            ..Default::default()
        },
        ..Default::default()
    }));
    let (scan_tx, scan_rx) = mpsc::channel::<ScanMsg>(1024);
    let (snap_tx, snap_rx) = watch::channel::<Option<Snapshot>>(None);
    let (acked_tx, acked_rx) = watch::channel(None);
    let (refusal_tx, refusal_rx) = watch::channel(None);
    let kick = Arc::new(tokio::sync::Notify::new());
    let take_over = Arc::new(std::sync::atomic::AtomicBool::new(opts.take_over));

    // Watcher → scanner: the watcher sends into the scanner's queue.
    let watcher = if opts.watch {
        Some(watcher::watch(
            &workdir,
            repo.git_dir(),
            Duration::from_millis(cfg.sync.debounce_ms),
            scan_tx.clone(),
            &tracker,
            &cancel,
        )?)
    } else {
        None
    };

    // Scanner thread.
    {
        let mut scanner = Scanner::new(
            repo.clone(),
            ScanConfig {
                upstream: cfg.sync.upstream.clone(),
                max_file_bytes: cfg.sync.max_file_bytes,
            },
            &state_dir,
        );
        scanner.set_progress(Reporter::for_status(status.clone(), Phase::Scanning));
        let status = status.clone();
        let cancel = cancel.clone();
        std::thread::Builder::new()
            .name("devd-scanner".into())
            .spawn(move || scanner_loop(scanner, scan_rx, snap_tx, status, cancel))
            .map_err(|source| DaemonError::State {
                path: "scanner thread".into(),
                source,
            })?;
    }
    let _ = scan_tx
        .send(ScanMsg::Trigger(Trigger::Full(Instant::now())))
        .await;

    // Build events → status; a lost event stream asks for a reconnect.
    let (events_tx, events_rx) = mpsc::channel(EVENTS_QUEUE);
    let lost = Arc::new(tokio::sync::Notify::new());
    // Desktop notifications (and the tray icon) only for a watching
    // daemon, not for a one-shot sync.
    let notifier = if opts.watch {
        crate::notify::Notifier::start(&cfg.notifications, &tracker, &cancel)
    } else {
        crate::notify::Notifier::disabled()
    };
    #[cfg(all(feature = "tray", target_os = "linux"))]
    if opts.watch {
        crate::tray::spawn(status.clone(), cancel.clone(), &tracker);
    }
    // Uplink task.
    let live;
    let boot_restart = Arc::new(tokio::sync::Notify::new());
    {
        let uplink = Uplink::new(target, repo.clone(), &state_dir)
            .map_err(|source| DaemonError::State {
                path: state_dir.display().to_string(),
                source,
            })?
            .with_events(events_tx, tracker.clone())
            .with_take_over(take_over.clone())
            .with_progress(Reporter::for_status(status.clone(), Phase::Uploading));
        live = uplink.live_connection();
        let events = crate::events::EventsLoop {
            status: status.clone(),
            lost: lost.clone(),
            notifier,
            started,
            retry_on_start: opts.watch.then(|| live.clone()),
            boot_restart: boot_restart.clone(),
            secrets: secrets.clone().map(|s| (live.clone(), s)),
        };
        tracker.spawn(events.run(events_rx));
        let status = status.clone();
        let cancel = cancel.clone();
        let scan_tx = scan_tx.clone();
        let outcome = Outcome {
            acked: acked_tx,
            refusal: refusal_tx,
        };
        let schedule = Schedule::new().with_kick(kick.clone());
        tracker.spawn(uplink_loop(
            uplink, schedule, snap_rx, outcome, scan_tx, status, cancel, lost,
        ));
    }
    Ok(Handle {
        state_dir,
        status,
        scan_tx,
        acked_rx,
        refusal_rx,
        kick,
        take_over,
        cancel,
        tracker,
        receiver,
        _watcher: watcher,
        live,
        boot_restart,
    })
}

fn scanner_loop(
    mut scanner: Scanner,
    mut rx: mpsc::Receiver<ScanMsg>,
    snap_tx: watch::Sender<Option<Snapshot>>,
    status: Arc<Mutex<Status>>,
    cancel: CancellationToken,
) {
    let mut published = false;
    while let Some(first) = rx.blocking_recv() {
        if cancel.is_cancelled() {
            break;
        }
        // Coalesce everything already queued.
        let mut msgs = vec![first];
        while let Ok(m) = rx.try_recv() {
            msgs.push(m);
        }
        let mut full = false;
        let mut paths = Vec::new();
        let mut noticed: Option<Instant> = None;
        let mut waiters = Vec::new();
        let mut index = false;
        for m in msgs {
            tracing::trace!(msg = ?m, "scan request");
            match m {
                ScanMsg::Trigger(Trigger::Paths(mut p, at)) => {
                    paths.append(&mut p);
                    noticed = Some(noticed.map_or(at, |n| n.min(at)));
                }
                ScanMsg::Trigger(Trigger::Full(at)) => {
                    full = true;
                    noticed = Some(noticed.map_or(at, |n| n.min(at)));
                }
                ScanMsg::Trigger(Trigger::Index) => index = true,
                ScanMsg::Trigger(Trigger::Fatal(msg)) => {
                    // The watcher failed for good (e.g. out of inotify
                    // watches): the daemon stops with the hint.
                    tracing::error!("{msg}");
                    update(&status, |s| {
                        s.state = DaemonState::Error;
                        s.last_error = Some(msg);
                    });
                    cancel.cancel();
                    return;
                }
                ScanMsg::SyncNow(w) => {
                    scanner.release_holds();
                    full = true;
                    noticed = Some(noticed.unwrap_or_else(Instant::now));
                    waiters.push(w);
                }
                ScanMsg::UploadMode => {
                    scanner.set_upload_mode(true);
                    full = true;
                    noticed = Some(noticed.unwrap_or_else(Instant::now));
                }
                ScanMsg::Hold(h) => {
                    paths.push(scanner.repo().workdir().join(h.path.as_str()));
                    scanner.hold(h.path, h.keep, h.until, h.tries);
                    noticed = Some(noticed.unwrap_or_else(Instant::now));
                }
                ScanMsg::Settled(p) => {
                    scanner.settled(&p);
                    let listed = scanner.not_synced();
                    update(&status, |s| s.skipped = listed);
                }
            }
        }
        if index
            && !full
            && let Err(e) = scanner.refresh_index()
        {
            tracing::warn!(error = %e, "cannot read the index");
        }
        if !full && paths.is_empty() {
            continue;
        }
        update(&status, |s| {
            // A superseded daemon scans on (its status stays current) but
            // keeps saying it does not sync.
            if s.state != DaemonState::Superseded {
                s.state = DaemonState::Scanning;
            }
        });
        let res = if full {
            scanner.full_scan()
        } else {
            scanner.rescan(&paths)
        };
        match res {
            Ok(out) => {
                tracing::debug!(
                    full,
                    ms = out.elapsed.as_millis() as u64,
                    walked = out.files_walked,
                    hashed = out.files_hashed,
                    changed = out.changed,
                    "scanned"
                );
                let base = scanner.base().clone();
                update(&status, |s| {
                    s.last_scan = Some(ScanStatus {
                        full,
                        ms: out.elapsed.as_millis() as u64,
                        files_walked: out.files_walked,
                        files_hashed: out.files_hashed,
                    });
                    s.base = base.info.as_ref().map(|i| i.commit.to_hex());
                    s.upstream = base.info.as_ref().and_then(|i| i.upstream.clone());
                    s.base_mode = base_mode(base.base);
                    s.overlay_entries = scanner.overlay().len();
                    s.skipped = scanner.not_synced();
                    s.last_error = None;
                });
                update(&status, |s| {
                    if s.state == DaemonState::Scanning {
                        s.state = if s.receiver.connected {
                            DaemonState::Idle
                        } else {
                            DaemonState::Disconnected
                        };
                    }
                });
                if out.changed || !published || !waiters.is_empty() {
                    let overlay = Arc::new(scanner.overlay().clone());
                    let snap = Snapshot {
                        base: base.base,
                        tree: base.tree.clone(),
                        digest: overlay.digest(),
                        overlay,
                        noticed: noticed.unwrap_or_else(Instant::now),
                        held: Arc::new(scanner.held_paths()),
                    };
                    let unchanged = snap_tx
                        .borrow()
                        .as_ref()
                        .is_some_and(|s| s.digest == snap.digest && s.base == snap.base);
                    if !unchanged || !published {
                        snap_tx.send_replace(Some(snap.clone()));
                    }
                    published = true;
                    for w in waiters {
                        let _ = w.send(snap.clone());
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "scan failed; will retry on the next change");
                update(&status, |s| s.last_error = Some(format!("scan: {e}")));
            }
        }
    }
    scanner.save_cache();
}

/// Build events waiting for the status; the stream waits when it is full.
const EVENTS_QUEUE: usize = 256;
/// What the uplink loop publishes: each acknowledgement, and the
/// refusals retrying cannot fix by itself.
struct Outcome {
    acked: watch::Sender<Option<(Ack, Option<SyncReport>)>>,
    refusal: watch::Sender<Option<String>>,
}

#[allow(clippy::too_many_arguments)]
async fn uplink_loop(
    mut uplink: Uplink,
    mut schedule: Schedule,
    mut snap_rx: watch::Receiver<Option<Snapshot>>,
    outcome: Outcome,
    scan_tx: mpsc::Sender<ScanMsg>,
    status: Arc<Mutex<Status>>,
    cancel: CancellationToken,
    lost: Arc<tokio::sync::Notify>,
) {
    let mut unstable = crate::unstable::Unstable::default();
    while let Some(attempt) = schedule
        .next(uplink.acked(), &mut snap_rx, &lost, &cancel)
        .await
    {
        if attempt == Attempt::Reconnect {
            match uplink.ensure_connected().await {
                Ok(()) => {
                    schedule.reconnected();
                    let transport = uplink.transport().map(str::to_owned);
                    update(&status, |s| {
                        s.receiver.connected = true;
                        s.receiver.transport = transport;
                        s.receiver.last_error = None;
                    });
                }
                Err(e) => {
                    let superseded = matches!(e, SyncError::OtherWriter(_));
                    if superseded {
                        tracing::warn!(error = %e, "not the workspace's writer; not syncing");
                        schedule.park();
                        outcome.refusal.send_replace(Some(e.to_string()));
                    } else {
                        schedule.failed();
                    }
                    update(&status, |s| {
                        if superseded {
                            s.state = DaemonState::Superseded;
                            s.last_error = Some(e.to_string());
                        }
                        s.receiver.connected = false;
                        s.receiver.transport = None;
                        s.receiver.last_error = Some(e.to_string());
                    });
                }
            }
            continue;
        }
        let Some(snap) = snap_rx.borrow_and_update().clone() else {
            continue;
        };
        update(&status, |s| s.state = DaemonState::Syncing);
        match uplink.sync(&snap).await {
            Ok(report) => {
                schedule.succeeded();
                let settled = unstable.settled(&snap);
                if !settled.is_empty() {
                    let _ = scan_tx.send(ScanMsg::Settled(settled)).await;
                }
                let ack = uplink.acked().expect("acked after a sync");
                let transport = uplink.transport().map(str::to_owned);
                update(&status, |s| {
                    if s.state == DaemonState::Superseded {
                        s.last_error = None;
                    }
                    s.receiver.transport = transport;
                    s.state = DaemonState::Idle;
                    s.generation = ack.generation;
                    // The receiver fetched the base itself: no reason to upload.
                    if matches!(ack.base, Base::Commit(_)) {
                        s.base_mode_reason = None;
                    }
                    s.overlay_digest = Some(ack.digest.to_hex());
                    s.receiver.connected = true;
                    s.receiver.last_error = None;
                    if let Some(w) = &uplink.receiver_worktree {
                        s.receiver.worktree = Some(w.clone());
                    }
                    if let Some(r) = &report {
                        s.totals.syncs += 1;
                        s.totals.files += r.files;
                        s.totals.bytes_sent += r.bytes_sent;
                        s.totals.bytes_received += r.bytes_received;
                        s.last_sync = Some(r.clone());
                    }
                });
                outcome.refusal.send_replace(None);
                outcome.acked.send_replace(Some((ack, report)));
                if uplink.acked().is_some_and(|a| a.digest != snap.digest) {
                    schedule.retry_after(Duration::ZERO);
                }
            }
            Err(SyncError::Session(session::SyncError::BaseUnavailable(msg))) => {
                tracing::warn!(%msg, "receiver cannot fetch the base; uploading the base content from the laptop");
                update(&status, |s| {
                    s.base_mode = BaseMode::Uploaded;
                    s.base_mode_reason = Some(format!("base unavailable on the receiver: {msg}"));
                });
                let _ = scan_tx.send(ScanMsg::UploadMode).await;
                // Wait for the scanner's uploaded-base snapshot.
                schedule.retry_after(IDLE_RECHECK);
            }
            Err(SyncError::Session(session::SyncError::Changed(path))) => {
                // The connection stays; the file waits (with backoff) at the
                // version the receiver has, and everything else goes now.
                let hold = unstable.changed(path);
                let abs = uplink.workdir().join(hold.path.as_str());
                let rescan = ScanMsg::Trigger(Trigger::Paths(vec![abs], hold.until));
                crate::unstable::send_at(hold.until, scan_tx.clone(), rescan);
                let _ = scan_tx.send(ScanMsg::Hold(hold)).await;
                schedule.retry_after(Duration::from_millis(5));
            }
            Err(e @ SyncError::OtherWriter(_)) => {
                // Another daemon writes the workspace: stop syncing until
                // told to take it over (`devd start --take-over`) or asked
                // to try again (`devd sync`, which then shows why not).
                tracing::warn!(error = %e, "not the workspace's writer; not syncing");
                schedule.park();
                uplink.disconnect();
                update(&status, |s| {
                    s.state = DaemonState::Superseded;
                    s.last_error = Some(e.to_string());
                    s.receiver.connected = false;
                    s.receiver.transport = None;
                    s.receiver.last_error = Some(e.to_string());
                });
                outcome.refusal.send_replace(Some(e.to_string()));
            }
            Err(e @ SyncError::DiskFull(_)) => {
                let d = schedule.hold();
                tracing::warn!(error = %e, retry_s = d.as_secs(), "the receiver's disk is full; holding back retries");
                update(&status, |s| {
                    s.state = DaemonState::Disconnected;
                    s.receiver.connected = uplink.connected();
                    s.receiver.transport = uplink.transport().map(str::to_owned);
                    s.receiver.last_error = Some(e.to_string());
                });
                outcome.refusal.send_replace(Some(e.to_string()));
            }
            Err(e) => {
                let d = schedule.failed();
                tracing::warn!(error = %e, retry_ms = d.as_millis() as u64, "sync failed");
                update(&status, |s| {
                    s.state = DaemonState::Disconnected;
                    s.receiver.connected = uplink.connected();
                    s.receiver.transport = uplink.transport().map(str::to_owned);
                    s.receiver.last_error = Some(e.to_string());
                });
            }
        }
    }
    // Stopped (`devd stop`, a signal): another daemon may write now.
    uplink.release().await;
    uplink.disconnect();
}

impl Handle {
    /// A copy of the status.
    pub fn status(&self) -> Status {
        self.status.lock().expect("status").clone()
    }

    /// Scan everything now and wait until the receiver has applied it.
    /// Fails when syncing keeps failing (receiver unreachable, or refusing)
    /// for `unreachable_after`.
    pub async fn sync(&self, unreachable_after: Duration) -> Result<SyncReport, String> {
        let mut snap = self.scan_now().await?;
        let mut acked = self.acked_rx.clone();
        // A refusal from before this request is not its answer; the kick
        // makes the uplink try again now even if it was holding back.
        let mut refusal = self.refusal_rx.clone();
        refusal.borrow_and_update();
        self.kick.notify_waiters();
        let started = Instant::now();
        loop {
            // The daemon switched to uploading the base after this snapshot
            // was taken: that snapshot will never be acknowledged, the
            // upload-mode one will.
            if matches!(snap.base, Base::Commit(_)) && self.status().base_mode == BaseMode::Uploaded
            {
                snap = self.scan_now().await?;
            }
            if let Some((ack, report)) = acked.borrow_and_update().clone()
                && ack.digest == snap.digest
                && ack.base == snap.base
            {
                let mut r = report.unwrap_or_default();
                r.generation = ack.generation;
                r.overlay_digest = ack.digest.to_hex();
                return Ok(r);
            }
            let st = self.status();
            if st.state == DaemonState::Error {
                return Err(st.last_error.unwrap_or_else(|| "daemon failed".into()));
            }
            if started.elapsed() > unreachable_after
                && let Some(e) = st.receiver.last_error
            {
                return Err(format!("receiver at {}: {e}", st.receiver.address));
            }
            if refusal.has_changed().unwrap_or(false)
                && let Some(r) = refusal.borrow_and_update().clone()
            {
                return Err(r);
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return Err("daemon stopped".into()),
                _ = acked.changed() => {}
                _ = refusal.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// Take the workspace over from the daemon that writes it (at the next
    /// claim), then sync as [`Handle::sync`] does.
    pub async fn take_over(&self, unreachable_after: Duration) -> Result<SyncReport, String> {
        self.take_over
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.sync(unreachable_after).await
    }

    /// A full scan now; its snapshot.
    async fn scan_now(&self) -> Result<Snapshot, String> {
        let (tx, rx) = oneshot::channel();
        self.scan_tx
            .send(ScanMsg::SyncNow(tx))
            .await
            .map_err(|_| "daemon is shutting down".to_string())?;
        rx.await
            .map_err(|_| "scan failed; see the daemon log".to_string())
    }

    /// Build and deploy `services` (every one if empty) again at the
    /// current content (`devd retry`); the names queued. The boot counts
    /// from now if it had not brought every service up.
    pub async fn retry(&self, services: Vec<String>) -> Result<Vec<String>, String> {
        let queued = crate::requests::ask(&self.live, ClientMsg::Retry { services }).await?;
        let boot = self.status().boot;
        if boot.is_none_or(|b| b.ms.is_none() || b.failed > 0) {
            self.boot_restart.notify_one();
        }
        Ok(queued)
    }

    /// Stop what runs for the services on this machine (`devd stop`
    /// without `--keep-running`): the embedded receiver's containers; the
    /// names stopped. A remote receiver's services keep running (`None`).
    pub async fn stop_services(&self) -> Option<Result<Vec<String>, String>> {
        match &self.receiver {
            Some(r) => Some(r.stop_services().await),
            None => None,
        }
    }

    /// Remove what the receiver deployed for this worktree (`devd down`):
    /// in process for the embedded receiver, else over the connection.
    /// One line per thing removed.
    pub async fn remove_deployed(&self) -> Result<Vec<String>, String> {
        match &self.receiver {
            Some(r) => r.remove_deployed().await,
            None => crate::requests::ask(&self.live, ClientMsg::Remove).await,
        }
    }

    /// Stop everything, draining the embedded receiver.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tracker.wait()).await;
        if let Some(r) = self.receiver {
            r.drain(Duration::from_secs(5)).await;
        }
    }
}
