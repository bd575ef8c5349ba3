//! Which kinds are namespaced: every namespaced object goes into the
//! workspace's namespace; cluster-scoped objects are refused (a
//! developer's workspace must not change the cluster outside its
//! namespace), except CustomResourceDefinitions, which an app's operator
//! needs and which change nothing until used.

/// Built-in kinds that live in a namespace, by `group/Kind` (core: `/Kind`).
const NAMESPACED: &[&str] = &[
    "/Binding",
    "/ConfigMap",
    "/Endpoints",
    "/Event",
    "/LimitRange",
    "/PersistentVolumeClaim",
    "/Pod",
    "/PodTemplate",
    "/ReplicationController",
    "/ResourceQuota",
    "/Secret",
    "/Service",
    "/ServiceAccount",
    "apps/ControllerRevision",
    "apps/DaemonSet",
    "apps/Deployment",
    "apps/ReplicaSet",
    "apps/StatefulSet",
    "autoscaling/HorizontalPodAutoscaler",
    "batch/CronJob",
    "batch/Job",
    "coordination.k8s.io/Lease",
    "discovery.k8s.io/EndpointSlice",
    "events.k8s.io/Event",
    "networking.k8s.io/Ingress",
    "networking.k8s.io/NetworkPolicy",
    "policy/PodDisruptionBudget",
    "rbac.authorization.k8s.io/Role",
    "rbac.authorization.k8s.io/RoleBinding",
    "storage.k8s.io/CSIStorageCapacity",
];

/// Built-in kinds that are cluster-scoped.
const CLUSTER_SCOPED: &[&str] = &[
    "/ComponentStatus",
    "/Namespace",
    "/Node",
    "/PersistentVolume",
    "admissionregistration.k8s.io/MutatingWebhookConfiguration",
    "admissionregistration.k8s.io/ValidatingAdmissionPolicy",
    "admissionregistration.k8s.io/ValidatingAdmissionPolicyBinding",
    "admissionregistration.k8s.io/ValidatingWebhookConfiguration",
    "apiextensions.k8s.io/CustomResourceDefinition",
    "apiregistration.k8s.io/APIService",
    "certificates.k8s.io/CertificateSigningRequest",
    "flowcontrol.apiserver.k8s.io/FlowSchema",
    "flowcontrol.apiserver.k8s.io/PriorityLevelConfiguration",
    "networking.k8s.io/IngressClass",
    "node.k8s.io/RuntimeClass",
    "rbac.authorization.k8s.io/ClusterRole",
    "rbac.authorization.k8s.io/ClusterRoleBinding",
    "scheduling.k8s.io/PriorityClass",
    "storage.k8s.io/CSIDriver",
    "storage.k8s.io/CSINode",
    "storage.k8s.io/StorageClass",
    "storage.k8s.io/VolumeAttachment",
];

/// Where an object of a kind lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Namespaced,
    Cluster,
    /// Neither built in nor defined by a CRD of the render.
    Unknown,
}

/// The group of an `apiVersion` (`""` for `v1`).
pub fn group(api_version: &str) -> &str {
    api_version.split_once('/').map_or("", |(g, _)| g)
}

/// The scope of `group/kind`, given the CRDs of the render as
/// `(group, kind, namespaced)`.
pub fn scope(group: &str, kind: &str, crds: &[(String, String, bool)]) -> Scope {
    let key = format!("{group}/{kind}");
    if NAMESPACED.contains(&key.as_str()) {
        Scope::Namespaced
    } else if CLUSTER_SCOPED.contains(&key.as_str()) {
        Scope::Cluster
    } else {
        match crds.iter().find(|(g, k, _)| g == group && k == kind) {
            Some((_, _, true)) => Scope::Namespaced,
            Some((_, _, false)) => Scope::Cluster,
            None => Scope::Unknown,
        }
    }
}

/// `(group, kind, namespaced)` of a CustomResourceDefinition object.
pub fn crd_defines(obj: &serde_json::Value) -> Option<(String, String, bool)> {
    let spec = obj.get("spec")?;
    Some((
        spec.get("group")?.as_str()?.to_owned(),
        spec.get("names")?.get("kind")?.as_str()?.to_owned(),
        spec.get("scope").and_then(|s| s.as_str()) != Some("Cluster"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        let crds = vec![("example.com".to_owned(), "Widget".to_owned(), true)];
        assert_eq!(scope("apps", "Deployment", &crds), Scope::Namespaced);
        assert_eq!(scope("", "Namespace", &crds), Scope::Cluster);
        assert_eq!(scope("example.com", "Widget", &crds), Scope::Namespaced);
        assert_eq!(scope("example.com", "Gadget", &crds), Scope::Unknown);
        assert_eq!(group("apps/v1"), "apps");
        assert_eq!(group("v1"), "");
    }
}
