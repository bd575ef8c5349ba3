//! What `devd status` reports, shared by the daemon's tasks.

use crate::uplink::SyncReport;
use serde::{Deserialize, Serialize};

/// The receiver as seen from the laptop.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReceiverStatus {
    pub address: String,
    /// The receiver's materialized worktree (known once connected).
    pub worktree: Option<String>,
    pub workspace: String,
    pub embedded: bool,
    pub connected: bool,
    pub last_error: Option<String>,
}

/// The last scan.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ScanStatus {
    pub full: bool,
    pub ms: u64,
    pub files_walked: usize,
    pub files_hashed: usize,
}

/// Running totals since the daemon started.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Totals {
    pub syncs: u64,
    pub files: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// The daemon's state, as `devd status --json` prints it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    /// starting | scanning | syncing | idle | disconnected | error
    pub state: String,
    pub pid: u32,
    pub workdir: String,
    /// The sync base commit.
    pub base: Option<String>,
    /// "fetched": the receiver fetches the base from git; "uploaded": it
    /// could not, so the laptop uploads the base content itself.
    pub base_mode: String,
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
}

/// One service in `devd status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServiceView {
    pub name: String,
    /// pending | queued | building | deploying | deployed | failed
    pub state: String,
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
}

impl From<&devd_protocol::ServiceStatus> for ServiceView {
    fn from(s: &devd_protocol::ServiceStatus) -> Self {
        Self {
            name: s.name.clone(),
            state: s.state.as_str().to_owned(),
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
        }
    }
}
