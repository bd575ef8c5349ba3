//! `devd workspace`: a developer's namespace on the cluster, with an expiry.
//!
//! A workspace is a Namespace `devd-<user>` (or `devd-<user>-<name>`)
//! carrying devd's labels and the owner and expiry annotations exactly as
//! the receiver's vacuum reads them ([`devd_sync::labels`]): once the
//! expiry has passed, the vacuum deletes it. The cluster is the one of the
//! developer's kubeconfig (`KUBECONFIG`, else `~/.kube/config`).
//!
//! `create` then deploys a receiver into it and pairs this repository
//! with it:
//!
//! 1. copies the Secrets the receiver mounts ([`COPIED_SECRETS`]: registry
//!    and git credentials) from the namespace `kubectl apply -k manifests/`
//!    installed (`--secrets-from`, default `devd`);
//! 2. server-side-applies the receiver's objects: the render of
//!    `manifests/receiver` without its Secrets, compiled in from
//!    [`RECEIVER_OBJECTS_PATH`] (a test keeps it equal to the render), with
//!    the namespace, the workspace's name and label filled in;
//! 3. waits for the receiver's Deployment to be available — the receiver
//!    is ready only once it has published its pairing in the Secret
//!    `[kubernetes] pairing_secret` names;
//! 4. reads that Secret (fingerprint, workspace, token) and works out the
//!    address to dial from the QUIC Service, not from the receiver, which
//!    only knows its pod's address: a LoadBalancer's ingress IP or hostname
//!    and the Service port, or a node's address (ExternalIP, else
//!    InternalIP) and the nodePort; `--address` overrides both (e.g. a
//!    port-forward);
//! 5. merges `[receiver]` into this repository's `devd.local.toml`,
//!    keeping its other sections and comments.
//!
//! `create --no-receiver` makes the namespace only.

use anyhow::{Context, bail};
use devd_sync::labels::{
    ANNOTATION_EXPIRES, ANNOTATION_OWNER, LABEL_MANAGED_BY, LABEL_WORKSPACE, annotation,
    is_workspace, label,
};
use devd_sync::pairing::Pairing;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, Node, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Label every devd object carries besides [`LABEL_MANAGED_BY`].
pub const LABEL_PART_OF: &str = "app.kubernetes.io/part-of";
/// Prefix of workspace namespaces.
pub const PREFIX: &str = "devd-";
/// Longest name Kubernetes accepts for a namespace.
const MAX_NAME: usize = 63;
/// Where the receiver objects `create` applies are kept, from the
/// repository root: the render of `manifests/receiver` without Secrets.
pub const RECEIVER_OBJECTS_PATH: &str = "manifests/workspace/receiver.json";
const RECEIVER_OBJECTS: &str = include_str!("../../manifests/workspace/receiver.json");
/// The receiver's Deployment.
pub const RECEIVER_DEPLOYMENT: &str = "devd-receiver";
/// The Service laptops reach the receiver through.
pub const QUIC_SERVICE: &str = "devd-receiver-quic";
/// The Secrets the receiver mounts, copied from the install's namespace:
/// registry credentials and git read access.
pub const COPIED_SECRETS: [&str; 2] = ["devd-registry", "devd-git"];
/// Server-side-apply field manager of what `create` applies.
const FIELD_MANAGER: &str = "devd";
/// Pause between two looks at the receiver.
const POLL: Duration = Duration::from_secs(1);

/// Parse a time to live: `12h`, `90m`, `1d`, `1h30m`, `45s`.
pub fn parse_ttl(s: &str) -> anyhow::Result<SignedDuration> {
    let bad = || anyhow::anyhow!("bad --ttl {s:?}: expected e.g. 12h, 90m, 1d or 1h30m");
    let mut total: i64 = 0;
    let mut num = String::new();
    let mut any = false;
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit: i64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: i64 = num.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        num.clear();
        any = true;
    }
    if !num.is_empty() || !any || total <= 0 {
        return Err(bad());
    }
    Ok(SignedDuration::from_secs(total))
}

/// `3d 4h`, `11h 59m`, `5m`, `40s`; `expired` when not positive.
pub fn human_left(left: SignedDuration) -> String {
    let s = left.as_secs();
    if s <= 0 {
        return "expired".into();
    }
    let (d, h, m) = (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60);
    match () {
        _ if d > 0 => format!("{d}d {h}h"),
        _ if h > 0 => format!("{h}h {m:02}m"),
        _ if m > 0 => format!("{m}m"),
        _ => format!("{s}s"),
    }
}

/// Lowercase, `[a-z0-9-]` only, no leading or trailing `-`.
fn dns_label(s: &str) -> String {
    let mapped: String = s
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    mapped.trim_matches('-').to_owned()
}

/// Who is asking: the user part of namespace names, and the owner.
#[derive(Debug, Clone)]
pub struct Caller {
    /// DNS-label form of the user name (`alice`).
    pub user: String,
    /// The owner annotation (`git config user.email`, else `$USER`).
    pub owner: String,
}

