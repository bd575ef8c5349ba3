//! Stopping and removing what the local backend runs for a workspace:
//! `devd stop` (the containers go, the images stay, so the next start
//! deploys them again without a build) and `devd down` (the containers
//! and devd's images of the services go too).

use super::{Failure, LABEL_SERVICE, LABEL_WORKSPACE, LocalBackend, PsEntry, key, run};
use devd_sync::catalog::Service;

/// Tags devd gives the images it builds: `devd-<context digest>`.
const TAG_PREFIX: &str = "devd-";

/// A container of the workspace.
struct Container {
    name: String,
    service: String,
    running: bool,
}

impl LocalBackend {
    /// Every container of `workspace` that belongs to one of `services`,
    /// in one `podman ps`.
    async fn workspace_containers(
        &self,
        workspace: &str,
        services: &[Service],
    ) -> Result<Vec<Container>, Failure> {
        let mut cmd = self.podman().await?.command();
        cmd.args(["ps", "-a", "--format", "json", "--filter"])
            .arg(format!("label={}", self.receiver_label))
            .arg("--filter")
            .arg(format!("label={LABEL_WORKSPACE}={workspace}"));
        let out = run(cmd, "podman", None).await?;
        let list: Vec<PsEntry> = serde_json::from_str(out.trim()).unwrap_or_default();
        Ok(list
            .into_iter()
            .filter_map(|e| {
                let name = e.names.into_iter().next()?;
                let service = e.labels?.get(LABEL_SERVICE)?.clone();
                services
                    .iter()
                    .any(|s| s.name == service)
                    .then_some(Container {
                        name,
                        service,
                        running: e.state == "running",
                    })
            })
            .collect())
    }

    /// Close the services' stable ports (their URLs stop answering now,
    /// not when the process exits) and remove their containers at once
    /// (`-t 0`: a busybox httpd as PID 1 ignores SIGTERM, so a grace
    /// period would only add its length). The names of the services that
    /// were running.
    pub(super) async fn stop_all(
        &self,
        workspace: &str,
        services: &[Service],
    ) -> Result<Vec<String>, Failure> {
        {
            let mut proxies = self.proxies.lock().await;
            for s in services {
                proxies.remove(&key(workspace, &s.name));
            }
        }
        let list = self.workspace_containers(workspace, services).await?;
        if list.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = self.podman().await?.command();
        cmd.args(["rm", "-f", "-t", "0"])
            .args(list.iter().map(|c| &c.name))
            .kill_on_drop(false);
        run(cmd, "podman", None).await?;
        let mut stopped: Vec<String> = list
            .into_iter()
            .filter(|c| c.running)
            .map(|c| c.service)
            .collect();
        stopped.sort();
        stopped.dedup();
        Ok(stopped)
    }

    /// [`Self::stop_all`], then every image devd tagged in the services'
    /// repositories (`REPO:devd-…`) in local storage. An image another
    /// container still uses stays, and says so in the log.
    pub(super) async fn remove_all(
        &self,
        workspace: &str,
        services: &[Service],
    ) -> Result<Vec<String>, Failure> {
        let containers = self.workspace_containers(workspace, services).await?;
        self.stop_all(workspace, services).await?;
        let mut removed: Vec<String> = containers
            .into_iter()
            .map(|c| format!("container {}", c.name))
            .collect();
        for s in services {
            let repository = super::super::Backend::repository(self, &s.image);
            let mut cmd = self.podman().await?.command();
            cmd.args(["images", "--format", "{{.Repository}}:{{.Tag}}", "--filter"])
                .arg(format!("reference={repository}"));
            let out = run(cmd, "podman", None).await?;
            let tags = out
                .lines()
                .map(str::trim)
                .filter(|l| {
                    l.rsplit_once(':')
                        .is_some_and(|(r, t)| r == repository && t.starts_with(TAG_PREFIX))
                })
                .map(str::to_owned);
            for tag in tags {
                let mut cmd = self.podman().await?.command();
                cmd.args(["rmi", &tag]);
                match run(cmd, "podman", None).await {
                    Ok(_) => removed.push(format!("image {tag}")),
                    Err(f) => {
                        tracing::warn!(image = %tag, error = %f, log = ?f.log_tail, "down: image not removed");
                    }
                }
            }
        }
        Ok(removed)
    }
}
