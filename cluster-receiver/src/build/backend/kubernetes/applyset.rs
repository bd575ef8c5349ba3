//! The stack's ApplySet (KEP-3659, as `kubectl apply --prune --applyset`
//! keeps one), pure: no API calls.
//!
//! - The parent is a Secret per workspace, `devd-stack-{workspace}`, in the
//!   receiver's namespace, labelled `applyset.kubernetes.io/id` with the
//!   set's id: `applyset-` + base64url-without-padding of
//!   sha256(`{name}.{namespace}.{Kind}.{group}`) + `-v1` (kubectl's
//!   `ComputeApplysetID`; the core group is empty, so a Secret parent hashes
//!   `name.ns.Secret.`). Its annotations say the tooling (`devd/v1`; kubectl
//!   refuses to change a set of another tool) and which group-kinds have
//!   members (`contains-group-kinds`: sorted `Kind.group`, `Kind` for the
//!   core group), so a prune lists only those.
//! - Every applied object carries `applyset.kubernetes.io/part-of: {id}`;
//!   a prune deletes only objects that carry it (so never one devd did not
//!   apply) and are not in the render. CustomResourceDefinitions are the
//!   exception: they are cluster-scoped and shared by every workspace, so
//!   they are applied without the label and never pruned or removed.
//! - Every applied object also carries [`ANNOTATION_APPLIED`], a digest of
//!   the body devd applied: an object whose digest is unchanged is not
//!   applied again.
//!
//! Also here: the kinds devd resolves without discovery ([`KNOWN_KINDS`],
//! which the receiver's Role grants), the apply order, and the URLs of a
//! render's Services.

use crate::build::backend::stack::StackObject;
use base64::Engine;
use kube::api::ApiResource;
use serde_json::{Map, Value, json};
use sha2::Digest;
use std::collections::{BTreeMap, BTreeSet};

/// The label that makes an object an ApplySet parent; its value is the id.
pub const LABEL_APPLYSET_ID: &str = "applyset.kubernetes.io/id";
/// The label of every member object; its value is the set's id.
pub const LABEL_PART_OF: &str = "applyset.kubernetes.io/part-of";
/// The tool that manages the set (`<tool>/<version>`).
pub const ANNOTATION_TOOLING: &str = "applyset.kubernetes.io/tooling";
/// The group-kinds that may have members.
pub const ANNOTATION_GROUP_KINDS: &str = "applyset.kubernetes.io/contains-group-kinds";
/// devd's tooling value.
pub const TOOLING: &str = "devd/v1";
/// The digest of the body devd applied last (see [`applied_digest`]).
pub const ANNOTATION_APPLIED: &str = "dev.devd/applied";
/// The parent Secret is `{PARENT_PREFIX}-{workspace}`.
pub const PARENT_PREFIX: &str = "devd-stack";

/// `apiextensions.k8s.io`.
pub const CRD_GROUP: &str = "apiextensions.k8s.io";
/// The kind that is applied first and never pruned.
pub const CRD_KIND: &str = "CustomResourceDefinition";

/// One workspace's stack: its parent Secret's name and the set's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplySet {
    pub name: String,
    pub namespace: String,
    pub id: String,
}

impl ApplySet {
    /// The set of `workspace`'s stack in `namespace`.
    pub fn new(workspace: &str, namespace: &str) -> Self {
        let name = parent_name(workspace);
        let id = applyset_id(&name, namespace, "Secret", "");
        Self {
            name,
            namespace: namespace.to_owned(),
            id,
        }
    }

    /// `applyset.kubernetes.io/part-of={id}`.
    pub fn selector(&self) -> String {
        format!("{LABEL_PART_OF}={}", self.id)
    }

    /// The parent Secret as devd applies it, listing `kinds`.
    pub fn parent(&self, kinds: &BTreeSet<GroupKind>) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {LABEL_APPLYSET_ID: self.id},
                "annotations": {
                    ANNOTATION_TOOLING: TOOLING,
                    ANNOTATION_GROUP_KINDS: format_group_kinds(kinds),
                },
            },
            "type": "Opaque",
        })
    }

    /// Whether `labels` make an object a member of this set.
    pub fn has_member(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        labels.and_then(|l| l.get(LABEL_PART_OF)) == Some(&self.id)
    }
}

