//! The podman objects of a stack, one command each: the workspace's
//! network, pods, images, secrets and volumes, and the play itself.

use super::super::{LocalBackend, run};
use super::{StackState, log, plan};
use crate::build::backend::Failure;
use crate::build::backend::podman::{PodmanSetup, clause};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

impl LocalBackend {
    /// Remove a pod at once (`-t 0`); podman sometimes refuses while a
    /// container is still stopping: try again.
    pub(super) async fn remove_pod(&self, setup: &PodmanSetup, pod: &str) -> Result<(), Failure> {
        // `pod stop -t 0` then `pod rm`: `pod rm -f -t 0` alone takes
        // seconds per pod in podman 4.3.
        let mut stop = setup.command();
        stop.args(["pod", "stop", "-t", "0", pod])
            .kill_on_drop(false);
        let _ = run(stop, "podman", None).await;
        let mut last = None;
        for _ in 0..5 {
            let mut cmd = setup.command();
            cmd.args(["pod", "rm", "-f", "-t", "0", pod])
                .kill_on_drop(false);
            match run(cmd, "podman", None).await {
                Ok(_) => return Ok(()),
                Err(f) if f.log_tail.iter().any(|l| l.contains("no pod with name")) => {
                    return Ok(());
                }
                Err(f) => last = Some(f),
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Err(last.unwrap_or_else(|| Failure::new(format!("cannot remove pod {pod}"))))
    }

    /// The workspace's network, created if missing; its subnet into `st`.
    pub(super) async fn ensure_network(
        &self,
        setup: &PodmanSetup,
        workspace: &str,
        st: &mut StackState,
    ) -> Result<(), Failure> {
        #[derive(serde::Deserialize)]
        struct Net {
            #[serde(default)]
            subnets: Vec<Subnet>,
            #[serde(default)]
            labels: Option<BTreeMap<String, String>>,
        }
        #[derive(serde::Deserialize)]
        struct Subnet {
            subnet: String,
        }
        let name = self.stack_network(workspace);
        let inspect = || {
            let mut cmd = setup.command();
            cmd.args(["network", "inspect", "--format", "json", &name]);
            cmd
        };
        let found = match run(inspect(), "podman", None).await {
            Ok(out) => serde_json::from_str::<Vec<Net>>(out.trim()).unwrap_or_default(),
            Err(_) => {
                let mut cmd = setup.command();
                cmd.args(["network", "create"])
                    .args(self.label_args(workspace))
                    .arg(&name);
                run(cmd, "podman", None).await.map_err(|f| Failure {
                    error: format!("cannot create podman network {name}: {}", f.error),
                    log_tail: f.log_tail,
                })?;
                let out = run(inspect(), "podman", None).await?;
                serde_json::from_str::<Vec<Net>>(out.trim()).unwrap_or_default()
            }
        };
        let net = found
            .into_iter()
            .next()
            .ok_or_else(|| Failure::new(format!("podman does not describe network {name}")))?;
        let ours = net.labels.as_ref().is_some_and(|l| {
            self.stack_labels(workspace)
                .iter()
                .all(|(k, v)| l.get(k) == Some(v))
        });
        if !ours {
            return Err(Failure::new(format!(
                "a podman network {name} exists that devd did not create: remove or rename it"
            )));
        }
        let subnet = net
            .subnets
            .into_iter()
            .map(|s| s.subnet)
            .find(|s| s.contains('.'))
            .ok_or_else(|| Failure::new(format!("podman network {name} has no IPv4 subnet")))?;
        if st.subnet.as_deref() != Some(subnet.as_str()) {
            st.ips.clear();
        }
        st.network = Some(name);
        st.subnet = Some(subnet);
        Ok(())
    }

    /// Make `image` present in local storage; the reason when it cannot be.
    pub(super) async fn ensure_image(
        &self,
        setup: &PodmanSetup,
        image: &str,
        log_to: &Path,
    ) -> Result<(), String> {
        let mut cmd = setup.command();
        cmd.args(["image", "exists", image]);
        if run(cmd, "podman", None).await.is_ok() {
            return Ok(());
        }
        if image.starts_with("localhost/") {
            return Err(format!("image {image} is not in local storage"));
        }
        log(log_to, &format!("devd: pull {image}"));
        let mut cmd = setup.command();
        cmd.arg("pull");
        if let Some(f) = self.tls_flag() {
            cmd.arg(f);
        }
        cmd.arg(image);
        run(cmd, "podman", Some(&log_to.to_path_buf()))
            .await
            .map(|_| ())
            .map_err(|f| {
                format!(
                    "image {image} cannot be pulled: {}",
                    clause(&f.log_tail.join("\n"))
                )
            })
    }

    /// Create (or replace) a podman secret with `data`, never logged.
    pub(super) async fn put_secret(
        &self,
        setup: &PodmanSetup,
        workspace: &str,
        sp: &plan::SecretPlan,
    ) -> Result<(), Failure> {
        let mut rm = setup.command();
        rm.args(["secret", "rm", &sp.name]);
        let _ = run(rm, "podman", None).await;
        let dir = self.cfg.state_dir.join("stack");
        std::fs::create_dir_all(&dir).map_err(|e| Failure::new(e.to_string()))?;
        let file =
            tempfile::NamedTempFile::new_in(&dir).map_err(|e| Failure::new(e.to_string()))?;
        std::fs::write(file.path(), sp.data.as_bytes()).map_err(|e| Failure::new(e.to_string()))?;
        let mut cmd = setup.command();
        cmd.args(["secret", "create"])
            .args(self.label_args(workspace))
            .arg(&sp.name)
            .arg(file.path());
        run(cmd, "podman", None)
            .await
            .map(|_| ())
            .map_err(|f| Failure {
                error: format!("cannot create podman secret {}: {}", sp.name, f.error),
                log_tail: f.log_tail,
            })
    }

    /// Create a named volume (if missing) with devd's labels.
    pub(super) async fn ensure_volume(
        &self,
        setup: &PodmanSetup,
        workspace: &str,
        name: &str,
    ) -> Result<bool, Failure> {
        let mut cmd = setup.command();
        cmd.args(["volume", "exists", name]);
        if run(cmd, "podman", None).await.is_ok() {
            return Ok(false);
        }
        let mut cmd = setup.command();
        cmd.args(["volume", "create"])
            .args(self.label_args(workspace))
            .arg(name);
        run(cmd, "podman", None).await?;
        Ok(true)
    }

    /// A volume holding `v`'s files.
    pub(super) async fn fill_volume(
        &self,
        setup: &PodmanSetup,
        workspace: &str,
        v: &plan::VolumeFiles,
    ) -> Result<(), Failure> {
        self.ensure_volume(setup, workspace, &v.name).await?;
        let mut b = tar::Builder::new(Vec::new());
        for (path, data, mode) in &v.files {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(*mode);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, path, data.as_slice())
                .map_err(|e| Failure::new(e.to_string()))?;
        }
        let tar = b.into_inner().map_err(|e| Failure::new(e.to_string()))?;
        let dir = self.cfg.state_dir.join("stack");
        let file = tempfile::Builder::new()
            .suffix(".tar")
            .tempfile_in(&dir)
            .map_err(|e| Failure::new(e.to_string()))?;
        std::fs::write(file.path(), tar).map_err(|e| Failure::new(e.to_string()))?;
        let mut cmd = setup.command();
        cmd.args(["volume", "import", &v.name]).arg(file.path());
        run(cmd, "podman", None).await.map(|_| ())
    }

    /// `podman kube play` of one pod's document on the workspace's
    /// network at its address.
    pub(super) async fn play(
        &self,
        setup: &PodmanSetup,
        conf: Option<&Path>,
        network: &str,
        pod: &plan::PodPlan,
        log_to: &Path,
    ) -> Result<(), Failure> {
        let dir = self.cfg.state_dir.join("stack").join("played");
        std::fs::create_dir_all(&dir).map_err(|e| Failure::new(e.to_string()))?;
        let file = dir.join(format!("{}.json", pod.name));
        std::fs::write(&file, &pod.doc).map_err(|e| Failure::new(e.to_string()))?;
        let mut cmd = setup.command();
        if let Some(c) = conf {
            cmd.env("CONTAINERS_CONF", c);
        }
        // A fixed MAC with the fixed address: the host's and the other
        // pods' neighbour caches stay right across a replay (a new MAC
        // behind the same address is unreachable until they expire).
        cmd.args(["kube", "play", "--network", network, "--ip"])
            .arg(pod.ip.to_string())
            .arg("--mac-address")
            .arg(mac(pod.ip))
            .arg(&file);
        log(
            log_to,
            &format!("devd: podman kube play {} ({})", pod.name, pod.workload),
        );
        run(cmd, "podman", Some(&log_to.to_path_buf())).await.map(|_| ()).map_err(|f| {
            let all = f.log_tail.join("\n");
            let error = if all.contains("catatonit") {
                "podman cannot make the pods' pause container: install catatonit (Debian/Ubuntu: `sudo apt-get install catatonit`)".to_owned()
            } else {
                format!("podman kube play failed: {}", clause(&all))
            };
            Failure { error, log_tail: f.log_tail }
        })
    }

    /// The host interface of a (rootful, bridge) network, if any.
    pub(super) async fn network_bridge(
        &self,
        setup: &PodmanSetup,
        network: &str,
    ) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Net {
            #[serde(default)]
            network_interface: Option<String>,
        }
        let mut cmd = setup.command();
        cmd.args(["network", "inspect", "--format", "json", network]);
        let out = run(cmd, "podman", None).await.ok()?;
        let nets: Vec<Net> = serde_json::from_str(out.trim()).ok()?;
        nets.into_iter()
            .next()?
            .network_interface
            .filter(|i| !i.is_empty())
    }

