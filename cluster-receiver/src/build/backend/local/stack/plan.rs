//! The pure half of a local stack deploy: from the rendered objects to
//! what podman plays, one Pod document per pod, with nothing run yet.
//!
//! Every workload kind with a pod template becomes Pods of its own (one
//! per replica; a DaemonSet one, this machine being its only node): podman
//! 4.3 plays Pods and Deployments itself but no other kind, and playing
//! Pods gives devd the pod names, addresses and labels it needs whatever
//! the kind. What each Pod document gets on top of the template:
//! - a name of devd's (`devd-<receiver>-<workspace>-<workload>[-<i>]`:
//!   podman's pods, volumes and secrets are machine-wide), the hostname
//!   the pod would have in Kubernetes, devd's labels;
//! - the ConfigMaps it references, renamed like it, in the same file
//!   (podman reads `env`/`envFrom` from them and makes a volume of each);
//! - Secrets by a podman secret of devd's name (podman 4.3 keeps the
//!   Secrets it plays in a form its own `secretKeyRef` cannot read), and
//!   secret volumes as a named volume holding the files (podman 4.3
//!   crashes on `secret:` volumes); PersistentVolumeClaims and a
//!   StatefulSet's claim templates as named volumes;
//! - no `ports` (podman 4.3 publishes every `containerPort` on all of the
//!   host's addresses; probes that named a port get its number);
//! - `hostAliases` naming every Service of the render (with its
//!   namespace forms) at the address of the first pod it selects: pods
//!   reach each other by Service name without a DNS plugin;
//! - `imagePullPolicy: IfNotPresent` (devd pulls what is missing first,
//!   and a moving tag of a third-party image is not pulled at each play).
//!
//! Each pod has a hash over its document (less devd's aliases), its
//! address and the Secrets it reads: a pod is played again exactly when
//! its hash changes. When only the Services change, the running pods'
//! /etc/hosts is rewritten in place instead.

use super::pieces::{
    canonical, containers, expand_prefixed, hash, named_port, secret_bytes, secret_files, selects,
    target_port,
};
use crate::build::backend::stack::{Stack, StackObject, WorkloadState, WorkloadStatus};
use base64::Engine as _;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// Label on every pod devd plays: the workload (`deployment.web`).
pub(crate) const LABEL_WORKLOAD: &str = "dev.devd.workload";
/// Label on the pods of workloads that run devd-built images: those
/// services, comma-separated (a container start tells which to re-apply
/// live changes to).
pub(crate) const LABEL_SERVICES: &str = "dev.devd.services";

/// Gives each pod name an address on the workspace's network (the same
/// one every time).
pub(crate) trait Addresses {
    fn address(&mut self, pod: &str) -> Option<Ipv4Addr>;
}

/// One pod to run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PodPlan {
    /// `deployment/web`.
    pub(crate) workload: String,
    /// podman's pod name.
    pub(crate) name: String,
    pub(crate) ip: Ipv4Addr,
    /// What `podman kube play` gets: JSON documents separated by `---`.
    pub(crate) doc: String,
    pub(crate) hash: String,
    /// Every image its containers and init containers run.
    pub(crate) images: Vec<String>,
    /// podman's names of its (regular) containers: `<pod>-<container>`.
    pub(crate) containers: Vec<String>,
    /// A Job's pod (restart policy Never/OnFailure): done when its
    /// containers exited 0.
    pub(crate) run_once: bool,
    /// Ports a Service sends to: they must answer before it is ready.
    pub(crate) ports: BTreeSet<u16>,
    /// The volumes podman makes of the ConfigMaps it references.
    pub(crate) volumes: Vec<String>,
    /// Why it cannot be played at all (a Secret missing from the render).
    pub(crate) error: Option<String>,
}

/// A podman secret to create.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SecretPlan {
    pub(crate) name: String,
    /// What podman's `secretKeyRef` reads: `{"KEY": "<base64>"}`.
    pub(crate) data: String,
    pub(crate) hash: String,
}

/// A named volume devd fills (a secret volume).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct VolumeFiles {
    pub(crate) name: String,
    /// (path in the volume, content, mode).
    pub(crate) files: Vec<(String, Vec<u8>, u32)>,
    pub(crate) hash: String,
}

/// Where a Service's stable URL forwards to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Route {
    pub(crate) service: String,
    pub(crate) pod: String,
    pub(crate) ip: Ipv4Addr,
    pub(crate) port: u16,
}

