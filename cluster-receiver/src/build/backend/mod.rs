//! Build and deploy backends behind one interface, chosen by the receiver's
//! configuration:
//! - [`local`]: buildah builds, podman runs, on this machine (the embedded
//!   default, no cluster);
//! - [`kubernetes`]: a Kaniko Job per build, a server-side-apply patch of
//!   the Deployment per deploy.
//!   Its builds are also DevBuild resources ([`devbuild`]).
//!
//! The pipeline decides what to build; a backend only knows how. A backend
//! never sees the pipeline itself: what it may follow of a workspace's
//! builds comes as an [`Observation`] (an event stream and a catalog
//! lookup).

pub mod devbuild;
pub mod exec;
pub mod kubernetes;
pub mod local;
pub mod podman;
pub mod registry;
pub mod stack;

use crate::build::context::ContextSnapshot;
use devd_protocol::message::ServerMsg;
use devd_sync::catalog::Service;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a backend finds running for a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningService {
    /// The image reference it runs (`repo@sha256:…` when devd deployed it).
    pub image: String,
    /// Where it answers, if it is exposed.
    pub url: Option<String>,
}

/// A failed build or deploy: what went wrong and the end of the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct Failure {
    pub error: String,
    pub log_tail: Vec<String>,
}

impl Failure {
    /// A failure without a log.
    pub fn new(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            log_tail: Vec::new(),
        }
    }

    /// A failure with the last lines of `log`.
    pub fn with_log(error: impl Into<String>, log: &str) -> Self {
        Self {
            error: error.into(),
            log_tail: tail(log, devd_protocol::event::LOG_TAIL_LINES),
        }
    }
}

/// The last `n` non-empty lines of `text`.
pub fn tail(text: &str, n: usize) -> Vec<String> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

/// One build to run.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub workspace: String,
    pub service: Service,
    pub generation: u64,
    /// The snapshot of the context, owned by the pipeline until the build ends.
    pub context: ContextSnapshot,
    /// Full image repository, e.g. `127.0.0.1:5000/demo/web`.
    pub repository: String,
    /// Tag derived from the context digest.
    pub tag: String,
    /// File the backend writes the build log to.
    pub log: PathBuf,
}

/// What a deploy produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    pub url: Option<String>,
}

/// One path to put into a service's containers (live update).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveFile {
    /// Absolute path in the container.
    pub to: String,
    pub entry: crate::build::live::WorktreeEntry,
}

/// What a live update does in every running container of a service, in
/// this order: delete, copy, run the commands, restart.
#[derive(Debug, Clone)]
pub struct LiveUpdate {
    /// Files and symlinks to write, and paths to delete
    /// ([`WorktreeEntry::Absent`](crate::build::live::WorktreeEntry::Absent)).
    pub files: Vec<LiveFile>,
    /// argv of each command to run, in order.
    pub run: Vec<Vec<String>>,
    pub restart: devd_sync::catalog::Restart,
    /// The containers just started: wait until they accept connections
    /// before writing (their entrypoint may reset what the image has).
    pub reapply: bool,
    /// File the backend appends what it did and the commands' output to.
    pub log: PathBuf,
}

/// A tar (for a live update) of the files and symlinks of `files` at their container paths
/// (deletions are not in it), owned by root, mtime now.
pub fn archive(files: &[LiveFile]) -> std::io::Result<Vec<u8>> {
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut b = tar::Builder::new(Vec::new());
    for f in files {
        let path = f.to.trim_start_matches('/');
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        match &f.entry {
            crate::build::live::WorktreeEntry::File { data, mode } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, data.as_slice())?;
            }
            crate::build::live::WorktreeEntry::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, path, target)?;
            }
            crate::build::live::WorktreeEntry::Absent => {}
        }
    }
    b.into_inner()
}

/// Why a live update did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LiveError {
    /// The backend or the containers cannot do it (no running container,
    /// no `rm` in it, a backend without live update): build instead.
    #[error("{0}")]
    Unsupported(String),
    /// A copy or a command failed: the service is failed until the next
    /// save retries.
    #[error("{0}")]
    Failed(Failure),
}

/// A service as the workspace's current catalog declares it, by name
/// (`None`: the catalog no longer declares it, or the workspace is gone).
pub type ServiceLookup = Arc<dyn Fn(&str) -> Option<Service> + Send + Sync>;