impl Caller {
    /// From `$USER` and `git config user.email`.
    pub fn detect() -> anyhow::Result<Self> {
        let env_user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .ok()
            .filter(|u| !u.trim().is_empty());
        let email = std::process::Command::new("git")
            .args(["config", "user.email"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|e| !e.is_empty());
        let user_src = env_user
            .clone()
            .or_else(|| {
                email
                    .as_deref()
                    .map(|e| e.split('@').next().unwrap_or(e).to_owned())
            })
            .context("cannot tell who you are: set $USER or `git config user.email`")?;
        let user = dns_label(&user_src);
        if user.is_empty() {
            bail!("user name {user_src:?} has no letters or digits to name a namespace with");
        }
        let owner = email.or(env_user).unwrap_or_else(|| user.clone());
        Ok(Self { user, owner })
    }

    /// The namespace of workspace `name` (`None`: the default one).
    pub fn namespace(&self, name: Option<&str>) -> anyhow::Result<String> {
        let ns = match name {
            None => format!("{PREFIX}{}", self.user),
            Some(n) => {
                if n.is_empty() || dns_label(n) != n {
                    bail!(
                        "bad workspace name {n:?}: use lowercase letters, digits and '-' (not at either end)"
                    );
                }
                format!("{PREFIX}{}-{n}", self.user)
            }
        };
        if ns.len() > MAX_NAME {
            bail!(
                "namespace name {ns} is longer than {MAX_NAME} characters; pick a shorter --name"
            );
        }
        Ok(ns)
    }
}

/// A workspace as `list --json` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct WorkspaceView {
    /// The namespace.
    pub namespace: String,
    /// The value of the workspace label.
    pub workspace: String,
    /// The owner annotation, if any.
    pub owner: Option<String>,
    /// The expiry annotation as written (RFC 3339).
    pub expires_at: Option<String>,
    /// Seconds until expiry (negative once past); none without a valid expiry.
    pub seconds_left: Option<i64>,
    /// Whether the expiry has passed.
    pub expired: bool,
}

fn view(ns: &Namespace, now: Timestamp) -> WorkspaceView {
    let expires_at = annotation(ns, ANNOTATION_EXPIRES).map(str::to_owned);
    let seconds_left = expires_at
        .as_deref()
        .and_then(|e| e.trim().parse::<Timestamp>().ok())
        .map(|t| now.duration_until(t).as_secs());
    WorkspaceView {
        namespace: ns.metadata.name.clone().unwrap_or_default(),
        workspace: label(ns, LABEL_WORKSPACE).unwrap_or_default().to_owned(),
        owner: annotation(ns, ANNOTATION_OWNER).map(str::to_owned),
        expires_at,
        seconds_left,
        expired: seconds_left.is_some_and(|s| s <= 0),
    }
}

fn rfc3339(t: Timestamp) -> String {
    // Whole seconds, UTC, `Z`: what the manifests and the vacuum show.
    Timestamp::from_second(t.as_second())
        .map(|t| t.to_string())
        .unwrap_or_else(|_| t.to_string())
}

async fn client() -> anyhow::Result<kube::Client> {
    devd_sync::net::install_crypto();
    let config = kube::Config::infer()
        .await
        .context("no Kubernetes configuration: set KUBECONFIG or write ~/.kube/config")?;
    kube::Client::try_from(config).context("Kubernetes client")
}

fn api_error(e: kube::Error, what: &str) -> anyhow::Error {
    anyhow::Error::new(e).context(what.to_owned())
}

/// Find the namespace `name` names: the namespace itself, else the
/// caller's workspace `devd-<user>-<name>`. Refuses namespaces without
/// devd's workspace labels.
async fn resolve(api: &Api<Namespace>, caller: &Caller, name: &str) -> anyhow::Result<Namespace> {
    let mut candidates = vec![name.to_owned()];
    if !name.starts_with(PREFIX)
        && let Ok(ns) = caller.namespace(Some(name))
    {
        candidates.push(ns);
    }
    for c in &candidates {
        match api.get_opt(c).await {
            Ok(Some(ns)) => {
                if !is_workspace(&ns) {
                    bail!(
                        "namespace {c} is not a devd workspace (it lacks the labels {LABEL_MANAGED_BY}=devd and {LABEL_WORKSPACE}); devd only changes namespaces it created"
                    );
                }
                return Ok(ns);
            }
            Ok(None) => continue,
            Err(e) => return Err(api_error(e, &format!("reading namespace {c}"))),
        }
    }
    bail!(
        "no workspace {name} (looked for namespace {}); `devd workspace list` shows yours",
        candidates.join(" and ")
    )
}

/// What `devd workspace create` is asked to do.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// `--name`: devd-<user>-<NAME>.
    pub name: Option<String>,
    /// `--ttl`.
    pub ttl: String,
    /// `--no-receiver`: the namespace only.
    pub no_receiver: bool,
    /// `--timeout`: for the receiver to be ready and reachable.
    pub timeout: String,
    /// `--address`: dial this instead of what the Service says.
    pub address: Option<String>,
    /// `--secrets-from`: the namespace holding [`COPIED_SECRETS`].
    pub secrets_from: String,
    /// `--node-port`: the QUIC Service as a NodePort, not a LoadBalancer.
    pub node_port: bool,
}

