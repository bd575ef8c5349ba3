//! The repository's own manifests on the local backend (`[deploy]`):
//! the rendered objects run as podman pods, `podman kube play`ed one pod
//! at a time ([`plan`] says what each pod's document holds and why).
//!
//! - **Network**: each workspace has a podman network of its own
//!   (`devd-<receiver>-<workspace>`) and each pod a fixed address on it,
//!   kept in the state directory; every pod's `/etc/hosts` names every
//!   Service of the render at the address of the first pod it selects, so
//!   `postgres:5432` works from any pod as in Kubernetes, with no DNS
//!   plugin (CNI's dnsname is often missing). A Service whose `port`
//!   differs from its `targetPort` is reached at the target port (a
//!   warning says so).
//! - **URLs**: every Service gets a stable loopback port (the backend's
//!   proxy, the same as for generated services) forwarding to the first
//!   pod it selects, at its first port's target.
//! - **Replays**: a pod is played again only when its hash changes (its
//!   document, with its ConfigMaps, images and Services' aliases, its
//!   address, the Secrets it reads), or when it is gone. Its images are
//!   made present first (`podman pull` of what local storage lacks): a
//!   pod whose image cannot be had fails and its previous version keeps
//!   running. Past that, a replay removes the old pod before playing the
//!   new one (its name and address are the new one's), so a new version
//!   that does not start leaves the workload down, with the reason.
//! - **Removal**: pods of workloads no longer in the render go, and
//!   their ConfigMap/secret volumes and secrets; only pods carrying this
//!   receiver's and this workspace's labels are ever removed.
//! - **Status**: after an apply, every pod of the render is waited for
//!   (at most a minute; those that did not change answer at once): Ready
//!   when its containers run and answer on the ports its Services send
//!   to (a Job's: when they exited 0), Failed with the reason (an image
//!   that cannot be had, an exit code, a container podman keeps
//!   restarting) and the container's last log lines.
//! - **devd stop** removes the pods and closes the URLs (volumes, secrets
//!   and the network stay, the next apply plays every pod again); **devd
//!   down** removes every pod, volume, secret and the network devd made
//!   for the workspace.
//! - **podman here**: plays get the runtime of [`PodmanSetup`] and its
//!   limits through a containers.conf ([`conf`]); pods need podman's
//!   pause image, which podman builds from `catatonit`. Seen with podman
//!   4.3.1: a pod with init containers takes about 20 s to start (podman
//!   waits out conmon's timeout for each finished init container), and
//!   podman races with itself removing a finished "once" init container;
//!   so pods with init containers are played with podman's init type
//!   `always` (kept, run at each start of the pod, as Kubernetes runs them
//!   for each new pod), and a play that still fails so is made again,
//!   twice at most.

use super::{LABEL_RECEIVER, LABEL_WORKSPACE, LocalBackend, PsEntry, run};
use crate::build::backend::stack::{Stack, StackReport, WorkloadState, WorkloadStatus};
use crate::build::backend::{Failure, RunningService};
use devd_sync::catalog::{Run, Service};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod conf;
mod objects;
mod pieces;
mod plan;

pub(super) use plan::LABEL_SERVICES;
mod state;
mod status;

use state::{Played, StackState};

/// How long a played pod may take to run and answer.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// One of this receiver's pods, as `podman pod ps` lists it.
#[derive(serde::Deserialize)]
struct PodEntry {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Labels", default)]
    labels: Option<BTreeMap<String, String>>,
}

/// Append `text` to the stack's log.
fn log(path: &Path, text: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{text}");
    }
}

impl LocalBackend {
    /// This receiver's id in names (six hex digits of its label).
    fn receiver_id(&self) -> &str {
        let v = self.receiver_label.split_once('=').map_or("", |(_, v)| v);
        &v[..v.len().min(6)]
    }

    /// Starts every podman name of the workspace's stack.
    fn stack_prefix(&self, workspace: &str) -> String {
        format!("devd-{}-{workspace}-", self.receiver_id())
    }

