//! `devd.toml` at the repository root, and where devd keeps its state
//! (`DEVD_HOME`, default `$XDG_DATA_HOME/devd`).

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Errors loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not valid: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error(
        "{path}: [receiver] mode = \"remote\" needs `pairing` (the receiver's pairing.toml) or `address`, `fingerprint`, `token`"
    )]
    RemoteIncomplete { path: String },
    #[error("cannot determine devd's state directory: set DEVD_HOME")]
    NoHome,
}

/// Where the receiver is.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReceiverMode {
    /// An embedded receiver on loopback (the default).
    #[default]
    Local,
    /// A receiver elsewhere, reached with a pairing.
    Remote,
}

/// `[receiver]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    #[serde(default)]
    pub mode: ReceiverMode,
    /// Pairing file written by the receiver (relative to the repo root).
    pub pairing: Option<PathBuf>,
    /// Overrides the pairing's address.
    pub address: Option<String>,
    pub fingerprint: Option<String>,
    pub token: Option<String>,
    pub workspace: Option<String>,
    /// `auto` (QUIC, falling back to TCP + TLS when UDP does not get
    /// through), `quic` or `tcp`.
    #[serde(default)]
    pub transport: crate::transport::TransportMode,
}

/// `[sync]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// Upstream when the branch has none and there is no origin/HEAD.
    pub upstream: Option<String>,
    /// Quiet time after a file event before scanning, in milliseconds.
    #[serde(default = "default_debounce")]
    pub debounce_ms: u64,
    /// Files larger than this are not synced (a warning names them).
    #[serde(default = "default_max_file")]
    pub max_file_bytes: u64,
}

fn default_debounce() -> u64 {
    10
}

fn default_max_file() -> u64 {
    512 << 20
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            upstream: None,
            debounce_ms: default_debounce(),
            max_file_bytes: default_max_file(),
        }
    }
}

/// `[notifications]`: desktop notifications (and, with the `tray` feature,
/// the tray icon's menu) for deploys and failed builds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationConfig {
    /// Notify at all (one bubble per service, replaced by its next deploy).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Also notify when a build or deploy fails.
    #[serde(default = "default_true")]
    pub on_failure: bool,
    /// How long a bubble stays, in milliseconds; 0 keeps it until dismissed;
    /// absent: the notification server's default.
    pub timeout_ms: Option<u32>,
}

fn default_true() -> bool {
    true
}

impl Default for NotificationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            on_failure: true,
            timeout_ms: None,
        }
    }
}

/// The whole `devd.toml`. Sections later issues add (services, builds)
/// are accepted here and read by their own modules.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub receiver: ReceiverConfig,
    #[serde(default)]
    pub sync: SyncConfig,
    #[serde(default)]
    pub notifications: NotificationConfig,
    /// `[secrets]` of `devd.local.toml` only (never the committed file):
    /// Secret name → key → value, or `env_file` naming a KEY=VALUE file.
    #[serde(skip)]
    pub secrets: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
}

/// The per-developer file beside `devd.toml` (git-ignore it): where this
/// laptop's receiver is. Its `[receiver]`, `[sync]` and `[notifications]`
/// override devd.toml's.
pub const LOCAL_FILE: &str = "devd.local.toml";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalFile {
    receiver: Option<ReceiverConfig>,
    sync: Option<SyncConfig>,
    notifications: Option<NotificationConfig>,
    #[serde(default)]
    secrets: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
}

fn read_optional(path: &Path) -> Result<Option<String>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConfigError::Read {
            path: path.display().to_string(),
            source,
        }),
    }
}

