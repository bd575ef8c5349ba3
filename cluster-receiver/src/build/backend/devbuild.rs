//! Builds as cluster resources: every build the Kubernetes backend runs is
//! a `DevBuild` object (group `devd.dev`, namespaced, owned by devd), so
//! `kubectl get devbuilds` lists them.
//!
//! - The CRD is generated from [`DevBuildSpec`] and [`DevBuildStatus`]
//!   (`devd-receiver crd`); `manifests/crd/devbuild.yaml` is that output
//!   and a test keeps the two equal.
//! - A [`Recorder`] per workspace follows the pipeline's build events (it
//!   never sits in the build's path): `Queued` creates the object (phase
//!   `Pending`), `Started` makes it `Running` with the context digest and
//!   tag, then `Built` → `Succeeded` with the image digest, `Reused` →
//!   `Reused` (an image for the context digest existed: no build), and
//!   `Failed` → `Failed` with the error. `Unchanged` (the context digest is
//!   what runs already, nothing to build) deletes it. Statuses are merge
//!   patches of the `/status` subresource. A service's next build is
//!   queued while one runs, so events of two builds interleave; each lands
//!   on its own DevBuild, and a queued one that the running build's
//!   snapshot covered (it never runs on its own) is deleted.
//! - A failed write is logged and the build goes on; with the CRD not
//!   installed (404) or not granted (403) the warning says what to do.
//! - Garbage collection: after each creation, the workspace's DevBuilds of
//!   that service beyond the newest `keep` (by creation time, then
//!   generation) are deleted.

use super::kubernetes::names::{self, FIELD_MANAGER, job_name};
use devd_protocol::event::{BuildEvent, EventKind};
use devd_protocol::message::ServerMsg;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// The DevBuilds kept per service and workspace unless configured.
pub const DEFAULT_KEEP: usize = 20;

/// Longest wait for one API call of the recorder.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// One build of one service of a devd workspace.
// One `printcolumn(...)` per column: clippy reads their repeated keys as
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "devd.dev",
    version = "v1alpha1",
    kind = "DevBuild",
    plural = "devbuilds",
    shortname = "dbuild",
    category = "devd",
    namespaced,
    status = "DevBuildStatus",
    derive = "PartialEq",
    doc = "One image build devd ran for a service of a workspace (created by devd's receiver; `kubectl get devbuilds`).",
    printcolumn(name = "Service", type_ = "string", json_path = ".spec.service"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Digest", type_ = "string", json_path = ".status.digest"),
    printcolumn(
        name = "Duration(ms)",
        type_ = "integer",
        json_path = ".status.durationMs"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Workspace",
        type_ = "string",
        json_path = ".spec.workspace",
        priority = "1"
    ),
    printcolumn(
        name = "Generation",
        type_ = "integer",
        json_path = ".spec.generation",
        priority = "1"
    ),
    printcolumn(
        name = "Error",
        type_ = "string",
        json_path = ".status.error",
        priority = "1"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct DevBuildSpec {
    /// The service (of devd.toml) built.
    pub service: String,
    /// The devd workspace the build is for.
    pub workspace: String,
    /// The sync generation whose change queued the build.
    pub generation: u64,
    /// The image repository the build pushes to.
    pub repository: String,
}

/// Where a build stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Queued, waiting for a build slot.
    Pending,
    /// The context was snapshot and the build runs (or the registry is
    /// asked whether its image exists).
    Running,
    /// The image was built and pushed.
    Succeeded,
    /// The build failed; nothing was deployed.
    Failed,
    /// An image for the context digest existed already: no build ran.
    Reused,
}

impl Phase {
    /// The phase a build ends in, never left again.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Reused)
    }
}

/// What the receiver observed of the build, kept current as it progresses.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DevBuildStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The generation whose worktree was built (later than
    /// `spec.generation` when edits arrived while the build was queued).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub built_generation: Option<u64>,
    /// The build-context digest (blake3, hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// The image tag derived from the context digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The Kaniko Job that ran the build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// When the build started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When the build ended (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    /// How long the build took, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The image built or reused, `repo@sha256:…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The image's manifest digest, `sha256:…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Why the build failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The first line of the generated manifest.
const HEADER: &str = "# Generated by `devd-receiver crd` from cluster-receiver/src/build/backend/devbuild.rs: do not edit.\n";

/// The CRD manifest (YAML), as `devd-receiver crd` prints it and
/// `manifests/crd/devbuild.yaml` holds it.
pub fn crd_yaml() -> String {
    let yaml =
        serde_saphyr::to_string(&DevBuild::crd()).expect("the CRD, plain data, serializes to YAML");
    format!("{HEADER}{yaml}")
}

