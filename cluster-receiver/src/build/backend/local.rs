//! The local backend, the embedded default: `buildah bud --isolation
//! chroot` builds, `buildah push --digestfile` stores in a registry when one
//! is configured (else the image stays in local storage), and `podman run`
//! runs each service with its port published on loopback.
//!
//! Build steps run before `buildah bud`, in order: each is `podman run
//! --rm` of the step's image as root, with the context snapshot
//! bind-mounted read-write at [`STEP_WORKSPACE`] (the working directory,
//! or the step's `workdir` below it) and its output appended to the build
//! log. What a step writes into the context is in the image; a step that
//! exits non-zero fails the build before buildah runs.
//!
//! Every service gets a stable URL: a small TCP proxy on a port that stays
//! the same across deploys (and receiver restarts, when it is free)
//! forwards to the current container. A deploy starts the new container,
//! waits until it accepts connections, switches the proxy, and only then
//! removes the old one; a container that does not come up is removed and
//! the old one keeps serving.
//!
//! Every podman command carries what podman needs on this machine
//! ([`PodmanSetup`], found once by a probe: a default runtime that is not
//! installed breaks even `podman ps`), and those that start containers
//! (deploys and build steps) the limits too,
//! and a container that cannot start fails with one line naming the cause
//! and the fix ([`podman::explain_start_failure`]), podman's own message
//! in the log tail. A failed `buildah bud` removes its working containers
//! (`--force-rm`), so nothing stays mounted.
//!
//! Live update (copying a save into the running containers) is in
//! `local/live.rs`.

use super::podman::{self, PodmanSetup, missing_tool};
use super::registry::RegistryClient;
use super::{Backend, BuildRequest, Deployment, Failure, RunningService, tail};
use devd_protocol::event::LOG_TAIL_LINES;
use devd_sync::catalog::{Run, Service};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

mod down;
mod exec;
mod live;
mod stack;
mod steps;

/// Label keys on every container devd runs.
pub const LABEL_WORKSPACE: &str = "dev.devd.workspace";
pub const LABEL_SERVICE: &str = "dev.devd.service";
pub const LABEL_IMAGE: &str = "dev.devd.image";
/// Which receiver runs the container: a hash of its state directory. Two
/// receivers on one machine (two checkouts of a repository, each with its
/// embedded workspace `local`) share the user's container storage; each
/// lists, adopts, stops and removes only its own.
pub const LABEL_RECEIVER: &str = "dev.devd.receiver";

/// Where a build step sees the build context.
pub const STEP_WORKSPACE: &str = "/workspace";
/// Label on build step containers: `workspace/service/step`.
pub const LABEL_STEP: &str = "dev.devd.step";

/// How long a new container may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Configuration of the local backend.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Registry (`host:port`) to push to; `None`: local storage only.
    pub registry: Option<String>,
    /// Speak plain HTTP to the registry / skip TLS verification.
    pub insecure_registry: bool,
    /// Address the service URLs and published ports bind to.
    pub bind: IpAddr,
    /// Where the backend keeps its port assignments.
    pub state_dir: PathBuf,
}

/// A stable port forwarding to the current container.
struct Proxy {
    port: u16,
    target: Arc<Mutex<SocketAddr>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The local backend.
pub struct LocalBackend {
    cfg: LocalConfig,
    registry: Option<RegistryClient>,
    proxies: tokio::sync::Mutex<HashMap<String, Proxy>>,
    /// The receiver's tracker, given by [`Backend::observe`]: work that
    /// outlives a deploy call (retiring old containers) runs there, so a
    /// receiver's drain waits for it.
    tasks: std::sync::OnceLock<tokio_util::task::TaskTracker>,
    /// How podman starts containers here, found on first use (a failed
    /// probe is not kept: the next deploy probes again, e.g. after the
    /// user installed runc).
    podman: tokio::sync::OnceCell<PodmanSetup>,
    /// `LABEL_RECEIVER=…` of this receiver's containers.
    receiver_label: String,
}

/// Run a command, appending its output to `log` (if any); returns stdout.
async fn run(mut cmd: Command, tool: &str, log: Option<&PathBuf>) -> Result<String, Failure> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = cmd.output().await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            missing_tool(tool)
        } else {
            Failure::new(format!("cannot run {tool}: {e}"))
        }
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if let Some(log) = log {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = f.write_all(stdout.as_bytes());
            let _ = f.write_all(stderr.as_bytes());
        }
    }
    if out.status.success() {
        Ok(stdout)
    } else {
        let all = format!("{stdout}{stderr}");
        Err(Failure::with_log(
            format!("{tool} failed ({})", out.status),
            &all,
        ))
    }
}