/// The parent Secret's name for `workspace`: a DNS subdomain (lower case,
/// `_` as `-`).
pub fn parent_name(workspace: &str) -> String {
    let w: String = workspace
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    let w = w.trim_matches('-');
    if w.is_empty() {
        PARENT_PREFIX.to_owned()
    } else {
        format!("{PARENT_PREFIX}-{w}")
    }
}

/// The id of the ApplySet whose parent is `Kind.group` `name` in
/// `namespace` (kubectl's `ComputeApplysetID`).
pub fn applyset_id(name: &str, namespace: &str, kind: &str, group: &str) -> String {
    let hash = sha2::Sha256::digest(format!("{name}.{namespace}.{kind}.{group}").as_bytes());
    format!(
        "applyset-{}-v1",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hash)
    )
}

/// A kind without its version: what an ApplySet lists.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKind {
    /// `""` for the core group.
    pub group: String,
    pub kind: String,
}

impl GroupKind {
    pub fn new(group: &str, kind: &str) -> Self {
        Self {
            group: group.to_owned(),
            kind: kind.to_owned(),
        }
    }

    /// The group-kind of an object of the render.
    pub fn of(obj: &StackObject) -> Self {
        Self::new(obj.group(), &obj.kind)
    }

    /// `Kind.group` (kubectl's `ParseGroupKind`: up to the first dot).
    pub fn parse(s: &str) -> Self {
        match s.split_once('.') {
            Some((kind, group)) => Self::new(group, kind),
            None => Self::new("", s),
        }
    }

    pub fn is_crd(&self) -> bool {
        self.group == CRD_GROUP && self.kind == CRD_KIND
    }
}

impl std::fmt::Display for GroupKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.group.is_empty() {
            f.write_str(&self.kind)
        } else {
            write!(f, "{}.{}", self.kind, self.group)
        }
    }
}

/// The `contains-group-kinds` value: sorted as strings, comma-separated.
pub fn format_group_kinds(kinds: &BTreeSet<GroupKind>) -> String {
    let mut v: Vec<String> = kinds.iter().map(|k| k.to_string()).collect();
    v.sort();
    v.join(",")
}

/// The group-kinds a `contains-group-kinds` value lists.
pub fn parse_group_kinds(s: &str) -> BTreeSet<GroupKind> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(GroupKind::parse)
        .collect()
}

/// A kind devd can apply without asking the API server's discovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownKind {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
}

impl KnownKind {
    pub fn group(&self) -> &'static str {
        self.api_version.split_once('/').map_or("", |(g, _)| g)
    }
}

const fn k(api_version: &'static str, kind: &'static str, plural: &'static str) -> KnownKind {
    KnownKind {
        api_version,
        kind,
        plural,
        namespaced: true,
    }
}

/// The kinds of a typical app's manifests. The namespaced ones are what the
/// receiver's Role grants in its namespace (manifests/receiver/role.yaml;
/// tests/tests/manifests.rs checks the two agree); any other kind is
/// found through discovery and needs a grant of its own.
pub const KNOWN_KINDS: &[KnownKind] = &[
    k("v1", "ConfigMap", "configmaps"),
    k("v1", "Secret", "secrets"),
    k("v1", "Service", "services"),
    k("v1", "ServiceAccount", "serviceaccounts"),
    k("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
    k("v1", "Pod", "pods"),
    k("apps/v1", "Deployment", "deployments"),
    k("apps/v1", "StatefulSet", "statefulsets"),
    k("apps/v1", "DaemonSet", "daemonsets"),
    k("apps/v1", "ReplicaSet", "replicasets"),
    k("batch/v1", "Job", "jobs"),
    k("batch/v1", "CronJob", "cronjobs"),
    k("networking.k8s.io/v1", "Ingress", "ingresses"),
    KnownKind {
        api_version: "apiextensions.k8s.io/v1",
        kind: CRD_KIND,
        plural: "customresourcedefinitions",
        namespaced: false,
    },
];

/// How to reach the objects of one kind.
#[derive(Debug, Clone)]
pub struct Resource {
    pub ar: ApiResource,
    pub namespaced: bool,
}

impl Resource {
    pub fn known(k: &KnownKind) -> Self {
        let (group, version) = k.api_version.split_once('/').unwrap_or(("", k.api_version));
        Self {
            ar: ApiResource {
                group: group.into(),
                version: version.into(),
                api_version: k.api_version.into(),
                kind: k.kind.into(),
                plural: k.plural.into(),
            },
            namespaced: k.namespaced,
        }
    }

    /// `deployments.apps`, `configmaps`: as RBAC rules name it.
    pub fn rbac_name(&self) -> String {
        match self.ar.group.as_str() {
            "" => self.ar.plural.clone(),
            g => format!("{}.{g}", self.ar.plural),
        }
    }
}

/// The known kind of `apiVersion` + `kind`.
pub fn known(api_version: &str, kind: &str) -> Option<&'static KnownKind> {
    KNOWN_KINDS
        .iter()
        .find(|k| k.api_version == api_version && k.kind == kind)
}