/// What to run for a whole render.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Plan {
    /// The workloads run (`kind/name`), in render order.
    pub(crate) workloads: Vec<String>,
    pub(crate) pods: Vec<PodPlan>,
    pub(crate) secrets: Vec<SecretPlan>,
    pub(crate) secret_volumes: Vec<VolumeFiles>,
    /// Named volumes for PersistentVolumeClaims (kept across plays).
    pub(crate) claims: Vec<String>,
    pub(crate) routes: Vec<Route>,
    /// What every pod's /etc/hosts says of the Services: names by address.
    pub(crate) aliases: BTreeMap<Ipv4Addr, Vec<String>>,
    pub(crate) skipped: Vec<WorkloadStatus>,
    pub(crate) warnings: Vec<String>,
}

/// Workload kinds devd turns into pods.
const PLAYED: &[&str] = &[
    "Pod",
    "Deployment",
    "ReplicaSet",
    "StatefulSet",
    "DaemonSet",
    "Job",
];

/// A pod before the Services are known.
struct Draft<'a> {
    obj: &'a StackObject,
    name: String,
    hostname: String,
    replica: Option<usize>,
    labels: Map<String, Value>,
    annotations: Option<Value>,
    spec: Value,
    ip: Ipv4Addr,
    ports: BTreeSet<u16>,
}

/// The plan for `stack`: `prefix` starts every podman name of the
/// workspace; `labels` go on every pod.
pub(crate) fn plan(
    stack: &Stack,
    prefix: &str,
    labels: &[(String, String)],
    addresses: &mut dyn Addresses,
) -> Result<Plan, String> {
    let mut plan = Plan::default();
    let by_kind = |kind: &str| -> BTreeMap<&str, &StackObject> {
        stack
            .objects
            .iter()
            .filter(|o| o.kind == kind && o.api_version == "v1")
            .map(|o| (o.name.as_str(), o))
            .collect()
    };
    let configmaps = by_kind("ConfigMap");
    let secrets = by_kind("Secret");
    let mut drafts: Vec<Draft<'_>> = Vec::new();
    for obj in &stack.objects {
        let kind = obj.kind.as_str();
        match kind {
            "ConfigMap" | "Secret" | "Service" if obj.api_version == "v1" => {}
            "PersistentVolumeClaim" if obj.api_version == "v1" => {
                plan.claims.push(format!("{prefix}{}", obj.name));
            }
            "CronJob" => {
                let reason = "podman cannot run CronJobs: the local backend skips it".to_owned();
                plan.warnings
                    .push(format!("{} ({}): {reason}", obj.key(), obj.source));
                plan.skipped.push(WorkloadStatus {
                    key: obj.key(),
                    state: WorkloadState::Skipped,
                    reason: Some(reason),
                    log_tail: Vec::new(),
                });
            }
            k if PLAYED.contains(&k) => {
                plan.workloads.push(obj.key());
                let services: Vec<&str> = stack
                    .runs
                    .iter()
                    .filter(|(_, workloads)| workloads.contains(&obj.key()))
                    .map(|(service, _)| service.as_str())
                    .collect();
                for d in drafts_of(obj, prefix, labels, &services)? {
                    let ip = addresses.address(&d.0).ok_or_else(|| {
                        format!(
                            "the workspace's network has no address left for {} (pod {})",
                            obj.key(),
                            d.0
                        )
                    })?;
                    drafts.push(Draft {
                        obj,
                        name: d.0,
                        hostname: d.1,
                        replica: d.2,
                        labels: d.3,
                        annotations: d.4,
                        spec: d.5,
                        ip,
                        ports: BTreeSet::new(),
                    });
                }
            }
            _ => plan.warnings.push(skip_warning(obj)),
        }
    }
    plan.claims.sort();
    plan.claims.dedup();

    // Services: an alias of the first pod each selects, and a route.
    let mut aliases: BTreeMap<Ipv4Addr, Vec<String>> = BTreeMap::new();
    for svc in stack
        .objects
        .iter()
        .filter(|o| o.kind == "Service" && o.api_version == "v1")
    {
        route_service(svc, &mut drafts, &mut aliases, &mut plan);
    }
    for names in aliases.values_mut() {
        names.sort();
        names.dedup();
    }
    let host_aliases: Vec<Value> = aliases
        .iter()
        .map(|(ip, names)| json!({"ip": ip.to_string(), "hostnames": names}))
        .collect();
    plan.aliases = aliases;

    let mut secret_plans: BTreeMap<String, SecretPlan> = BTreeMap::new();
    let mut volumes: BTreeMap<String, VolumeFiles> = BTreeMap::new();
    for d in drafts {
        let pod = finish(
            d,
            prefix,
            &configmaps,
            &secrets,
            &host_aliases,
            &mut secret_plans,
            &mut volumes,
            &mut plan.claims,
        );
        plan.pods.push(pod);
    }
    plan.claims.sort();
    plan.claims.dedup();
    plan.secrets = secret_plans.into_values().collect();
    plan.secret_volumes = volumes.into_values().collect();
    Ok(plan)
}