fn key(workspace: &str, service: &str) -> String {
    format!("{workspace}/{service}")
}

/// The container name for a deploy: unique per deploy.
fn container_name(workspace: &str, service: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("devd-{workspace}-{service}-{n}")
}

#[derive(serde::Deserialize)]
struct PsEntry {
    #[serde(rename = "Names", default)]
    names: Vec<String>,
    #[serde(rename = "Labels", default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "State", default)]
    state: String,
}

impl LocalBackend {
    /// A backend; nothing is checked until it is used.
    pub fn new(cfg: LocalConfig) -> Self {
        let registry = cfg.registry.as_ref().map(|r| {
            // Keyed by host: a registry with a path prefix
            // (`host:port/team`) is still spoken to over plain HTTP.
            let insecure = if cfg.insecure_registry {
                vec![super::registry_host(r).to_owned()]
            } else {
                Vec::new()
            };
            RegistryClient::new(insecure, None)
        });
        let dir = std::path::absolute(&cfg.state_dir).unwrap_or_else(|_| cfg.state_dir.clone());
        let receiver = blake3::hash(dir.as_os_str().as_encoded_bytes()).to_hex();
        Self {
            receiver_label: format!("{LABEL_RECEIVER}={}", &receiver[..16]),
            cfg,
            registry,
            tasks: std::sync::OnceLock::new(),
            podman: tokio::sync::OnceCell::new(),
            proxies: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// How to start containers here (probed once, see [`PodmanSetup`]).
    async fn podman(&self) -> Result<&PodmanSetup, Failure> {
        self.podman
            .get_or_try_init(|| PodmanSetup::detect(&self.cfg.state_dir))
            .await
    }

    fn tls_flag(&self) -> Option<&'static str> {
        self.cfg.insecure_registry.then_some("--tls-verify=false")
    }

    fn ports_file(&self) -> PathBuf {
        self.cfg.state_dir.join("ports.json")
    }

    fn saved_port(&self, key: &str) -> Option<u16> {
        let text = std::fs::read_to_string(self.ports_file()).ok()?;
        let map: BTreeMap<String, u16> = serde_json::from_str(&text).ok()?;
        map.get(key).copied()
    }

    fn save_port(&self, key: &str, port: u16) {
        let path = self.ports_file();
        let mut map: BTreeMap<String, u16> = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        map.insert(key.to_owned(), port);
        let _ = std::fs::create_dir_all(&self.cfg.state_dir);
        if let Err(e) = devd_sync::fsutil::write_atomic(
            &path,
            serde_json::to_string_pretty(&map)
                .unwrap_or_default()
                .as_bytes(),
            None,
        ) {
            tracing::warn!(error = %e, "cannot save the service port assignments");
        }
    }

    /// Point the service's stable port at `target`, starting the proxy if
    /// needed; returns the stable port.
    async fn route(&self, key: &str, target: SocketAddr) -> Result<u16, Failure> {
        let mut proxies = self.proxies.lock().await;
        if let Some(p) = proxies.get(key) {
            *p.target.lock().expect("proxy target") = target;
            return Ok(p.port);
        }
        let want = self.saved_port(key).unwrap_or(0);
        let listener = match TcpListener::bind((self.cfg.bind, want)).await {
            Ok(l) => l,
            Err(_) if want != 0 => TcpListener::bind((self.cfg.bind, 0))
                .await
                .map_err(|e| Failure::new(format!("cannot open a port for {key}: {e}")))?,
            Err(e) => return Err(Failure::new(format!("cannot open a port for {key}: {e}"))),
        };
        let port = listener
            .local_addr()
            .map_err(|e| Failure::new(e.to_string()))?
            .port();
        if port != want {
            self.save_port(key, port);
        }
        let target = Arc::new(Mutex::new(target));
        let t2 = target.clone();
        // The proxy owns its connections: aborting it (the Proxy is
        // dropped with the backend) ends them too.
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                };
                let Ok((mut inbound, _)) = accepted else {
                    continue;
                };
                let to = *t2.lock().expect("proxy target");
                connections.spawn(async move {
                    match TcpStream::connect(to).await {
                        Ok(mut outbound) => {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                        Err(e) => {
                            tracing::debug!(%to, error = %e, "service proxy: upstream refused")
                        }
                    }
                });
            }
        });
        proxies.insert(key.to_owned(), Proxy { port, target, task });
        Ok(port)
    }

    fn url(&self, port: u16) -> String {
        match self.cfg.bind {
            IpAddr::V6(a) => format!("http://[{a}]:{port}"),
            IpAddr::V4(a) => format!("http://{a}:{port}"),
        }
    }

    /// Containers of one service, as (name, image label, running).
    async fn containers(
        &self,
        workspace: &str,
        service: &str,
    ) -> Result<Vec<(String, String, bool)>, Failure> {
        let mut cmd = self.podman().await?.command();
        cmd.args(["ps", "-a", "--format", "json", "--filter"])
            .arg(format!("label={}", self.receiver_label))
            .arg("--filter")
            .arg(format!("label={LABEL_WORKSPACE}={workspace}"))
            .arg("--filter")
            .arg(format!("label={LABEL_SERVICE}={service}"));
        let out = run(cmd, "podman", None).await?;
        let list: Vec<PsEntry> = serde_json::from_str(out.trim()).unwrap_or_default();
        Ok(list
            .into_iter()
            .filter_map(|e| {
                let name = e.names.into_iter().next()?;
                let image = e.labels.and_then(|l| l.get(LABEL_IMAGE).cloned())?;
                Some((name, image, e.state == "running"))
            })
            .collect())
    }

    /// The host address a container's port is published on.
    async fn published(&self, name: &str, port: u16) -> Result<SocketAddr, Failure> {
        let mut cmd = self.podman().await?.command();
        cmd.args(["port", name, &format!("{port}/tcp")]);
        let out = run(cmd, "podman", None).await?;
        out.lines()
            .filter_map(|l| l.trim().parse::<SocketAddr>().ok())
            .next()
            .ok_or_else(|| Failure::new(format!("podman reports no published port for {name}")))
    }

    async fn remove(&self, names: Vec<String>) {
        if names.is_empty() {
            return;
        }
        let mut cmd = match self.podman().await {
            Ok(p) => p.command(),
            Err(e) => {
                tracing::warn!(containers = ?names, error = %e, "cannot remove old containers");
                return;
            }
        };
        cmd.args(["rm", "-f", "-t", "1"])
            .args(&names)
            .kill_on_drop(false);
        if let Err(e) = run(cmd, "podman", None).await {
            tracing::warn!(containers = ?names, error = %e, "cannot remove old containers");
        }
    }

    async fn logs_of(&self, name: &str) -> Vec<String> {
        let mut cmd = match self.podman().await {
            Ok(p) => p.command(),
            Err(f) => return f.log_tail,
        };
        cmd.args(["logs", "--tail", &LOG_TAIL_LINES.to_string(), name]);
        // `podman logs` replays the container's stderr on its own stderr:
        // both streams are the container's output.
        cmd.stdin(Stdio::null());
        match cmd.output().await {
            Ok(out) => tail(
                &format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
                LOG_TAIL_LINES,
            ),
            Err(e) => vec![format!("cannot run podman logs: {e}")],
        }
    }

    /// Wait until the container accepts connections at `addr` (or until it
    /// exits, or the timeout).
    async fn wait_ready(&self, name: &str, addr: Option<SocketAddr>) -> Result<(), Failure> {
        let start = Instant::now();
        loop {
            let mut cmd = self.podman().await?.command();
            cmd.args(["inspect", "--format", "{{.State.Status}}", name]);
            let state = run(cmd, "podman", None).await?.trim().to_owned();
            if state == "exited" || state == "stopped" || state == "dead" {
                return Err(Failure {
                    error: format!("container {name} exited right after starting"),
                    log_tail: self.logs_of(name).await,
                });
            }
            if state == "running" {
                match addr {
                    None => return Ok(()),
                    Some(a) => {
                        if TcpStream::connect(a).await.is_ok() {
                            return Ok(());
                        }
                    }
                }
            }
            if start.elapsed() > READY_TIMEOUT {
                return Err(Failure {
                    error: format!(
                        "container {name} did not accept connections within {}s",
                        READY_TIMEOUT.as_secs()
                    ),
                    log_tail: self.logs_of(name).await,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[async_trait::async_trait]
impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    fn observe(&self, observation: super::Observation) {
        let _ = self.tasks.set(observation.tasks);
    }

    async fn stop(&self, workspace: &str, services: &[Service]) -> Result<Vec<String>, Failure> {
        let mut stopped = self.stop_all(workspace, services).await?;
        stopped.extend(self.stop_stack_services(workspace, services).await?);
        Ok(stopped)
    }

    async fn remove(&self, workspace: &str, services: &[Service]) -> Result<Vec<String>, Failure> {
        let mut removed = self.remove_all(workspace, services).await?;
        removed.extend(self.remove_stack_local(workspace).await?);
        Ok(removed)
    }

    fn supports_stack(&self) -> bool {
        true
    }

    async fn apply_stack(
        &self,
        workspace: &str,
        stack: &super::stack::Stack,
    ) -> Result<super::stack::StackReport, Failure> {
        self.apply_stack_local(workspace, stack).await
    }

    async fn remove_stack(&self, workspace: &str) -> Result<Vec<String>, Failure> {
        self.remove_stack_local(workspace).await
    }

    fn supports_live_update(&self) -> bool {
        true
    }

    async fn live_update(
        &self,
        workspace: &str,
        service: &Service,
        update: &super::LiveUpdate,
    ) -> Result<usize, super::LiveError> {
        self.live(workspace, service, update).await
    }

    async fn watch_starts(
        &self,
        workspace: &str,
        started: tokio::sync::mpsc::Sender<String>,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        self.follow_starts(workspace, started, cancel).await
    }

    fn repository(&self, image: &str) -> String {
        super::qualify(image, self.cfg.registry.as_deref())
    }

    async fn lookup(&self, repository: &str, tag: &str) -> Result<Option<String>, Failure> {
        if let Some(r) = &self.registry
            && !repository.starts_with("localhost/")
        {
            return r.lookup(repository, tag).await;
        }
        let mut cmd = self.podman().await?.command();
        cmd.args(["image", "inspect", "--format", "{{.Digest}}"])
            .arg(format!("{repository}:{tag}"));
        match run(cmd, "podman", None).await {
            Ok(out) if out.trim().starts_with("sha256:") => {
                Ok(Some(format!("{repository}@{}", out.trim())))
            }
            Ok(_) => Ok(None),
            Err(f) if f.log_tail.iter().any(|l| l.contains("image not known")) => Ok(None),
            Err(f) => Err(f),
        }
    }

    async fn build(&self, req: &BuildRequest) -> Result<String, Failure> {
        let reference = format!("{}:{}", req.repository, req.tag);
        // Not worth building what podman could not even look up or run.
        self.podman().await.map_err(|f| Failure {
            error: format!("build of {} failed: {}", req.service.name, f.error),
            log_tail: f.log_tail,
        })?;
        let started = Instant::now();
        for step in &req.service.steps {
            self.run_step(req, step).await?;
        }
        let mut cmd = Command::new("buildah");
        cmd.kill_on_drop(true);
        // --force-rm: a failed build removes its working containers too
        // (buildah keeps them by default, mounted).
        cmd.args(["bud", "--isolation", "chroot", "--layers", "--force-rm"])
            .arg("-f")
            .arg(req.context.dir.join(&req.context.dockerfile))
            .arg("-t")
            .arg(&reference);
        for (k, v) in &req.service.build_args {
            cmd.arg("--build-arg").arg(format!("{k}={v}"));
        }
        cmd.arg(&req.context.dir);
        run(cmd, "buildah", Some(&req.log))
            .await
            .map_err(|f| Failure {
                error: format!(
                    "build of {} failed: {}",
                    req.service.name,
                    f.log_tail
                        .iter()
                        .rev()
                        .find(|l| l.to_ascii_lowercase().contains("error"))
                        .cloned()
                        .unwrap_or(f.error)
                ),
                log_tail: f.log_tail,
            })?;
        tracing::info!(service = %req.service.name, %reference, ms = started.elapsed().as_millis() as u64, "built");
        if self.registry.is_some() && !req.repository.starts_with("localhost/") {
            let digest_file = req.log.with_extension("digest");
            let mut cmd = Command::new("buildah");
            cmd.arg("push").kill_on_drop(true);
            if let Some(f) = self.tls_flag() {
                cmd.arg(f);
            }
            cmd.arg("--digestfile")
                .arg(&digest_file)
                .arg(&reference)
                .arg(format!("docker://{reference}"));
            run(cmd, "buildah", Some(&req.log))
                .await
                .map_err(|f| Failure {
                    error: format!("push of {reference} failed: {}", f.error),
                    log_tail: f.log_tail,
                })?;
            let digest = std::fs::read_to_string(&digest_file)
                .map_err(|e| Failure::new(format!("buildah wrote no digest file: {e}")))?;
            let _ = std::fs::remove_file(&digest_file);
            return Ok(format!("{}@{}", req.repository, digest.trim()));
        }
        match self.lookup(&req.repository, &req.tag).await? {
            Some(image) => Ok(image),
            None => Err(Failure::new(format!(
                "buildah reported success but {reference} is not in local storage"
            ))),
        }
    }

    async fn deploy(
        &self,
        workspace: &str,
        service: &Service,
        image: &str,
    ) -> Result<Deployment, Failure> {
        let k = key(workspace, &service.name);
        let old = self.containers(workspace, &service.name).await?;
        if let Some((name, _, _)) = old.iter().find(|(_, i, running)| i == image && *running) {
            // Already running this image (a reverted edit, a restart).
            let url = match service.port() {
                Some(p) => {
                    let addr = self.published(name, p).await?;
                    Some(self.url(self.route(&k, addr).await?))
                }
                None => None,
            };
            let stale = old
                .iter()
                .filter(|(n, _, _)| n != name)
                .map(|(n, _, _)| n.clone())
                .collect();
            self.remove(stale).await;
            return Ok(Deployment { url });
        }
        let name = container_name(workspace, &service.name);
        let mut cmd = self.podman().await?.run_command();
        cmd.args(["-d", "--name", &name])
            .arg("--label")
            .arg(&self.receiver_label)
            .arg("--label")
            .arg(format!("{LABEL_WORKSPACE}={workspace}"))
            .arg("--label")
            .arg(format!("{LABEL_SERVICE}={}", service.name))
            .arg("--label")
            .arg(format!("{LABEL_IMAGE}={image}"));
        if let Some(f) = self.tls_flag() {
            cmd.arg(f);
        }
        if let Some(p) = service.port() {
            cmd.arg("-p").arg(format!("{}::{p}", self.cfg.bind));
        }
        if let Run::Spec(spec) = &service.run {
            for (k, v) in &spec.env {
                cmd.arg("-e").arg(format!("{k}={v}"));
            }
        }
        cmd.arg(image);
        if let Err(f) = run(cmd, "podman", None).await {
            self.remove(vec![name]).await;
            return Err(Failure {
                error: format!(
                    "its container cannot start: {}",
                    podman::explain_start_failure(
                        &f.log_tail.join("\n"),
                        image,
                        service.dockerfile_path().as_str()
                    )
                ),
                log_tail: f.log_tail,
            });
        }
        let addr = match service.port() {
            Some(p) => match self.published(&name, p).await {
                Ok(a) => Some(a),
                Err(f) => {
                    // A container that exited at once has no port: say
                    // so, with what it printed.
                    let f = self.wait_ready(&name, None).await.err().unwrap_or(f);
                    self.remove(vec![name]).await;
                    return Err(f);
                }
            },
            None => None,
        };
        if let Err(f) = self.wait_ready(&name, addr).await {
            self.remove(vec![name]).await;
            return Err(f);
        }
        let url = match addr {
            Some(a) => Some(self.url(self.route(&k, a).await?)),
            None => None,
        };
        // The new one serves: retire the old ones in the background (they
        // get a second to finish requests in flight).
        // One `podman rm` each: the list can hold a container that the
        // previous deploy's retirement is still removing (a process that
        // ignores SIGTERM takes the whole second), and one `podman rm` of
        // both left the other running.
        let stale: Vec<String> = old.into_iter().map(|(n, _, _)| n).collect();
        if !stale.is_empty() {
            let setup = self.podman().await?.clone();
            let retire = async move {
                let mut each = tokio::task::JoinSet::new();
                for c in stale {
                    let mut cmd = setup.command();
                    cmd.args(["rm", "-f", "--ignore", "-t", "1", &c])
                        .kill_on_drop(false);
                    each.spawn(async move {
                        if let Err(e) = run(cmd, "podman", None).await {
                            tracing::warn!(container = %c, error = %e, "cannot remove an old container");
                        }
                    });
                }
                while each.join_next().await.is_some() {}
            };
            match self.tasks.get() {
                Some(tasks) => drop(tasks.spawn(retire)),
                // Not run by a receiver (nothing observes it): remove them
                // before returning instead.
                None => retire.await,
            }
        }
        Ok(Deployment { url })
    }

    async fn logs(
        &self,
        workspace: &str,
        service: &Service,
        follow: bool,
        out: tokio::sync::mpsc::Sender<Vec<u8>>,
    ) -> Result<(), Failure> {
        let list = self.service_containers(workspace, service).await?;
        let Some((name, _, _)) = list
            .iter()
            .find(|(_, _, running)| *running)
            .or_else(|| list.first())
        else {
            return Err(Failure::new(format!(
                "{} has no container: it has not been deployed yet (see `devd status`)",
                service.name
            )));
        };
        let mut cmd = self.podman().await?.command();
        cmd.arg("logs");
        if follow {
            cmd.arg("--follow");
        }
        cmd.arg(name)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                missing_tool("podman")
            } else {
                Failure::new(format!("cannot run podman logs: {e}"))
            }
        })?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (a, b) = tokio::join!(super::pump(stdout, &out), super::pump(stderr, &out));
        a.and(b)
            .map_err(|e| Failure::new(format!("reading podman logs: {e}")))?;
        let _ = child.kill().await;
        Ok(())
    }

    async fn exec(
        &self,
        workspace: &str,
        service: &Service,
        req: super::exec::ExecRequest,
        io: super::exec::ExecIo,
    ) -> Result<i32, Failure> {
        self.exec_in(workspace, service, req, io).await
    }

    async fn running(
        &self,
        workspace: &str,
        service: &Service,
    ) -> Result<Option<RunningService>, Failure> {
        if service.run == Run::Manifests {
            return self.stack_running(workspace, service).await;
        }
        let list = self.containers(workspace, &service.name).await?;
        let Some((name, image, _)) = list.into_iter().find(|(_, _, running)| *running) else {
            return Ok(None);
        };
        let url = match service.port() {
            Some(p) => {
                let addr = self.published(&name, p).await?;
                Some(self.url(self.route(&key(workspace, &service.name), addr).await?))
            }
            None => None,
        };
        Ok(Some(RunningService { image, url }))
    }
}
