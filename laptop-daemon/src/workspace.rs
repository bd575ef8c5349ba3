//! `devd workspace`: a developer's namespace on the cluster, with an expiry.
//!
//! A workspace is a Namespace `devd-<user>` (or `devd-<user>-<name>`)
//! carrying devd's labels and the owner and expiry annotations exactly as
//! the receiver's vacuum ([`devd_receiver::vacuum`]) reads them: once the
//! expiry has passed, the vacuum deletes it. The cluster is the one of the
//! developer's kubeconfig (`KUBECONFIG`, else `~/.kube/config`).
//!
//! `create` makes the namespace only: deploying a receiver into it and
//! pairing with it are still manual steps (`create` prints them).

use anyhow::{Context, bail};
use devd_receiver::vacuum::{
    ANNOTATION_EXPIRES, ANNOTATION_OWNER, LABEL_MANAGED_BY, LABEL_WORKSPACE,
};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde::Serialize;
use std::collections::BTreeMap;

/// Label every devd object carries besides [`LABEL_MANAGED_BY`].
pub const LABEL_PART_OF: &str = "app.kubernetes.io/part-of";
/// Prefix of workspace namespaces.
pub const PREFIX: &str = "devd-";
/// Longest name Kubernetes accepts for a namespace.
const MAX_NAME: usize = 63;

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

fn label<'a>(ns: &'a Namespace, key: &str) -> Option<&'a str> {
    ns.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

fn annotation<'a>(ns: &'a Namespace, key: &str) -> Option<&'a str> {
    ns.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// Whether `ns` carries the labels the vacuum requires of a workspace.
pub fn is_workspace(ns: &Namespace) -> bool {
    label(ns, LABEL_MANAGED_BY) == Some("devd") && label(ns, LABEL_WORKSPACE).is_some()
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
    devd_receiver::server::install_crypto();
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

/// `devd workspace create`.
pub async fn create(name: Option<&str>, ttl: &str) -> anyhow::Result<()> {
    let ttl = parse_ttl(ttl)?;
    let caller = Caller::detect()?;
    let ns_name = caller.namespace(name)?;
    let now = Timestamp::now();
    let expires = rfc3339(now.checked_add(ttl).context("--ttl too long")?);
    let workspace = ns_name.trim_start_matches(PREFIX).to_owned();
    let ns = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(ns_name.clone()),
            labels: Some(BTreeMap::from([
                (LABEL_MANAGED_BY.to_owned(), "devd".to_owned()),
                (LABEL_PART_OF.to_owned(), "devd".to_owned()),
                (LABEL_WORKSPACE.to_owned(), workspace),
            ])),
            annotations: Some(BTreeMap::from([
                (ANNOTATION_OWNER.to_owned(), caller.owner.clone()),
                (ANNOTATION_EXPIRES.to_owned(), expires.clone()),
            ])),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<Namespace> = Api::all(client().await?);
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
    println!(
        "Next: devd does not deploy the receiver into it yet. Deploy one with\n  \
         kubectl kustomize manifests/receiver | kubectl apply -n {ns_name} -f -\n\
         then pair with it as for any receiver (see the README)."
    );
    Ok(())
}

/// `devd workspace list`.
pub async fn list(all: bool, json: bool) -> anyhow::Result<()> {
    let caller = Caller::detect()?;
    let api: Api<Namespace> = Api::all(client().await?);
    let selector = devd_receiver::vacuum::selector();
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
}
