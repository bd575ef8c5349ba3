//! `devd-receiver vacuum`: delete expired workspace namespaces.
//!
//! A workspace namespace carries devd's labels and an owner and an expiry
//! annotation (see [`devd_sync::labels`]). The vacuum deletes a namespace only if it has **both labels** and an
//! expiry in the past. Anything else is kept: a namespace without the
//! labels (even with the annotation), without an expiry or with one it
//! cannot parse (logged), not expired yet, or already terminating. The
//! delete carries the listed uid and resourceVersion as preconditions, so a
//! workspace extended (or re-created) between the list and the delete is
//! not deleted.

use devd_sync::labels::{ANNOTATION_EXPIRES, ANNOTATION_OWNER, annotation, is_workspace, selector};
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Preconditions};

/// Errors of a vacuum run.
#[derive(Debug, thiserror::Error)]
pub enum VacuumError {
    #[error("cannot list namespaces ({selector}): {source}; the vacuum's service account needs `list` on namespaces (manifests/vacuum)", selector = selector())]
    List { source: kube::Error },
    #[error("{failed} of {expired} expired namespaces could not be deleted (see the log)")]
    Delete { failed: usize, expired: usize },
}

/// What the vacuum makes of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Lacks devd's labels: never touched.
    NotWorkspace,
    /// A workspace without an expiry annotation: kept.
    NoExpiry,
    /// The expiry annotation is not an RFC 3339 time: kept.
    BadExpiry(String),
    /// Expires later.
    Live(jiff::Timestamp),
    /// Being deleted already.
    Terminating,
    /// Expired at this time: delete.
    Expired(jiff::Timestamp),
}

/// The verdict on `ns` at `now`.
pub fn verdict(ns: &Namespace, now: jiff::Timestamp) -> Verdict {
    if !is_workspace(ns) {
        return Verdict::NotWorkspace;
    }
    if ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating")
    {
        return Verdict::Terminating;
    }
    let Some(raw) = annotation(ns, ANNOTATION_EXPIRES) else {
        return Verdict::NoExpiry;
    };
    match raw.trim().parse::<jiff::Timestamp>() {
        Ok(t) if t <= now => Verdict::Expired(t),
        Ok(t) => Verdict::Live(t),
        Err(e) => Verdict::BadExpiry(format!("{raw:?}: {e}")),
    }
}

/// One namespace the vacuum deleted (or would delete).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    pub namespace: String,
    pub owner: Option<String>,
    pub expired_at: jiff::Timestamp,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Report {
    /// Deleted (or, in a dry run, to be deleted).
    pub deleted: Vec<Expired>,
    /// Workspace namespaces kept (live, no or bad expiry, terminating).
    pub kept: usize,
}