/// What a backend may follow of one workspace's builds, beside the
/// pipeline and never in its path (see [`Backend::observe`]).
pub struct Observation {
    /// The workspace's name.
    pub workspace: String,
    /// The pipeline's messages from its start: build events (queued,
    /// started, built, reused, failed, …) and others. Closed when the
    /// pipeline is gone.
    pub events: broadcast::Receiver<ServerMsg>,
    /// The catalog lookup, for what the events do not carry (e.g. a
    /// service's image repository).
    pub services: ServiceLookup,
    /// Where to spawn a follower task, so that the receiver's drain waits
    /// for it.
    pub tasks: TaskTracker,
    /// Cancelled when the receiver shuts down: a follower stops then.
    pub cancel: CancellationToken,
}

/// A build and deploy backend.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// `"local"` or `"kubernetes"`.
    fn name(&self) -> &'static str;

    /// The full image repository for a service's `image`.
    fn repository(&self, image: &str) -> String;

    /// An image already built for `repository:tag`, as `repo@sha256:…`
    /// (the "build only once" lookup). `Ok(None)`: build it.
    async fn lookup(&self, repository: &str, tag: &str) -> Result<Option<String>, Failure>;

    /// Build the image and store it (push it, with a registry); returns
    /// `repo@sha256:…`. Writes the build log to `req.log`.
    async fn build(&self, req: &BuildRequest) -> Result<String, Failure>;

    /// Run `image` for `service`, replacing what ran before only once the
    /// new version is up; on failure the previous version keeps running.
    async fn deploy(
        &self,
        workspace: &str,
        service: &Service,
        image: &str,
    ) -> Result<Deployment, Failure>;

    /// Send what `service`'s running container prints to `out`, in chunks;
    /// with `follow`, keep sending new output until `out` is closed.
    async fn logs(
        &self,
        workspace: &str,
        service: &Service,
        follow: bool,
        out: tokio::sync::mpsc::Sender<Vec<u8>>,
    ) -> Result<(), Failure>;

    /// Run `req`'s command in a running container of `service`, its input
    /// and output through `io`, and return its exit status (`devd exec`).
    async fn exec(
        &self,
        workspace: &str,
        service: &Service,
        req: exec::ExecRequest,
        io: exec::ExecIo,
    ) -> Result<i32, Failure> {
        let _ = (workspace, req, io);
        Err(Failure::new(format!(
            "the {} backend cannot run commands in {}'s containers",
            self.name(),
            service.name
        )))
    }

    /// What runs for `service` right now (after a receiver restart).
    async fn running(
        &self,
        workspace: &str,
        service: &Service,
    ) -> Result<Option<RunningService>, Failure>;

    /// Stop what runs for `services` of `workspace` on this machine, for
    /// a laptop daemon that stops (`devd stop`); the names of the services
    /// stopped. By default nothing: a cluster's deployments keep running
    /// without the laptop.
    async fn stop(&self, workspace: &str, services: &[Service]) -> Result<Vec<String>, Failure> {
        let _ = (workspace, services);
        Ok(Vec::new())
    }

    /// Remove what this backend created for `services` of `workspace`
    /// (`devd down`): one line per removed thing (a container, an image, a
    /// Kubernetes object).
    async fn remove(&self, workspace: &str, services: &[Service]) -> Result<Vec<String>, Failure>;

    /// Follow one workspace's build events from its pipeline's start,
    /// beside the builds (never in their path). Called once per workspace,
    /// before any build is queued. The Kubernetes backend records the
    /// builds as DevBuild resources; by default nothing happens (and the
    /// event stream is dropped).
    fn observe(&self, observation: Observation) {
        let _ = observation;
    }

    /// Whether [`Self::live_update`] can work at all; when not, services
    /// with `live` build as any other (no attempt, no message).
    fn supports_live_update(&self) -> bool {
        false
    }

    /// Live update: apply `update` to every running container of
    /// `service`; how many containers. By default unsupported, so the
    /// pipeline builds the image.
    async fn live_update(
        &self,
        workspace: &str,
        service: &Service,
        update: &LiveUpdate,
    ) -> Result<usize, LiveError> {
        let _ = (workspace, service, update);
        Err(LiveError::Unsupported(format!(
            "the {} backend cannot copy files into running containers yet",
            self.name()
        )))
    }

    /// The namespace the stack's objects of `workspace` go into.
    fn stack_namespace(&self, workspace: &str) -> String {
        workspace.to_owned()
    }

    /// Whether [`Self::apply_stack`] works: a catalog with `[deploy]`
    /// needs it (without it, its services fail saying so).
    fn supports_stack(&self) -> bool {
        false
    }

    /// Make `workspace` run exactly `stack` (the repository's rendered
    /// manifests with devd's images): create and change its objects,
    /// remove those a previous apply made that are no longer in it
    /// (never anything devd did not apply), wait for the workloads that
    /// changed, and report each workload. `Err`: nothing could be applied
    /// (what ran before keeps running).
    async fn apply_stack(
        &self,
        workspace: &str,
        stack: &stack::Stack,
    ) -> Result<stack::StackReport, Failure> {
        let _ = (workspace, stack);
        Err(Failure::new(format!(
            "the {} backend cannot deploy manifests ([deploy] in devd.toml)",
            self.name()
        )))
    }

    /// Remove every object [`Self::apply_stack`] made in `workspace`
    /// (`devd down`): one line per object.
    async fn remove_stack(&self, workspace: &str) -> Result<Vec<String>, Failure> {
        let _ = workspace;
        Ok(Vec::new())
    }

    /// Send the name of the service of every container of `workspace`
    /// that starts (again) to `started`, until `cancel` fires or `started`
    /// closes: the pipeline re-applies live differences then. Called at
    /// most once per workspace, in a task of its own; by default it
    /// returns at once and nothing is sent.
    async fn watch_starts(
        &self,
        workspace: &str,
        started: tokio::sync::mpsc::Sender<String>,
        cancel: CancellationToken,
    ) {
        let _ = (workspace, started, cancel);
    }
}

