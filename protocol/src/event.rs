//! Build and deploy events the receiver streams to the laptop, and the
//! per-service state both sides derive from them.
//!
//! Events travel on a second bidirectional stream of the same connection:
//! the laptop opens it after `Welcome` and sends [`ClientMsg::Subscribe`];
//! the receiver answers with one [`ServerMsg::Services`] snapshot (so a
//! reconnecting laptop knows where every service stands) and then a
//! [`ServerMsg::Event`] per step.
//!
//! [`ClientMsg::Subscribe`]: crate::message::ClientMsg::Subscribe
//! [`ServerMsg::Services`]: crate::message::ServerMsg::Services
//! [`ServerMsg::Event`]: crate::message::ServerMsg::Event

use serde::{Deserialize, Serialize};

/// Lines of a failed build's log carried in events.
pub const LOG_TAIL_LINES: usize = 30;

/// One step of one service's build-and-deploy pipeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildEvent {
    pub service: String,
    /// The generation whose worktree the build is for.
    pub generation: u64,
    /// Milliseconds since the Unix epoch, on the receiver's clock.
    pub at_ms: u64,
    pub kind: EventKind,
}

/// What happened. Variants are only ever appended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// The service's inputs changed; a build waits for a slot.
    Queued,
    /// A build started on a snapshot of the generation; `context` is the
    /// build-context digest and `tag` the tag derived from it.
    Started { context: String, tag: String },
    /// An image for this context digest already existed: no build.
    Reused { context: String, image: String },
    /// The image was built and stored; `image` is `repo@sha256:…`.
    Built { image: String, duration_ms: u64 },
    /// The build or the deploy failed; nothing was deployed and what ran
    /// before keeps running.
    Failed {
        error: String,
        log_tail: Vec<String>,
    },
    /// `image` runs and answers at `url` (if the service has one).
    /// `total_ms` counts from the apply that triggered it.
    Deployed {
        image: String,
        url: Option<String>,
        total_ms: u64,
    },
    /// The service's context digest did not change (only ignored files or
    /// nothing relevant changed): nothing to do.
    Unchanged { context: String },
    /// The change was copied into the running containers (live update),
    /// without an image build: `files` paths copied or deleted, the
    /// commands run. `since_image`: the paths that now differ from the
    /// running image. `total_ms` counts from the apply that triggered it.
    /// `restarted`: the whole difference was applied again to a container
    /// that started again. Also sent after a [`ServerMsg::Services`]
    /// snapshot for each service that differs from its image, so a
    /// (re)subscribing laptop knows.
    ///
    /// [`ServerMsg::Services`]: crate::message::ServerMsg::Services
    LiveUpdated {
        files: u64,
        since_image: u64,
        total_ms: u64,
        restarted: bool,
    },
}

/// Where a service stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceState {
    /// Declared, nothing built or deployed yet.
    #[default]
    Pending,
    Queued,
    Building,
    Deploying,
    Deployed,
    Failed,
}

impl ServiceState {
    /// Lower-case name, as `devd status` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Queued => "queued",
            Self::Building => "building",
            Self::Deploying => "deploying",
            Self::Deployed => "deployed",
            Self::Failed => "failed",
        }
    }
}

/// One service's current state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub state: ServiceState,
    /// The generation of the latest event.
    pub generation: u64,
    /// Build-context digest of the deployed (or failed) build.
    pub context: Option<String>,
    /// The deployed image, `repo@sha256:…`.
    pub image: Option<String>,
    pub url: Option<String>,
    /// Duration of the last image build (absent for a reuse).
    pub last_build_ms: Option<u64>,
    /// Save-to-deployed time of the last deploy.
    pub last_deploy_ms: Option<u64>,
    /// True if the deployed image was reused rather than built.
    pub reused: bool,
    pub error: Option<String>,
    pub log_tail: Vec<String>,
}

impl ServiceStatus {
    /// A service nothing has happened to yet.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Fold one event into the state.
    pub fn apply(&mut self, e: &BuildEvent) {
        self.generation = e.generation;
        match &e.kind {
            // A build or deploy in flight stays the state; the queued
            // follow-up shows once it starts.
            EventKind::Queued => {
                if !matches!(self.state, ServiceState::Building | ServiceState::Deploying) {
                    self.state = ServiceState::Queued;
                }
            }
            EventKind::Started { context, .. } => {
                self.state = ServiceState::Building;
                self.context = Some(context.clone());
            }
            EventKind::Reused { context, image } => {
                self.state = ServiceState::Deploying;
                self.context = Some(context.clone());
                self.image = Some(image.clone());
                self.reused = true;
                self.last_build_ms = None;
            }
            EventKind::Built { image, duration_ms } => {
                self.state = ServiceState::Deploying;
                self.image = Some(image.clone());
                self.reused = false;
                self.last_build_ms = Some(*duration_ms);
            }
            EventKind::Failed { error, log_tail } => {
                self.state = ServiceState::Failed;
                self.error = Some(error.clone());
                self.log_tail = log_tail.clone();
            }
            EventKind::Deployed {
                image,
                url,
                total_ms,
            } => {
                self.state = ServiceState::Deployed;
                self.image = Some(image.clone());
                self.url = url.clone();
                self.last_deploy_ms = Some(*total_ms);
                self.error = None;
                self.log_tail.clear();
            }
            // `files: 0` only reports where the service stands.
            EventKind::LiveUpdated { files, .. } => {
                if *files > 0 {
                    self.state = ServiceState::Deployed;
                    self.error = None;
                    self.log_tail.clear();
                }
            }
            EventKind::Unchanged { .. } => {
                if matches!(self.state, ServiceState::Queued | ServiceState::Building) {
                    self.state = if self.error.is_some() {
                        ServiceState::Failed
                    } else if self.image.is_some() {
                        ServiceState::Deployed
                    } else {
                        ServiceState::Pending
                    };
                }
            }
        }
    }
}