/// Delete every expired workspace namespace (only list them with
/// `dry_run`). Deletions that fail are logged and counted in the error;
/// the others go ahead.
pub async fn run(
    client: Client,
    now: jiff::Timestamp,
    dry_run: bool,
) -> Result<Report, VacuumError> {
    let api: Api<Namespace> = Api::all(client);
    let mut namespaces = Vec::new();
    let mut lp = ListParams::default().labels(&selector()).limit(500);
    loop {
        let page = api
            .list(&lp)
            .await
            .map_err(|source| VacuumError::List { source })?;
        let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
        namespaces.extend(page.items);
        match next {
            Some(c) => lp = lp.continue_token(&c),
            None => break,
        }
    }
    let mut report = Report::default();
    let mut failed = 0;
    for ns in namespaces {
        let name = ns.metadata.name.clone().unwrap_or_default();
        let owner = annotation(&ns, ANNOTATION_OWNER).map(str::to_owned);
        let expired_at = match verdict(&ns, now) {
            // The selector already excludes these; a server that ignores
            // selectors must not make the vacuum delete them.
            Verdict::NotWorkspace => continue,
            Verdict::Expired(t) => t,
            Verdict::BadExpiry(why) => {
                tracing::warn!(namespace = %name, annotation = ANNOTATION_EXPIRES, %why, "workspace kept: its expiry is not an RFC 3339 time");
                report.kept += 1;
                continue;
            }
            v => {
                tracing::debug!(namespace = %name, verdict = ?v, "workspace kept");
                report.kept += 1;
                continue;
            }
        };
        let e = Expired {
            namespace: name.clone(),
            owner,
            expired_at,
        };
        if dry_run {
            tracing::info!(namespace = %name, owner = ?e.owner, %expired_at, "would delete the expired workspace namespace (dry run)");
            report.deleted.push(e);
            continue;
        }
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: ns.metadata.uid.clone(),
                resource_version: ns.metadata.resource_version.clone(),
            }),
            ..DeleteParams::background()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => {
                tracing::info!(namespace = %name, owner = ?e.owner, %expired_at, "deleted the expired workspace namespace");
                report.deleted.push(e);
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                tracing::info!(namespace = %name, "already gone");
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                tracing::info!(namespace = %name, message = %s.message, "changed since it was listed (extended?); kept until the next run");
                report.kept += 1;
            }
            Err(err) => {
                tracing::error!(namespace = %name, error = %err, "cannot delete the expired workspace namespace");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        return Err(VacuumError::Delete {
            failed,
            expired: failed + report.deleted.len(),
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use devd_sync::labels::{LABEL_MANAGED_BY, LABEL_WORKSPACE};
    use serde_json::json;

    fn ns(labels: serde_json::Value, annotations: serde_json::Value) -> Namespace {
        serde_json::from_value(json!({
            "metadata": {"name": "n", "labels": labels, "annotations": annotations}
        }))
        .unwrap()
    }

    #[test]
    fn only_labelled_expired_namespaces_are_deleted() {
        let now: jiff::Timestamp = "2026-11-20T12:00:00Z".parse().unwrap();
        let devd = json!({LABEL_MANAGED_BY: "devd", LABEL_WORKSPACE: "alice"});
        let past = json!({ANNOTATION_EXPIRES: "2026-11-20T11:59:59Z"});
        assert_eq!(
            verdict(&ns(devd.clone(), past.clone()), now),
            Verdict::Expired("2026-11-20T11:59:59Z".parse().unwrap())
        );
        assert_eq!(
            verdict(
                &ns(
                    devd.clone(),
                    json!({ANNOTATION_EXPIRES: "2026-11-20T14:00:00+02:00"})
                ),
                now
            ),
            Verdict::Expired(now),
            "offsets count; expiring exactly now is expired"
        );
        assert!(matches!(
            verdict(
                &ns(
                    devd.clone(),
                    json!({ANNOTATION_EXPIRES: "2026-11-21T00:00:00Z"})
                ),
                now
            ),
            Verdict::Live(_)
        ));
        assert_eq!(
            verdict(&ns(json!({LABEL_WORKSPACE: "alice"}), past.clone()), now),
            Verdict::NotWorkspace,
            "the workspace label alone is not enough"
        );
        assert_eq!(
            verdict(&ns(json!({LABEL_MANAGED_BY: "devd"}), past.clone()), now),
            Verdict::NotWorkspace
        );
        assert_eq!(
            verdict(&ns(json!(null), past.clone()), now),
            Verdict::NotWorkspace
        );
        assert_eq!(
            verdict(&ns(devd.clone(), json!(null)), now),
            Verdict::NoExpiry
        );
        assert!(matches!(
            verdict(
                &ns(devd.clone(), json!({ANNOTATION_EXPIRES: "tomorrow"})),
                now
            ),
            Verdict::BadExpiry(_)
        ));
        let mut terminating = ns(devd, past);
        terminating.status = Some(k8s_openapi::api::core::v1::NamespaceStatus {
            phase: Some("Terminating".into()),
            ..Default::default()
        });
        assert_eq!(verdict(&terminating, now), Verdict::Terminating);
    }
}
