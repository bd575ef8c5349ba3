//! What the local backend remembers of a workspace's stack, in its state
//! directory (`stack/<workspace>.json`): the workspace's network and each
//! pod's address on it (stable across plays and receiver restarts), what
//! was played per pod (its hash), and every secret and volume devd made,
//! so that a play replays only what changed and `devd down` removes all
//! of it and nothing else.

use super::plan::Addresses;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// One pod as it was played.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Played {
    /// `deployment/web`.
    pub(crate) workload: String,
    pub(crate) hash: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StackState {
    /// The workspace's podman network and its subnet (`10.89.3.0/24`).
    #[serde(default)]
    pub(crate) network: Option<String>,
    #[serde(default)]
    pub(crate) subnet: Option<String>,
    /// Each pod's address, by pod name.
    #[serde(default)]
    pub(crate) ips: BTreeMap<String, Ipv4Addr>,
    /// Pods played, by pod name.
    #[serde(default)]
    pub(crate) pods: BTreeMap<String, Played>,
    /// podman secrets created, with the hash of their data.
    #[serde(default)]
    pub(crate) secrets: BTreeMap<String, String>,
    /// Volumes devd filled (secret volumes), with the hash of the files.
    #[serde(default)]
    pub(crate) filled: BTreeMap<String, String>,
    /// Every volume made for the stack (claims, ConfigMaps, secrets).
    #[serde(default)]
    pub(crate) volumes: BTreeSet<String>,
    /// What the pods' /etc/hosts says of the Services.
    #[serde(default)]
    pub(crate) aliases: BTreeMap<Ipv4Addr, Vec<String>>,
    /// Services with a stable URL: the pod and address it forwards to.
    #[serde(default)]
    pub(crate) services: BTreeMap<String, (String, std::net::SocketAddr)>,
}

/// Where the state of `workspace` is kept.
pub(crate) fn path(state_dir: &Path, workspace: &str) -> PathBuf {
    state_dir.join("stack").join(format!("{workspace}.json"))
}

impl StackState {
    /// The saved state (empty if none or unreadable: the labels on
    /// podman's objects still say what devd made).
    pub(crate) fn load(path: &Path) -> Self {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    pub(crate) fn save(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        devd_sync::fsutil::write_atomic(path, text.as_bytes(), None)
    }

    /// Forget the addresses of pods not in `keep`.
    pub(crate) fn keep_addresses(&mut self, keep: &BTreeSet<&str>) {
        self.ips.retain(|pod, _| keep.contains(pod.as_str()));
    }
}

/// `10.89.3.0/24` → (network, prefix length).
fn parse_subnet(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, len) = s.split_once('/')?;
    let len: u8 = len.parse().ok()?;
    (len <= 30).then_some(())?;
    Some((ip.parse().ok()?, len))
}

impl Addresses for StackState {
    /// The pod's address, or the first free one of the subnet (the
    /// gateway, `.1`, is podman's).
    fn address(&mut self, pod: &str) -> Option<Ipv4Addr> {
        if let Some(ip) = self.ips.get(pod) {
            return Some(*ip);
        }
        let (net, len) = parse_subnet(self.subnet.as_deref()?)?;
        let base = u32::from(net) & (u32::MAX << (32 - u32::from(len)));
        let size = 1u32 << (32 - u32::from(len));
        let used: BTreeSet<Ipv4Addr> = self.ips.values().copied().collect();
        let ip = (2..size - 1)
            .map(|i| Ipv4Addr::from(base + i))
            .find(|ip| !used.contains(ip))?;
        self.ips.insert(pod.to_owned(), ip);
        Some(ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_stable_and_unique_within_the_subnet() {
        let mut s = StackState {
            subnet: Some("10.89.3.0/29".into()),
            ..Default::default()
        };
        let a = s.address("a").unwrap();
        let b = s.address("b").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 89, 3, 2));
        assert_eq!(b, Ipv4Addr::new(10, 89, 3, 3));
        assert_eq!(s.address("a"), Some(a), "the same pod keeps its address");
        for p in ["c", "d", "e"] {
            assert!(s.address(p).is_some());
        }
        assert_eq!(s.address("f"), None, ".7 is the broadcast address");
        s.keep_addresses(&["b"].into_iter().collect());
        assert_eq!(s.address("g"), Some(a), "a freed address is given again");
        assert_eq!(s.address("b"), Some(b));
        let none = &mut StackState::default();
        assert_eq!(none.address("x"), None, "no subnet, no address");
    }
}
