//! After each applied generation: which services' inputs changed, their
//! build queue, and the events that tell the laptop.
//!
//! - Affected services: a changed path under the service's context or one
//!   of its inputs, a new or edited catalog entry, or (once, after start)
//!   a service with nothing deployed.
//! - Queue: image builds share `concurrency` slots (lookups of existing
//!   images and deploys do not wait for one); each service has at most one
//!   build in flight and at most one queued behind it. Edits during a build
//!   replace the queued one (superseded builds never run).
//! - A build starts by copying the service's context out of the worktree
//!   under the workspace lock, so later applies cannot change its input;
//!   the copy's digest names the image tag. An existing tag is reused, an
//!   unchanged digest does nothing.
//! - What is deployed is remembered (`builds/deployed.json`), so a
//!   restarted receiver neither rebuilds nor redeploys.
//! - The pipeline does not know the workspace: it gets its name, paths and
//!   a [`SnapshotFn`] ([`Source`]) that copies a context out of the
//!   worktree while no generation is applied.
//! - Every build runs on the receiver's `TaskTracker`, so a drain waits for
//!   the builds in flight; once the receiver is cancelled no new build
//!   starts.
//! - Live update instead of a build, when a service declares `live` and a
//!   change allows it, and the re-application of live differences into
//!   containers that start again: [`live_run`].

use crate::build::backend::{Backend, BuildRequest, Failure, Observation, RunningService};
use crate::build::context::{ContextSnapshot, tag_for};
use crate::build::live::LiveDiff;
use devd_protocol::RelPath;
use devd_protocol::event::{BuildEvent, EventKind, ServiceState, ServiceStatus};
use devd_protocol::message::ServerMsg;
use devd_sync::catalog::{Catalog, Service};
use live_run::LiveJob;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{Semaphore, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A service's build context copied out of the worktree.
#[derive(Debug)]
pub struct Snapshotted {
    /// The generation the worktree was at (`None`: none applied yet).
    pub generation: Option<u64>,
    /// The service as declared when the copy was taken, and the copy (or
    /// why it failed); `None`: the service is no longer declared.
    pub copy: Option<(Service, Result<ContextSnapshot, String>)>,
}

/// Which service to copy, asked once no generation can be applied (the
/// catalog changes only while one is).
pub type Lookup = Box<dyn FnOnce() -> Option<Service> + Send>;

/// Copies the build context of the service [`Lookup`] names out of the
/// synced worktree into the directory given, while no generation is being
/// applied; `None` when the workspace is gone.
pub type SnapshotFn = Arc<
    dyn Fn(Lookup, PathBuf) -> Pin<Box<dyn Future<Output = Option<Snapshotted>> + Send>>
        + Send
        + Sync,
>;

mod live_run;
mod requests;
mod stack_run;
pub use live_run::{Read, ReadFn};
pub use stack_run::{RenderFn, RenderJob};

/// What the pipeline gets from the sync half.
#[derive(Clone)]
pub struct Source {
    /// The workspace's name.
    pub name: String,
    /// The materialized worktree (`devd.toml` is read from it).
    pub worktree: PathBuf,
    /// The workspace's directory; the pipeline keeps its state under
    /// `builds/` there.
    pub dir: PathBuf,
    pub snapshot: SnapshotFn,
    pub read: ReadFn,
    pub render: RenderFn,
}

/// Events buffered per subscriber before it gets a fresh snapshot instead.
const EVENT_BUFFER: usize = 1024;

/// What a build was queued for.
#[derive(Debug, Clone, Copy)]
struct Trigger {
    generation: u64,
    /// When the triggering apply finished (save-to-deploy clock).
    since: Instant,
}

#[derive(Debug, Default)]
struct Svc {
    status: ServiceStatus,
    /// A runner task owns this service's builds.
    running: bool,
    pending: Option<Trigger>,
    /// A live update to run when no build is pending (a build covers it).
    live_pending: Option<LiveJob>,
    /// The paths copied into the containers since the image.
    live: LiveDiff,
    /// Paths of failed live updates, retried with the next one.
    unapplied: BTreeSet<RelPath>,
    /// The last failure was a live update's (the image is as deployed).
    live_failed: bool,
    /// Live update is not possible until the next image (said once).
    live_off: Option<String>,
    /// A build or live update runs: container starts are its own.
    busy: bool,
    /// Container starts until then are this pipeline's own (a live
    /// update's `restart = "container"`).
    quiet_until: Option<Instant>,
    /// Context digest of what is deployed.
    deployed_context: Option<String>,
    /// Something was attempted since start.
    attempted: bool,
    /// The last build or deploy failed (what runs is older than the worktree).
    failed: bool,
}

#[derive(Default)]
struct State {
    catalog: Catalog,
    catalog_error: Option<String>,
    services: BTreeMap<String, Svc>,
    /// `[deploy]`: the stack of the repository's manifests.
    stack: stack_run::StackState,
}

/// Persisted record of one deployed service.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct DeployedRecord {
    context: String,
    image: String,
    url: Option<String>,
}