/// `devd workspace create`.
pub async fn create(opts: &CreateOptions) -> anyhow::Result<()> {
    let ttl = parse_ttl(&opts.ttl)?;
    let timeout = parse_ttl(&opts.timeout)
        .map_err(|_| {
            anyhow::anyhow!(
                "bad --timeout {:?}: expected e.g. 5m, 90s or 1h",
                opts.timeout
            )
        })?
        .unsigned_abs();
    if let Some(a) = &opts.address {
        check_address(a)?;
    }
    let caller = Caller::detect()?;
    let ns_name = caller.namespace(opts.name.as_deref())?;
    // Before anything is created: where the pairing goes, and the objects.
    let (root, objects) = if opts.no_receiver {
        (None, Vec::new())
    } else {
        let cwd = std::env::current_dir().context("current directory")?;
        let repo = crate::repo::Repo::discover(&cwd).map_err(|e| {
            anyhow::anyhow!(
                "{e}\n`devd workspace create` pairs the repository it runs in (it writes its {}): run it there, or pass --no-receiver for the namespace only",
                crate::config::LOCAL_FILE
            )
        })?;
        (Some(repo.workdir().to_owned()), receiver_objects()?)
    };
    let client = client().await?;
    let secrets = if opts.no_receiver {
        Vec::new()
    } else {
        source_secrets(&client, &opts.secrets_from, &ns_name).await?
    };
    let now = Timestamp::now();
    let expires = rfc3339(now.checked_add(ttl).context("--ttl too long")?);
    let workspace = ns_name.trim_start_matches(PREFIX).to_owned();
    let ns = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(ns_name.clone()),
            labels: Some(BTreeMap::from([
                (LABEL_MANAGED_BY.to_owned(), "devd".to_owned()),
                (LABEL_PART_OF.to_owned(), "devd".to_owned()),
                (LABEL_WORKSPACE.to_owned(), workspace.clone()),
            ])),
            annotations: Some(BTreeMap::from([
                (ANNOTATION_OWNER.to_owned(), caller.owner.clone()),
                (ANNOTATION_EXPIRES.to_owned(), expires.clone()),
            ])),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<Namespace> = Api::all(client.clone());
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => bail!(
            "namespace {ns_name} already exists; `devd workspace extend {ns_name} --ttl 12h` keeps it longer, `devd workspace create --name OTHER` makes another"
        ),
        Err(e) => return Err(api_error(e, &format!("creating namespace {ns_name}"))),
    }
    println!(
        "created namespace {ns_name} (owner {}, expires {expires}, in {})",
        caller.owner,
        human_left(ttl)
    );
    println!(
        "The vacuum deletes it once it expires; `devd workspace extend {ns_name} --ttl 6h` keeps it longer."
    );
    let Some(root) = root else {
        println!(
            "Next: deploy a receiver into it with\n  \
             kubectl kustomize manifests/receiver | kubectl apply -n {ns_name} -f -\n\
             then pair with it as for any receiver (see the README), or run `devd workspace create` without --no-receiver next time."
        );
        return Ok(());
    };
    let receiver = Receiver {
        client,
        namespace: ns_name.clone(),
        workspace,
        node_port: opts.node_port,
    };
    let paired = receiver
        .deploy_and_pair(objects, secrets, opts, timeout, &root)
        .await
        .map_err(|e| {
            e.context(format!(
                "the namespace {ns_name} was created and stays until it expires; `devd workspace delete {ns_name}` removes it"
            ))
        })?;
    println!(
        "paired: wrote [receiver] to {} (address {} from {}, workspace {}, fingerprint {}…)",
        paired.file.display(),
        paired.address,
        paired.address_from,
        paired.pairing.workspace,
        paired.pairing.fingerprint.get(..16).unwrap_or_default()
    );
    if paired.ignored {
        println!(
            "added {} to .gitignore (it holds the token)",
            crate::config::LOCAL_FILE
        );
    }
    println!("Next: devd start");
    Ok(())
}

/// `host:port`, with a non-empty host and a port number.
fn check_address(a: &str) -> anyhow::Result<()> {
    let ok = a
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if !ok {
        bail!(
            "bad --address {a:?}: expected HOST:PORT, e.g. 203.0.113.7:7447 or devd.example.com:30747"
        );
    }
    Ok(())
}

/// The receiver's objects as compiled in (see [`RECEIVER_OBJECTS_PATH`]).
pub fn receiver_objects() -> anyhow::Result<Vec<DynamicObject>> {
    serde_json::from_str(RECEIVER_OBJECTS).with_context(|| {
        format!("{RECEIVER_OBJECTS_PATH} (compiled into devd) is not a list of Kubernetes objects")
    })
}

/// The API resource of a kind the receiver's manifests use.
fn api_resource(kind: &str) -> Option<ApiResource> {
    Some(match kind {
        "ServiceAccount" => ApiResource::erase::<ServiceAccount>(&()),
        "Role" => ApiResource::erase::<Role>(&()),
        "RoleBinding" => ApiResource::erase::<RoleBinding>(&()),
        "ConfigMap" => ApiResource::erase::<ConfigMap>(&()),
        "Secret" => ApiResource::erase::<Secret>(&()),
        "Service" => ApiResource::erase::<Service>(&()),
        "PersistentVolumeClaim" => ApiResource::erase::<PersistentVolumeClaim>(&()),
        "Deployment" => ApiResource::erase::<Deployment>(&()),
        _ => return None,
    })
}

/// The Secrets the receiver mounts, read from `from` (where
/// `kubectl apply -k manifests/` put them), ready to apply elsewhere.
async fn source_secrets(
    client: &kube::Client,
    from: &str,
    target: &str,
) -> anyhow::Result<Vec<DynamicObject>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), from);
    let mut out = Vec::new();
    for name in COPIED_SECRETS {
        let s = match api.get_opt(name).await {
            Ok(Some(s)) => s,
            Ok(None) => bail!(
                "no Secret {name} in namespace {from}: the receiver in {target} mounts it. \
                 `kubectl apply -k manifests/` installs it there (manifests/receiver/secrets/README.md); \
                 or pass --secrets-from NAMESPACE where it is"
            ),
            Err(e) => {
                return Err(api_error(
                    e,
                    &format!(
                        "reading Secret {name} in namespace {from} (to copy it into {target}; your kubeconfig needs `get secrets` there)"
                    ),
                ));
            }
        };
        let copy = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_owned()),
                labels: s.metadata.labels.clone(),
                ..Default::default()
            },
            type_: s.type_.clone(),
            data: s.data.clone(),
            ..Default::default()
        };
        out.push(serde_json::from_value(serde_json::to_value(copy)?)?);
    }
    Ok(out)
}