    /// Rewrite the /etc/hosts of a running pod (its containers share the
    /// infra container's file, bind-mounted: written in place) so that it
    /// names the Services as `new` does instead of `old`.
    pub(super) async fn rewrite_hosts(
        &self,
        setup: &PodmanSetup,
        pod: &str,
        old: &BTreeMap<Ipv4Addr, Vec<String>>,
        new: &BTreeMap<Ipv4Addr, Vec<String>>,
    ) -> Result<(), Failure> {
        let mut cmd = setup.command();
        cmd.args(["pod", "inspect", "--format", "{{.InfraContainerID}}", pod]);
        let infra = run(cmd, "podman", None).await?;
        let mut cmd = setup.command();
        cmd.args(["inspect", "--format", "{{.HostsPath}}", infra.trim()]);
        let path = run(cmd, "podman", None).await?;
        let path = Path::new(path.trim());
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::new(format!("cannot read {}: {e}", path.display())))?;
        std::fs::write(path, hosts(&text, old, new))
            .map_err(|e| Failure::new(format!("cannot write {}: {e}", path.display())))
    }
}

/// A locally administered unicast MAC derived from `ip`.
pub(super) fn mac(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("02:64:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// `text` (a hosts file, one name per line as podman writes it) without
/// the lines of `old`'s names, with `new`'s first.
pub(super) fn hosts(
    text: &str,
    old: &BTreeMap<Ipv4Addr, Vec<String>>,
    new: &BTreeMap<Ipv4Addr, Vec<String>>,
) -> String {
    let names: BTreeSet<&str> = old
        .values()
        .chain(new.values())
        .flatten()
        .map(String::as_str)
        .collect();
    let mut out = String::new();
    for (ip, names) in new {
        for n in names {
            out.push_str(&format!("{ip}\t{n}\n"));
        }
    }
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let ours = words
            .next()
            .is_some_and(|ip| ip.parse::<Ipv4Addr>().is_ok())
            && words.clone().next().is_some()
            && words.all(|w| names.contains(w));
        if !ours {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_follow_addresses() {
        assert_eq!(mac(Ipv4Addr::new(10, 89, 3, 17)), "02:64:0a:59:03:11");
    }

    #[test]
    fn hosts_lines_of_the_old_services_give_way_to_the_new() {
        let text = "10.1.0.3\tdb\n10.1.0.3\tdb.ws\n127.0.0.1\tlocalhost\n10.1.0.1\thost.containers.internal\n10.1.0.2\tweb-0 abc-infra\n";
        let ip = |n| Ipv4Addr::new(10, 1, 0, n);
        let old = [(ip(3), vec!["db".to_owned(), "db.ws".to_owned()])].into();
        let new = [
            (ip(4), vec!["db".to_owned()]),
            (ip(5), vec!["api".to_owned()]),
        ]
        .into();
        assert_eq!(
            hosts(text, &old, &new),
            "10.1.0.4\tdb\n10.1.0.5\tapi\n127.0.0.1\tlocalhost\n10.1.0.1\thost.containers.internal\n10.1.0.2\tweb-0 abc-infra\n"
        );
    }
}
