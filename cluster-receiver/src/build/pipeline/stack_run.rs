//! The stack of the repository's own manifests (`[deploy]`): when to
//! render and apply it, and what the laptop hears.
//!
//! - A service with `Run::Manifests` deploys by an apply of the whole
//!   render with its new image in it; its `Deployed` event waits for the
//!   workloads that run it (a failing one fails the service, with the
//!   pod's reason and log tail).
//! - A change to a file the last render read (a manifest, a kustomization,
//!   a generator's file, `devd.toml`) renders and applies without any
//!   build. So does the first apply after the receiver starts.
//! - Workloads that run a service whose image was never built yet are
//!   held back (`waiting`): applying them would pull an image that does
//!   not exist.
//! - Applies are one at a time; each takes the newest images, so two
//!   builds that end together are covered by one apply and an unchanged
//!   second one.
//! - A render that fails (kubectl's error, a YAML error, a cluster-scoped
//!   object) applies nothing: what runs keeps running, and the error is in
//!   the stack status and `builds/stack.log`.

use super::*;
use crate::build::backend::Deployment;
use crate::build::backend::stack::{Stack, StackObject, StackReport, WorkloadState};
use crate::build::render::{self, RenderError, Rendered};
use devd_protocol::event::{StackStatus, WorkloadInfo};
use devd_protocol::message::Secret;
use std::path::Path;

/// A render to run on the worktree while no generation is applied.
pub type RenderJob = Box<dyn FnOnce(&Path) -> Result<Rendered, RenderError> + Send>;

/// Runs a [`RenderJob`] under the workspace lock: the generation the
/// worktree was at and the render; `None` when the workspace is gone.
pub type RenderFn = Arc<
    dyn Fn(
            RenderJob,
        ) -> Pin<
            Box<dyn Future<Output = Option<(Option<u64>, Result<Rendered, RenderError>)>> + Send>,
        > + Send
        + Sync,
>;

/// The stack's part of the pipeline state.
#[derive(Default)]
pub(super) struct StackState {
    /// The image each devd-built service runs (or is about to).
    pub(super) images: BTreeMap<String, String>,
    /// What the last render read (`None`: nothing rendered yet).
    pub(super) inputs: Option<Vec<RelPath>>,
    pub(super) status: StackStatus,
    /// An apply was asked for since the receiver started.
    pub(super) asked: bool,
    /// `[secrets]` of the laptop's devd.local.toml (`None`: not read from
    /// `builds/secrets.json` yet).
    pub(super) secrets: Option<Vec<Secret>>,
}

/// Where the laptop's Secrets are kept (0600, outside the worktree).
const SECRETS_FILE: &str = "secrets.json";

/// How `secrets.json` holds them: name, then key and value bytes.
type KeptSecrets = Vec<(String, Vec<(String, Vec<u8>)>)>;

/// The Secret object of one `[secrets]` entry.
fn secret_object(s: &Secret, namespace: &str) -> StackObject {
    use base64::Engine;
    let data: serde_json::Map<String, serde_json::Value> = s
        .data
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                base64::engine::general_purpose::STANDARD.encode(v).into(),
            )
        })
        .collect();
    StackObject {
        api_version: "v1".into(),
        kind: "Secret".into(),
        name: s.name.clone(),
        namespace: Some(namespace.to_owned()),
        source: "devd.local.toml [secrets]".into(),
        body: serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": s.name,
                "namespace": namespace,
                "labels": {"app.kubernetes.io/managed-by": "devd"},
            },
            "type": "Opaque",
            "data": data,
        }),
    }
}

/// The kubectl that renders kustomizations (`DEVD_KUBECTL`, else
/// `kubectl` on the PATH).
fn kubectl() -> PathBuf {
    std::env::var_os("DEVD_KUBECTL").map_or_else(|| PathBuf::from("kubectl"), PathBuf::from)
}

impl Pipeline {
    /// Whether the catalog deploys the repository's manifests.
    pub(super) fn stack_mode(st: &State) -> bool {
        st.catalog.deploy.is_some()
    }