/// The receiver of one new workspace namespace.
struct Receiver {
    client: kube::Client,
    namespace: String,
    workspace: String,
    node_port: bool,
}

/// What pairing wrote.
struct Paired {
    pairing: Pairing,
    address: String,
    address_from: String,
    file: PathBuf,
    ignored: bool,
}

/// Where a Deployment's rollout stands.
#[derive(Debug, PartialEq, Eq)]
enum Rollout {
    Available,
    Failed(String),
    Waiting(String),
}

fn rollout(d: &Deployment) -> Rollout {
    let status = d.status.clone().unwrap_or_default();
    let conditions = status.conditions.unwrap_or_default();
    let cond = |t: &str| conditions.iter().find(|c| c.type_ == t);
    if let Some(c) = cond("Progressing")
        && c.status == "False"
    {
        return Rollout::Failed(format!(
            "{}: {}",
            c.reason.as_deref().unwrap_or("not progressing"),
            c.message.as_deref().unwrap_or_default()
        ));
    }
    let current = match (d.metadata.generation, status.observed_generation) {
        (Some(g), Some(o)) => o >= g,
        _ => true,
    };
    if current && cond("Available").is_some_and(|c| c.status == "True") {
        return Rollout::Available;
    }
    Rollout::Waiting(format!(
        "{}/{} replicas ready",
        status.ready_replicas.unwrap_or(0),
        d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    ))
}

/// `host:port`, bracketing an IPv6 address.
fn host_port(host: &str, port: i32) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn is_wildcard(address: &str) -> bool {
    address
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_unspecified())
}

/// The objects for this namespace: the namespace set, the workspace's
/// label added, the RoleBinding's subject in it, the ConfigMap naming
/// the workspace. Also the pairing Secret's name from the receiver's
/// configuration.
///
/// With `node_port`, the QUIC Service becomes a NodePort whose port the
/// cluster picks (a fixed one would collide between workspaces).
fn prepare(
    objects: Vec<DynamicObject>,
    namespace: &str,
    workspace: &str,
    node_port: bool,
) -> anyhow::Result<(Vec<DynamicObject>, String)> {
    let mut pairing_secret = None;
    let mut out = Vec::new();
    for mut o in objects {
        let kind = o.types.as_ref().map(|t| t.kind.clone()).unwrap_or_default();
        o.metadata.namespace = Some(namespace.to_owned());
        // Not app.kubernetes.io/managed-by=devd: the receiver's backend
        // reads that label as "a service devd deployed".
        let labels = o.metadata.labels.get_or_insert_default();
        labels.insert(LABEL_WORKSPACE.to_owned(), workspace.to_owned());
        labels.insert(LABEL_PART_OF.to_owned(), "devd".to_owned());
        match kind.as_str() {
            "Service" if node_port && o.metadata.name.as_deref() == Some(QUIC_SERVICE) => {
                o.data["spec"]["type"] = "NodePort".into();
                if let Some(ports) = o.data["spec"]["ports"].as_array_mut() {
                    for p in ports.iter_mut().filter_map(|p| p.as_object_mut()) {
                        p.remove("nodePort");
                    }
                }
            }
            "RoleBinding" => {
                if let Some(subjects) = o.data["subjects"].as_array_mut() {
                    for s in subjects {
                        s["namespace"] = namespace.to_owned().into();
                    }
                }
            }
            "ConfigMap" if o.data["data"]["receiver.toml"].is_string() => {
                let data = &mut o.data["data"];
                data["workspace"] = workspace.to_owned().into();
                // The pod's own address is useless to a laptop; create
                // reads the Service instead.
                if let Some(d) = data.as_object_mut() {
                    d.remove("advertise");
                }
                let toml = data["receiver.toml"].as_str().unwrap_or_default();
                pairing_secret = devd_sync::pairing::secret_name_in_receiver_toml(toml)
                    .with_context(|| format!("the receiver.toml in {RECEIVER_OBJECTS_PATH}"))?;
            }
            _ => {}
        }
        out.push(o);
    }
    let secret = pairing_secret.with_context(|| {
        format!(
            "the receiver's receiver.toml in {RECEIVER_OBJECTS_PATH} sets no [kubernetes] pairing_secret: the receiver would never publish its pairing"
        )
    })?;
    Ok((out, secret))
}

impl Receiver {
    fn timed_out(&self, what: &str, timeout: Duration) -> anyhow::Error {
        let ns = &self.namespace;
        anyhow::anyhow!(
            "{what} within {}s in namespace {ns}; look with\n  \
             kubectl -n {ns} describe deploy/{RECEIVER_DEPLOYMENT}\n  \
             kubectl -n {ns} logs deploy/{RECEIVER_DEPLOYMENT}\n\
             (`--timeout 15m` waits longer)",
            timeout.as_secs()
        )
    }

    fn prepare(&self, objects: Vec<DynamicObject>) -> anyhow::Result<(Vec<DynamicObject>, String)> {
        prepare(objects, &self.namespace, &self.workspace, self.node_port)
    }

