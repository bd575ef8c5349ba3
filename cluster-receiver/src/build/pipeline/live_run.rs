//! Live update in the pipeline: which saves are copied into a service's
//! running containers instead of building ([`eligible`]), the live jobs of
//! the service's runner, the live difference each service keeps (and its
//! record, `builds/live.json`), and its re-application into containers
//! that start again.
//!
//! - A service is live-updated when it declares `live`, runs an image
//!   this pipeline deployed or adopted, its last failure (if any) was a
//!   live update's, no build is queued, its catalog entry did not change,
//!   and every changed path that affects it falls under its sync rules
//!   ([`crate::build::live::decide`]). Otherwise it builds as before, and
//!   so does every service of a backend without live update.
//! - A live job copies the changed paths and the ones a failed live update
//!   left (`unapplied`); a build queued meanwhile replaces it (the build's
//!   snapshot holds everything). Saves during a live update gather into
//!   the next job, so a burst is one update of the union.
//! - The backend cannot do it (no running container, no `rm` in it, a
//!   backend without live update): said once, and the service builds
//!   images until the next one is deployed.
//! - A container of the service that starts again (reported by
//!   [`Backend::watch_starts`]) gets the whole live difference again
//!   before the service is reported deployed (queued meanwhile). So does
//!   the same image deployed again; a new image resets the difference.

use super::*;
use crate::build::backend::{LiveError, LiveFile, LiveUpdate};
use crate::build::live::{self, Decision, MAX_LIVE_BYTES, WorktreeEntry};
use std::time::Duration;

/// The worktree entries of some paths, read while no generation was
/// applied.
#[derive(Debug)]
pub struct Read {
    /// The generation the worktree was at (`None`: none applied yet).
    pub generation: Option<u64>,
    pub entries: Result<Vec<(RelPath, WorktreeEntry)>, String>,
}

/// Reads the given paths out of the synced worktree while no generation
/// is being applied (live update); `None` when the workspace is gone.
pub type ReadFn =
    Arc<dyn Fn(Vec<RelPath>) -> Pin<Box<dyn Future<Output = Option<Read>> + Send>> + Send + Sync>;

/// A live update waiting for the service's runner.
#[derive(Debug, Clone)]
pub(super) struct LiveJob {
    pub(super) trigger: Trigger,
    /// Repository paths to copy (or delete).
    pub(super) paths: BTreeSet<RelPath>,
    /// The whole live difference again, into containers that started.
    pub(super) reapply: bool,
}

/// Container starts this long after a live update that restarted the
/// container are its own.
const OWN_RESTART: Duration = Duration::from_secs(3);

/// The paths to copy into `s`'s containers if `changed` can be
/// live-updated now; `None`: build.
pub(super) fn eligible(
    backend: &dyn Backend,
    st: &State,
    s: &Service,
    redefined: &[String],
    changed: &[RelPath],
) -> Option<BTreeSet<RelPath>> {
    s.live.as_ref()?;
    if !backend.supports_live_update() {
        return None;
    }
    let svc = st.services.get(&s.name)?;
    if redefined.contains(&s.name)
        || svc.deployed_context.is_none()
        || svc.pending.is_some()
        || svc.live_off.is_some()
        || (svc.failed && !svc.live_failed)
    {
        return None;
    }
    match live::decide(s, changed) {
        Decision::Live(paths) if !paths.is_empty() => Some(paths),
        Decision::Live(_) => None,
        Decision::Build(why) => {
            tracing::info!(service = %s.name, %why, "building, not live-updating");
            None
        }
    }
}

impl Pipeline {
    pub(super) fn live_path(&self) -> PathBuf {
        self.dir.join("live.json")
    }

    /// What `service`'s live updates did since its image (the run
    /// commands' output): `devd logs SERVICE` shows it.
    pub fn live_log(&self, service: &str) -> Option<PathBuf> {
        let p = self.dir.join(service).join("live.log");
        p.exists().then_some(p)
    }

    /// How many paths `service`'s containers have beyond its image.
    pub(super) fn live_files(&self, service: &str) -> usize {
        let st = self.state.lock().expect("pipeline state");
        st.services.get(service).map_or(0, |s| s.live.paths.len())
    }

    /// Record every service's live difference.
    pub(super) fn save_live(&self) {
        let all: BTreeMap<String, LiveDiff> = {
            let st = self.state.lock().expect("pipeline state");
            st.services
                .iter()
                .filter(|(_, s)| !s.live.paths.is_empty())
                .map(|(n, s)| (n.clone(), s.live.clone()))
                .collect()
        };
        live::save(&self.live_path(), &all);
    }