    /// Whether applying `changed` should render the stack again.
    pub(super) fn stack_touched(st: &State, changed: &[RelPath]) -> bool {
        let Some(deploy) = &st.catalog.deploy else {
            return false;
        };
        if !st.stack.asked {
            return true;
        }
        let under = |p: &RelPath, i: &str| {
            p.as_str() == i
                || p.as_str()
                    .strip_prefix(i)
                    .is_some_and(|r| r.starts_with('/'))
        };
        let inputs: Vec<String> = match &st.stack.inputs {
            Some(i) => i.iter().map(|p| p.to_string()).collect(),
            // Nothing rendered yet (it failed): what [deploy] names.
            None => deploy
                .roots()
                .into_iter()
                .map(|r| r.map_or(String::new(), |r| r.to_string()))
                .collect(),
        };
        changed.iter().any(|p| {
            p.as_str() == devd_sync::catalog::FILE
                || inputs.iter().any(|i| i.is_empty() || under(p, i))
        })
    }

    /// Render and apply the stack in a task of its own.
    pub(super) fn queue_stack(self: &Arc<Self>, st: &mut State, trigger: Trigger) {
        st.stack.asked = true;
        let this = self.clone();
        self.tracker.spawn(async move {
            if this.cancel.is_cancelled() {
                return;
            }
            if let Err(f) = this.apply_stack(trigger, None).await {
                tracing::warn!(workspace = %this.workspace, error = %f.error, "stack not applied");
            }
        });
    }

    /// The images of the services deployed before a restart, so that a
    /// manifest change applies them again rather than holding them back.
    pub(super) fn seed_stack_images(&self, records: &BTreeMap<String, DeployedRecord>) {
        let mut st = self.state.lock().expect("pipeline state");
        let manifests: Vec<String> = st
            .catalog
            .services
            .iter()
            .filter(|s| s.run == devd_sync::catalog::Run::Manifests)
            .map(|s| s.name.clone())
            .collect();
        for (name, rec) in records {
            if manifests.contains(name) {
                st.stack.images.insert(name.clone(), rec.image.clone());
            }
        }
    }

    /// The laptop's `[secrets]` (replacing those sent before): kept in
    /// the workspace's `builds/secrets.json` (0600), applied with the
    /// stack. A change applies the stack again. Returns their names.
    pub fn set_secrets(self: &Arc<Self>, secrets: Vec<Secret>) -> Result<Vec<String>, String> {
        let names: Vec<String> = secrets.iter().map(|s| s.name.clone()).collect();
        let mut st = self.state.lock().expect("pipeline state");
        let before = self.secrets_locked(&mut st);
        if before == secrets {
            return Ok(names);
        }
        let text = serde_json::to_vec(
            &secrets
                .iter()
                .map(|s| (s.name.clone(), s.data.clone()))
                .collect::<Vec<_>>(),
        )
        .map_err(|e| e.to_string())?;
        devd_sync::fsutil::write_atomic(&self.dir.join(SECRETS_FILE), &text, Some(0o600))
            .map_err(|e| format!("cannot keep the secrets: {e}"))?;
        st.stack.secrets = Some(secrets);
        if Self::stack_mode(&st) && st.stack.asked {
            let trigger = Trigger {
                generation: st.stack.status.generation,
                since: Instant::now(),
            };
            self.queue_stack(&mut st, trigger);
        }
        Ok(names)
    }