/// One workspace's build pipeline.
pub struct Pipeline {
    workspace: String,
    snapshot: SnapshotFn,
    worktree: PathBuf,
    dir: PathBuf,
    backend: Arc<dyn Backend>,
    slots: Arc<Semaphore>,
    events: broadcast::Sender<ServerMsg>,
    state: Mutex<State>,
    seq: std::sync::atomic::AtomicU64,
    /// Where build tasks run (the receiver's, so a drain waits for them).
    tracker: TaskTracker,
    /// Fired when the receiver shuts down: no new build starts.
    cancel: CancellationToken,
    read: ReadFn,
    /// The backend reports container starts (started once).
    watching: std::sync::atomic::AtomicBool,
    render: RenderFn,
    /// One stack apply at a time.
    stack_lock: tokio::sync::Mutex<()>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Pipeline {
    /// A pipeline for the workspace `ws` with `concurrency` build slots,
    /// its builds spawned on `tracker` until `cancel` fires. Reads what
    /// was deployed before and asks the backend whether it still runs; a
    /// task the backend runs beside the builds (the DevBuild recorder) is
    /// spawned on the same tracker and stops on `cancel`.
    ///
    /// Call it before the workspace is served: it reads `devd.toml` from
    /// the worktree without the workspace lock, as no apply can run yet.
    pub async fn start(
        ws: Source,
        backend: Arc<dyn Backend>,
        concurrency: usize,
        tracker: TaskTracker,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let dir = ws.dir.join("builds");
        let _ = std::fs::create_dir_all(&dir);
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let p = Arc::new(Self {
            workspace: ws.name.clone(),
            snapshot: ws.snapshot,
            worktree: ws.worktree,
            dir,
            backend,
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            events,
            state: Mutex::new(State::default()),
            seq: Default::default(),
            tracker,
            cancel,
            read: ws.read,
            watching: Default::default(),
            render: ws.render,
            stack_lock: Default::default(),
        });
        // Before any build is queued (Kubernetes: DevBuild resources).
        let weak = Arc::downgrade(&p);
        p.backend.observe(Observation {
            workspace: p.workspace.clone(),
            events: p.subscribe(),
            services: Arc::new(move |name: &str| weak.upgrade()?.service(name)),
            tasks: p.tracker.clone(),
            cancel: p.cancel.clone(),
        });
        p.reload_catalog();
        p.adopt().await;
        // `[deploy]`: where the stack stands after a restart (an apply of
        // unchanged objects changes nothing); skipped while nothing was
        // ever synced.
        {
            let mut st = p.state.lock().expect("pipeline state");
            if Self::stack_mode(&st) {
                let trigger = Trigger {
                    generation: 0,
                    since: Instant::now(),
                };
                p.queue_stack(&mut st, trigger);
            }
        }
        p
    }

    fn records_path(&self) -> PathBuf {
        self.dir.join("deployed.json")
    }

    fn load_records(&self) -> BTreeMap<String, DeployedRecord> {
        std::fs::read_to_string(self.records_path())
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    fn save_record(&self, service: &str, rec: DeployedRecord) {
        let mut all = self.load_records();
        all.insert(service.to_owned(), rec);
        if let Err(e) = devd_sync::fsutil::write_atomic(
            &self.records_path(),
            serde_json::to_string_pretty(&all)
                .unwrap_or_default()
                .as_bytes(),
            None,
        ) {
            tracing::warn!(error = %e, "cannot record the deployed services");
        }
    }

    /// After a restart: take over what still runs.
    async fn adopt(self: &Arc<Self>) {
        let records = self.load_records();
        self.seed_stack_images(&records);
        let live_diffs = crate::build::live::load(&self.live_path());
        let services = self
            .state
            .lock()
            .expect("pipeline state")
            .catalog
            .services
            .clone();
        for s in &services {
            let Some(rec) = records.get(&s.name) else {
                continue;
            };
            match self.backend.running(&self.workspace, s).await {
                Ok(Some(RunningService { image, url })) if image == rec.image => {
                    tracing::info!(service = %s.name, %image, "adopted the running deployment");
                    let live = live_diffs.get(&s.name).cloned().unwrap_or_default();
                    let mut st = self.state.lock().expect("pipeline state");
                    if let Some(svc) = st.services.get_mut(&s.name) {
                        svc.live = live;
                        svc.deployed_context = Some(rec.context.clone());
                        svc.status.state = ServiceState::Deployed;
                        svc.status.image = Some(image);
                        svc.status.url = url;
                        svc.status.context = Some(rec.context.clone());
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(service = %s.name, error = %e, "cannot query the running deployment")
                }
            }
        }
        // Live differences of what was not adopted are gone with it.
        self.save_live();
        if services.iter().any(|s| self.live_files(&s.name) > 0) {
            self.watch_starts();
        }
    }

    /// Re-read `devd.toml` from the worktree (caller holds the workspace
    /// lock). Returns the names of services that are new or changed.
    fn reload_catalog(&self) -> Vec<String> {
        let mut st = self.state.lock().expect("pipeline state");
        match Catalog::load(&self.worktree) {
            Ok(c) => {
                let mut changed = Vec::new();
                for s in &c.services {
                    if st.catalog.get(&s.name) != Some(s) {
                        changed.push(s.name.clone());
                    }
                    st.services.entry(s.name.clone()).or_insert_with(|| Svc {
                        status: ServiceStatus::new(&s.name),
                        ..Default::default()
                    });
                }
                let removed: Vec<String> = st
                    .services
                    .keys()
                    .filter(|n| c.get(n).is_none())
                    .cloned()
                    .collect();
                for n in &removed {
                    st.services.remove(n);
                }
                let error_cleared = st.catalog_error.take().is_some();
                let differs = st.catalog != c;
                st.catalog = c;
                if differs || error_cleared {
                    let _ = self.events.send(snapshot_msg(&st));
                }
                changed
            }
            Err(e) => {
                tracing::warn!(workspace = %self.workspace, error = %e, "service catalog not updated");
                st.catalog_error = Some(e.to_string());
                let _ = self.events.send(snapshot_msg(&st));
                Vec::new()
            }
        }
    }

    /// Generation `generation` was applied, changing `changed`. The caller
    /// holds the workspace lock (the worktree is at that generation).
    pub fn on_applied(self: &Arc<Self>, generation: u64, changed: &[RelPath]) {
        let since = Instant::now();
        let catalog_touched = changed
            .iter()
            .any(|p| p.as_str() == devd_sync::catalog::FILE);
        let redefined = if catalog_touched {
            self.reload_catalog()
        } else {
            Vec::new()
        };
        let mut st = self.state.lock().expect("pipeline state");
        let trigger = Trigger { generation, since };
        let affected: Vec<Service> = st
            .catalog
            .services
            .iter()
            .filter(|s| {
                let svc = st.services.get(&s.name);
                redefined.contains(&s.name)
                    || changed.iter().any(|p| s.depends_on(p))
                    || svc.is_some_and(|v| !v.attempted && v.deployed_context.is_none())
            })
            .cloned()
            .collect();
        let mut builds = Vec::new();
        for s in affected {
            match live_run::eligible(self.backend.as_ref(), &st, &s, &redefined, changed) {
                Some(paths) => self.queue_live(&mut st, &s.name, paths, false, trigger),
                None => builds.push(s.name),
            }
        }
        if Self::stack_touched(&st, changed) {
            self.queue_stack(&mut st, trigger);
        }
        self.queue(st, builds, trigger);
    }

    /// Queue a build of each of `names` for `trigger`, starting a runner
    /// for those without one.
    fn queue(
        self: &Arc<Self>,
        mut st: std::sync::MutexGuard<'_, State>,
        names: Vec<String>,
        trigger: Trigger,
    ) {
        for name in names {
            let Some(svc) = st.services.get_mut(&name) else {
                continue;
            };
            svc.attempted = true;
            let was_pending = svc.pending.is_some() || svc.live_pending.is_some();
            // The build's snapshot holds whatever a live update would copy.
            svc.live_pending = None;
            svc.pending = Some(trigger);
            if !was_pending {
                self.emit_locked(svc, &name, trigger.generation, EventKind::Queued);
            }
            if !svc.running {
                svc.running = true;
                let this = self.clone();
                self.tracker
                    .spawn(async move { this.run_service(name).await });
            }
        }
    }

    /// The services the current catalog declares.
    fn declared(&self) -> Vec<Service> {
        self.state
            .lock()
            .expect("pipeline state")
            .catalog
            .services
            .clone()
    }

    /// The log of `service`'s last attempt: the build's output (or the
    /// reuse of an existing image), then the deploy.
    fn attempt_log(&self, service: &str) -> PathBuf {
        self.dir.join(service).join("build.log")
    }

    /// Append `text` to `service`'s attempt log.
    fn log(&self, service: &str, text: &str) {
        use std::io::Write;
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.attempt_log(service))
            .and_then(|mut f| f.write_all(text.as_bytes()));
        if let Err(e) = appended {
            tracing::warn!(%service, error = %e, "cannot write the build log");
        }
    }

    fn emit_locked(&self, svc: &mut Svc, name: &str, generation: u64, kind: EventKind) {
        let e = BuildEvent {
            service: name.to_owned(),
            generation,
            at_ms: now_ms(),
            kind,
        };
        svc.status.apply(&e);
        crate::metrics::build_event(&self.workspace, &e.kind);
        match &e.kind {
            EventKind::Failed { .. } => svc.failed = true,
            EventKind::Deployed { .. } => svc.failed = false,
            EventKind::LiveUpdated { files, .. } if *files > 0 => svc.failed = false,
            _ => {}
        }
        tracing::info!(workspace = %self.workspace, service = %name, generation, event = ?e.kind, "build event");
        let _ = self.events.send(ServerMsg::Event(e));
    }

    fn emit(&self, name: &str, generation: u64, kind: EventKind) {
        let mut st = self.state.lock().expect("pipeline state");
        if let Some(svc) = st.services.get_mut(name) {
            self.emit_locked(svc, name, generation, kind);
        }
    }

    /// Build and deploy `name` until nothing is pending for it (or the
    /// receiver shuts down).
    async fn run_service(self: Arc<Self>, name: String) {
        loop {
            let shutting_down = self.cancel.is_cancelled();
            let Some(job) = ({
                let mut st = self.state.lock().expect("pipeline state");
                match st.services.get_mut(&name) {
                    None => None,
                    Some(svc) => {
                        let job = match (svc.pending.take(), svc.live_pending.take()) {
                            _ if shutting_down => None,
                            (Some(t), _) => Some(Err(t)),
                            (None, Some(l)) => Some(Ok(l)),
                            (None, None) => None,
                        };
                        svc.busy = job.is_some();
                        if job.is_none() {
                            svc.running = false;
                        }
                        job
                    }
                }
            }) else {
                return;
            };
            match job {
                Err(trigger) => self.build_once(&name, trigger).await,
                Ok(live) => self.live_once(&name, live).await,
            }
        }
    }

    async fn build_once(self: &Arc<Self>, name: &str, trigger: Trigger) {
        let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let snap_dir = self.dir.join(name).join(format!("context-{n}"));
        let _ = std::fs::remove_dir_all(&snap_dir);
        // Snapshot the context while no apply can run.
        let lookup: Lookup = {
            let (this, name) = (self.clone(), name.to_owned());
            Box::new(move || this.service(&name))
        };
        let Some(snapped) = (self.snapshot)(lookup, snap_dir.clone()).await else {
            return;
        };
        let generation = snapped.generation.unwrap_or(trigger.generation);
        let Some((service, copy)) = snapped.copy else {
            return;
        };
        // Anything queued up to this generation is covered by this snapshot.
        if let Some(svc) = self
            .state
            .lock()
            .expect("pipeline state")
            .services
            .get_mut(name)
            && svc.pending.is_some_and(|p| p.generation <= generation)
        {
            svc.pending = None;
        }
        // So is a live update queued meanwhile (the new image holds it).
        if let Some(svc) = self
            .state
            .lock()
            .expect("pipeline state")
            .services
            .get_mut(name)
            && svc
                .live_pending
                .as_ref()
                .is_some_and(|j| j.trigger.generation <= generation)
        {
            svc.live_pending = None;
        }
        let snap = match copy {
            Ok(s) => s,
            Err(error) => {
                self.emit(
                    name,
                    generation,
                    EventKind::Failed {
                        error,
                        log_tail: Vec::new(),
                    },
                );
                let _ = std::fs::remove_dir_all(&snap_dir);
                return;
            }
        };
        let outcome = self
            .build_and_deploy(&service, &snap, generation, trigger)
            .await;
        let _ = std::fs::remove_dir_all(&snap_dir);
        if let Err(f) = outcome {
            self.emit(
                name,
                generation,
                EventKind::Failed {
                    error: f.error,
                    log_tail: f.log_tail,
                },
            );
        }
    }

    async fn build_and_deploy(
        &self,
        service: &Service,
        snap: &ContextSnapshot,
        generation: u64,
        trigger: Trigger,
    ) -> Result<(), Failure> {
        let name = &service.name;
        let unchanged = {
            let st = self.state.lock().expect("pipeline state");
            st.services
                .get(name)
                .is_some_and(|s| s.deployed_context.as_deref() == Some(&snap.digest) && !s.failed)
        };
        if unchanged {
            self.emit(
                name,
                generation,
                EventKind::Unchanged {
                    context: snap.digest.clone(),
                },
            );
            return Ok(());
        }
        let repository = self.backend.repository(&service.image);
        let tag = tag_for(&snap.digest);
        self.emit(
            name,
            generation,
            EventKind::Started {
                context: snap.digest.clone(),
                tag: tag.clone(),
            },
        );
        // A new attempt, a new log: whatever fails below is in it.
        let log = self.attempt_log(name);
        if let Some(d) = log.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        let _ = std::fs::write(&log, b"");
        let existing = match self.backend.lookup(&repository, &tag).await {
            Ok(x) => x,
            Err(f) => {
                tracing::warn!(service = %name, error = %f, "image lookup failed; building");
                None
            }
        };
        let image = match existing {
            Some(image) => {
                self.log(
                    name,
                    &format!(
                        "devd: {image} exists already for this content (context {}): reused, not built\n",
                        snap.digest
                    ),
                );
                self.emit(
                    name,
                    generation,
                    EventKind::Reused {
                        context: snap.digest.clone(),
                        image: image.clone(),
                    },
                );
                image
            }
            None => {
                // Only image builds count against `[build] concurrency`:
                // a reused image's lookup and every deploy run at once, so
                // a fresh workspace of prebuilt images comes up in one round.
                let shutting_down = || Failure::new("the receiver is shutting down");
                let _slot = tokio::select! {
                    s = self.slots.clone().acquire_owned() => s.map_err(|_| shutting_down())?,
                    _ = self.cancel.cancelled() => return Err(shutting_down()),
                };
                let started = Instant::now();
                let req = BuildRequest {
                    workspace: self.workspace.clone(),
                    service: service.clone(),
                    generation,
                    context: snap.clone(),
                    repository: repository.clone(),
                    tag,
                    log,
                };
                let image = self.backend.build(&req).await?;
                self.emit(
                    name,
                    generation,
                    EventKind::Built {
                        image: image.clone(),
                        duration_ms: started.elapsed().as_millis() as u64,
                    },
                );
                image
            }
        };
        if self.cancel.is_cancelled() {
            // The daemon stopping has removed the containers (`devd stop`):
            // a build that finishes now must not start a new one.
            return Err(Failure::new(format!(
                "{name} was not deployed: the receiver is shutting down"
            )));
        }
        self.log(name, &format!("devd: deploying {image}\n"));
        let deploy = async {
            if service.run == devd_sync::catalog::Run::Manifests {
                self.deploy_in_stack(service, &image, trigger).await
            } else {
                self.backend.deploy(&self.workspace, service, &image).await
            }
        };
        let deployed = match deploy.await {
            Ok(d) => d,
            Err(f) => {
                let error = format!("deploy of {name} failed: {}", f.error);
                let mut text = format!("devd: {error}\n");
                if !f.log_tail.is_empty() {
                    text.push_str("devd: the end of its output:\n");
                    for l in &f.log_tail {
                        text.push_str(&format!("  {l}\n"));
                    }
                }
                self.log(name, &text);
                return Err(Failure {
                    error,
                    log_tail: f.log_tail,
                });
            }
        };
        self.log(
            name,
            &format!(
                "devd: deployed {image}{}\n",
                deployed
                    .url
                    .as_deref()
                    .map(|u| format!(" at {u}"))
                    .unwrap_or_default()
            ),
        );
        self.save_record(
            name,
            DeployedRecord {
                context: snap.digest.clone(),
                image: image.clone(),
                url: deployed.url.clone(),
            },
        );
        {
            let mut st = self.state.lock().expect("pipeline state");
            if let Some(svc) = st.services.get_mut(name) {
                let same_image = svc.deployed_context.as_deref() == Some(snap.digest.as_str());
                svc.deployed_context = Some(snap.digest.clone());
                // A new image holds everything; the same one (still running
                // or started again) gets its live difference again.
                let again = self.after_deploy(svc, name, same_image);
                self.emit_locked(
                    svc,
                    name,
                    generation,
                    EventKind::Deployed {
                        image,
                        url: deployed.url,
                        total_ms: trigger.since.elapsed().as_millis() as u64,
                    },
                );
                if again {
                    live_run::push(svc, BTreeSet::new(), true, trigger);
                }
            }
        }
        self.save_live();
        Ok(())
    }

    /// Every service's state (and the catalog error), as sent to a new
    /// subscriber.
    pub fn snapshot(&self) -> ServerMsg {
        snapshot_msg(&self.state.lock().expect("pipeline state"))
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ServerMsg> {
        self.events.subscribe()
    }

    /// `service` as the current catalog declares it.
    pub fn service(&self, name: &str) -> Option<Service> {
        self.state
            .lock()
            .expect("pipeline state")
            .catalog
            .get(name)
            .cloned()
    }

    /// The names of the declared services.
    pub fn service_names(&self) -> Vec<String> {
        let st = self.state.lock().expect("pipeline state");
        st.catalog.services.iter().map(|s| s.name.clone()).collect()
    }

    /// The backend that builds and runs the services.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The log of `service`'s last build-and-deploy attempt, if any.
    pub fn build_log(&self, service: &str) -> Option<PathBuf> {
        let p = self.attempt_log(service);
        p.exists().then_some(p)
    }
}

fn snapshot_msg(st: &State) -> ServerMsg {
    ServerMsg::Services {
        services: st.services.values().map(|s| s.status.clone()).collect(),
        catalog_error: st.catalog_error.clone(),
    }
}