    async fn apply(&self, o: &DynamicObject) -> anyhow::Result<()> {
        let types = o.types.clone().unwrap_or_default();
        let name = o.metadata.name.clone().unwrap_or_default();
        let ar = api_resource(&types.kind).with_context(|| {
            format!(
                "{RECEIVER_OBJECTS_PATH} has a {} {name}, a kind devd does not know how to apply",
                types.kind
            )
        })?;
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &self.namespace, &ar);
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(o),
        )
        .await
        .map_err(|e| {
            api_error(
                e,
                &format!(
                    "applying {} {name} in namespace {}",
                    types.kind, self.namespace
                ),
            )
        })?;
        Ok(())
    }

    async fn deploy_and_pair(
        &self,
        objects: Vec<DynamicObject>,
        secrets: Vec<DynamicObject>,
        opts: &CreateOptions,
        timeout: Duration,
        root: &Path,
    ) -> anyhow::Result<Paired> {
        let (objects, secret_name) = self.prepare(secrets.into_iter().chain(objects).collect())?;
        for o in &objects {
            self.apply(o).await?;
        }
        let count = objects.len();
        println!(
            "applied the receiver into {} ({count} objects, Secrets {} copied from {})",
            self.namespace,
            COPIED_SECRETS.join(" and "),
            opts.secrets_from
        );
        let deadline = Instant::now() + timeout;
        let spinner = indicatif::ProgressBar::new_spinner();
        spinner.enable_steady_tick(Duration::from_millis(120));
        eprintln!(
            "waiting for the receiver in {} to be ready (at most {}s)…",
            self.namespace,
            timeout.as_secs()
        );
        let result = self
            .wait_and_read(
                &secret_name,
                opts.address.as_deref(),
                deadline,
                timeout,
                &spinner,
            )
            .await;
        spinner.finish_and_clear();
        let (pairing, address, address_from) = result?;
        let (file, ignored) = write_receiver(root, &address, &pairing)?;
        Ok(Paired {
            pairing,
            address,
            address_from,
            file,
            ignored,
        })
    }

    async fn wait_and_read(
        &self,
        secret_name: &str,
        address: Option<&str>,
        deadline: Instant,
        timeout: Duration,
        spinner: &indicatif::ProgressBar,
    ) -> anyhow::Result<(Pairing, String, String)> {
        let ns = &self.namespace;
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
        loop {
            let d = deployments
                .get_opt(RECEIVER_DEPLOYMENT)
                .await
                .map_err(|e| {
                    api_error(e, &format!("reading deploy/{RECEIVER_DEPLOYMENT} in {ns}"))
                })?;
            let state = match &d {
                None => Rollout::Waiting("the Deployment is not there yet".into()),
                Some(d) => rollout(d),
            };
            match state {
                Rollout::Available => break,
                Rollout::Failed(why) => bail!(
                    "the receiver in namespace {ns} failed to roll out ({why}); look with\n  \
                     kubectl -n {ns} describe deploy/{RECEIVER_DEPLOYMENT}"
                ),
                Rollout::Waiting(what) => {
                    spinner.set_message(format!("receiver in {ns}: {what}"));
                }
            }
            if Instant::now() >= deadline {
                return Err(self.timed_out("the receiver did not become ready", timeout));
            }
            tokio::time::sleep(POLL).await;
        }
        spinner.set_message(format!("receiver in {ns}: ready; reading its pairing"));
        // Ready means published; still, wait out a cache that lags.
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let pairing = loop {
            let s = secrets.get_opt(secret_name).await.map_err(|e| {
                api_error(
                    e,
                    &format!("reading the pairing Secret {secret_name} in {ns} (your kubeconfig needs `get secrets` there)"),
                )
            })?;
            if let Some(s) = s {
                let p = devd_sync::pairing::pairing_of(&s).map_err(|key| {
                    anyhow::anyhow!(
                        "the pairing Secret {secret_name} in {ns} has no usable `{key}`; is the receiver's image as new as devd?"
                    )
                })?;
                break p;
            }
            if Instant::now() >= deadline {
                return Err(self.timed_out(
                    &format!("the receiver is ready but published no pairing Secret {secret_name}"),
                    timeout,
                ));
            }
            tokio::time::sleep(POLL).await;
        };
        if let Some(a) = address {
            return Ok((pairing, a.to_owned(), "--address".into()));
        }
        let (address, from) = self
            .service_address(&pairing, deadline, timeout, spinner)
            .await?;
        Ok((pairing, address, from))
    }

    /// The address a laptop dials, from the QUIC Service.
    async fn service_address(
        &self,
        pairing: &Pairing,
        deadline: Instant,
        timeout: Duration,
        spinner: &indicatif::ProgressBar,
    ) -> anyhow::Result<(String, String)> {
        let ns = &self.namespace;
        let services: Api<Service> = Api::namespaced(self.client.clone(), ns);
        let fallback = || -> anyhow::Result<(String, String)> {
            if is_wildcard(&pairing.address) {
                bail!(
                    "laptops cannot reach the receiver in {ns} through Service {QUIC_SERVICE}, and it advertises only {}; \
                     pass --address HOST:PORT (e.g. a port-forward)",
                    pairing.address
                );
            }
            Ok((
                pairing.address.clone(),
                "the receiver's advertised address".into(),
            ))
        };
        loop {
            let svc = services
                .get_opt(QUIC_SERVICE)
                .await
                .map_err(|e| api_error(e, &format!("reading Service {QUIC_SERVICE} in {ns}")))?;
            let Some(svc) = svc else {
                return fallback();
            };
            let spec = svc.spec.clone().unwrap_or_default();
            let ports = spec.ports.clone().unwrap_or_default();
            let Some(port) = ports
                .iter()
                .find(|p| p.name.as_deref() == Some("quic"))
                .or(ports.first())
            else {
                return fallback();
            };
            match spec.type_.as_deref() {
                Some("LoadBalancer") => {
                    let ingress = svc
                        .status
                        .as_ref()
                        .and_then(|s| s.load_balancer.as_ref())
                        .and_then(|l| l.ingress.as_ref())
                        .and_then(|i| i.first())
                        .and_then(|i| i.ip.clone().or_else(|| i.hostname.clone()));
                    if let Some(host) = ingress {
                        return Ok((
                            host_port(&host, port.port),
                            format!("the LoadBalancer of Service {QUIC_SERVICE}"),
                        ));
                    }
                    spinner.set_message(format!(
                        "Service {QUIC_SERVICE} in {ns}: waiting for a LoadBalancer address"
                    ));
                    if Instant::now() >= deadline {
                        return Err(self.timed_out(
                            &format!("Service {QUIC_SERVICE} (LoadBalancer) got no address; without a load balancer controller pass --address HOST:PORT, or use a NodePort Service"),
                            timeout,
                        ));
                    }
                    tokio::time::sleep(POLL).await;
                }
                Some("NodePort") => {
                    let Some(node_port) = port.node_port else {
                        return fallback();
                    };
                    let host = self.node_address().await.with_context(|| {
                        format!("finding a node to reach nodePort {node_port} of Service {QUIC_SERVICE} on; pass --address NODE:{node_port} instead")
                    })?;
                    self.align_tcp_node_port(&svc, port.port, node_port).await;
                    return Ok((
                        host_port(&host, node_port),
                        format!("a node and the nodePort of Service {QUIC_SERVICE}"),
                    ));
                }
                _ => return fallback(),
            }
        }
    }

    /// The TCP + TLS fallback listens on the QUIC port's number, so its
    /// nodePort must be the UDP one's too; a cluster numbers the two
    /// independently. Set it, or warn that only UDP reaches this workspace.
    async fn align_tcp_node_port(&self, svc: &Service, port: i32, node_port: i32) {
        let mut ports = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default();
        let mut changed = false;
        for p in ports.iter_mut() {
            if p.protocol.as_deref() == Some("TCP")
                && p.port == port
                && p.node_port != Some(node_port)
            {
                p.node_port = Some(node_port);
                changed = true;
            }
        }
        if !changed {
            return;
        }
        let services: Api<Service> = Api::namespaced(self.client.clone(), &self.namespace);
        let patch = serde_json::json!({"spec": {"ports": ports}});
        match services
            .patch(QUIC_SERVICE, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => println!(
                "set the TCP fallback's nodePort of Service {QUIC_SERVICE} to {node_port}, the UDP one's"
            ),
            Err(e) => eprintln!(
                "warning: cannot give the TCP fallback of Service {QUIC_SERVICE} in {} nodePort {node_port} (the UDP one's): {e}; where UDP is blocked this workspace is unreachable",
                self.namespace
            ),
        }
    }

    /// A node's ExternalIP, else its InternalIP.
    async fn node_address(&self) -> anyhow::Result<String> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let list = nodes
            .list(&ListParams::default())
            .await
            .map_err(|e| api_error(e, "listing nodes (your kubeconfig needs `list nodes`)"))?;
        let addresses: Vec<_> = list
            .items
            .iter()
            .flat_map(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.addresses.clone())
                    .unwrap_or_default()
            })
            .collect();
        for kind in ["ExternalIP", "InternalIP"] {
            if let Some(a) = addresses.iter().find(|a| a.type_ == kind) {
                return Ok(a.address.clone());
            }
        }
        bail!("no node has an ExternalIP or InternalIP address")
    }
}

