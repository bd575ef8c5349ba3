//! The daemon: wires the watcher, the scanner (on its own thread), the
//! uplink and, in local mode, an embedded receiver on loopback. The same
//! core runs in the background (`devd start`/`devd run`) and one-shot
//! (`devd sync` without a running daemon).

use crate::config::{Config, ConfigError, ReceiverMode, repo_state_dir};
use crate::progress::{Phase, Reporter};
use crate::repo::{Repo, RepoError};
use crate::scanner::{ScanConfig, Scanner};
use crate::status::{BaseMode, DaemonState, ReceiverStatus, ScanStatus, Status};
use crate::uplink::{Snapshot, SyncError, SyncReport, Target, Uplink};
use crate::watcher::{self, Trigger, WatchError};
use backon::BackoffBuilder;
use devd_protocol::message::{Ack, Base};
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
}

/// Errors starting the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Repo(#[from] RepoError),
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
}

/// A running daemon core.
pub struct Handle {
    pub state_dir: PathBuf,
    pub status: Arc<Mutex<Status>>,
    scan_tx: mpsc::Sender<ScanMsg>,
    acked_rx: watch::Receiver<Option<(Ack, Option<SyncReport>)>>,
    pub cancel: CancellationToken,
    tracker: TaskTracker,
    receiver: Option<Embedded>,
    _watcher: Option<watcher::Watcher>,
    /// The uplink's current connection (for `devd logs`).
    pub(crate) live: Arc<Mutex<Option<crate::transport::Link>>>,
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
    tracker.spawn(events_loop(
        events_rx,
        status.clone(),
        lost.clone(),
        notifier,
        started,
    ));