impl Config {
    /// Load `devd.toml` (the team's, committed) and `devd.local.toml` (this
    /// laptop's) from the repository root; defaults if absent.
    pub fn load(workdir: &Path) -> Result<Self, ConfigError> {
        let path = workdir.join("devd.toml");
        let mut cfg: Config = match read_optional(&path)? {
            None => Self::default(),
            Some(text) => toml::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.display().to_string(),
                source,
            })?,
        };
        let local_path = workdir.join(LOCAL_FILE);
        if let Some(text) = read_optional(&local_path)? {
            let local: LocalFile = toml::from_str(&text).map_err(|source| ConfigError::Parse {
                path: local_path.display().to_string(),
                source,
            })?;
            if let Some(r) = local.receiver {
                cfg.receiver = r;
            }
            if let Some(s) = local.sync {
                cfg.sync = s;
            }
            if let Some(n) = local.notifications {
                cfg.notifications = n;
            }
            cfg.secrets = local.secrets;
        }
        let path = if local_path.exists() {
            local_path
        } else {
            path
        };
        if cfg.receiver.mode == ReceiverMode::Remote {
            let r = &cfg.receiver;
            let complete = r.address.is_some() && r.fingerprint.is_some() && r.token.is_some();
            if r.pairing.is_none() && !complete {
                return Err(ConfigError::RemoteIncomplete {
                    path: path.display().to_string(),
                });
            }
        }
        if let Some(p) = &cfg.receiver.pairing
            && p.is_relative()
        {
            cfg.receiver.pairing = Some(workdir.join(p));
        }
        Ok(cfg)
    }
}

/// devd's state directory.
pub fn devd_home() -> Result<PathBuf, ConfigError> {
    if let Some(h) = std::env::var_os("DEVD_HOME") {
        return Ok(PathBuf::from(h));
    }
    dirs::data_dir()
        .map(|d| d.join("devd"))
        .ok_or(ConfigError::NoHome)
}

/// The state directory of one repository: `DEVD_HOME/repos/<name>-<hash>`.
pub fn repo_state_dir(home: &Path, workdir: &Path) -> PathBuf {
    let name = workdir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("repo");
    let hash = blake3::hash(workdir.as_os_str().as_encoded_bytes()).to_hex();
    home.join("repos").join(format!("{name}-{}", &hash[..12]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            Config::load(d.path()).unwrap().receiver.mode,
            ReceiverMode::Local
        );
        std::fs::write(
            d.path().join("devd.toml"),
            "[receiver]\nmode = \"remote\"\n",
        )
        .unwrap();
        assert!(
            Config::load(d.path())
                .unwrap_err()
                .to_string()
                .contains("pairing")
        );
        std::fs::write(
            d.path().join("devd.toml"),
            "[receiver]\nmode = \"remote\"\npairing = \"p.toml\"\n[sync]\ndebounce_ms = 5\n",
        )
        .unwrap();
        let c = Config::load(d.path()).unwrap();
        assert_eq!(c.receiver.pairing.unwrap(), d.path().join("p.toml"));
        assert_eq!(c.sync.debounce_ms, 5);
        std::fs::write(d.path().join("devd.toml"), "[sync]\ndebounce = 5\n").unwrap();
        assert!(
            Config::load(d.path())
                .unwrap_err()
                .to_string()
                .contains("debounce")
        );
    }

    #[test]
    fn notifications_default_on_and_this_laptop_decides() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            Config::load(d.path()).unwrap().notifications,
            NotificationConfig {
                enabled: true,
                on_failure: true,
                timeout_ms: None
            }
        );
        std::fs::write(
            d.path().join("devd.toml"),
            "[notifications]\ntimeout_ms = 8000\n",
        )
        .unwrap();
        let n = Config::load(d.path()).unwrap().notifications;
        assert!(n.enabled && n.on_failure && n.timeout_ms == Some(8000));
        std::fs::write(
            d.path().join(LOCAL_FILE),
            "[notifications]\nenabled = false\n",
        )
        .unwrap();
        let n = Config::load(d.path()).unwrap().notifications;
        assert!(!n.enabled, "devd.local.toml's section replaces devd.toml's");
        assert_eq!(n.timeout_ms, None);
        std::fs::write(
            d.path().join(LOCAL_FILE),
            "[notifications]\nenable = false\n",
        )
        .unwrap();
        let e = Config::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("devd.local.toml") && e.contains("enable"), "{e}");
    }
}