/// The object name of a build: `{workspace}-{service}-{generation}-{queued at, ms}`,
/// lower-cased to a DNS subdomain name.
pub fn object_name(workspace: &str, service: &str, generation: u64, at_ms: u64) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                let c = c.to_ascii_lowercase();
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .collect::<String>()
            .trim_matches(|c: char| !c.is_ascii_alphanumeric())
            .to_owned()
    };
    let fixed = format!("-{generation}-{at_ms}");
    let head: String = format!("{}-{}", clean(workspace), clean(service))
        .chars()
        .take(253 - fixed.len())
        .collect();
    format!("{}{fixed}", head.trim_end_matches(['-', '.']))
}

fn rfc3339(at_ms: u64) -> Option<String> {
    jiff::Timestamp::from_millisecond(at_ms as i64)
        .ok()
        .map(|t| t.to_string())
}

/// The image repository of a service the catalog declares now (`None`:
/// no such service any more).
pub type Repositories = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The DevBuild a build not yet ended is recorded in.
#[derive(Debug, Clone)]
struct Open {
    name: String,
    /// The generation that queued it.
    generation: u64,
    /// The `Started` event's time, once started.
    started_ms: Option<u64>,
    context: Option<String>,
}

/// One service's DevBuilds not yet ended. The pipeline runs one build per
/// service at a time and queues the next while it runs, so events of two
/// builds interleave: `Queued` (next) can come between `Started` and
/// `Built` (current).
#[derive(Debug, Default)]
struct Service {
    /// Queued, oldest first. More than one when an edit queued a build
    /// while the previous trigger was waiting for its snapshot; one
    /// snapshot then covers both.
    queued: VecDeque<Open>,
    /// Started, not ended.
    running: Option<Open>,
    /// The last build ended well and its deploy runs: a `Failed` now is the
    /// deploy's, not a build's.
    deploying: bool,
}

impl Service {
    /// The oldest queued build, which a snapshot of `generation` starts,
    /// and the other queued ones that snapshot covers too.
    fn take_covered(&mut self, generation: u64) -> (Option<Open>, Vec<Open>) {
        let first = self.queued.pop_front();
        let (covered, later): (VecDeque<Open>, VecDeque<Open>) = std::mem::take(&mut self.queued)
            .into_iter()
            .partition(|o| o.generation <= generation);
        self.queued = later;
        (first, covered.into())
    }
}

/// Records one workspace's builds as DevBuild objects.
pub struct Recorder {
    client: Client,
    namespace: String,
    workspace: String,
    keep: usize,
    repositories: Repositories,
    open: HashMap<String, Service>,
    /// The last write failed (warn once, not per event).
    failing: bool,
}

impl Recorder {
    /// A recorder writing to `namespace`, keeping `keep` (at least 1)
    /// DevBuilds per service.
    pub fn new(
        client: Client,
        namespace: &str,
        workspace: &str,
        keep: usize,
        repositories: Repositories,
    ) -> Self {
        Self {
            client,
            namespace: namespace.to_owned(),
            workspace: workspace.to_owned(),
            keep: keep.max(1),
            repositories,
            open: HashMap::new(),
            failing: false,
        }
    }