    /// A `LiveUpdated` report (no files) per service whose containers
    /// differ from their image, for a new subscriber after the snapshot.
    pub fn live_reports(&self) -> Vec<ServerMsg> {
        let st = self.state.lock().expect("pipeline state");
        st.services
            .iter()
            .filter(|(_, s)| !s.live.paths.is_empty())
            .map(|(name, s)| {
                ServerMsg::Event(BuildEvent {
                    service: name.clone(),
                    generation: s.status.generation,
                    at_ms: s.live.at_ms.unwrap_or(0),
                    kind: EventKind::LiveUpdated {
                        files: 0,
                        since_image: s.live.paths.len() as u64,
                        total_ms: 0,
                        restarted: false,
                    },
                })
            })
            .collect()
    }

    /// Queue a live job for `name` (merged with one already queued),
    /// starting its runner if needed.
    pub(super) fn queue_live(
        self: &Arc<Self>,
        st: &mut State,
        name: &str,
        paths: BTreeSet<RelPath>,
        reapply: bool,
        trigger: Trigger,
    ) {
        let Some(svc) = st.services.get_mut(name) else {
            return;
        };
        svc.attempted = true;
        let was_pending = svc.pending.is_some() || svc.live_pending.is_some();
        push(svc, paths, reapply, trigger);
        if !was_pending {
            self.emit_locked(svc, name, trigger.generation, EventKind::Queued);
        }
        if !svc.running {
            svc.running = true;
            let (this, name) = (self.clone(), name.to_owned());
            self.tracker
                .spawn(async move { this.run_service(name).await });
        }
    }

    /// After a deploy: a new image resets the live difference; the same
    /// image keeps it, to be applied again (`Some`).
    pub(super) fn after_deploy(&self, svc: &mut Svc, name: &str, same_image: bool) -> bool {
        svc.live_off = None;
        svc.live_failed = false;
        if same_image && (!svc.live.paths.is_empty() || !svc.unapplied.is_empty()) {
            return true;
        }
        svc.live = LiveDiff::default();
        svc.unapplied.clear();
        let _ = std::fs::remove_file(self.dir.join(name).join("live.log"));
        false
    }