    /// The Secrets, read from their file the first time.
    fn secrets_locked(&self, st: &mut State) -> Vec<Secret> {
        if st.stack.secrets.is_none() {
            let kept: KeptSecrets = std::fs::read(self.dir.join(SECRETS_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            st.stack.secrets = Some(
                kept.into_iter()
                    .map(|(name, data)| Secret { name, data })
                    .collect(),
            );
        }
        st.stack.secrets.clone().unwrap_or_default()
    }

    /// Deploy `service`'s new `image` by applying the stack with it: the
    /// URL of a Service that selects its pods, or why one of its
    /// workloads failed.
    pub(super) async fn deploy_in_stack(
        &self,
        service: &Service,
        image: &str,
        trigger: Trigger,
    ) -> Result<Deployment, Failure> {
        let (report, rendered) = self
            .apply_stack(trigger, Some((&service.name, image)))
            .await?;
        let runs = rendered
            .runs
            .get(&service.name)
            .cloned()
            .unwrap_or_default();
        if let Some(w) = report
            .workloads
            .iter()
            .find(|w| runs.contains(&w.key) && w.state == WorkloadState::Failed)
        {
            return Err(Failure {
                error: format!(
                    "{}: {}",
                    w.key,
                    w.reason.as_deref().unwrap_or("did not become ready")
                ),
                log_tail: w.log_tail.clone(),
            });
        }
        let url = rendered
            .services_of(&service.name)
            .iter()
            .find_map(|s| report.urls.get(s).cloned());
        Ok(Deployment { url })
    }

    /// Render the worktree's manifests with the newest images (and
    /// `with`'s) and apply them. One apply at a time.
    async fn apply_stack(
        &self,
        trigger: Trigger,
        with: Option<(&str, &str)>,
    ) -> Result<(StackReport, Rendered), Failure> {
        let _one = self.stack_lock.lock().await;
        let (images, secrets) = {
            let mut st = self.state.lock().expect("pipeline state");
            if let Some((name, image)) = with {
                st.stack.images.insert(name.to_owned(), image.to_owned());
            }
            (st.stack.images.clone(), self.secrets_locked(&mut st))
        };
        let namespace = self.backend.stack_namespace(&self.workspace);
        let job: RenderJob = {
            let images = images.clone();
            let namespace = namespace.clone();
            Box::new(move |root: &Path| {
                let catalog = Catalog::load(root).map_err(|e| RenderError::Invalid {
                    origin: devd_sync::catalog::FILE.into(),
                    problem: e.to_string(),
                })?;
                let image_of = |s: &Service| images.get(&s.name).cloned();
                render::render(&render::Input {
                    root,
                    catalog: &catalog,
                    namespace: &namespace,
                    image_of: &image_of,
                    kubectl: &kubectl(),
                })
            })
        };
        let Some((generation, rendered)) = (self.render)(job).await else {
            return Err(Failure::new("the workspace is gone"));
        };
        let Some(generation) =
            generation.or((trigger.generation > 0).then_some(trigger.generation))
        else {
            // Nothing synced yet (the receiver's start): the first
            // generation renders.
            self.state.lock().expect("pipeline state").stack.asked = false;
            return Err(Failure::new("nothing synced yet"));
        };
        let log = self.dir.join("stack.log");
        let mut rendered = match rendered {
            Ok(r) => r,
            Err(e) => {
                let error = format!("the manifests were not applied: {e}");
                self.stack_log(&log, &format!("devd: {error}\n"));
                self.publish_stack(|s| {
                    s.generation = generation;
                    s.error = Some(error.clone());
                });
                return Err(Failure::new(error));
            }
        };
        // The laptop's Secrets, in place of any of the same name.
        for s in &secrets {
            let obj = secret_object(s, &namespace);
            if let Some(i) = rendered.objects.iter().position(|o| o.key() == obj.key()) {
                rendered.warnings.push(format!(
                    "secret/{} of {} is replaced by the one in devd.local.toml [secrets]",
                    s.name, rendered.objects[i].source
                ));
                rendered.objects.remove(i);
            }
            rendered.objects.push(obj);
        }
        // Hold back workloads of services that have no image yet.
        let waiting: BTreeMap<String, Vec<String>> = rendered
            .runs
            .iter()
            .filter(|(svc, _)| !images.contains_key(*svc))
            .flat_map(|(svc, ws)| ws.iter().map(move |w| (w.clone(), svc.clone())))
            .fold(BTreeMap::new(), |mut m, (w, s)| {
                m.entry(w).or_insert_with(Vec::new).push(s);
                m
            });
        let all_objects = rendered.objects.clone();
        rendered.objects.retain(|o| !waiting.contains_key(&o.key()));
        let stack = Stack {
            objects: rendered.objects.clone(),
            images: images.clone(),
            runs: rendered.runs.clone(),
            log: log.clone(),
        };
        self.stack_log(
            &log,
            &format!(
                "devd: applying {} objects of generation {generation}{}\n",
                stack.objects.len(),
                if waiting.is_empty() {
                    String::new()
                } else {
                    format!(
                        " ({} waiting for a first image: {})",
                        waiting.len(),
                        waiting.keys().cloned().collect::<Vec<_>>().join(", ")
                    )
                }
            ),
        );
        let result = self.backend.apply_stack(&self.workspace, &stack).await;
        rendered.objects = all_objects;
        let report = match result {
            Ok(r) => r,
            Err(f) => {
                let error = format!("the manifests were not applied: {}", f.error);
                self.stack_log(&log, &format!("devd: {error}\n"));
                self.publish_stack(|s| {
                    s.generation = generation;
                    s.error = Some(error.clone());
                });
                return Err(Failure {
                    error,
                    log_tail: f.log_tail,
                });
            }
        };
        for c in &report.changes {
            self.stack_log(&log, &format!("{c}\n"));
        }
        let services_in = |key: &str| -> Vec<String> {
            rendered
                .runs
                .iter()
                .filter(|(_, ws)| ws.iter().any(|w| w == key))
                .map(|(s, _)| s.clone())
                .collect()
        };
        let mut workloads: Vec<WorkloadInfo> = report
            .workloads
            .iter()
            .map(|w| WorkloadInfo {
                key: w.key.clone(),
                state: match w.state {
                    WorkloadState::Ready => "ready",
                    WorkloadState::Failed => "failed",
                    WorkloadState::Skipped => "skipped",
                }
                .into(),
                reason: w.reason.clone(),
                log_tail: w.log_tail.clone(),
                services: services_in(&w.key),
            })
            .collect();
        for (key, services) in &waiting {
            workloads.push(WorkloadInfo {
                key: key.clone(),
                state: "waiting".into(),
                reason: Some(format!(
                    "waiting for the first image of {}",
                    services.join(", ")
                )),
                log_tail: Vec::new(),
                services: services.clone(),
            });
        }
        workloads.sort_by(|a, b| a.key.cmp(&b.key));
        let changed = !report.changes.is_empty();
        let mut warnings = rendered.warnings.clone();
        warnings.extend(report.warnings.iter().cloned());
        self.publish_stack(|s| {
            s.generation = generation;
            s.applied_ms = Some(now_ms());
            if changed || s.total_ms.is_none() {
                s.total_ms = Some(trigger.since.elapsed().as_millis() as u64);
            }
            s.workloads = workloads;
            s.urls = report
                .urls
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            s.changes = report.changes.clone();
            s.error = None;
            s.warnings = warnings;
        });
        self.state.lock().expect("pipeline state").stack.inputs = Some(rendered.inputs.clone());
        Ok((report, rendered))
    }

    /// Change the stack status and tell the subscribers.
    fn publish_stack(&self, change: impl FnOnce(&mut StackStatus)) {
        let mut st = self.state.lock().expect("pipeline state");
        change(&mut st.stack.status);
        let _ = self.events.send(ServerMsg::Stack(st.stack.status.clone()));
    }

    fn stack_log(&self, log: &Path, text: &str) {
        use std::io::Write;
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .and_then(|mut f| f.write_all(text.as_bytes()));
    }

    /// Where the stack stands, for a new subscriber (`None` without
    /// `[deploy]`).
    pub fn stack_report(&self) -> Option<ServerMsg> {
        let st = self.state.lock().expect("pipeline state");
        Self::stack_mode(&st).then(|| ServerMsg::Stack(st.stack.status.clone()))
    }

    /// The log of the stack's applies, if any.
    pub fn stack_log_path(&self) -> Option<PathBuf> {
        let p = self.dir.join("stack.log");
        p.exists().then_some(p)
    }
}