/// Copy `reader` to `out` in chunks until it ends or `out` is closed.
pub async fn pump(
    mut reader: impl tokio::io::AsyncRead + Unpin,
    out: &tokio::sync::mpsc::Sender<Vec<u8>>,
) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = tokio::select! {
            _ = out.closed() => return Ok(()),
            n = reader.read(&mut buf) => n?,
        };
        if n == 0 || out.send(buf[..n].to_vec()).await.is_err() {
            return Ok(());
        }
    }
}

/// The name of an image reference's repository part if it names a
/// registry host (`host.domain/…`, `host:port/…`, `localhost/…`).
pub fn has_registry_host(image: &str) -> bool {
    image.split_once('/').is_some_and(|(first, _)| {
        first.contains('.') || first.contains(':') || first == "localhost"
    })
}

/// The registry host (`host[:port]`) of a registry or repository reference
/// such as `127.0.0.1:5000/team/web`: what a plain-HTTP exception or a
/// credential is keyed by (a path prefix is not part of it).
pub fn registry_host(reference: &str) -> &str {
    reference.split('/').next().unwrap_or(reference)
}

/// `repository` for `image` given an optional default registry: an image
/// that names its registry is kept; otherwise it goes under `registry`
/// (or under `localhost/` when there is none: local storage only).
pub fn qualify(image: &str, registry: Option<&str>) -> String {
    if has_registry_host(image) {
        image.to_owned()
    } else {
        match registry {
            Some(r) => format!("{}/{image}", r.trim_end_matches('/')),
            None => format!("localhost/{image}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualifies_repositories() {
        assert_eq!(
            qualify("demo/web", Some("127.0.0.1:5000")),
            "127.0.0.1:5000/demo/web"
        );
        assert_eq!(qualify("demo/web", None), "localhost/demo/web");
        assert_eq!(
            qualify("r.example.com/x", Some("other:1")),
            "r.example.com/x"
        );
        assert_eq!(
            qualify("demo/web", Some("127.0.0.1:5000/team/")),
            "127.0.0.1:5000/team/demo/web"
        );
        assert_eq!(registry_host("127.0.0.1:5000/team"), "127.0.0.1:5000");
        assert_eq!(
            registry_host("127.0.0.1:5000/team/demo/web"),
            "127.0.0.1:5000"
        );
        assert_eq!(
            registry_host("registry.example.com"),
            "registry.example.com"
        );
        assert_eq!(tail("a\n\nb\nc\n", 2), ["b", "c"]);
    }
}
