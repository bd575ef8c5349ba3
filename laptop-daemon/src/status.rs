//! What `devd status` reports, shared by the daemon's tasks.

use crate::progress::{Phase, Progress, Reporter};
use crate::uplink::SyncReport;
use devd_protocol::event::ServiceState;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// The receiver as seen from the laptop.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ReceiverStatus {
    pub address: String,
    /// The receiver's materialized worktree (known once connected).
    pub worktree: Option<String>,
    pub workspace: String,
    pub embedded: bool,
    pub connected: bool,
    /// `quic`, or `tcp` when the TCP + TLS fallback is in use (while
    /// connected).
    pub transport: Option<String>,
    pub last_error: Option<String>,
}

/// The last scan.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ScanStatus {
    pub full: bool,
    pub ms: u64,
    pub files_walked: usize,
    pub files_hashed: usize,
}

/// Running totals since the daemon started.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Totals {
    pub syncs: u64,
    pub files: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// What the daemon is doing: `state` in `devd status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DaemonState {
    /// Started, nothing scanned yet.
    #[default]
    Starting,
    /// Comparing the worktree with the base.
    Scanning,
    /// Sending a generation to the receiver.
    Syncing,
    /// In sync with the receiver; waiting for changes.
    Idle,
    /// The receiver cannot be reached; the daemon keeps retrying.
    Disconnected,
    /// Failed for good (e.g. out of inotify watches); `last_error` says why.
    Error,
    /// Another daemon is the workspace's writer (it was first, or it took
    /// the workspace over): this one does not sync; `last_error` names it.
    Superseded,
}

impl DaemonState {
    /// The name `devd status` shows (and `--json` prints).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Scanning => "scanning",
            Self::Syncing => "syncing",
            Self::Idle => "idle",
            Self::Disconnected => "disconnected",
            Self::Error => "error",
            Self::Superseded => "superseded",
        }
    }
}

impl std::fmt::Display for DaemonState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the receiver gets the content of the base commit: `base_mode` in
/// `devd status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseMode {
    /// The receiver fetches the base commit from the git server itself.
    #[default]
    Fetched,
    /// The receiver could not fetch it, so the laptop uploads the base's
    /// content too.
    Uploaded,
}

impl BaseMode {
    /// The name `devd status` shows (and `--json` prints).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fetched => "fetched",
            Self::Uploaded => "uploaded",
        }
    }
}

impl std::fmt::Display for BaseMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The daemon's state, as `devd status --json` prints it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    pub state: DaemonState,
    pub pid: u32,
    pub workdir: String,
    /// The sync base commit.
    pub base: Option<String>,
    /// Whether the receiver fetches the base or the laptop uploads it.
    pub base_mode: BaseMode,
    /// Why the base is uploaded (the receiver's fetch error).
    pub base_mode_reason: Option<String>,
    pub upstream: Option<String>,
    /// Last generation the receiver acknowledged, and its overlay digest.
    pub generation: u64,
    pub overlay_digest: Option<String>,
    /// Entries in the current (scanned) overlay.
    pub overlay_entries: usize,
    pub receiver: ReceiverStatus,
    pub last_sync: Option<SyncReport>,
    /// Sums over every sync since the daemon started.
    pub totals: Totals,
    pub last_scan: Option<ScanStatus>,
    /// Files not synced, with the reason.
    pub skipped: Vec<String>,
    pub last_error: Option<String>,
    /// The services declared in `devd.toml`, as the receiver reports them.
    pub services: Vec<ServiceView>,
    /// Why the receiver could not read the catalog (it keeps the previous one).
    pub catalog_error: Option<String>,
    /// Long work in progress (a full scan of a large worktree, a large
    /// upload), updated at a coarse interval; absent otherwise.
    pub progress: Option<Progress>,
    /// How the services came up after `devd start`.
    pub boot: Option<BootStatus>,
    /// `[deploy]`: every workload of the repository's manifests.
    pub stack: Option<devd_protocol::event::StackStatus>,
}