/// The warning for an object the local backend does not run.
fn skip_warning(obj: &StackObject) -> String {
    let what = match obj.kind.as_str() {
        "Ingress" => "the local backend has no Ingress: its Services have loopback URLs instead",
        "Namespace" => "the local backend has no namespaces",
        "ServiceAccount" | "Role" | "RoleBinding" | "ClusterRole" | "ClusterRoleBinding" => {
            "the local backend has no Kubernetes API to grant access to"
        }
        "CustomResourceDefinition" => "the local backend has no Kubernetes API to extend",
        _ => "the local backend does not run this kind",
    };
    format!("{} ({}): skipped: {what}", obj.key(), obj.source)
}

type DraftParts = (
    String,
    String,
    Option<usize>,
    Map<String, Value>,
    Option<Value>,
    Value,
);

/// podman's annotation for what becomes of init containers once run.
const INIT_TYPE_ANNOTATION: &str = "io.podman.annotations.init.container.type";

/// (pod name, hostname, replica, labels, annotations, spec) of each pod
/// of a workload.
fn drafts_of(
    obj: &StackObject,
    prefix: &str,
    labels: &[(String, String)],
    services: &[&str],
) -> Result<Vec<DraftParts>, String> {
    let body = &obj.body;
    let (meta, spec, replicas) = if obj.kind == "Pod" {
        (body.get("metadata"), body.get("spec"), None)
    } else {
        let template = body.pointer("/spec/template");
        let replicas = match obj.kind.as_str() {
            "Deployment" | "ReplicaSet" | "StatefulSet" => body
                .pointer("/spec/replicas")
                .and_then(Value::as_u64)
                .unwrap_or(1) as usize,
            _ => 1,
        };
        (
            template.and_then(|t| t.get("metadata")),
            template.and_then(|t| t.get("spec")),
            Some(replicas),
        )
    };
    let spec = spec
        .cloned()
        .ok_or_else(|| format!("{} ({}) has no pod spec", obj.key(), obj.source))?;
    let mut pod_labels = meta
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (k, v) in labels {
        pod_labels.insert(k.clone(), Value::String(v.clone()));
    }
    pod_labels.insert(
        LABEL_WORKLOAD.to_owned(),
        Value::String(format!("{}.{}", obj.kind.to_ascii_lowercase(), obj.name)),
    );
    if !services.is_empty() {
        pod_labels.insert(LABEL_SERVICES.to_owned(), Value::String(services.join(",")));
    }
    let annotations = meta.and_then(|m| m.get("annotations")).cloned();
    let base = format!("{prefix}{}", obj.name);
    let hostname = |s: String| {
        let s: String = s.chars().take(63).collect();
        s.trim_end_matches('-').to_owned()
    };
    Ok(match replicas {
        None => vec![(
            base,
            hostname(obj.name.clone()),
            None,
            pod_labels,
            annotations,
            spec,
        )],
        Some(n) => (0..n)
            .map(|i| {
                (
                    format!("{base}-{i}"),
                    hostname(format!("{}-{i}", obj.name)),
                    Some(i),
                    pod_labels.clone(),
                    annotations.clone(),
                    spec.clone(),
                )
            })
            .collect(),
    })
}