/// Merge `[receiver]` (mode remote, address, fingerprint, workspace, token)
/// into `root`'s devd.local.toml, keeping everything else in it; the file
/// is readable by its owner only (it holds the token). Returns the file
/// and whether `.gitignore` was changed to ignore it.
pub fn write_receiver(root: &Path, address: &str, p: &Pairing) -> anyhow::Result<(PathBuf, bool)> {
    let path = root.join(crate::config::LOCAL_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
    };
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("{} is not valid TOML; fix it and run again", path.display()))?;
    if !doc.get("receiver").is_some_and(toml_edit::Item::is_table) {
        doc.insert("receiver", toml_edit::Item::Table(toml_edit::Table::new()));
    }
    let table = doc["receiver"]
        .as_table_mut()
        .expect("[receiver] is a table");
    // A pairing file would override nothing here but confuse readers.
    table.remove("pairing");
    for (k, v) in [
        ("mode", "remote"),
        ("address", address),
        ("fingerprint", p.fingerprint.as_str()),
        ("workspace", p.workspace.as_str()),
        ("token", p.token.as_str()),
    ] {
        table[k] = toml_edit::value(v);
    }
    devd_sync::fsutil::write_atomic(&path, doc.to_string().as_bytes(), Some(0o600))
        .with_context(|| format!("writing {}", path.display()))?;
    crate::config::Config::load(root)
        .with_context(|| format!("{} as written does not load", path.display()))?;
    let ignored = crate::init::ignore_local_file(root)
        .with_context(|| format!("updating {}", root.join(".gitignore").display()))?;
    Ok((path, ignored))
}

/// `devd workspace list`.
pub async fn list(all: bool, json: bool) -> anyhow::Result<()> {
    let caller = Caller::detect()?;
    let api: Api<Namespace> = Api::all(client().await?);
    let selector = devd_sync::labels::selector();
    let items = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| api_error(e, "listing namespaces"))?
        .items;
    let now = Timestamp::now();
    let mut views: Vec<WorkspaceView> = items
        .iter()
        // Check the labels here too: not every server applies selectors.
        .filter(|ns| is_workspace(ns))
        .filter(|ns| all || annotation(ns, ANNOTATION_OWNER) == Some(caller.owner.as_str()))
        .map(|ns| view(ns, now))
        .collect();
    views.sort_by(|a, b| a.namespace.cmp(&b.namespace));
    if json {
        println!("{}", serde_json::to_string_pretty(&views)?);
        return Ok(());
    }
    if views.is_empty() {
        if all {
            println!("no devd workspaces");
        } else {
            println!(
                "no workspaces owned by {} (`devd workspace list --all` shows everyone's; `devd workspace create` makes one)",
                caller.owner
            );
        }
        return Ok(());
    }
    println!("{}", table(&views));
    Ok(())
}

