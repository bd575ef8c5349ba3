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
//!
//! Rooms: [`ttl`] (times to live), [`namespace`] (who asks, which
//! namespace), `receiver` (deploying and pairing the receiver), `address`
//! (what laptops dial), `local_file` (the `[receiver]` merge into
//! `devd.local.toml`).

mod address;
mod local_file;
pub mod namespace;
mod receiver;
pub mod ttl;

pub use local_file::write_receiver;
pub use namespace::{Caller, PREFIX};
pub use receiver::{COPIED_SECRETS, RECEIVER_DEPLOYMENT, RECEIVER_OBJECTS_PATH, receiver_objects};
pub use ttl::{human_left, parse_ttl};

use address::check_address;
use anyhow::{Context, bail};
use devd_sync::labels::{
    ANNOTATION_EXPIRES, ANNOTATION_OWNER, LABEL_MANAGED_BY, LABEL_WORKSPACE, annotation,
    is_workspace, label,
};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use receiver::{Receiver, source_secrets};
use serde::Serialize;
use std::collections::BTreeMap;

/// Label every devd object carries besides [`LABEL_MANAGED_BY`].
pub const LABEL_PART_OF: &str = "app.kubernetes.io/part-of";
/// The Service laptops reach the receiver through.
pub const QUIC_SERVICE: &str = "devd-receiver-quic";

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

pub(super) fn api_error(e: kube::Error, what: &str) -> anyhow::Error {
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