/// How the workspace came up: from the daemon's start until every declared
/// service was deployed (or failed) for the first time, and what that took
/// (images reused, e.g. prebuilt by `devd prebuild`, versus built).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct BootStatus {
    /// Services declared.
    pub services: usize,
    /// Deployed from an image that existed already (no build).
    pub reused: usize,
    /// Deployed from an image built for this boot.
    pub built: usize,
    /// Already running when the daemon connected (a receiver that was up).
    pub running: usize,
    pub failed: usize,
    /// Milliseconds from the daemon's start until the last service was
    /// deployed or failed; absent while services are still coming up.
    pub ms: Option<u64>,
}

/// Follows build events after the daemon's start to fill [`BootStatus`].
#[derive(Debug)]
pub struct BootTracker {
    started: std::time::Instant,
    /// Per service: built (true) or reused (false) by the events seen.
    how: std::collections::BTreeMap<String, bool>,
    /// Services whose failure this boot saw (a failure reported from
    /// before the start is retried, so it does not end the boot).
    failed: std::collections::BTreeSet<String>,
    done: Option<BootStatus>,
}

impl BootTracker {
    /// Start counting now.
    pub fn new(started: std::time::Instant) -> Self {
        Self {
            started,
            how: Default::default(),
            failed: Default::default(),
            done: None,
        }
    }

    /// Count again from `now` (a retry asked for after a boot that did
    /// not bring every service up): the boot is what the start that
    /// deployed took.
    pub fn restart(&mut self, now: std::time::Instant) {
        *self = Self::new(now);
    }

    /// Note one event.
    pub fn event(&mut self, e: &devd_protocol::BuildEvent) {
        use devd_protocol::EventKind;
        match &e.kind {
            EventKind::Built { .. } => {
                self.how.insert(e.service.clone(), true);
            }
            EventKind::Reused { .. } => {
                self.how.entry(e.service.clone()).or_insert(false);
            }
            EventKind::Failed { .. } => {
                self.failed.insert(e.service.clone());
            }
            _ => {}
        }
    }

    /// The boot as of `services` (their current states).
    pub fn status(&mut self, services: &[ServiceView]) -> Option<BootStatus> {
        if let Some(d) = &self.done {
            return Some(d.clone());
        }
        if services.is_empty() {
            return None;
        }
        let mut b = BootStatus {
            services: services.len(),
            ..Default::default()
        };
        let mut settled = 0;
        for s in services {
            match s.state {
                ServiceState::Deployed => {
                    settled += 1;
                    match self.how.get(&s.name) {
                        Some(true) => b.built += 1,
                        Some(false) => b.reused += 1,
                        None => b.running += 1,
                    }
                }
                ServiceState::Failed if self.failed.contains(&s.name) => {
                    settled += 1;
                    b.failed += 1;
                }
                _ => {}
            }
        }
        if settled == services.len() {
            b.ms = Some(self.started.elapsed().as_millis() as u64);
            self.done = Some(b.clone());
        }
        Some(b)
    }
}

impl Status {
    /// Replace the services with the receiver's latest view, keeping when
    /// each deployed image was first seen deployed (`deployed_at_ms`).
    pub fn set_services(&mut self, services: Vec<ServiceView>) {
        let now = unix_ms();
        let old = std::mem::take(&mut self.services);
        self.services = services
            .into_iter()
            .map(|mut s| {
                let before = old.iter().find(|o| o.name == s.name);
                s.deployed_at_ms = match before {
                    // First sight (e.g. deployed before a daemon restart):
                    // unknown.
                    None => None,
                    // Deployed while we watched (a new image, or again).
                    Some(b)
                        if s.state == ServiceState::Deployed
                            && !(b.state == ServiceState::Deployed && b.image == s.image) =>
                    {
                        Some(now)
                    }
                    // Unchanged, or a new build under way: the running
                    // deploy's time.
                    Some(b) => b.deployed_at_ms,
                };
                s
            })
            .collect();
    }
}

