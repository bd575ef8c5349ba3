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
}
