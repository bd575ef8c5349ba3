//! The labels and annotations that mark what devd made on a cluster, and
//! what a devd workspace namespace is. The receiver's Kubernetes backend
//! stamps them, its vacuum deletes by them, and `devd workspace` lists,
//! extends and deletes by them: one definition for all three.
//!
//! A workspace namespace (created from `manifests/workspace/`) carries
//! devd's labels and an owner and an expiry annotation:
//!
//! ```yaml
//! metadata:
//!   labels:
//!     app.kubernetes.io/managed-by: devd
//!     dev.devd/workspace: alice
//!   annotations:
//!     dev.devd/owner: alice@example.com
//!     dev.devd/expires-at: "2026-11-30T18:00:00Z"   # RFC 3339
//! ```

use k8s_openapi::api::core::v1::Namespace;

/// Label every devd-managed object carries (value `devd`).
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Label naming the service an object belongs to.
pub const LABEL_SERVICE: &str = "dev.devd/service";
/// Label naming the workspace an object (or a namespace) is for.
pub const LABEL_WORKSPACE: &str = "dev.devd/workspace";
/// First 40 hex digits of the context digest (label values stop at 63).
pub const LABEL_CONTEXT: &str = "dev.devd/context";
/// Annotation naming who the workspace belongs to.
pub const ANNOTATION_OWNER: &str = "dev.devd/owner";
/// Annotation with the workspace's expiry (RFC 3339, e.g. `2026-11-30T18:00:00Z`).
pub const ANNOTATION_EXPIRES: &str = "dev.devd/expires-at";

/// The label selector of workspace namespaces.
pub fn selector() -> String {
    format!("{LABEL_MANAGED_BY}=devd,{LABEL_WORKSPACE}")
}

/// The value of `ns`'s label `key`.
pub fn label<'a>(ns: &'a Namespace, key: &str) -> Option<&'a str> {
    ns.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

/// The value of `ns`'s annotation `key`.
pub fn annotation<'a>(ns: &'a Namespace, key: &str) -> Option<&'a str> {
    ns.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// Whether `ns` carries both labels of a devd workspace (the only
/// namespaces the vacuum may delete, and the ones `devd workspace` lists).
pub fn is_workspace(ns: &Namespace) -> bool {
    label(ns, LABEL_MANAGED_BY) == Some("devd") && label(ns, LABEL_WORKSPACE).is_some()
}