    // Uplink task.
    let live;
    {
        let uplink = Uplink::new(target, repo.clone(), &state_dir)
            .map_err(|source| DaemonError::State {
                path: state_dir.display().to_string(),
                source,
            })?
            .with_events(events_tx, tracker.clone())
            .with_progress(Reporter::for_status(status.clone(), Phase::Uploading));
        live = uplink.live_connection();
        let status = status.clone();
        let cancel = cancel.clone();
        let scan_tx = scan_tx.clone();
        tracker.spawn(uplink_loop(
            uplink, snap_rx, acked_tx, scan_tx, status, cancel, lost,
        ));
    }
    Ok(Handle {
        state_dir,
        status,
        scan_tx,
        acked_rx,
        cancel,
        tracker,
        receiver,
        _watcher: watcher,
        live,
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
        update(&status, |s| s.state = DaemonState::Scanning);
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

/// Fold the receiver's build events into the status.
async fn events_loop(
    mut rx: mpsc::Receiver<Option<devd_protocol::message::ServerMsg>>,
    status: Arc<Mutex<Status>>,
    lost: Arc<tokio::sync::Notify>,
    notifier: crate::notify::Notifier,
    started: std::time::Instant,
) {
    use devd_protocol::ServiceStatus;
    use devd_protocol::message::ServerMsg;
    let mut services: Vec<ServiceStatus> = Vec::new();
    let mut boot = crate::status::BootTracker::new(started);
    while let Some(msg) = rx.recv().await {
        let mut catalog_error = None;
        match msg {
            None => {
                lost.notify_one();
                continue;
            }
            Some(ServerMsg::Services {
                services: s,
                catalog_error: e,
            }) => {
                services = s;
                catalog_error = Some(e);
            }
            Some(ServerMsg::Event(e)) => {
                boot.event(&e);
                match services.iter_mut().find(|s| s.name == e.service) {
                    Some(s) => s.apply(&e),
                    None => {
                        let mut s = ServiceStatus::new(&e.service);
                        s.apply(&e);
                        services.push(s);
                        services.sort_by(|a, b| a.name.cmp(&b.name));
                    }
                }
                if let devd_protocol::EventKind::Failed { error, .. } = &e.kind {
                    tracing::warn!(service = %e.service, %error, "build failed");
                }
                if let Some(s) = services.iter().find(|s| s.name == e.service) {
                    notifier.event(&e, s);
                }
            }
            Some(_) => continue,
        }
        update(&status, |s| {
            s.set_services(services.iter().map(Into::into).collect());
            s.boot = boot.status(&s.services);
            if let Some(e) = catalog_error {
                s.catalog_error = e;
            }
        });
    }
}

/// Build events waiting for the status; the stream waits when it is full.
const EVENTS_QUEUE: usize = 256;
/// First delay after a failed sync or reconnect; it doubles each time.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest delay between failed attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// With nothing to send and nothing lost, look again after this long.
const IDLE_RECHECK: Duration = Duration::from_secs(3600);

/// What the uplink loop does next.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// Bring the receiver to the latest snapshot.
    Sync,
    /// Reconnect, so that build events keep arriving.
    Reconnect,
}

/// When the uplink loop makes its next attempt: at once while a snapshot
/// is pending, after a backoff delay after a failure ([`BACKOFF_MIN`]
/// doubling up to [`BACKOFF_MAX`], reset by a success), and with nothing
/// pending only to reconnect a lost event stream (or every
/// [`IDLE_RECHECK`]). A new snapshot cuts any wait short. Apart from the
/// wait in [`Schedule::next`] this is bookkeeping, so its timing can be
/// tested with paused time and no sockets.
struct Schedule {
    delays: backon::ExponentialBackoff,
    /// Wait this long before the next attempt (once).
    retry_in: Option<Duration>,
    /// The event stream ended: reconnect even without anything to sync.
    reconnect: bool,
}

impl Schedule {
    fn new() -> Self {
        Self {
            delays: Self::backoff(),
            retry_in: None,
            reconnect: false,
        }
    }

    fn backoff() -> backon::ExponentialBackoff {
        backon::ExponentialBuilder::default()
            .with_min_delay(BACKOFF_MIN)
            .with_max_delay(BACKOFF_MAX)
            .without_max_times()
            .build()
    }

    /// Wait for the next attempt, given what the receiver acknowledged;
    /// `None` once `cancel` fires or the scanner is gone.
    async fn next(
        &mut self,
        acked: Option<Ack>,
        snaps: &mut watch::Receiver<Option<Snapshot>>,
        lost: &tokio::sync::Notify,
        cancel: &CancellationToken,
    ) -> Option<Attempt> {
        let pending = snaps
            .borrow()
            .as_ref()
            .is_some_and(|s| acked.is_none_or(|a| a.digest != s.digest || a.base != s.base));
        let wait = match (pending, self.retry_in.take()) {
            (true, None) => None,
            // A retry: of a sync, or of a reconnect for the event stream.
            (true, Some(d)) => Some(d),
            (false, Some(d)) if self.reconnect => Some(d),
            (false, _) => Some(IDLE_RECHECK),
        };
        if let Some(d) = wait {
            tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = tokio::time::sleep(d) => {}
                r = snaps.changed() => if r.is_err() { return None },
                _ = lost.notified(), if !pending => self.reconnect = true,
            }
        }
        if cancel.is_cancelled() {
            return None;
        }
        Some(if self.reconnect && !pending {
            Attempt::Reconnect
        } else {
            Attempt::Sync
        })
    }

    /// A sync succeeded: the next failure backs off from the start.
    fn succeeded(&mut self) {
        self.delays = Self::backoff();
    }

    /// The reconnect succeeded.
    fn reconnected(&mut self) {
        self.reconnect = false;
        self.succeeded();
    }

    /// An attempt failed: the next one comes after the next backoff delay
    /// (returned), in whole milliseconds (the backoff doubles in `f32`
    /// seconds; the timer would round 200.000003 ms up to 201).
    fn failed(&mut self) -> Duration {
        let d = self.delays.next().unwrap_or(BACKOFF_MAX);
        let d = Duration::from_millis(d.as_millis() as u64);
        self.retry_in = Some(d);
        d
    }

    /// Make the next attempt after `d`, whatever the backoff says.
    fn retry_after(&mut self, d: Duration) {
        self.retry_in = Some(d);
    }
}

async fn uplink_loop(
    mut uplink: Uplink,
    mut snap_rx: watch::Receiver<Option<Snapshot>>,
    acked_tx: watch::Sender<Option<(Ack, Option<SyncReport>)>>,
    scan_tx: mpsc::Sender<ScanMsg>,
    status: Arc<Mutex<Status>>,
    cancel: CancellationToken,
    lost: Arc<tokio::sync::Notify>,
) {
    let mut schedule = Schedule::new();
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
                    schedule.failed();
                    update(&status, |s| {
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
                acked_tx.send_replace(Some((ack, report)));
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
            tokio::select! {
                _ = self.cancel.cancelled() => return Err("daemon stopped".into()),
                _ = acked.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use devd_protocol::{GitOid, Overlay};
    use tokio::sync::Notify;

    /// The empty overlay on base commit `[n; 20]`.
    fn snapshot(n: u8) -> Snapshot {
        let overlay = Arc::new(Overlay::new());
        Snapshot {
            base: Base::Commit(GitOid([n; 20])),
            tree: Arc::default(),
            digest: overlay.digest(),
            overlay,
            noticed: Instant::now(),
            held: Arc::default(),
        }
    }

    fn ack_of(s: &Snapshot) -> Ack {
        Ack {
            generation: 1,
            digest: s.digest,
            base: s.base,
        }
    }

    fn ms(d: Duration) -> u64 {
        d.as_millis() as u64
    }

    /// A schedule and what it waits on: the snapshots, the lost event
    /// stream, the daemon's cancellation.
    struct Fixture {
        schedule: Schedule,
        snaps: watch::Sender<Option<Snapshot>>,
        snaps_rx: watch::Receiver<Option<Snapshot>>,
        lost: Arc<Notify>,
        cancel: CancellationToken,
    }

    impl Fixture {
        fn new(snap: Option<Snapshot>) -> Self {
            let (snaps, snaps_rx) = watch::channel(snap);
            Self {
                schedule: Schedule::new(),
                snaps,
                snaps_rx,
                lost: Arc::default(),
                cancel: CancellationToken::new(),
            }
        }

        /// The next attempt, and the (paused, auto-advancing) time it took
        /// to come, in milliseconds. Marks the snapshot seen, as the uplink
        /// loop does.
        async fn next(&mut self, acked: Option<Ack>) -> (Option<Attempt>, u64) {
            let t0 = tokio::time::Instant::now();
            let a = self
                .schedule
                .next(acked, &mut self.snaps_rx, &self.lost, &self.cancel)
                .await;
            self.snaps_rx.borrow_and_update();
            (a, ms(t0.elapsed()))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_syncs_back_off_from_100_ms_doubling_to_5_s_and_a_success_resets_it() {
        let mut f = Fixture::new(Some(snapshot(1)));
        assert_eq!(f.next(None).await, (Some(Attempt::Sync), 0));
        for want in [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000] {
            assert_eq!(ms(f.schedule.failed()), want);
            assert_eq!(f.next(None).await, (Some(Attempt::Sync), want));
        }
        f.schedule.succeeded();
        // Still pending (say the receiver refused): no wait without a failure.
        assert_eq!(f.next(None).await, (Some(Attempt::Sync), 0));
        f.schedule.failed();
        assert_eq!(f.next(None).await, (Some(Attempt::Sync), 100));
        f.schedule.retry_after(Duration::from_millis(5));
        assert_eq!(f.next(None).await, (Some(Attempt::Sync), 5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_event_stream_reconnects_at_once_then_with_backoff_while_idle() {
        let snap = snapshot(1);
        let acked = Some(ack_of(&snap));
        let mut f = Fixture::new(Some(snap));
        let lost = f.lost.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            lost.notify_one();
        });
        // Nothing to sync: the loop sleeps until the stream is lost.
        assert_eq!(f.next(acked).await, (Some(Attempt::Reconnect), 30_000));
        for want in [100, 200, 400] {
            f.schedule.failed();
            assert_eq!(f.next(acked).await, (Some(Attempt::Reconnect), want));
        }
        f.schedule.reconnected();
        // Connected and up to date: only the hourly look remains.
        assert_eq!(f.next(acked).await, (Some(Attempt::Sync), 3_600_000));
        // The backoff started over.
        f.lost.notify_one();
        assert_eq!(f.next(acked).await, (Some(Attempt::Reconnect), 0));
        f.schedule.failed();
        assert_eq!(f.next(acked).await, (Some(Attempt::Reconnect), 100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pending_snapshot_syncs_instead_of_reconnecting() {
        let mut f = Fixture::new(Some(snapshot(1)));
        f.lost.notify_one();
        f.schedule.failed();
        // The sync reconnects by itself; the lost stream is not waited on.
        assert_eq!(f.next(None).await, (Some(Attempt::Sync), 100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_snapshot_cuts_a_backoff_short() {
        let mut f = Fixture::new(Some(snapshot(1)));
        for _ in 0..4 {
            f.schedule.failed();
        }
        let snaps = f.snaps.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            snaps.send_replace(Some(snapshot(2)));
        });
        // The backoff says 800 ms; the edit comes after 300.
        assert_eq!(f.next(None).await, (Some(Attempt::Sync), 300));
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_ends_any_wait() {
        let snap = snapshot(1);
        let acked = Some(ack_of(&snap));
        let mut f = Fixture::new(Some(snap));
        let cancel = f.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            cancel.cancel();
        });
        assert_eq!(f.next(acked).await, (None, 2000));
    }
}