    /// Start following container starts (once).
    pub(super) fn watch_starts(self: &Arc<Self>) {
        if self
            .watching
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(64);
        let (backend, workspace, cancel) = (
            self.backend.clone(),
            self.workspace.clone(),
            self.cancel.clone(),
        );
        self.tracker
            .spawn(async move { backend.watch_starts(&workspace, tx, cancel).await });
        let weak = Arc::downgrade(self);
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            loop {
                let name = tokio::select! {
                    _ = cancel.cancelled() => return,
                    n = rx.recv() => match n {
                        Some(n) => n,
                        None => return,
                    },
                };
                let Some(this) = weak.upgrade() else { return };
                this.on_started(&name);
            }
        });
    }

    /// A container of `name` started: queue the re-application of its
    /// live difference, unless the start is this pipeline's own.
    fn on_started(self: &Arc<Self>, name: &str) {
        let mut st = self.state.lock().expect("pipeline state");
        let Some(svc) = st.services.get(name) else {
            return;
        };
        let own = svc.busy
            || svc.pending.is_some()
            || svc.quiet_until.is_some_and(|t| Instant::now() < t);
        if own || (svc.live.paths.is_empty() && svc.unapplied.is_empty()) {
            return;
        }
        tracing::info!(service = %name, files = svc.live.paths.len(), "a container started again: re-applying its live difference");
        let trigger = Trigger {
            generation: svc.status.generation,
            since: Instant::now(),
        };
        self.queue_live(&mut st, name, BTreeSet::new(), true, trigger);
    }

    /// Run one live job (or the build it turns into).
    pub(super) async fn live_once(self: &Arc<Self>, name: &str, job: LiveJob) {
        let Some(service) = self.service(name) else {
            return;
        };
        let paths = {
            let st = self.state.lock().expect("pipeline state");
            let Some(svc) = st.services.get(name) else {
                return;
            };
            let buildable = service.live.is_none()
                || svc.live_off.is_some()
                || svc.deployed_context.is_none()
                || (svc.failed && !svc.live_failed);
            (!buildable).then(|| {
                let mut paths = job.paths.clone();
                paths.extend(svc.unapplied.iter().cloned());
                if job.reapply {
                    paths.extend(svc.live.paths.iter().filter_map(|p| RelPath::new(p).ok()));
                }
                paths
            })
        };
        let Some(paths) = paths else {
            return self.build_once(name, job.trigger).await;
        };
        if paths.is_empty() {
            // A start with nothing to apply again: where it stands.
            let context = self
                .state
                .lock()
                .expect("pipeline state")
                .services
                .get(name)
                .and_then(|s| s.deployed_context.clone())
                .unwrap_or_default();
            self.emit(
                name,
                job.trigger.generation,
                EventKind::Unchanged { context },
            );
            return;
        }
        let Some(read) = (self.read)(paths.iter().cloned().collect()).await else {
            return;
        };
        let generation = read.generation.unwrap_or(job.trigger.generation);
        let entries = match read.entries {
            Ok(e) => e,
            Err(e) => {
                return self.live_failed(name, generation, paths, Failure::new(e));
            }
        };
        let live = service.live.as_ref().expect("checked above");
        let mut files = Vec::new();
        let mut bytes = 0u64;
        for (p, entry) in entries {
            let to = live::context_path(&service, &p).and_then(|c| live::target(live, &c));
            let Some(to) = to else {
                // The rules changed since the job was queued.
                return self.build_once(name, job.trigger).await;
            };
            if let WorktreeEntry::File { data, .. } = &entry {
                bytes += data.len() as u64;
            }
            files.push(LiveFile { to, entry });
        }
        if bytes > MAX_LIVE_BYTES {
            tracing::info!(service = %name, bytes, "too much to copy: building instead");
            return self.build_once(name, job.trigger).await;
        }
        let log = self.attempt_log(name);
        if let Some(d) = log.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        let _ = std::fs::write(
            &log,
            format!(
                "devd: live update of {name} (generation {generation}{}): {} path(s)\n",
                if job.reapply {
                    ", applied again into a container that started"
                } else {
                    ""
                },
                paths.len()
            ),
        );
        let update = LiveUpdate {
            files,
            run: live::commands(&service, &paths),
            restart: live::restart_for(live, job.reapply),
            reapply: job.reapply,
            log: log.clone(),
        };
        let outcome = self
            .backend
            .live_update(&self.workspace, &service, &update)
            .await;
        self.keep_live_log(name, &log);
        match outcome {
            Ok(containers) => {
                let mut st = self.state.lock().expect("pipeline state");
                let Some(svc) = st.services.get_mut(name) else {
                    return;
                };
                svc.unapplied.clear();
                svc.live_failed = false;
                svc.live
                    .paths
                    .extend(paths.iter().map(|p| p.as_str().to_owned()));
                svc.live.at_ms = Some(now_ms());
                if matches!(update.restart, devd_sync::catalog::Restart::Container) {
                    svc.quiet_until = Some(Instant::now() + OWN_RESTART);
                }
                let since_image = svc.live.paths.len() as u64;
                tracing::info!(service = %name, files = paths.len(), containers, "live-updated");
                self.emit_locked(
                    svc,
                    name,
                    generation,
                    EventKind::LiveUpdated {
                        files: paths.len() as u64,
                        since_image,
                        total_ms: job.trigger.since.elapsed().as_millis() as u64,
                        restarted: job.reapply,
                    },
                );
                drop(st);
                self.save_live();
                self.watch_starts();
            }
            Err(LiveError::Unsupported(why)) => {
                tracing::warn!(service = %name, %why, "live update is not possible: building images instead until the next image");
                let note = format!(
                    "devd: live update of {name} is not possible: {why}; building images instead until its next image\n"
                );
                if let Some(svc) = self
                    .state
                    .lock()
                    .expect("pipeline state")
                    .services
                    .get_mut(name)
                {
                    svc.live_off = Some(why);
                }
                self.build_once(name, job.trigger).await;
                // After the build, whose deploy starts a new live log and
                // whose attempt log is new: both say why it built.
                self.log(name, &note);
                self.log_live(name, &note);
            }
            Err(LiveError::Failed(f)) => self.live_failed(name, generation, paths, f),
        }
    }

    /// A live update failed: the service is failed with the output, and
    /// the paths are retried with the next save.
    fn live_failed(&self, name: &str, generation: u64, paths: BTreeSet<RelPath>, f: Failure) {
        let mut st = self.state.lock().expect("pipeline state");
        let Some(svc) = st.services.get_mut(name) else {
            return;
        };
        svc.unapplied.extend(paths);
        svc.live_failed = true;
        self.emit_locked(
            svc,
            name,
            generation,
            EventKind::Failed {
                error: format!("live update of {name} failed: {}", f.error),
                log_tail: f.log_tail,
            },
        );
    }

    /// Append the attempt log of a live update to the service's live log.
    fn keep_live_log(&self, name: &str, attempt: &std::path::Path) {
        if let Ok(text) = std::fs::read_to_string(attempt) {
            let marked: String = text.lines().map(|l| format!("[devd live] {l}\n")).collect();
            self.log_live(name, &marked);
        }
    }

    fn log_live(&self, name: &str, text: &str) {
        use std::io::Write;
        let path = self.dir.join(name).join("live.log");
        if let Some(d) = path.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            let _ = f.write_all(text.as_bytes());
        }
    }
}

/// Merge a live job into `svc`'s queue.
pub(super) fn push(svc: &mut Svc, paths: BTreeSet<RelPath>, reapply: bool, trigger: Trigger) {
    match &mut svc.live_pending {
        Some(job) => {
            job.paths.extend(paths);
            job.reapply |= reapply;
            // Save-to-served counts from the first save it holds.
            job.trigger.generation = trigger.generation;
        }
        None => {
            svc.live_pending = Some(LiveJob {
                trigger,
                paths,
                reapply,
            })
        }
    }
}