    fn stack_network(&self, workspace: &str) -> String {
        format!("devd-{}-{workspace}", self.receiver_id())
    }

    fn stack_labels(&self, workspace: &str) -> Vec<(String, String)> {
        let (k, v) = self
            .receiver_label
            .split_once('=')
            .unwrap_or((LABEL_RECEIVER, ""));
        vec![
            (k.to_owned(), v.to_owned()),
            (LABEL_WORKSPACE.to_owned(), workspace.to_owned()),
        ]
    }

    fn label_args(&self, workspace: &str) -> Vec<String> {
        self.stack_labels(workspace)
            .into_iter()
            .flat_map(|(k, v)| ["--label".to_owned(), format!("{k}={v}")])
            .collect()
    }

    fn stack_state_path(&self, workspace: &str) -> PathBuf {
        state::path(&self.cfg.state_dir, workspace)
    }

    fn proxy_key(workspace: &str, service: &str) -> String {
        format!("{workspace}/stack/{service}")
    }

    /// The pods of the workspace this receiver played (by label).
    async fn stack_pods(&self, workspace: &str) -> Result<Vec<PodEntry>, Failure> {
        let mut cmd = self.podman().await?.command();
        cmd.args(["pod", "ps", "--format", "json", "--filter"])
            .arg(format!("label={}", self.receiver_label));
        let out = run(cmd, "podman", None).await?;
        let list: Vec<PodEntry> = serde_json::from_str(out.trim()).unwrap_or_default();
        Ok(list
            .into_iter()
            .filter(|p| {
                p.labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_WORKSPACE))
                    .is_some_and(|w| w == workspace)
            })
            .collect())
    }

    /// See the module docs.
    pub(super) async fn apply_stack_local(
        &self,
        workspace: &str,
        stack: &Stack,
    ) -> Result<StackReport, Failure> {
        let setup = self.podman().await?.clone();
        let conf = conf::for_plays(&setup, &self.cfg.state_dir)?;
        let path = self.stack_state_path(workspace);
        let mut st = StackState::load(&path);
        self.ensure_network(&setup, workspace, &mut st).await?;
        let network = st.network.clone().unwrap_or_default();
        let prefix = self.stack_prefix(workspace);
        let plan = plan::plan(stack, &prefix, &self.stack_labels(workspace), &mut st)
            .map_err(Failure::new)?;
        let mut report = StackReport {
            warnings: plan.warnings.clone(),
            ..Default::default()
        };
        for w in &plan.warnings {
            log(&stack.log, &format!("devd: warning: {w}"));
        }
        let existing: BTreeMap<String, String> = self
            .stack_pods(workspace)
            .await?
            .into_iter()
            .map(|p| {
                let w = p
                    .labels
                    .and_then(|l| l.get(plan::LABEL_WORKLOAD).cloned())
                    .unwrap_or_default();
                (p.name, w.replacen('.', "/", 1))
            })
            .collect();

        // Secrets, their volumes, the claims: before the pods that use them.
        for sp in &plan.secrets {
            if st.secrets.get(&sp.name) != Some(&sp.hash) {
                self.put_secret(&setup, workspace, sp).await?;
                let verb = if st.secrets.contains_key(&sp.name) {
                    "configured"
                } else {
                    "created"
                };
                report.changes.push(format!(
                    "secret/{} {verb}",
                    sp.name.trim_start_matches(&prefix)
                ));
                st.secrets.insert(sp.name.clone(), sp.hash.clone());
            }
        }
        for v in &plan.secret_volumes {
            if st.filled.get(&v.name) != Some(&v.hash) {
                self.fill_volume(&setup, workspace, v).await?;
                st.filled.insert(v.name.clone(), v.hash.clone());
                st.volumes.insert(v.name.clone());
            }
        }
        for c in &plan.claims {
            if self.ensure_volume(&setup, workspace, c).await? {
                report.changes.push(format!(
                    "persistentvolumeclaim/{} created (podman volume {c})",
                    c.trim_start_matches(&prefix)
                ));
            }
            st.volumes.insert(c.clone());
        }

        // The pods whose hash changed, or that are gone.
        let mut failed: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
        let mut verbs: BTreeMap<String, &str> = BTreeMap::new();
        let mut images: BTreeMap<String, Result<(), String>> = BTreeMap::new();
        let mut replayed: BTreeSet<String> = BTreeSet::new();
        for pod in &plan.pods {
            let present = existing.contains_key(&pod.name);
            let same = st.pods.get(&pod.name).is_some_and(|p| p.hash == pod.hash);
            if present && same {
                continue;
            }
            if let Some(e) = &pod.error {
                failed
                    .entry(pod.workload.clone())
                    .or_insert((e.clone(), Vec::new()));
                continue;
            }
            let mut missing = None;
            for image in &pod.images {
                if !images.contains_key(image) {
                    let r = self.ensure_image(&setup, image, &stack.log).await;
                    images.insert(image.clone(), r);
                }
                if let Some(Err(e)) = images.get(image) {
                    missing = Some(e.clone());
                    break;
                }
            }
            if let Some(e) = missing {
                let e = if present {
                    format!("{e} (the previous version keeps running)")
                } else {
                    e
                };
                failed
                    .entry(pod.workload.clone())
                    .or_insert((e, Vec::new()));
                continue;
            }
            if present {
                self.remove_pod(&setup, &pod.name).await?;
            }
            st.pods.remove(&pod.name);
            replayed.insert(pod.name.clone());
            let mut played = self
                .play(&setup, conf.as_deref(), &network, pod, &stack.log)
                .await;
            // podman 4.3 races with itself removing a finished init
            // container ("failed to remove once init container … as it is
            // running"): the pod is half made; make it again.
            for _ in 0..2 {
                match &played {
                    Err(f) if f.error.contains("once init container") => {
                        log(
                            &stack.log,
                            &format!(
                                "devd: {}: podman's init container race, playing again",
                                pod.name
                            ),
                        );
                        self.remove_pod(&setup, &pod.name).await?;
                        played = self
                            .play(&setup, conf.as_deref(), &network, pod, &stack.log)
                            .await;
                    }
                    _ => break,
                }
            }
            match played {
                Ok(()) => {
                    st.pods.insert(
                        pod.name.clone(),
                        Played {
                            workload: pod.workload.clone(),
                            hash: pod.hash.clone(),
                        },
                    );
                    for v in &pod.volumes {
                        st.volumes.insert(v.clone());
                    }
                    let verb = if present { "configured" } else { "created" };
                    verbs.entry(pod.workload.clone()).or_insert(verb);
                }
                Err(f) => {
                    failed
                        .entry(pod.workload.clone())
                        .or_insert((f.error, f.log_tail));
                }
            }
        }
        // The Services changed: the pods not played now learn it.
        if st.aliases != plan.aliases {
            for pod in &plan.pods {
                let played = st.pods.get(&pod.name).is_some_and(|p| p.hash == pod.hash);
                if existing.contains_key(&pod.name) && played && !replayed.contains(&pod.name) {
                    match self
                        .rewrite_hosts(&setup, &pod.name, &st.aliases, &plan.aliases)
                        .await
                    {
                        Ok(()) => log(
                            &stack.log,
                            &format!(
                                "devd: /etc/hosts of pod {} names the Services anew",
                                pod.name
                            ),
                        ),
                        Err(f) => {
                            tracing::warn!(pod = %pod.name, error = %f, "cannot update the pod's /etc/hosts")
                        }
                    }
                }
            }
            st.aliases = plan.aliases.clone();
        }
        for (w, verb) in &verbs {
            report.changes.push(format!("{w} {verb}"));
        }

        // Pods no longer in the render.
        let keep: BTreeSet<&str> = plan.pods.iter().map(|p| p.name.as_str()).collect();
        let mut deleted = BTreeSet::new();
        for (name, workload) in &existing {
            if keep.contains(name.as_str()) {
                continue;
            }
            self.remove_pod(&setup, name).await?;
            log(
                &stack.log,
                &format!("devd: removed pod {name} ({workload})"),
            );
            let w = st
                .pods
                .remove(name)
                .map_or(workload.clone(), |p| p.workload);
            if !plan.workloads.contains(&w) {
                deleted.insert(w);
            }
        }
        st.pods.retain(|name, _| keep.contains(name.as_str()));
        st.keep_addresses(&keep);
        for w in deleted {
            report.changes.push(format!("{w} deleted"));
        }

        // What the pods no longer use.
        let used_secrets: BTreeSet<&str> = plan.secrets.iter().map(|s| s.name.as_str()).collect();
        for name in st
            .secrets
            .keys()
            .filter(|n| !used_secrets.contains(n.as_str()))
            .cloned()
            .collect::<Vec<_>>()
        {
            let mut cmd = setup.command();
            cmd.args(["secret", "rm", &name]);
            let _ = run(cmd, "podman", None).await;
            st.secrets.remove(&name);
            report.changes.push(format!(
                "secret/{} deleted",
                name.trim_start_matches(&prefix)
            ));
        }
        let mut used_volumes: BTreeSet<&str> = plan.claims.iter().map(String::as_str).collect();
        used_volumes.extend(plan.secret_volumes.iter().map(|v| v.name.as_str()));
        used_volumes.extend(
            plan.pods
                .iter()
                .flat_map(|p| p.volumes.iter().map(String::as_str)),
        );
        for name in st
            .volumes
            .iter()
            .filter(|n| !used_volumes.contains(n.as_str()))
            .cloned()
            .collect::<Vec<_>>()
        {
            let mut cmd = setup.command();
            cmd.args(["volume", "rm", "-f", &name]);
            if run(cmd, "podman", None).await.is_ok() {
                st.volumes.remove(&name);
                st.filled.remove(&name);
            }
        }

        // Wait for every pod (those that did not change answer at once).
        let mut waits = tokio::task::JoinSet::new();
        for pod in plan
            .pods
            .iter()
            .filter(|p| !failed.contains_key(&p.workload))
        {
            let check = status::Check {
                pod: pod.name.clone(),
                ip: pod.ip,
                containers: pod.containers.clone(),
                ports: pod.ports.clone(),
                run_once: pod.run_once,
            };
            let setup = setup.clone();
            let workload = pod.workload.clone();
            waits.spawn(
                async move { (workload, status::wait(&setup, &check, READY_TIMEOUT).await) },
            );
        }
        while let Some(done) = waits.join_next().await {
            if let Ok((workload, Err(e))) = done {
                failed.entry(workload).or_insert((e.reason, e.log_tail));
            }
        }
        for w in &plan.workloads {
            report.workloads.push(match failed.get(w) {
                None => WorkloadStatus {
                    key: w.clone(),
                    state: WorkloadState::Ready,
                    reason: None,
                    log_tail: Vec::new(),
                },
                Some((reason, log_tail)) => {
                    log(&stack.log, &format!("devd: {w} failed: {reason}"));
                    WorkloadStatus {
                        key: w.clone(),
                        state: WorkloadState::Failed,
                        reason: Some(reason.clone()),
                        log_tail: log_tail.clone(),
                    }
                }
            });
        }
        report.workloads.extend(plan.skipped.iter().cloned());

        // Stable URLs.
        let routed: BTreeMap<String, (String, SocketAddr)> = plan
            .routes
            .iter()
            .map(|r| {
                let to = SocketAddr::from((r.ip, r.port));
                (r.service.clone(), (r.pod.clone(), to))
            })
            .collect();
        {
            let mut proxies = self.proxies.lock().await;
            for gone in st.services.keys().filter(|s| !routed.contains_key(*s)) {
                proxies.remove(&Self::proxy_key(workspace, gone));
            }
        }
        for (service, (_, to)) in &routed {
            let port = self
                .route(&Self::proxy_key(workspace, service), *to)
                .await?;
            report.urls.insert(service.clone(), self.url(port));
        }
        st.services = routed;
        st.save(&path)
            .map_err(|e| Failure::new(format!("cannot save {}: {e}", path.display())))?;
        for c in &report.changes {
            log(&stack.log, &format!("devd: {c}"));
        }
        Ok(report)
    }

    /// Remove the workspace's pods and close its URLs; what stays
    /// (volumes, secrets, the network) serves the next apply, which plays
    /// every pod again. The pods removed.
    pub(super) async fn stop_stack(&self, workspace: &str) -> Result<Vec<String>, Failure> {
        let path = self.stack_state_path(workspace);
        let mut st = StackState::load(&path);
        {
            let mut proxies = self.proxies.lock().await;
            for s in st.services.keys() {
                proxies.remove(&Self::proxy_key(workspace, s));
            }
        }
        let pods = self.stack_pods(workspace).await?;
        let mut removed = Vec::new();
        if !pods.is_empty() {
            let setup = self.podman().await?.clone();
            for p in pods {
                self.remove_pod(&setup, &p.name).await?;
                removed.push(p.name);
            }
        }
        if path.exists() {
            st.pods.clear();
            st.save(&path)
                .map_err(|e| Failure::new(format!("cannot save {}: {e}", path.display())))?;
        }
        Ok(removed)
    }

    /// `devd stop`: [`Self::stop_stack`]; the services of the manifests
    /// if any pod was running.
    pub(super) async fn stop_stack_services(
        &self,
        workspace: &str,
        services: &[Service],
    ) -> Result<Vec<String>, Failure> {
        if self.stop_stack(workspace).await?.is_empty() {
            return Ok(Vec::new());
        }
        Ok(services
            .iter()
            .filter(|s| s.run == Run::Manifests)
            .map(|s| s.name.clone())
            .collect())
    }

    /// `devd down`: every pod, volume and secret devd played for the
    /// workspace, and its network; one line each.
    pub(super) async fn remove_stack_local(&self, workspace: &str) -> Result<Vec<String>, Failure> {
        let path = self.stack_state_path(workspace);
        let st = StackState::load(&path);
        let prefix = self.stack_prefix(workspace);
        let pods = self.stop_stack(workspace).await?;
        let mut removed: Vec<String> = pods.into_iter().map(|p| format!("pod {p}")).collect();
        let setup = self.podman().await?.clone();
        let list = |what: &'static str| {
            let mut cmd = setup.command();
            cmd.args([what, "ls", "--format", "{{.Name}}"]);
            cmd
        };
        let mut secrets: BTreeSet<String> = st.secrets.keys().cloned().collect();
        let mut volumes: BTreeSet<String> = st.volumes.clone();
        for (what, set) in [("secret", &mut secrets), ("volume", &mut volumes)] {
            let out = run(list(what), "podman", None).await?;
            set.retain(|n| out.lines().any(|l| l.trim() == n));
            set.extend(
                out.lines()
                    .map(str::trim)
                    .filter(|l| l.starts_with(&prefix))
                    .map(str::to_owned),
            );
        }
        for s in secrets {
            let mut cmd = setup.command();
            cmd.args(["secret", "rm", &s]);
            run(cmd, "podman", None).await?;
            removed.push(format!("secret {s}"));
        }
        for v in volumes {
            let mut cmd = setup.command();
            cmd.args(["volume", "rm", "-f", &v]);
            run(cmd, "podman", None).await?;
            removed.push(format!("volume {v}"));
        }
        let network = self.stack_network(workspace);
        let mut cmd = setup.command();
        cmd.args(["network", "exists", &network]);
        if run(cmd, "podman", None).await.is_ok() {
            let bridge = self.network_bridge(&setup, &network).await;
            let mut cmd = setup.command();
            cmd.args(["network", "rm", &network]);
            run(cmd, "podman", None).await?;
            removed.push(format!("network {network}"));
            // And CNI's address leases of it (host-local IPAM, rootful).
            let leases = Path::new("/var/lib/cni/networks").join(&network);
            if leases.is_dir() {
                let _ = std::fs::remove_dir_all(&leases);
            }
            // podman (CNI) leaves the network's bridge on the host.
            if let Some(b) = bridge
                && Path::new("/sys/class/net").join(&b).exists()
            {
                let mut cmd = tokio::process::Command::new("ip");
                cmd.args(["link", "delete", &b]);
                if run(cmd, "ip", None).await.is_ok() {
                    removed.push(format!("bridge {b}"));
                }
            }
        }
        let _ = std::fs::remove_file(&path);
        if let Ok(rd) = std::fs::read_dir(self.cfg.state_dir.join("stack").join("played")) {
            for e in rd.filter_map(Result::ok) {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(removed)
    }

    /// The containers of the workspace's played pods that run `service`'s
    /// image, as (name, image, running).
    pub(super) async fn stack_containers(
        &self,
        workspace: &str,
        service: &Service,
    ) -> Result<Vec<(String, String, bool)>, Failure> {
        #[derive(serde::Deserialize)]
        struct Entry {
            #[serde(rename = "Image", default)]
            image: String,
            #[serde(flatten)]
            ps: PsEntry,
        }
        let repository = super::super::Backend::repository(self, &service.image);
        let mut cmd = self.podman().await?.command();
        cmd.args(["ps", "-a", "--format", "json", "--filter"])
            .arg(format!("label={}", self.receiver_label));
        let out = run(cmd, "podman", None).await?;
        let list: Vec<Entry> = serde_json::from_str(out.trim()).unwrap_or_default();
        Ok(list
            .into_iter()
            .filter(|e| {
                e.ps.labels.as_ref().is_some_and(|l| {
                    l.get(LABEL_WORKSPACE).is_some_and(|w| w == workspace)
                        && l.contains_key(plan::LABEL_WORKLOAD)
                })
            })
            .filter(|e| {
                e.image
                    .strip_prefix(&repository)
                    .is_some_and(|r| r.starts_with('@') || r.starts_with(':'))
            })
            .filter_map(|e| {
                let name = e.ps.names.into_iter().next()?;
                Some((name, e.image, e.ps.state == "running"))
            })
            .collect())
    }

    /// The containers of `service`: by its labels, or (a service of the
    /// repository's manifests) in the played pods by its image.
    pub(super) async fn service_containers(
        &self,
        workspace: &str,
        service: &Service,
    ) -> Result<Vec<(String, String, bool)>, Failure> {
        match service.run {
            Run::Manifests => self.stack_containers(workspace, service).await,
            _ => self.containers(workspace, &service.name).await,
        }
    }

    /// What runs for a service of the manifests: the image of its first
    /// running container, and the URL of a Service that selects its pod.
    pub(super) async fn stack_running(
        &self,
        workspace: &str,
        service: &Service,
    ) -> Result<Option<RunningService>, Failure> {
        let list = self.stack_containers(workspace, service).await?;
        let Some((container, image, _)) = list.into_iter().find(|(_, _, running)| *running) else {
            return Ok(None);
        };
        // kube play names a pod's containers `<pod>-<container>`.
        // (After a receiver restart, this opens the Service's port again.)
        let st = StackState::load(&self.stack_state_path(workspace));
        let mut url = None;
        for (s, (pod, to)) in &st.services {
            if container.starts_with(&format!("{pod}-")) {
                let port = self.route(&Self::proxy_key(workspace, s), *to).await?;
                url = Some(self.url(port));
                break;
            }
        }
        Ok(Some(RunningService { image, url }))
    }
}