    fn api(&self) -> Api<DevBuild> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Follow `events` until the pipeline is gone.
    pub async fn run(mut self, mut events: broadcast::Receiver<ServerMsg>) {
        loop {
            match events.recv().await {
                Ok(ServerMsg::Event(e)) => self.record(&e).await,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(workspace = %self.workspace, missed = n, "DevBuild recorder fell behind the build events; some DevBuild statuses may be stale");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Record one build event.
    pub async fn record(&mut self, e: &BuildEvent) {
        let service = e.service.as_str();
        match &e.kind {
            EventKind::Queued => {
                if let Some(open) = self.begin(e).await {
                    self.service(service).queued.push_back(open);
                }
            }
            EventKind::Started { context, tag } => {
                let (first, covered) = self.service(service).take_covered(e.generation);
                self.delete_all(covered).await;
                let open = match first {
                    Some(o) => Some(o),
                    // The Queued event was missed (the recorder lagged, or
                    // the create failed): record the build from here.
                    None => self.begin(e).await,
                };
                let Some(mut open) = open else {
                    return;
                };
                open.started_ms = Some(e.at_ms);
                open.context = Some(context.clone());
                let status = DevBuildStatus {
                    phase: Some(Phase::Running),
                    built_generation: Some(e.generation),
                    context: Some(context.clone()),
                    tag: Some(tag.clone()),
                    start_time: rfc3339(e.at_ms),
                    ..Default::default()
                };
                let name = open.name.clone();
                let svc = self.service(service);
                svc.running = Some(open);
                svc.deploying = false;
                self.write_status(&name, &status).await;
            }
            EventKind::Reused { context, image } => {
                let Some(open) = self.end_running(service) else {
                    return;
                };
                let status = DevBuildStatus {
                    phase: Some(Phase::Reused),
                    context: Some(context.clone()),
                    image: Some(image.clone()),
                    digest: digest_of(image),
                    completion_time: rfc3339(e.at_ms),
                    duration_ms: open.started_ms.map(|s| e.at_ms.saturating_sub(s)),
                    ..Default::default()
                };
                self.write_status(&open.name, &status).await;
            }
            EventKind::Built { image, duration_ms } => {
                let Some(open) = self.end_running(service) else {
                    return;
                };
                let status = DevBuildStatus {
                    phase: Some(Phase::Succeeded),
                    job_name: open
                        .context
                        .as_deref()
                        .map(|c| job_name(service, e.generation, c)),
                    image: Some(image.clone()),
                    digest: digest_of(image),
                    completion_time: rfc3339(e.at_ms),
                    duration_ms: Some(*duration_ms),
                    ..Default::default()
                };
                self.write_status(&open.name, &status).await;
            }
            EventKind::Failed { error, .. } => {
                let svc = self.service(service);
                let (open, covered) = match svc.running.take() {
                    Some(o) => (o, Vec::new()),
                    // The deploy after a build that went well: the
                    // DevBuild stays as it ended.
                    None if std::mem::take(&mut svc.deploying) => return,
                    // Before Started: the context snapshot failed.
                    None => match svc.take_covered(e.generation) {
                        (Some(o), covered) => (o, covered),
                        (None, _) => return,
                    },
                };
                self.delete_all(covered).await;
                let status = DevBuildStatus {
                    phase: Some(Phase::Failed),
                    job_name: open
                        .context
                        .as_deref()
                        .map(|c| job_name(service, e.generation, c)),
                    error: Some(error.chars().take(1024).collect()),
                    completion_time: rfc3339(e.at_ms),
                    duration_ms: open.started_ms.map(|s| e.at_ms.saturating_sub(s)),
                    ..Default::default()
                };
                self.write_status(&open.name, &status).await;
            }
            EventKind::Unchanged { .. } => {
                // Nothing to build: no build happened, no DevBuild stays.
                let (first, covered) = self.service(service).take_covered(e.generation);
                self.delete_all(first.into_iter().chain(covered).collect())
                    .await;
            }
            EventKind::Deployed { .. } => {
                self.service(service).deploying = false;
            }
            // No build: nothing to record (the Kubernetes backend builds
            // instead of live-updating anyway).
            EventKind::LiveUpdated { .. } => {}
        }
    }

    fn service(&mut self, name: &str) -> &mut Service {
        self.open.entry(name.to_owned()).or_default()
    }

    /// The running build ended (its deploy comes next).
    fn end_running(&mut self, service: &str) -> Option<Open> {
        let svc = self.service(service);
        let open = svc.running.take()?;
        svc.deploying = true;
        Some(open)
    }

    async fn delete_all(&mut self, builds: Vec<Open>) {
        for b in builds {
            self.delete(&b.name).await;
        }
    }

    /// Create the DevBuild of a newly queued build (phase Pending), then
    /// collect the service's old ones.
    async fn begin(&mut self, e: &BuildEvent) -> Option<Open> {
        let repository = (self.repositories)(&e.service)?;
        let name = object_name(&self.workspace, &e.service, e.generation, e.at_ms);
        let mut obj = DevBuild::new(
            &name,
            DevBuildSpec {
                service: e.service.clone(),
                workspace: self.workspace.clone(),
                generation: e.generation,
                repository,
            },
        );
        obj.metadata.labels = Some(self.labels(&e.service));
        if !self.create(&obj).await {
            return None;
        }
        let pending = DevBuildStatus {
            phase: Some(Phase::Pending),
            ..Default::default()
        };
        self.write_status(&name, &pending).await;
        self.collect_garbage(&e.service, &name).await;
        Some(Open {
            name,
            generation: e.generation,
            started_ms: None,
            context: None,
        })
    }

    fn labels(&self, service: &str) -> BTreeMap<String, String> {
        names::labels(&self.workspace, service)
    }

    async fn create(&mut self, obj: &DevBuild) -> bool {
        let builds: Api<DevBuild> = self.api();
        let name = obj.metadata.name.clone().unwrap_or_default();
        let r = timed(builds.create(&PostParams::default(), obj)).await;
        self.outcome(&format!("create DevBuild {name}"), r.map(drop))
    }

    async fn write_status(&mut self, name: &str, status: &DevBuildStatus) {
        let builds: Api<DevBuild> = self.api();
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        };
        let body = serde_json::json!({ "status": status });
        let r = timed(builds.patch_status(name, &pp, &Patch::Merge(&body))).await;
        self.outcome(
            &format!("update the status of DevBuild {name}"),
            r.map(drop),
        );
    }

    async fn delete(&mut self, name: &str) {
        let builds: Api<DevBuild> = self.api();
        let r = timed(builds.delete(name, &DeleteParams::default())).await;
        self.outcome(&format!("delete DevBuild {name}"), r.map(drop));
    }

    /// Delete the service's DevBuilds beyond the newest `keep` (`created`
    /// is the newest).
    async fn collect_garbage(&mut self, service: &str, created: &str) {
        let builds: Api<DevBuild> = self.api();
        let labels = self.labels(service);
        let selector = labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let r = timed(builds.list(&ListParams::default().labels(&selector))).await;
        let list = match r {
            Ok(l) => l,
            Err(e) => {
                self.outcome::<()>(&format!("list the DevBuilds of {service}"), Err(e));
                return;
            }
        };
        // Filter again: the selector is the server's job, but cheap to check.
        let mut mine: Vec<DevBuild> = list
            .items
            .into_iter()
            .filter(|b| {
                let l = b.metadata.labels.clone().unwrap_or_default();
                labels.iter().all(|(k, v)| l.get(k) == Some(v))
            })
            .collect();
        // The one just created is the newest, whatever the clocks say.
        mine.retain(|b| b.metadata.name.as_deref() != Some(created));
        if mine.len() < self.keep {
            return;
        }
        mine.sort_by_key(|b| {
            (
                b.metadata.creation_timestamp.clone(),
                b.spec.generation,
                b.metadata.name.clone(),
            )
        });
        let excess = mine.len() + 1 - self.keep;
        for old in &mine[..excess] {
            let name = old.metadata.name.clone().unwrap_or_default();
            tracing::debug!(devbuild = %name, keep = self.keep, "deleting an old DevBuild");
            self.delete(&name).await;
        }
    }

    /// Log a failed write (a warning when writes start failing, then
    /// quietly until one succeeds); true on success.
    fn outcome<T>(&mut self, what: &str, r: Result<T, kube::Error>) -> bool {
        match r {
            Ok(_) => {
                if std::mem::take(&mut self.failing) {
                    tracing::info!(workspace = %self.workspace, "DevBuild writes work again");
                }
                true
            }
            Err(e) => {
                let hint = match &e {
                    kube::Error::Api(s) if s.code == 404 => {
                        " (is the DevBuild CRD installed? kubectl apply -k manifests/)"
                    }
                    kube::Error::Api(s) if s.code == 403 => {
                        " (grant the receiver's service account devbuilds and devbuilds/status, see manifests/receiver/role.yaml)"
                    }
                    _ => "",
                };
                if self.failing {
                    tracing::debug!(workspace = %self.workspace, error = %e, "cannot {what}{hint}");
                } else {
                    tracing::warn!(workspace = %self.workspace, error = %e, "cannot {what}{hint}; builds go on without their DevBuild");
                }
                self.failing = true;
                false
            }
        }
    }
}

/// The `sha256:…` part of `repo@sha256:…`.
fn digest_of(image: &str) -> Option<String> {
    image.rsplit_once('@').map(|(_, d)| d.to_owned())
}

async fn timed<T>(
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(r) => r,
        Err(_) => Err(kube::Error::Service(
            format!("no answer within {CALL_TIMEOUT:?}").into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_crd_is_the_generated_one() {
        let committed = include_str!("../../../../manifests/crd/devbuild.yaml");
        assert!(
            committed == crd_yaml(),
            "manifests/crd/devbuild.yaml differs from the Rust type; regenerate it with\n    \
             cargo run -p devd-receiver -- crd > manifests/crd/devbuild.yaml"
        );
        let crd = DevBuild::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("devbuilds.devd.dev"));
        assert_eq!(crd.spec.scope, "Namespaced");
    }

    #[test]
    fn object_names_are_dns_subdomains() {
        assert_eq!(
            object_name("default", "web", 7, 1_700_000_000_123),
            "default-web-7-1700000000123"
        );
        assert_eq!(object_name("Alice_2", "api", 1, 5), "alice-2-api-1-5");
        let long = object_name(&"w".repeat(63), &"s".repeat(250), u64::MAX, u64::MAX);
        assert!(long.len() <= 253, "{}", long.len());
        assert!(long.ends_with(&format!("-{}-{}", u64::MAX, u64::MAX)));
        assert_eq!(digest_of("r/x@sha256:ab").as_deref(), Some("sha256:ab"));
        assert!(Phase::Reused.is_final() && !Phase::Running.is_final());
    }
}

/// The recorder's requests, against kube's tower-test mock (no API server
/// can run here): create, status patches per phase, garbage collection,
/// and a failing API that does not stop the recorder.
#[cfg(test)]
mod request_shape_tests {
    use super::*;
    use http::Method;
    use serde_json::{Value, json};

    const IMAGE: &str = "r.example.com:5000/demo/web@sha256:4a5b6c7d8e9f00112233445566778899aabbccddeeff00112233445566778899";

    use crate::api_mock::{ApiMock, Call};

    struct Api(ApiMock);

    impl Api {
        async fn next(&mut self) -> Call {
            self.0.next().await
        }

        /// The next request is a merge patch of `name`'s status; its status.
        async fn status_patch(&mut self, name: &str) -> Value {
            let call = self.next().await;
            call.expect(
                Method::PATCH,
                &format!("/apis/devd.dev/v1alpha1/namespaces/dev/devbuilds/{name}/status"),
                &["fieldManager=devd"],
            );
            assert_eq!(call.content_type, "application/merge-patch+json");
            let status = call.body["status"].clone();
            let mut obj = stored(name, "alice", 1, CREATED);
            obj["status"] = status.clone();
            call.reply(200, &obj);
            status
        }

        /// Create, Pending, then a garbage-collection list answered with
        /// `existing`; the created object.
        async fn queued(&mut self, existing: Vec<Value>) -> Value {
            let create = self.next().await;
            create.expect(
                Method::POST,
                "/apis/devd.dev/v1alpha1/namespaces/dev/devbuilds",
                &[],
            );
            let mut obj = create.body.clone();
            // The server stamps the creation time.
            obj["metadata"]["creationTimestamp"] = json!(CREATED);
            create.reply(201, &obj);
            let name = obj["metadata"]["name"].as_str().unwrap().to_owned();
            assert_eq!(self.status_patch(&name).await, json!({"phase": "Pending"}));
            let list = self.next().await;
            list.expect(
                Method::GET,
                "/apis/devd.dev/v1alpha1/namespaces/dev/devbuilds",
                &[],
            );
            assert!(
                list.query.contains("labelSelector="),
                "GC lists by label: {}",
                list.query
            );
            let mut items = existing;
            items.push(obj.clone());
            list.reply(
                200,
                &json!({"apiVersion": "devd.dev/v1alpha1", "kind": "DevBuildList",
                        "metadata": {}, "items": items}),
            );
            obj
        }
    }

    impl Recorder {
        /// Builds recorded and not ended.
        fn in_flight(&self) -> usize {
            self.open
                .values()
                .map(|s| s.queued.len() + usize::from(s.running.is_some()))
                .sum()
        }
    }

    fn recorder(keep: usize) -> (Recorder, Api) {
        let (client, api) = ApiMock::pair();
        let repositories: Repositories =
            Arc::new(|s: &str| (s != "gone").then(|| format!("r.example.com:5000/demo/{s}")));
        let r = Recorder::new(client, "dev", "alice", keep, repositories);
        (r, Api(api))
    }

    fn event(service: &str, generation: u64, at_ms: u64, kind: EventKind) -> BuildEvent {
        BuildEvent {
            service: service.into(),
            generation,
            at_ms,
            kind,
        }
    }

    /// Record `e` on a task while the test answers the requests.
    fn record(mut r: Recorder, e: BuildEvent) -> tokio::task::JoinHandle<Recorder> {
        tokio::spawn(async move {
            r.record(&e).await;
            r
        })
    }

    /// Record `e` and assert it makes no request at all.
    async fn record_quietly(r: Recorder, e: BuildEvent) -> Recorder {
        tokio::time::timeout(Duration::from_secs(5), record(r, e))
            .await
            .expect("the recorder made a request nobody answered")
            .unwrap()
    }

    const T0: u64 = 1_764_300_000_000;
    const CREATED: &str = "2025-11-28T03:20:00Z";

    fn started(generation: u64, at_ms: u64) -> BuildEvent {
        let context = "c0ffee".repeat(11)[..64].to_owned();
        let tag = format!("devd-{}", &context[..32]);
        event(
            "web",
            generation,
            at_ms,
            EventKind::Started { context, tag },
        )
    }

    #[tokio::test]
    async fn devbuild_request_shape_queued_running_succeeded() {
        let (r, mut api) = recorder(20);
        let task = record(r, event("web", 3, T0, EventKind::Queued));
        let obj = api.queued(Vec::new()).await;
        let r = task.await.unwrap();
        assert_eq!(obj["apiVersion"], "devd.dev/v1alpha1");
        assert_eq!(obj["kind"], "DevBuild");
        assert_eq!(obj["metadata"]["name"], format!("alice-web-3-{T0}"));
        assert_eq!(
            obj["metadata"]["labels"],
            json!({"app.kubernetes.io/managed-by": "devd", "dev.devd/service": "web",
                   "dev.devd/workspace": "alice"})
        );
        assert_eq!(
            obj["spec"],
            json!({"service": "web", "workspace": "alice", "generation": 3,
                   "repository": "r.example.com:5000/demo/web"})
        );
        assert!(obj.get("status").is_none(), "status goes through /status");
        let name = format!("alice-web-3-{T0}");

        // Edits while it waited: the build is of generation 5.
        let task = record(r, started(5, T0 + 1_500));
        let running = api.status_patch(&name).await;
        let r = task.await.unwrap();
        let context = "c0ffee".repeat(11)[..64].to_owned();
        assert_eq!(
            running,
            json!({"phase": "Running", "builtGeneration": 5, "context": context,
                   "tag": format!("devd-{}", &context[..32]),
                   "startTime": "2025-11-28T03:20:01.5Z"})
        );

        let built = EventKind::Built {
            image: IMAGE.into(),
            duration_ms: 41_250,
        };
        let task = record(r, event("web", 5, T0 + 42_750, built));
        let done = api.status_patch(&name).await;
        let r = task.await.unwrap();
        assert_eq!(
            done,
            json!({"phase": "Succeeded", "image": IMAGE,
                   "digest": IMAGE.split_once('@').unwrap().1,
                   "jobName": job_name("web", 5, &context),
                   "completionTime": "2025-11-28T03:20:42.75Z", "durationMs": 41_250})
        );
        // The deploy that follows is not the DevBuild's business, nor is a
        // deploy failure after a successful build.
        let deployed = EventKind::Deployed {
            image: IMAGE.into(),
            url: None,
            total_ms: 1,
        };
        let r = record_quietly(r, event("web", 5, T0 + 43_000, deployed)).await;
        let failed = EventKind::Failed {
            error: "deploy of web failed: rollout".into(),
            log_tail: Vec::new(),
        };
        let r = record_quietly(r, event("web", 5, T0 + 44_000, failed)).await;
        assert!(!r.failing && r.in_flight() == 0);
    }

    #[tokio::test]
    async fn devbuild_request_shape_failed_reused_and_unchanged() {
        let (r, mut api) = recorder(20);
        let task = record(r, event("web", 8, T0, EventKind::Queued));
        api.queued(Vec::new()).await;
        let r = task.await.unwrap();
        let name = format!("alice-web-8-{T0}");
        let task = record(r, started(8, T0 + 100));
        api.status_patch(&name).await;
        let r = task.await.unwrap();
        let failed = EventKind::Failed {
            error: "build of web failed: Kaniko failed (container kaniko exited with code 1)"
                .into(),
            log_tail: vec!["error building image".into()],
        };
        let task = record(r, event("web", 8, T0 + 2_600, failed));
        let status = api.status_patch(&name).await;
        let r = task.await.unwrap();
        let context = "c0ffee".repeat(11)[..64].to_owned();
        assert_eq!(
            status,
            json!({"phase": "Failed",
                   "error": "build of web failed: Kaniko failed (container kaniko exited with code 1)",
                   "jobName": job_name("web", 8, &context),
                   "completionTime": "2025-11-28T03:20:02.6Z", "durationMs": 2_500})
        );

        // An image for the context digest exists: Reused, no Job.
        let task = record(r, event("web", 9, T0 + 10_000, EventKind::Queued));
        api.queued(Vec::new()).await;
        let r = task.await.unwrap();
        let name = format!("alice-web-9-{}", T0 + 10_000);
        let task = record(r, started(9, T0 + 10_100));
        api.status_patch(&name).await;
        let r = task.await.unwrap();
        let reused = EventKind::Reused {
            context: "c0ffee".repeat(11)[..64].to_owned(),
            image: IMAGE.into(),
        };
        let task = record(r, event("web", 9, T0 + 10_400, reused));
        let status = api.status_patch(&name).await;
        let r = task.await.unwrap();
        assert_eq!(status["phase"], "Reused");
        assert_eq!(status["image"], IMAGE);
        assert_eq!(status["durationMs"], 300);
        assert!(status.get("jobName").is_none(), "{status}");

        // Nothing to build (the context is what runs): the DevBuild goes.
        let task = record(r, event("web", 10, T0 + 20_000, EventKind::Queued));
        api.queued(Vec::new()).await;
        let r = task.await.unwrap();
        let unchanged = EventKind::Unchanged {
            context: "c0ffee".repeat(11)[..64].to_owned(),
        };
        let task = record(r, event("web", 10, T0 + 20_050, unchanged));
        let delete = api.next().await;
        delete.expect(
            Method::DELETE,
            &format!(
                "/apis/devd.dev/v1alpha1/namespaces/dev/devbuilds/alice-web-10-{}",
                T0 + 20_000
            ),
            &[],
        );
        delete.reply(
            200,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
        );
        let r = task.await.unwrap();
        assert!(!r.failing && r.in_flight() == 0);
    }

    /// The pipeline queues a service's next build while one runs, and one
    /// snapshot can cover two queued triggers: events of different builds
    /// interleave, and each lands on its own DevBuild.
    #[tokio::test]
    async fn devbuild_request_shape_interleaved_builds_of_one_service() {
        let (r, mut api) = recorder(20);
        let name = |g: u64, at: u64| format!("alice-web-{g}-{}", T0 + at);
        let built = |g: u64, at: u64| {
            event(
                "web",
                g,
                T0 + at,
                EventKind::Built {
                    image: IMAGE.into(),
                    duration_ms: 100,
                },
            )
        };
        let failed = |g: u64, at: u64, error: &str| {
            event(
                "web",
                g,
                T0 + at,
                EventKind::Failed {
                    error: error.into(),
                    log_tail: Vec::new(),
                },
            )
        };
        let deployed = |g: u64, at: u64| {
            event(
                "web",
                g,
                T0 + at,
                EventKind::Deployed {
                    image: IMAGE.into(),
                    url: None,
                    total_ms: 1,
                },
            )
        };

        // Build 1 runs; an edit queues build 2 meanwhile.
        let task = record(r, event("web", 1, T0, EventKind::Queued));
        api.queued(Vec::new()).await;
        let r = task.await.unwrap();
        let task = record(r, started(1, T0 + 10));
        assert_eq!(api.status_patch(&name(1, 0)).await["phase"], "Running");
        let r = task.await.unwrap();
        let task = record(r, event("web", 2, T0 + 20, EventKind::Queued));
        api.queued(Vec::new()).await;
        let r = task.await.unwrap();
        // Build 1 ends: its own DevBuild, not the queued one.
        let task = record(r, built(1, 30));
        assert_eq!(api.status_patch(&name(1, 0)).await["phase"], "Succeeded");
        let r = task.await.unwrap();
        let r = record_quietly(r, deployed(1, 40)).await;
        let task = record(r, started(2, T0 + 50));
        assert_eq!(api.status_patch(&name(2, 20)).await["phase"], "Running");
        let r = task.await.unwrap();
        let task = record(r, failed(2, 60, "build of web failed: Kaniko failed"));
        let status = api.status_patch(&name(2, 20)).await;
        assert_eq!(status["phase"], "Failed");
        let r = task.await.unwrap();

        // Two triggers queued before one snapshot (of generation 4) covers
        // both: the older becomes that build, the other is deleted.
        let task = record(r, event("web", 3, T0 + 100, EventKind::Queued));
        api.queued(Vec::new()).await;
        let r = task.await.unwrap();
        let task = record(r, event("web", 4, T0 + 110, EventKind::Queued));
        api.queued(Vec::new()).await;
        let r = task.await.unwrap();
        let task = record(r, started(4, T0 + 120));
        let delete = api.next().await;
        delete.expect(
            Method::DELETE,
            &format!(
                "/apis/devd.dev/v1alpha1/namespaces/dev/devbuilds/{}",
                name(4, 110)
            ),
            &[],
        );
        delete.reply(
            200,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
        );
        let running = api.status_patch(&name(3, 100)).await;
        assert_eq!(
            (&running["phase"], &running["builtGeneration"]),
            (&json!("Running"), &json!(4))
        );
        let r = task.await.unwrap();
        let task = record(r, built(4, 130));
        assert_eq!(api.status_patch(&name(3, 100)).await["phase"], "Succeeded");
        let r = task.await.unwrap();

        // Build 5 is queued while 4 deploys, and 4's deploy fails: that is
        // not build 5's failure (nor 4's: its build went well).
        let task = record(r, event("web", 5, T0 + 140, EventKind::Queued));
        api.queued(Vec::new()).await;
        let r = task.await.unwrap();
        let r = record_quietly(r, failed(4, 150, "deploy of web failed: rollout")).await;
        assert_eq!(r.in_flight(), 1, "build 5 still queued");
        // Build 5's context snapshot fails before it starts.
        let task = record(r, failed(5, 160, "cannot snapshot the build context"));
        let status = api.status_patch(&name(5, 140)).await;
        assert_eq!(
            status,
            json!({"phase": "Failed", "error": "cannot snapshot the build context",
                   "completionTime": "2025-11-28T03:20:00.16Z"})
        );
        let r = task.await.unwrap();
        assert!(!r.failing && r.in_flight() == 0);
    }

    fn stored(name: &str, workspace: &str, generation: u64, created: &str) -> Value {
        json!({
            "apiVersion": "devd.dev/v1alpha1", "kind": "DevBuild",
            "metadata": {"name": name, "namespace": "dev", "creationTimestamp": created,
                         "labels": {"app.kubernetes.io/managed-by": "devd",
                                    "dev.devd/service": "web", "dev.devd/workspace": workspace}},
            "spec": {"service": "web", "workspace": workspace, "generation": generation,
                     "repository": "r.example.com:5000/demo/web"},
            "status": {"phase": "Succeeded"},
        })
    }

    #[tokio::test]
    async fn devbuild_request_shape_gc_deletes_exactly_the_oldest_beyond_keep() {
        let (r, mut api) = recorder(3);
        let task = record(r, event("web", 12, T0, EventKind::Queued));
        // Four older ones, out of order, two sharing a creation second (the
        // generation decides), and another workspace's that is not ours.
        let existing = vec![
            stored("alice-web-11-b", "alice", 11, "2025-11-28T03:19:00Z"),
            stored("alice-web-9-a", "alice", 9, "2025-11-28T03:10:00Z"),
            stored("bob-web-1-a", "bob", 1, "2025-11-28T01:00:00Z"),
            stored("alice-web-10-b", "alice", 10, "2025-11-28T03:10:00Z"),
            stored("alice-web-4-a", "alice", 4, "2025-11-28T02:00:00Z"),
        ];
        api.queued(existing).await;
        let mut deleted = Vec::new();
        for _ in 0..2 {
            let call = api.next().await;
            assert_eq!(call.method, Method::DELETE);
            deleted.push(call.path.rsplit('/').next().unwrap().to_owned());
            call.reply(
                200,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            );
        }
        assert_eq!(deleted, ["alice-web-4-a", "alice-web-9-a"]);
        assert!(!task.await.unwrap().failing);
    }

    #[tokio::test]
    async fn devbuild_request_shape_a_failing_api_does_not_stop_the_recorder() {
        let (r, mut api) = recorder(20);
        // The CRD is not installed: create answers 404, nothing else is tried.
        let task = record(r, event("web", 1, T0, EventKind::Queued));
        let create = api.next().await;
        create.expect(
            Method::POST,
            "/apis/devd.dev/v1alpha1/namespaces/dev/devbuilds",
            &[],
        );
        create.reply(
            404,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "NotFound", "message": "the server could not find the requested resource",
                    "code": 404}),
        );
        let r = task.await.unwrap();
        assert!(r.failing && r.in_flight() == 0);
        // Started tries again (the CRD may have been installed since).
        let task = record(r, started(1, T0 + 10));
        let create = api.next().await;
        create.expect(
            Method::POST,
            "/apis/devd.dev/v1alpha1/namespaces/dev/devbuilds",
            &[],
        );
        let mut obj = create.body.clone();
        obj["metadata"]["creationTimestamp"] = json!(CREATED);
        create.reply(201, &obj);
        let name = format!("alice-web-1-{}", T0 + 10);
        api.status_patch(&name).await;
        let list = api.next().await;
        list.expect(
            Method::GET,
            "/apis/devd.dev/v1alpha1/namespaces/dev/devbuilds",
            &[],
        );
        list.reply(
            200,
            &json!({"apiVersion": "devd.dev/v1alpha1", "kind": "DevBuildList", "metadata": {}, "items": []}),
        );
        assert_eq!(api.status_patch(&name).await["phase"], "Running");
        let r = task.await.unwrap();
        assert!(!r.failing, "writes work again");
        // A service the catalog no longer declares gets no DevBuild.
        record_quietly(r, event("gone", 2, T0 + 20, EventKind::Queued)).await;
    }
}