/// The progress sink of the daemon: here rather than in [`crate::progress`]
/// so that `progress` does not depend on `status`.
impl Reporter {
    /// A reporter that writes into `status.progress`. Finishing clears it
    /// only if it still shows this phase. An upload in progress is what
    /// the user waits for: a scan running meanwhile (the scanner works
    /// ahead of the uplink) does not replace it.
    pub fn for_status(status: Arc<Mutex<Status>>, phase: Phase) -> Self {
        Self::new(
            phase,
            Arc::new(move |p: Option<Progress>| {
                let mut s = status.lock().expect("status lock");
                match p {
                    Some(p) => {
                        let uploading = s
                            .progress
                            .as_ref()
                            .is_some_and(|c| c.phase == Phase::Uploading.as_str());
                        if phase == Phase::Uploading || !uploading {
                            s.progress = Some(p);
                        }
                    }
                    None => {
                        if s.progress
                            .as_ref()
                            .is_some_and(|c| c.phase == phase.as_str())
                        {
                            s.progress = None;
                        }
                    }
                }
            }),
        )
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One service in `devd status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ServiceView {
    pub name: String,
    /// Printed lower-case (`deployed`), as `devd status --json` always has.
    #[serde(with = "lowercase_state")]
    pub state: ServiceState,
    /// Manifest digest (`sha256:…`) of the deployed image.
    pub digest: Option<String>,
    /// The deployed image, `repo@sha256:…`.
    pub image: Option<String>,
    pub url: Option<String>,
    /// Duration of the last image build (none when the image was reused).
    pub last_build_ms: Option<u64>,
    /// Apply-to-deployed time of the last deploy.
    pub last_deploy_ms: Option<u64>,
    /// The deployed image was reused, not built.
    pub reused: bool,
    pub error: Option<String>,
    /// The end of the failed build's log.
    pub log_tail: Vec<String>,
    /// Build-context digest of the last build.
    pub context: Option<String>,
    pub generation: u64,
    /// When this laptop saw the current image deployed (Unix ms); absent
    /// when it was already deployed as the daemon started.
    pub deployed_at_ms: Option<u64>,
    /// Paths copied into the running containers since the image (live
    /// update); 0 when the containers run the image as built.
    pub live_files: u64,
    /// When the last live update was applied (receiver clock, Unix ms).
    pub live_updated_ms: Option<u64>,
}

impl From<&devd_protocol::ServiceStatus> for ServiceView {
    fn from(s: &devd_protocol::ServiceStatus) -> Self {
        Self {
            name: s.name.clone(),
            state: s.state,
            digest: s
                .image
                .as_deref()
                .and_then(devd_protocol::event::image_digest)
                .map(str::to_owned),
            image: s.image.clone(),
            url: s.url.clone(),
            last_build_ms: s.last_build_ms,
            last_deploy_ms: s.last_deploy_ms,
            reused: s.reused,
            error: s.error.clone(),
            log_tail: s.log_tail.clone(),
            context: s.context.clone(),
            generation: s.generation,
            deployed_at_ms: None,
            live_files: 0,
            live_updated_ms: None,
        }
    }
}

/// [`ServiceState`] as the lower-case names `devd status --json` prints
/// (`deployed`), not the protocol's variant names.
mod lowercase_state {
    use devd_protocol::event::ServiceState;
    use serde::{Deserialize, Deserializer, Serializer};

    const ALL: [ServiceState; 6] = [
        ServiceState::Pending,
        ServiceState::Queued,
        ServiceState::Building,
        ServiceState::Deploying,
        ServiceState::Deployed,
        ServiceState::Failed,
    ];

    pub(super) fn serialize<S: Serializer>(s: &ServiceState, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s.as_str())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<ServiceState, D::Error> {
        const NAMES: [&str; 6] = [
            "pending",
            "queued",
            "building",
            "deploying",
            "deployed",
            "failed",
        ];
        let name = String::deserialize(de)?;
        ALL.into_iter()
            .find(|s| s.as_str() == name)
            .ok_or_else(|| serde::de::Error::unknown_variant(&name, &NAMES))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(state: &str, image: Option<&str>) -> ServiceView {
        ServiceView {
            name: "web".into(),
            state: serde_json::from_value(serde_json::json!({ "state": state }))
                .map(|v: ServiceView| v.state)
                .unwrap(),
            image: image.map(str::to_owned),
            ..Default::default()
        }
    }

    #[test]
    fn reporter_publishes_long_work_only_and_clears_its_own_phase() {
        let status = Arc::new(Mutex::new(Status::default()));
        let scan = Reporter::for_status(status.clone(), Phase::Scanning);
        let up = Reporter::for_status(status.clone(), Phase::Uploading);
        scan.update(1, 10, 0, 0);
        assert_eq!(
            status.lock().unwrap().progress,
            None,
            "short work is silent"
        );
        scan.finish();
        scan.update(5, 5000, 100, 0);
        assert_eq!(
            status.lock().unwrap().progress,
            Some(Progress {
                phase: "scanning".into(),
                done: 5,
                total: 5000,
                bytes_done: 100,
                bytes_total: 0
            })
        );
        // Throttled: an update right after the first is not published.
        scan.update(6, 5000, 100, 0);
        assert_eq!(status.lock().unwrap().progress.as_ref().unwrap().done, 5);
        up.update(1, 2, 1, 64 << 20);
        assert_eq!(
            status.lock().unwrap().progress.as_ref().unwrap().phase,
            "uploading"
        );
        // The scanner finishing does not clear the upload's progress.
        scan.finish();
        assert!(status.lock().unwrap().progress.is_some());
        up.finish();
        assert_eq!(status.lock().unwrap().progress, None);
    }

    #[test]
    fn states_print_lower_case_as_before() {
        let st = Status {
            state: DaemonState::Disconnected,
            base_mode: BaseMode::Uploaded,
            services: vec![view("deploying", None)],
            ..Default::default()
        };
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(v["state"], "disconnected");
        assert_eq!(v["base_mode"], "uploaded");
        assert_eq!(v["services"][0]["state"], "deploying");
        let back: Status = serde_json::from_value(v).unwrap();
        assert_eq!(back.services[0].state, ServiceState::Deploying);
        assert_eq!(back.state, DaemonState::Disconnected);
        for s in [
            "pending",
            "queued",
            "building",
            "deploying",
            "deployed",
            "failed",
        ] {
            assert_eq!(view(s, None).state.as_str(), s);
        }
    }

    fn event(service: &str, kind: devd_protocol::EventKind) -> devd_protocol::BuildEvent {
        devd_protocol::BuildEvent {
            service: service.into(),
            generation: 1,
            at_ms: 0,
            kind,
        }
    }

    #[test]
    fn a_failure_from_before_the_start_does_not_end_the_boot_and_a_restart_counts_again() {
        use devd_protocol::EventKind;
        let t0 = std::time::Instant::now();
        let mut boot = BootTracker::new(t0);
        // The receiver reports web failed before this start: it is retried.
        let failed = view("failed", None);
        let b = boot.status(std::slice::from_ref(&failed)).unwrap();
        assert_eq!((b.failed, b.ms), (0, None), "{b:?}");
        // This boot's own failure settles it.
        boot.event(&event(
            "web",
            EventKind::Failed {
                error: "build of web failed".into(),
                log_tail: vec![],
            },
        ));
        let b = boot.status(std::slice::from_ref(&failed)).unwrap();
        assert_eq!(b.failed, 1);
        assert!(b.ms.is_some());
        // `devd retry`: the boot counts again, and ends when web deploys.
        boot.restart(std::time::Instant::now());
        assert_eq!(boot.status(std::slice::from_ref(&failed)).unwrap().ms, None);
        boot.event(&event(
            "web",
            EventKind::Built {
                image: "a".into(),
                duration_ms: 5,
            },
        ));
        let b = boot.status(&[view("deployed", Some("a"))]).unwrap();
        assert_eq!((b.built, b.failed), (1, 0));
        assert!(b.ms.is_some());
    }

    #[test]
    fn deploy_time_is_when_the_daemon_saw_the_deploy() {
        let mut st = Status::default();
        // Already deployed when first seen: unknown.
        st.set_services(vec![view("deployed", Some("a"))]);
        assert_eq!(st.services[0].deployed_at_ms, None);
        // A rebuild: built (same state machine: deploying with the new
        // image), then deployed.
        st.set_services(vec![view("building", Some("a"))]);
        st.set_services(vec![view("deploying", Some("b"))]);
        assert_eq!(st.services[0].deployed_at_ms, None);
        st.set_services(vec![view("deployed", Some("b"))]);
        let t = st.services[0].deployed_at_ms.expect("seen deployed");
        assert!(t > 0);
        // Later events keep it until the next deploy.
        st.set_services(vec![view("queued", Some("b"))]);
        assert_eq!(st.services[0].deployed_at_ms, Some(t));
        st.set_services(vec![view("deployed", Some("b"))]);
        assert!(st.services[0].deployed_at_ms.is_some());
    }
}