/// The known kind of a group-kind.
pub fn known_group_kind(gk: &GroupKind) -> Option<&'static KnownKind> {
    KNOWN_KINDS
        .iter()
        .find(|k| k.group() == gk.group && k.kind == gk.kind)
}

/// Whether container image `image` is an image of `repository`
/// (`repo`, `repo:tag`, `repo@sha256:…`; not `repo-other`).
pub fn runs_image(image: &str, repository: &str) -> bool {
    image
        .strip_prefix(repository)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['@', ':']))
}

/// The pod template's containers of a workload object (a Pod's own).
pub fn template_containers(kind: &str, obj: &Value) -> Vec<(String, String)> {
    let spec = match kind {
        "Pod" => &obj["spec"],
        "CronJob" => &obj["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        _ => &obj["spec"]["template"]["spec"],
    };
    spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            Some((
                c["name"].as_str()?.to_owned(),
                c["image"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// Where an object goes in the apply order: CustomResourceDefinitions
/// first (their custom resources wait for them), then what workloads
/// use (accounts, configuration, volumes, RBAC, Services), then the other
/// non-workloads (custom resources, Ingresses, policies), then workloads.
pub fn rank(obj: &StackObject) -> u8 {
    if GroupKind::of(obj).is_crd() {
        return 0;
    }
    match obj.kind.as_str() {
        "Namespace" | "ResourceQuota" | "LimitRange" => 1,
        "ServiceAccount" => 2,
        "Secret" | "ConfigMap" => 3,
        "PersistentVolumeClaim" => 4,
        "Role" | "RoleBinding" => 5,
        "Service" => 6,
        _ if obj.is_workload() => 8,
        _ => 7,
    }
}

/// A JSON value with every object's keys sorted (the digest must not
/// depend on the order the render wrote them in).
fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let sorted: BTreeMap<&String, Value> =
                m.iter().map(|(k, v)| (k, canonical(v))).collect();
            let mut out = Map::new();
            for (k, v) in sorted {
                out.insert(k.clone(), v);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// The digest of an object's body as devd applies it, without
/// [`ANNOTATION_APPLIED`] itself: blake3 of its canonical JSON.
pub fn applied_digest(body: &Value) -> String {
    let mut b = body.clone();
    if let Some(a) = b
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        a.remove(ANNOTATION_APPLIED);
        if a.is_empty()
            && let Some(meta) = b.get_mut("metadata").and_then(Value::as_object_mut)
        {
            meta.remove("annotations");
        }
    }
    let text = serde_json::to_string(&canonical(&b)).unwrap_or_default();
    blake3::hash(text.as_bytes()).to_hex()[..32].to_owned()
}

/// The body devd applies for `obj`: labelled part of `set` (unless it is a
/// CustomResourceDefinition, see the module docs) and annotated with its
/// digest; the digest too.
pub fn prepare(obj: &StackObject, set: &ApplySet) -> Result<(Value, String), String> {
    let mut body = obj.body.clone();
    let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) else {
        return Err(format!("{} has no metadata", obj.key()));
    };
    if !GroupKind::of(obj).is_crd() {
        let labels = meta
            .entry("labels")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| format!("{}: metadata.labels is not a map", obj.key()))?;
        match labels.get(LABEL_PART_OF) {
            Some(v) if v != &json!(set.id) => {
                return Err(format!(
                    "{} ({}) already has the label {LABEL_PART_OF}={v}: devd sets it to its own ApplySet; remove it from the manifest",
                    obj.key(),
                    obj.source
                ));
            }
            _ => {}
        }
        labels.insert(LABEL_PART_OF.into(), json!(set.id));
    }
    let digest = applied_digest(&body);
    let annotations = body
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .map(|m| m.entry("annotations").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut)
        .ok_or_else(|| format!("{}: metadata.annotations is not a map", obj.key()))?;
    annotations.insert(ANNOTATION_APPLIED.into(), json!(digest));
    Ok((body, digest))
}

/// Where each Service of `objects` answers, by its name: the template
/// (`[kubernetes] url_template`, with `{service}`, `{namespace}`, `{port}`)
/// if set; else `http(s)://{host}{path}` of the first Ingress rule that
/// routes to it; else `http://{name}.{namespace}.svc.cluster.local:{port}`
/// with its first port. A Service without ports has no URL.
pub fn service_urls(
    objects: &[StackObject],
    namespace: &str,
    template: Option<&str>,
) -> BTreeMap<String, String> {
    let mut urls = BTreeMap::new();
    for s in objects.iter().filter(|o| o.kind == "Service") {
        let Some(port) = s.body.pointer("/spec/ports/0/port").and_then(Value::as_u64) else {
            continue;
        };
        let url = match template {
            Some(t) => t
                .replace("{service}", &s.name)
                .replace("{namespace}", namespace)
                .replace("{port}", &port.to_string()),
            None => format!("http://{}.{namespace}.svc.cluster.local:{port}", s.name),
        };
        urls.insert(s.name.clone(), url);
    }
    if template.is_some() {
        return urls;
    }
    let mut by_ingress: BTreeMap<String, String> = BTreeMap::new();
    for ing in objects.iter().filter(|o| o.kind == "Ingress") {
        let spec = &ing.body["spec"];
        let tls: BTreeSet<&str> = spec["tls"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|t| t["hosts"].as_array().into_iter().flatten())
            .filter_map(Value::as_str)
            .collect();
        for rule in spec["rules"].as_array().into_iter().flatten() {
            let Some(host) = rule["host"].as_str().filter(|h| !h.contains('*')) else {
                continue;
            };
            for path in rule["http"]["paths"].as_array().into_iter().flatten() {
                let Some(svc) = path["backend"]["service"]["name"].as_str() else {
                    continue;
                };
                let scheme = if tls.contains(host) { "https" } else { "http" };
                let p = path["path"].as_str().unwrap_or("/");
                let p = if p == "/" { "" } else { p };
                by_ingress
                    .entry(svc.to_owned())
                    .or_insert_with(|| format!("{scheme}://{host}{p}"));
            }
        }
    }
    for (svc, url) in by_ingress {
        if urls.contains_key(&svc) {
            urls.insert(svc, url);
        }
    }
    urls
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(api_version: &str, kind: &str, name: &str, body: Value) -> StackObject {
        let mut b = body;
        b["apiVersion"] = json!(api_version);
        b["kind"] = json!(kind);
        b["metadata"]["name"] = json!(name);
        b["metadata"]["namespace"] = json!("dev");
        StackObject {
            api_version: api_version.into(),
            kind: kind.into(),
            name: name.into(),
            namespace: Some("dev".into()),
            source: "k8s/app.yaml".into(),
            body: b,
        }
    }

    #[test]
    fn the_id_is_kubectls() {
        // kubectl's own test (staging/src/k8s.io/kubectl/pkg/cmd/apply/
        // apply_test.go): the Secret `my-set` in namespace `test`.
        assert_eq!(
            applyset_id("my-set", "test", "Secret", ""),
            "applyset-0eFHV8ySqp7XoShsGvyWFQD3s96yqwHmzc4e0HR1dsY-v1"
        );
        let set = ApplySet::new("Alice_B", "dev");
        assert_eq!(set.name, "devd-stack-alice-b");
        assert_eq!(
            set.id,
            applyset_id("devd-stack-alice-b", "dev", "Secret", "")
        );
        assert_ne!(set.id, ApplySet::new("bob", "dev").id);
        assert_ne!(set.id, ApplySet::new("Alice_B", "other").id);
        // A label value: at most 63 characters, alphanumeric at both ends.
        assert!(set.id.len() <= 63, "{}", set.id);
        assert_eq!(set.selector(), format!("{LABEL_PART_OF}={}", set.id));
    }

    #[test]
    fn group_kinds_are_written_and_read_as_kubectl_does() {
        let kinds: BTreeSet<GroupKind> = [
            GroupKind::new("apps", "Deployment"),
            GroupKind::new("", "Secret"),
            GroupKind::new("", "ConfigMap"),
            GroupKind::new("example.com", "Widget"),
        ]
        .into();
        let text = format_group_kinds(&kinds);
        assert_eq!(text, "ConfigMap,Deployment.apps,Secret,Widget.example.com");
        assert_eq!(parse_group_kinds(&text), kinds);
        assert!(parse_group_kinds("").is_empty());
        let parent = ApplySet::new("alice", "dev").parent(&kinds);
        assert_eq!(
            parent["metadata"]["annotations"][ANNOTATION_GROUP_KINDS],
            text
        );
        assert_eq!(
            parent["metadata"]["annotations"][ANNOTATION_TOOLING],
            TOOLING
        );
        assert_eq!(
            parent["metadata"]["labels"][LABEL_APPLYSET_ID],
            ApplySet::new("alice", "dev").id
        );
    }

    #[test]
    fn prepared_bodies_carry_the_label_and_a_digest_that_follows_the_content() {
        let set = ApplySet::new("alice", "dev");
        let web = obj(
            "apps/v1",
            "Deployment",
            "web",
            json!({"metadata": {"labels": {"app": "web"}}, "spec": {"replicas": 1}}),
        );
        let (body, digest) = prepare(&web, &set).unwrap();
        assert_eq!(body["metadata"]["labels"][LABEL_PART_OF], set.id);
        assert_eq!(body["metadata"]["labels"]["app"], "web");
        assert_eq!(body["metadata"]["annotations"][ANNOTATION_APPLIED], digest);
        assert_eq!(
            applied_digest(&body),
            digest,
            "the annotation is not hashed"
        );
        // Key order does not matter; content does.
        let reordered = obj(
            "apps/v1",
            "Deployment",
            "web",
            json!({"spec": {"replicas": 1}, "metadata": {"labels": {"app": "web"}}}),
        );
        assert_eq!(prepare(&reordered, &set).unwrap().1, digest);
        let scaled = obj(
            "apps/v1",
            "Deployment",
            "web",
            json!({"metadata": {"labels": {"app": "web"}}, "spec": {"replicas": 2}}),
        );
        assert_ne!(prepare(&scaled, &set).unwrap().1, digest);
        // Another workspace's set labels differently, so digests differ.
        assert_ne!(
            prepare(&web, &ApplySet::new("bob", "dev")).unwrap().1,
            digest
        );
        // A manifest claiming another set is refused.
        let claimed = obj(
            "v1",
            "ConfigMap",
            "c",
            json!({"metadata": {"labels": {LABEL_PART_OF: "applyset-x-v1"}}}),
        );
        let e = prepare(&claimed, &set).unwrap_err();
        assert!(
            e.contains("configmap/c") && e.contains(LABEL_PART_OF),
            "{e}"
        );
        // A CRD is shared by every workspace: no label, a digest all the same.
        let mut crd = obj(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            "widgets.example.com",
            json!({"metadata": {}}),
        );
        crd.namespace = None;
        let (body, digest) = prepare(&crd, &set).unwrap();
        assert!(body["metadata"].get("labels").is_none(), "{body}");
        assert_eq!(body["metadata"]["annotations"][ANNOTATION_APPLIED], digest);
    }

    #[test]
    fn crds_come_first_and_workloads_last() {
        let mut objs = [
            obj("apps/v1", "Deployment", "web", json!({})),
            obj("example.com/v1", "Widget", "w", json!({})),
            obj("v1", "Service", "web", json!({})),
            obj("networking.k8s.io/v1", "Ingress", "web", json!({})),
            obj("v1", "ConfigMap", "c", json!({})),
            obj(
                "apiextensions.k8s.io/v1",
                CRD_KIND,
                "widgets.example.com",
                json!({}),
            ),
            obj("v1", "ServiceAccount", "sa", json!({})),
            obj("batch/v1", "Job", "migrate", json!({})),
        ];
        objs.sort_by_key(rank);
        let keys: Vec<String> = objs.iter().map(StackObject::key).collect();
        assert_eq!(
            keys,
            [
                "customresourcedefinition/widgets.example.com",
                "serviceaccount/sa",
                "configmap/c",
                "service/web",
                "widget/w",
                "ingress/web",
                "deployment/web",
                "job/migrate",
            ]
        );
    }

    #[test]
    fn urls_come_from_services_and_their_ingress() {
        let objs = [
            obj(
                "v1",
                "Service",
                "web",
                json!({"spec": {"ports": [{"port": 8080}, {"port": 9090}]}}),
            ),
            obj(
                "v1",
                "Service",
                "db",
                json!({"spec": {"ports": [{"port": 5432}]}}),
            ),
            obj(
                "v1",
                "Service",
                "headless",
                json!({"spec": {"clusterIP": "None"}}),
            ),
            obj(
                "networking.k8s.io/v1",
                "Ingress",
                "web",
                json!({"spec": {
                "tls": [{"hosts": ["secure.example.com"]}],
                "rules": [
                    {"host": "*.example.com", "http": {"paths": [
                        {"path": "/", "backend": {"service": {"name": "db"}}}]}},
                    {"host": "web.example.com", "http": {"paths": [
                        {"path": "/", "backend": {"service": {"name": "web", "port": {"number": 8080}}}}]}},
                    {"host": "secure.example.com", "http": {"paths": [
                        {"path": "/api", "backend": {"service": {"name": "db"}}}]}},
                    {"host": "gone.example.com", "http": {"paths": [
                        {"path": "/", "backend": {"service": {"name": "missing"}}}]}},
                ]}}),
            ),
        ];
        let urls = service_urls(&objs, "dev", None);
        assert_eq!(
            urls,
            BTreeMap::from([
                ("web".to_owned(), "http://web.example.com".to_owned()),
                ("db".to_owned(), "https://secure.example.com/api".to_owned()),
            ])
        );
        let plain = service_urls(&objs[..2], "dev", None);
        assert_eq!(plain["web"], "http://web.dev.svc.cluster.local:8080");
        let templated = service_urls(
            &objs,
            "dev",
            Some("http://{service}.{namespace}.lan:{port}"),
        );
        assert_eq!(templated["web"], "http://web.dev.lan:8080");
        assert_eq!(templated["db"], "http://db.dev.lan:5432");
    }

    #[test]
    fn images_match_their_repository_only() {
        let repo = "r.example.com:5000/demo/web";
        assert!(runs_image(repo, repo));
        assert!(runs_image(&format!("{repo}:latest"), repo));
        assert!(runs_image(
            &format!("{repo}@sha256:{}", "a".repeat(64)),
            repo
        ));
        assert!(!runs_image(&format!("{repo}-worker@sha256:00"), repo));
        assert!(!runs_image("r.example.com:5000/demo/we", repo));
        assert!(!runs_image("postgres:16", repo));
        let d = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "a"}, {"name": "side", "image": "b"}]}}}});
        assert_eq!(
            template_containers("Deployment", &d),
            [
                ("web".to_owned(), "a".to_owned()),
                ("side".to_owned(), "b".to_owned())
            ]
        );
        let p = json!({"spec": {"containers": [{"name": "x", "image": "c"}]}});
        assert_eq!(
            template_containers("Pod", &p),
            [("x".to_owned(), "c".to_owned())]
        );
    }

    #[test]
    fn known_kinds_resolve_by_version_and_by_group_kind() {
        assert_eq!(
            known("apps/v1", "Deployment").unwrap().plural,
            "deployments"
        );
        assert!(known("apps/v1beta1", "Deployment").is_none());
        assert_eq!(
            known_group_kind(&GroupKind::parse("Ingress.networking.k8s.io"))
                .unwrap()
                .plural,
            "ingresses"
        );
        assert!(
            !known_group_kind(&GroupKind::parse(
                "CustomResourceDefinition.apiextensions.k8s.io"
            ))
            .unwrap()
            .namespaced
        );
        assert!(GroupKind::parse("CustomResourceDefinition.apiextensions.k8s.io").is_crd());
    }
}