fn route_service(
    svc: &StackObject,
    drafts: &mut [Draft<'_>],
    aliases: &mut BTreeMap<Ipv4Addr, Vec<String>>,
    plan: &mut Plan,
) {
    let selector = svc
        .body
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let ports: Vec<Value> = svc
        .body
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut first: Option<usize> = None;
    for (i, d) in drafts.iter_mut().enumerate() {
        if !selects(&selector, &d.labels) {
            continue;
        }
        first.get_or_insert(i);
        for p in &ports {
            if p.get("protocol").and_then(Value::as_str).unwrap_or("TCP") == "TCP"
                && let Some(t) = target_port(p, &d.spec)
            {
                d.ports.insert(t);
            }
        }
    }
    let Some(i) = first else {
        plan.warnings.push(format!(
            "{} ({}): selects no pod the local backend runs: no URL, and pods cannot reach it",
            svc.key(),
            svc.source
        ));
        return;
    };
    let d = &drafts[i];
    let mut names = vec![svc.name.clone()];
    if let Some(ns) = &svc.namespace {
        names.push(format!("{}.{ns}", svc.name));
        names.push(format!("{}.{ns}.svc", svc.name));
        names.push(format!("{}.{ns}.svc.cluster.local", svc.name));
    }
    aliases.entry(d.ip).or_default().extend(names);
    for p in &ports {
        let port = p.get("port").and_then(Value::as_u64).unwrap_or(0);
        if let Some(t) = target_port(p, &d.spec)
            && u64::from(t) != port
        {
            plan.warnings.push(format!(
                "{} ({}): port {port} forwards to {t}: pods reach it as {}:{t} on the local backend (its URL forwards to {t})",
                svc.key(),
                svc.source,
                svc.name
            ));
        }
    }
    if let Some(port) = ports.first().and_then(|p| target_port(p, &d.spec)) {
        plan.routes.push(Route {
            service: svc.name.clone(),
            pod: d.name.clone(),
            ip: d.ip,
            port,
        });
    }
}

/// Renames and rewrites one pod spec and writes its document.
#[allow(clippy::too_many_arguments)]
fn finish(
    d: Draft<'_>,
    prefix: &str,
    configmaps: &BTreeMap<&str, &StackObject>,
    secrets: &BTreeMap<&str, &StackObject>,
    host_aliases: &[Value],
    secret_plans: &mut BTreeMap<String, SecretPlan>,
    volumes: &mut BTreeMap<String, VolumeFiles>,
    claims: &mut Vec<String>,
) -> PodPlan {
    let mut spec = d.spec;
    let mut used_cms: BTreeSet<String> = BTreeSet::new();
    let mut used_secrets: BTreeSet<String> = BTreeSet::new();
    let mut error = None;
    let mut volume_hashes = Vec::new();
    let original = spec.clone();
    // Containers: ports, probes, pull policy, references.
    for key in ["initContainers", "containers"] {
        let Some(list) = spec.get_mut(key).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in list {
            let Some(c) = c.as_object_mut() else { continue };
            expand_prefixed(c, configmaps, secrets);
            c.remove("ports");
            for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                for how in ["httpGet", "tcpSocket"] {
                    if let Some(Value::String(name)) = c
                        .get_mut(probe)
                        .and_then(|p| p.get_mut(how))
                        .and_then(|h| h.get_mut("port"))
                        && let Some(n) = named_port(&original, name)
                    {
                        let n = Value::from(n);
                        if let Some(h) = c.get_mut(probe).and_then(|p| p.get_mut(how)) {
                            h["port"] = n;
                        }
                    }
                }
            }
            if c.get("imagePullPolicy").and_then(Value::as_str) != Some("Never") {
                c.insert("imagePullPolicy".into(), "IfNotPresent".into());
            }
            // An optional reference to what the render lacks is no
            // variable at all, as in Kubernetes.
            let missing_optional = |r: &Value, kind: &str| {
                let lacks = |name: &str| match kind {
                    "configMapKeyRef" | "configMapRef" => !configmaps.contains_key(name),
                    _ => !secrets.contains_key(name),
                };
                r.get("optional").and_then(Value::as_bool) == Some(true)
                    && r.get("name").and_then(Value::as_str).is_some_and(lacks)
            };
            if let Some(env) = c.get_mut("env").and_then(Value::as_array_mut) {
                env.retain(|e| {
                    !["configMapKeyRef", "secretKeyRef"].iter().any(|k| {
                        e.pointer(&format!("/valueFrom/{k}"))
                            .is_some_and(|r| missing_optional(r, k))
                    })
                });
            }
            if let Some(from) = c.get_mut("envFrom").and_then(Value::as_array_mut) {
                from.retain(|e| {
                    !["configMapRef", "secretRef"]
                        .iter()
                        .any(|k| e.get(*k).is_some_and(|r| missing_optional(r, k)))
                });
            }
            if let Some(env) = c.get_mut("env").and_then(Value::as_array_mut) {
                for e in env {
                    for (kind, used) in [
                        ("configMapKeyRef", &mut used_cms),
                        ("secretKeyRef", &mut used_secrets),
                    ] {
                        if let Some(Value::String(n)) =
                            e.pointer_mut(&format!("/valueFrom/{kind}/name"))
                        {
                            used.insert(n.clone());
                            *n = format!("{prefix}{n}");
                        }
                    }
                }
            }
            if let Some(from) = c.get_mut("envFrom").and_then(Value::as_array_mut) {
                for e in from {
                    for (kind, used) in [
                        ("configMapRef", &mut used_cms),
                        ("secretRef", &mut used_secrets),
                    ] {
                        if let Some(Value::String(n)) = e.pointer_mut(&format!("/{kind}/name")) {
                            used.insert(n.clone());
                            *n = format!("{prefix}{n}");
                        }
                    }
                }
            }
        }
    }
    // Volumes.
    let mut cm_volumes = Vec::new();
    if let Some(vols) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        for v in vols {
            if let Some(Value::String(n)) = v.pointer_mut("/configMap/name") {
                used_cms.insert(n.clone());
                *n = format!("{prefix}{n}");
                cm_volumes.push(n.clone());
            } else if let Some(Value::String(n)) = v.pointer_mut("/persistentVolumeClaim/claimName")
            {
                *n = format!("{prefix}{n}");
                claims.push(n.clone());
            } else if let Some(src) = v.get("secret").cloned() {
                let name = src.get("secretName").and_then(Value::as_str).unwrap_or("");
                let vname = v.get("name").cloned().unwrap_or(Value::Null);
                match secrets.get(name) {
                    Some(obj) => {
                        let files = secret_files(obj, &src);
                        let h = hash(&[&canonical(&src), &format!("{files:?}")]);
                        let volume = format!("{prefix}secret-{name}-{}", &h[..8]);
                        volume_hashes.push(h.clone());
                        volumes.entry(volume.clone()).or_insert(VolumeFiles {
                            name: volume.clone(),
                            files,
                            hash: h,
                        });
                        *v = json!({"name": vname, "persistentVolumeClaim": {"claimName": volume}});
                    }
                    None if src.get("optional").and_then(Value::as_bool) == Some(true) => {
                        *v = json!({"name": vname, "emptyDir": {}});
                    }
                    None => {
                        error = Some(format!(
                            "its volume {vname} needs Secret {name}, which is not in the render"
                        ));
                    }
                }
            }
        }
    }
    // A StatefulSet's claim templates: a volume per replica.
    if d.obj.kind == "StatefulSet"
        && let Some(templates) = d
            .obj
            .body
            .pointer("/spec/volumeClaimTemplates")
            .and_then(Value::as_array)
    {
        let i = d.replica.unwrap_or(0);
        for t in templates {
            let Some(tname) = t.pointer("/metadata/name").and_then(Value::as_str) else {
                continue;
            };
            let claim = format!("{prefix}{tname}-{}-{i}", d.obj.name);
            claims.push(claim.clone());
            let vols = spec
                .as_object_mut()
                .expect("a pod spec is an object")
                .entry("volumes")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Some(vols) = vols.as_array_mut()
                && !vols
                    .iter()
                    .any(|v| v.get("name").and_then(Value::as_str) == Some(tname))
            {
                vols.push(json!({"name": tname, "persistentVolumeClaim": {"claimName": claim}}));
            }
        }
    }
    if let Some(s) = spec.as_object_mut() {
        s.entry("hostname").or_insert(Value::String(d.hostname));
    }
    let run_once = matches!(
        spec.get("restartPolicy").and_then(Value::as_str),
        Some("Never" | "OnFailure")
    );
    let images: Vec<String> = containers(&spec)
        .filter_map(|c| c.get("image").and_then(Value::as_str))
        .map(str::to_owned)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let container_names: Vec<String> = spec
        .get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .map(|c| format!("{}-{c}", d.name))
        .collect();
    // The document: its ConfigMaps, then the Pod.
    let mut docs: Vec<Value> = Vec::new();
    for cm in &used_cms {
        if let Some(obj) = configmaps.get(cm.as_str()) {
            let mut body = json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": format!("{prefix}{cm}")},
            });
            for k in ["data", "binaryData"] {
                if let Some(v) = obj.body.get(k) {
                    body[k] = v.clone();
                }
            }
            docs.push(body);
        }
    }
    let mut metadata = json!({"name": d.name, "labels": Value::Object(d.labels)});
    if let Some(a) = d.annotations {
        metadata["annotations"] = a;
    }
    // Init containers that podman keeps ("always": they run at each start
    // of the pod, as Kubernetes runs them for each new pod) rather than
    // removes once run: podman 4.3 races with itself removing a finished
    // "once" init container, and the play fails half made.
    if spec
        .get("initContainers")
        .and_then(Value::as_array)
        .is_some_and(|c| !c.is_empty())
    {
        if !metadata["annotations"].is_object() {
            metadata["annotations"] = json!({});
        }
        metadata["annotations"][INIT_TYPE_ANNOTATION] = "always".into();
    }
    // The hash leaves devd's aliases out: when the Services change, the
    // running pods' /etc/hosts is rewritten instead of a replay.
    let hashed_pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec});
    let mut pod = hashed_pod.clone();
    if !host_aliases.is_empty() {
        let mut all = spec
            .get("hostAliases")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        all.extend(host_aliases.iter().cloned());
        pod["spec"]["hostAliases"] = Value::Array(all);
    }
    let mut hashed = docs.clone();
    hashed.push(hashed_pod);
    docs.push(pod);
    let mut secret_hashes = Vec::new();
    for s in &used_secrets {
        match secrets.get(s.as_str()) {
            Some(obj) => {
                let b64 = base64::engine::general_purpose::STANDARD;
                let data: BTreeMap<String, String> = secret_bytes(obj)
                    .into_iter()
                    .map(|(k, v)| (k, b64.encode(v)))
                    .collect();
                let data = serde_json::to_string(&data).unwrap_or_default();
                let h = hash(&[&data]);
                secret_hashes.push(h.clone());
                let name = format!("{prefix}{s}");
                secret_plans.entry(name.clone()).or_insert(SecretPlan {
                    name,
                    data,
                    hash: h,
                });
            }
            None => {
                error.get_or_insert(format!("it reads Secret {s}, which is not in the render"));
            }
        }
    }
    secret_hashes.extend(volume_hashes);
    let text: Vec<String> = docs.iter().map(|d| d.to_string()).collect();
    let canon: Vec<String> = hashed.iter().map(canonical).collect();
    let h = hash(&[
        &canon.join("\n"),
        &d.ip.to_string(),
        &secret_hashes.join(","),
    ]);
    PodPlan {
        workload: d.obj.key(),
        name: d.name,
        ip: d.ip,
        doc: text.join("\n---\n"),
        hash: h,
        images,
        containers: container_names,
        run_once,
        ports: d.ports,
        volumes: cm_volumes,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    struct Book(BTreeMap<String, Ipv4Addr>);

    impl Addresses for Book {
        fn address(&mut self, pod: &str) -> Option<Ipv4Addr> {
            let n = self.0.len() as u8;
            Some(
                *self
                    .0
                    .entry(pod.to_owned())
                    .or_insert(Ipv4Addr::new(10, 0, 0, 2 + n)),
            )
        }
    }

    fn obj(body: Value) -> StackObject {
        StackObject {
            api_version: body["apiVersion"].as_str().unwrap().to_owned(),
            kind: body["kind"].as_str().unwrap().to_owned(),
            name: body["metadata"]["name"].as_str().unwrap().to_owned(),
            namespace: Some("ws".into()),
            source: "k8s/app.yaml".into(),
            body,
        }
    }

    fn stack(greeting: &str, db_image: &str) -> Stack {
        let objects = vec![
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
                   "data": {"GREETING": greeting}}),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pw"},
                   "data": {"PASSWORD": "c2VjcmV0"}, "stringData": {"USER": "app"}}),
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "uploads"}}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                "spec": {"replicas": 2, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                    "containers": [{"name": "srv", "image": "localhost/web@sha256:1",
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"port": "http"}},
                        "envFrom": [{"configMapRef": {"name": "cfg"}}],
                        "env": [{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "pw", "key": "PASSWORD"}}}]}],
                    "volumes": [
                        {"name": "files", "persistentVolumeClaim": {"claimName": "uploads"}},
                        {"name": "creds", "secret": {"secretName": "pw", "items": [{"key": "USER", "path": "user"}]}}]}}}}),
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
                "spec": {"template": {"metadata": {"labels": {"app": "db"}}, "spec": {
                    "containers": [{"name": "pg", "image": db_image,
                        "ports": [{"name": "pg", "containerPort": 5432}]}]}},
                    "volumeClaimTemplates": [{"metadata": {"name": "data"}}]}}),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"},
                   "spec": {"selector": {"app": "db"}, "ports": [{"port": 5432, "targetPort": "pg"}]}}),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                   "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "nothing"},
                   "spec": {"selector": {"app": "none"}, "ports": [{"port": 1}]}}),
            json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly"}, "spec": {}}),
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "web"}, "spec": {}}),
        ];
        Stack {
            objects: objects.into_iter().map(obj).collect(),
            images: BTreeMap::new(),
            runs: [("web".to_owned(), vec!["deployment/web".to_owned()])].into(),
            log: PathBuf::from("/dev/null"),
        }
    }

    fn plan_of(s: &Stack) -> Plan {
        let labels = [("dev.devd.workspace".to_owned(), "ws".to_owned())];
        plan(s, "devd-r-ws-", &labels, &mut Book(BTreeMap::new())).unwrap()
    }

    fn docs(p: &PodPlan) -> Vec<Value> {
        p.doc
            .split("\n---\n")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    #[test]
    fn workloads_become_pods_with_devd_names_aliases_and_no_published_ports() {
        let p = plan_of(&stack("hi", "postgres:16"));
        assert_eq!(p.workloads, ["deployment/web", "statefulset/db"]);
        let names: Vec<&str> = p.pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["devd-r-ws-web-0", "devd-r-ws-web-1", "devd-r-ws-db-0"]
        );
        let web = &p.pods[0];
        let d = docs(web);
        assert_eq!(d.len(), 2, "the ConfigMap it reads, then the Pod");
        assert_eq!(d[0]["metadata"]["name"], "devd-r-ws-cfg");
        assert_eq!(d[0]["data"]["GREETING"], "hi");
        let pod = &d[1];
        assert_eq!(pod["kind"], "Pod");
        assert_eq!(pod["metadata"]["labels"]["app"], "web");
        assert_eq!(pod["metadata"]["labels"]["dev.devd.workspace"], "ws");
        assert_eq!(pod["metadata"]["labels"][LABEL_WORKLOAD], "deployment.web");
        assert_eq!(pod["metadata"]["labels"][LABEL_SERVICES], "web");
        assert!(
            docs(&p.pods[2])[0]["metadata"]["labels"]
                .get(LABEL_SERVICES)
                .is_none()
        );
        let c = &pod["spec"]["containers"][0];
        assert!(
            c.get("ports").is_none(),
            "podman 4.3 would publish them: {c}"
        );
        assert_eq!(c["readinessProbe"]["httpGet"]["port"], 8080);
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c["envFrom"][0]["configMapRef"]["name"], "devd-r-ws-cfg");
        assert_eq!(
            c["env"][0]["valueFrom"]["secretKeyRef"]["name"],
            "devd-r-ws-pw"
        );
        assert_eq!(pod["spec"]["hostname"], "web-0");
        let vols = &pod["spec"]["volumes"];
        assert_eq!(
            vols[0]["persistentVolumeClaim"]["claimName"],
            "devd-r-ws-uploads"
        );
        let creds = vols[1]["persistentVolumeClaim"]["claimName"]
            .as_str()
            .unwrap();
        assert!(creds.starts_with("devd-r-ws-secret-pw-"), "{vols}");
        assert_eq!(p.secret_volumes.len(), 1);
        assert_eq!(p.secret_volumes[0].name, creds);
        assert_eq!(
            p.secret_volumes[0].files,
            [("user".to_owned(), b"app".to_vec(), 0o644)]
        );
        assert_eq!(p.secrets.len(), 1);
        assert_eq!(p.secrets[0].name, "devd-r-ws-pw");
        let data: BTreeMap<String, String> = serde_json::from_str(&p.secrets[0].data).unwrap();
        assert_eq!(data["PASSWORD"], "c2VjcmV0");
        assert_eq!(data["USER"], "YXBw", "stringData is encoded");
        assert_eq!(p.claims, ["devd-r-ws-data-db-0", "devd-r-ws-uploads"]);
        // Every pod names every Service at the first pod it selects.
        let db = &p.pods[2];
        let aliases = &pod["spec"]["hostAliases"];
        let db_alias = aliases
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["ip"] == db.ip.to_string())
            .unwrap();
        assert_eq!(
            db_alias["hostnames"],
            json!(["db", "db.ws", "db.ws.svc", "db.ws.svc.cluster.local"])
        );
        assert_eq!(docs(db)[0]["spec"]["hostAliases"], *aliases);
        assert_eq!(
            docs(db)[0]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "devd-r-ws-data-db-0"
        );
        assert_eq!(db.ports, [5432].into(), "the named target port");
        assert_eq!(web.ports, [8080].into());
        assert_eq!(web.containers, ["devd-r-ws-web-0-srv"]);
        assert_eq!(
            p.routes,
            [
                Route {
                    service: "db".into(),
                    pod: db.name.clone(),
                    ip: db.ip,
                    port: 5432
                },
                Route {
                    service: "web".into(),
                    pod: web.name.clone(),
                    ip: web.ip,
                    port: 8080
                },
            ]
        );
        // Nothing is dropped without a word.
        assert_eq!(p.skipped.len(), 1);
        assert_eq!(p.skipped[0].key, "cronjob/nightly");
        assert_eq!(p.skipped[0].state, WorkloadState::Skipped);
        for needle in [
            "cronjob/nightly",
            "ingress/web",
            "service/nothing",
            "service/web (k8s/app.yaml): port 80 forwards to 8080",
        ] {
            assert!(
                p.warnings.iter().any(|w| w.contains(needle)),
                "{needle}: {:#?}",
                p.warnings
            );
        }
    }

    #[test]
    fn a_pod_hash_changes_with_what_it_uses_only() {
        let a = plan_of(&stack("hi", "postgres:16"));
        let b = plan_of(&stack("hello", "postgres:16"));
        let c = plan_of(&stack("hi", "postgres:17"));
        let hashes = |p: &Plan| p.pods.iter().map(|p| p.hash.clone()).collect::<Vec<_>>();
        let (a, b, c) = (hashes(&a), hashes(&b), hashes(&c));
        assert_eq!(a, hashes(&plan_of(&stack("hi", "postgres:16"))), "stable");
        assert!(
            a[0] != b[0] && a[1] != b[1],
            "the ConfigMap's readers change"
        );
        assert_eq!(a[2], b[2], "the database does not read it");
        assert_eq!(
            a[..2],
            c[..2],
            "another image of the database changes only its pod"
        );
        assert_ne!(a[2], c[2]);
        // Services change /etc/hosts, which is rewritten, not replayed.
        let mut s = stack("hi", "postgres:16");
        s.objects
            .retain(|o| !(o.kind == "Service" && o.name == "db"));
        let d = plan_of(&s);
        assert_eq!(hashes(&d), a);
        let full = plan_of(&stack("hi", "postgres:16"));
        assert_ne!(d.aliases, full.aliases);
        assert!(!docs(&d.pods[0])[1].to_string().contains("\"db.ws\""));
        assert!(docs(&full.pods[0])[1].to_string().contains("\"db.ws\""));
    }

    #[test]
    fn a_prefixed_env_from_becomes_env_entries() {
        let mut s = stack("hi", "postgres:16");
        let web = s.objects.iter_mut().find(|o| o.name == "web").unwrap();
        web.body["spec"]["template"]["spec"]["containers"][0]["envFrom"] = json!([
            {"configMapRef": {"name": "cfg"}, "prefix": "C_"},
            {"secretRef": {"name": "pw"}},
        ]);
        let p = plan_of(&s);
        let c = &docs(&p.pods[0])[1]["spec"]["containers"][0];
        assert_eq!(
            c["env"],
            json!([
                {"name": "C_GREETING", "valueFrom": {"configMapKeyRef": {"name": "devd-r-ws-cfg", "key": "GREETING"}}},
                {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "devd-r-ws-pw", "key": "PASSWORD"}}},
            ])
        );
        assert_eq!(
            c["envFrom"],
            json!([{"secretRef": {"name": "devd-r-ws-pw"}}])
        );
        assert_eq!(
            docs(&p.pods[0])[0]["metadata"]["name"],
            "devd-r-ws-cfg",
            "still in the document"
        );
    }

    #[test]
    fn a_missing_secret_fails_the_pod_before_podman_sees_it() {
        let mut s = stack("hi", "postgres:16");
        s.objects.retain(|o| o.kind != "Secret");
        let p = plan_of(&s);
        let err = p.pods[0].error.as_deref().unwrap();
        assert!(err.contains("Secret pw"), "{err}");
        assert_eq!(p.pods[2].error, None);
    }

    #[test]
    fn an_optional_reference_to_what_the_render_lacks_is_no_variable() {
        let mut s = stack("hi", "postgres:16");
        s.objects.push(obj(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "opt"},
            "spec": {"template": {"metadata": {"labels": {"app": "opt"}}, "spec": {
                "containers": [{"name": "c", "image": "busybox",
                    "env": [
                        {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": true}}},
                        {"name": "MODE", "value": "dev"}],
                    "envFrom": [{"configMapRef": {"name": "absent-cm", "optional": true}}]}]}}}})));
        let p = plan_of(&s);
        let pod = p
            .pods
            .iter()
            .find(|p| p.workload == "deployment/opt")
            .unwrap();
        assert_eq!(
            pod.error, None,
            "an optional reference does not fail the pod"
        );
        let d = docs(pod);
        let c = &d.last().unwrap()["spec"]["containers"][0];
        assert_eq!(c["env"], json!([{"name": "MODE", "value": "dev"}]));
        assert_eq!(c["envFrom"], json!([]));
        // Not optional: the pod cannot be played, and says why.
        s.objects.last_mut().unwrap().body["spec"]["template"]["spec"]["containers"][0]["env"][0]
            ["valueFrom"]["secretKeyRef"]["optional"] = false.into();
        let p = plan_of(&s);
        let pod = p
            .pods
            .iter()
            .find(|p| p.workload == "deployment/opt")
            .unwrap();
        assert!(
            pod.error.as_deref().is_some_and(|e| e.contains("absent")),
            "{:?}",
            pod.error
        );
    }
}