fn table(views: &[WorkspaceView]) -> comfy_table::Table {
    use comfy_table::{ContentArrangement, Table, presets};
    let mut t = Table::new();
    t.force_no_tty()
        .load_style(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(vec!["NAMESPACE", "OWNER", "EXPIRES", "LEFT"]);
    for v in views {
        let left = match v.seconds_left {
            Some(s) => human_left(SignedDuration::from_secs(s)),
            None if v.expires_at.is_some() => "bad expiry".into(),
            None => "no expiry".into(),
        };
        t.add_row(vec![
            v.namespace.clone(),
            v.owner.clone().unwrap_or_else(|| "-".into()),
            v.expires_at.clone().unwrap_or_else(|| "-".into()),
            left,
        ]);
    }
    t
}

/// `devd workspace extend`: the expiry becomes now + `ttl`.
pub async fn extend(name: &str, ttl: &str) -> anyhow::Result<()> {
    let ttl = parse_ttl(ttl)?;
    let caller = Caller::detect()?;
    let api: Api<Namespace> = Api::all(client().await?);
    let ns = resolve(&api, &caller, name).await?;
    let ns_name = ns.metadata.name.clone().unwrap_or_default();
    if ns.metadata.deletion_timestamp.is_some() {
        bail!("namespace {ns_name} is being deleted; `devd workspace create` makes a new one");
    }
    let old = annotation(&ns, ANNOTATION_EXPIRES)
        .unwrap_or("none")
        .to_owned();
    let expires = rfc3339(
        Timestamp::now()
            .checked_add(ttl)
            .context("--ttl too long")?,
    );
    let patch = serde_json::json!({"metadata": {"annotations": {ANNOTATION_EXPIRES: expires}}});
    api.patch(&ns_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| api_error(e, &format!("updating namespace {ns_name}")))?;
    println!(
        "extended {ns_name}: expires {expires}, in {} (was {old})",
        human_left(ttl)
    );
    Ok(())
}

/// `devd workspace delete`.
pub async fn delete(name: &str) -> anyhow::Result<()> {
    let caller = Caller::detect()?;
    let api: Api<Namespace> = Api::all(client().await?);
    let ns = resolve(&api, &caller, name).await?;
    let ns_name = ns.metadata.name.clone().unwrap_or_default();
    match api.delete(&ns_name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => bail!("namespace {ns_name} is already gone"),
        Err(e) => return Err(api_error(e, &format!("deleting namespace {ns_name}"))),
    }
    println!("deleted namespace {ns_name} (and everything in it)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_parses_units_and_rejects_junk() {
        assert_eq!(parse_ttl("12h").unwrap().as_secs(), 12 * 3600);
        assert_eq!(parse_ttl("1h30m").unwrap().as_secs(), 5400);
        assert_eq!(parse_ttl("1d").unwrap().as_secs(), 86_400);
        assert_eq!(parse_ttl("45s").unwrap().as_secs(), 45);
        for bad in ["", "12", "h", "0h", "1y", "-1h", "1.5h"] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn time_left_is_short() {
        let s = SignedDuration::from_secs;
        assert_eq!(human_left(s(12 * 3600)), "12h 00m");
        assert_eq!(human_left(s(90_000)), "1d 1h");
        assert_eq!(human_left(s(300)), "5m");
        assert_eq!(human_left(s(0)), "expired");
    }

    #[test]
    fn namespace_names() {
        let c = Caller {
            user: dns_label("Alice.Smith"),
            owner: "a@example.com".into(),
        };
        assert_eq!(c.namespace(None).unwrap(), "devd-alice-smith");
        assert_eq!(
            c.namespace(Some("feat-1")).unwrap(),
            "devd-alice-smith-feat-1"
        );
        assert!(c.namespace(Some("Feat")).is_err());
        assert!(c.namespace(Some("-x")).is_err());
        assert!(c.namespace(Some(&"x".repeat(60))).is_err());
    }

    #[test]
    fn addresses_are_host_and_port() {
        for good in ["203.0.113.7:7447", "devd.example.com:30747", "[::1]:7447"] {
            check_address(good).unwrap();
        }
        for bad in [
            "",
            "7447",
            ":7447",
            "host:",
            "host:0",
            "host:99999",
            "host:p",
        ] {
            let e = check_address(bad).unwrap_err().to_string();
            assert!(e.contains("--address") && e.contains("HOST:PORT"), "{e}");
        }
        assert_eq!(host_port("203.0.113.7", 7447), "203.0.113.7:7447");
        assert_eq!(host_port("2001:db8::1", 7447), "[2001:db8::1]:7447");
        assert!(is_wildcard("0.0.0.0:7447") && is_wildcard("[::]:7447"));
        assert!(!is_wildcard("10.0.0.5:7447") && !is_wildcard("devd.example.com:7447"));
    }

    #[test]
    fn the_compiled_in_receiver_is_prepared_for_the_namespace() {
        let (objs, secret) =
            prepare(receiver_objects().unwrap(), "devd-alice", "alice", false).unwrap();
        assert_eq!(secret, "devd-pairing");
        let kinds: Vec<&str> = objs
            .iter()
            .map(|o| o.types.as_ref().unwrap().kind.as_str())
            .collect();
        for k in [
            "Deployment",
            "Service",
            "PersistentVolumeClaim",
            "Role",
            "RoleBinding",
            "ServiceAccount",
            "ConfigMap",
        ] {
            assert!(kinds.contains(&k), "{k} missing: {kinds:?}");
            assert!(api_resource(k).is_some(), "no API resource for {k}");
        }
        for o in &objs {
            assert_eq!(o.metadata.namespace.as_deref(), Some("devd-alice"));
            let labels = o.metadata.labels.as_ref().unwrap();
            assert_eq!(labels[LABEL_WORKSPACE], "alice");
            assert_eq!(labels[LABEL_PART_OF], "devd");
            assert!(
                !labels.contains_key(LABEL_MANAGED_BY),
                "the backend reads managed-by=devd as one of the services it deploys"
            );
            match o.types.as_ref().unwrap().kind.as_str() {
                "RoleBinding" => assert_eq!(o.data["subjects"][0]["namespace"], "devd-alice"),
                "ConfigMap" => {
                    assert_eq!(o.data["data"]["workspace"], "alice");
                    assert!(o.data["data"].get("advertise").is_none());
                }
                _ => {}
            }
        }
    }

    #[test]
    fn node_port_makes_the_quic_service_a_node_port_the_cluster_numbers() {
        let (objs, _) = prepare(receiver_objects().unwrap(), "devd-alice", "alice", true).unwrap();
        let quic = objs
            .iter()
            .find(|o| o.metadata.name.as_deref() == Some(QUIC_SERVICE))
            .unwrap();
        assert_eq!(quic.data["spec"]["type"], "NodePort");
        for p in quic.data["spec"]["ports"].as_array().unwrap() {
            assert!(p.get("nodePort").is_none(), "{p}");
        }
        let http = objs
            .iter()
            .find(|o| {
                o.metadata.name.as_deref() == Some("devd-receiver")
                    && o.types.as_ref().unwrap().kind == "Service"
            })
            .unwrap();
        assert_eq!(
            http.data["spec"]["type"], "ClusterIP",
            "only the QUIC Service"
        );
    }

    #[test]
    fn a_deployment_is_available_failed_or_waiting() {
        let d = |v: serde_json::Value| -> Deployment { serde_json::from_value(v).unwrap() };
        let base = serde_json::json!({"metadata": {"name": "devd-receiver", "generation": 2},
            "spec": {"replicas": 1, "selector": {}, "template": {}}});
        let mut v = base.clone();
        assert!(matches!(rollout(&d(v.clone())), Rollout::Waiting(w) if w == "0/1 replicas ready"));
        v["status"] = serde_json::json!({"observedGeneration": 2, "readyReplicas": 1,
            "conditions": [{"type": "Available", "status": "True"}]});
        assert_eq!(rollout(&d(v.clone())), Rollout::Available);
        v["status"]["observedGeneration"] = 1.into();
        assert!(
            matches!(rollout(&d(v.clone())), Rollout::Waiting(_)),
            "an older generation's status"
        );
        let mut v = base;
        v["status"] = serde_json::json!({"conditions": [{"type": "Progressing", "status": "False",
            "reason": "ProgressDeadlineExceeded", "message": "took too long"}]});
        assert_eq!(
            rollout(&d(v)),
            Rollout::Failed("ProgressDeadlineExceeded: took too long".into())
        );
    }

    #[test]
    fn receiver_is_merged_into_the_local_file() {
        let d = tempfile::tempdir().unwrap();
        let local = d.path().join(crate::config::LOCAL_FILE);
        std::fs::write(
            &local,
            "# mine\n[receiver]\nmode = \"remote\"\npairing = \"old/pairing.toml\"\n\n[sync]\ndebounce_ms = 25 # fast\n",
        )
        .unwrap();
        let p = Pairing {
            address: "0.0.0.0:7447".into(),
            fingerprint: "ab".repeat(32),
            workspace: "alice".into(),
            token: "t0ken".into(),
        };
        let (path, ignored) = write_receiver(d.path(), "203.0.113.7:7447", &p).unwrap();
        assert_eq!(path, local);
        assert!(ignored, ".gitignore gains devd.local.toml");
        let text = std::fs::read_to_string(&local).unwrap();
        assert!(
            text.contains("# mine") && text.contains("debounce_ms = 25 # fast"),
            "{text}"
        );
        assert!(!text.contains("pairing ="), "{text}");
        let cfg = crate::config::Config::load(d.path()).unwrap();
        assert_eq!(cfg.receiver.mode, crate::config::ReceiverMode::Remote);
        assert_eq!(cfg.receiver.address.as_deref(), Some("203.0.113.7:7447"));
        assert_eq!(cfg.receiver.token.as_deref(), Some("t0ken"));
        assert_eq!(cfg.receiver.workspace.as_deref(), Some("alice"));
        assert_eq!(cfg.sync.debounce_ms, 25);
        // Again (a new workspace): replaced, not duplicated.
        let (_, ignored) = write_receiver(d.path(), "198.51.100.1:30747", &p).unwrap();
        assert!(!ignored);
        let text = std::fs::read_to_string(&local).unwrap();
        assert_eq!(text.matches("[receiver]").count(), 1, "{text}");
        assert!(text.contains("198.51.100.1:30747"), "{text}");
        std::fs::write(&local, "[receiver\n").unwrap();
        let e = write_receiver(d.path(), "x:1", &p).unwrap_err().to_string();
        assert!(e.contains("not valid TOML"), "{e}");
    }
}