/// The sha256 digest part of `repo@sha256:…`, if any.
pub fn image_digest(image: &str) -> Option<&str> {
    image.rsplit_once('@').map(|(_, d)| d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind) -> BuildEvent {
        BuildEvent {
            service: "web".into(),
            generation: 3,
            at_ms: 1,
            kind,
        }
    }

    #[test]
    fn status_follows_a_build_a_failure_and_a_reuse() {
        let mut s = ServiceStatus::new("web");
        s.apply(&ev(EventKind::Queued));
        assert_eq!(s.state, ServiceState::Queued);
        s.apply(&ev(EventKind::Started {
            context: "c1".into(),
            tag: "t".into(),
        }));
        assert_eq!(s.state, ServiceState::Building);
        s.apply(&ev(EventKind::Queued));
        assert_eq!(s.state, ServiceState::Building, "a follow-up queues behind");
        s.apply(&ev(EventKind::Built {
            image: "r@sha256:aa".into(),
            duration_ms: 900,
        }));
        s.apply(&ev(EventKind::Deployed {
            image: "r@sha256:aa".into(),
            url: Some("http://127.0.0.1:1".into()),
            total_ms: 1200,
        }));
        assert_eq!(s.state, ServiceState::Deployed);
        assert_eq!(s.last_build_ms, Some(900));
        assert_eq!(image_digest(s.image.as_deref().unwrap()), Some("sha256:aa"));
        s.apply(&ev(EventKind::Failed {
            error: "boom".into(),
            log_tail: vec!["line".into()],
        }));
        assert_eq!(s.state, ServiceState::Failed);
        // The running image stays what it was.
        assert_eq!(s.image.as_deref(), Some("r@sha256:aa"));
        s.apply(&ev(EventKind::Reused {
            context: "c0".into(),
            image: "r@sha256:bb".into(),
        }));
        s.apply(&ev(EventKind::Deployed {
            image: "r@sha256:bb".into(),
            url: None,
            total_ms: 80,
        }));
        assert!(s.reused && s.error.is_none() && s.last_build_ms.is_none());
        // A failed live update, then one that works: deployed again, the
        // image unchanged.
        s.apply(&ev(EventKind::Failed {
            error: "live update of web failed".into(),
            log_tail: vec!["make: error".into()],
        }));
        s.apply(&ev(EventKind::LiveUpdated {
            files: 2,
            since_image: 3,
            total_ms: 150,
            restarted: false,
        }));
        assert_eq!(s.state, ServiceState::Deployed);
        assert!(s.error.is_none() && s.log_tail.is_empty());
        assert_eq!(s.image.as_deref(), Some("r@sha256:bb"));
    }
}

/// One workload (`kind/name`) of the stack `[deploy]` describes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadInfo {
    /// `deployment/web`.
    pub key: String,
    /// `ready`, `failed`, `skipped` (the backend cannot run its kind) or
    /// `waiting` (for the first image of a service it runs).
    pub state: String,
    pub reason: Option<String>,
    pub log_tail: Vec<String>,
    /// The devd-built services whose images it runs.
    pub services: Vec<String>,
}

/// The stack after its last apply.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackStatus {
    /// The generation the last render was of.
    pub generation: u64,
    /// When the last apply ended (ms since the Unix epoch), if any did.
    pub applied_ms: Option<u64>,
    /// Save-to-applied time of the last apply that changed something.
    pub total_ms: Option<u64>,
    pub workloads: Vec<WorkloadInfo>,
    /// Where each Service of the render answers, by name.
    pub urls: Vec<(String, String)>,
    /// Objects created, changed or removed by the last apply.
    pub changes: Vec<String>,
    /// Why the last render or apply failed (what ran before keeps running).
    pub error: Option<String>,
    pub warnings: Vec<String>,
}

impl StackStatus {
    /// Every workload is ready (or skipped) and nothing failed.
    pub fn deployed(&self) -> bool {
        self.error.is_none()
            && self.applied_ms.is_some()
            && self
                .workloads
                .iter()
                .all(|w| w.state == "ready" || w.state == "skipped")
    }
}
