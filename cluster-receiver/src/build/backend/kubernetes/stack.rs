//! The repository's own manifests (`[deploy]`) on the Kubernetes backend:
//! the rendered objects applied as one ApplySet ([`super::applyset`]).
//!
//! An apply, as `kubectl apply --server-side --prune --applyset` does it:
//! 1. every object is resolved to its API resource (the kinds of
//!    [`KNOWN_KINDS`] from the table, a custom resource of a
//!    CustomResourceDefinition in the render from that CRD's spec, any
//!    other kind through discovery of its group version) and prepared (the
//!    `part-of` label, the digest annotation); an object outside the
//!    receiver's namespace, or a cluster-scoped one other than a CRD, is
//!    refused before anything is applied;
//! 2. the parent Secret is applied listing the union of the group-kinds it
//!    listed and those of the render (so an interrupted apply leaks
//!    nothing), and the set's members of each of those group-kinds are
//!    listed by the `part-of` label;
//! 3. each object whose digest differs from its member's (or that is not
//!    a member) is server-side applied (field manager `devd`, forced), in
//!    [`rank`] order: CRDs first, waiting until a CRD is `Established`
//!    before its custom resources, then what workloads use, then
//!    workloads. An unchanged object is only logged (`unchanged`). A Job
//!    or Pod the API server cannot change in place (an immutable field: a
//!    Job's pod template with a new image) is deleted and made anew;
//! 4. only when every apply succeeded, members no longer in the render are
//!    deleted (background propagation: a Deployment's pods go with it) and
//!    the parent lists the render's group-kinds only;
//! 5. the workloads are awaited ([`super::workloads`]), and each Service
//!    gets its URL.
//!
//! `devd down` deletes every member of each group-kind the parent lists,
//! then the parent. CRDs are neither pruned nor removed (see
//! [`super::applyset`]).

use super::applyset::{
    ANNOTATION_APPLIED, ANNOTATION_GROUP_KINDS, ANNOTATION_TOOLING, ApplySet, CRD_KIND, GroupKind,
    Resource, TOOLING, known, known_group_kind, parse_group_kinds, prepare, rank, service_urls,
};
use super::job::append_log;
use super::workloads::Watched;
use super::{KubernetesBackend, api_failure, is_status};
use crate::build::backend::Failure;
use crate::build::backend::stack::{FIELD_MANAGER, Stack, StackObject, StackReport};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::discovery::Scope;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Kinds made anew when a change cannot be applied in place.
const REPLACED_KINDS: &[&str] = &["Job", "Pod"];
/// How long a replaced object may take to be gone.
const REPLACE_WAIT: Duration = Duration::from_secs(90);

/// The API server refused a change to an immutable field.
fn immutable(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 422 && s.message.contains("immutable"))
}

/// How long a CustomResourceDefinition may take to be `Established`.
const CRD_WAIT: Duration = Duration::from_secs(60);

/// One object of the render, ready to apply.
struct Planned<'a> {
    obj: &'a StackObject,
    gk: GroupKind,
    res: Resource,
    body: Value,
    digest: String,
}

/// A member of the set found in the cluster.
struct Member {
    digest: Option<String>,
    res: Resource,
}

/// A refused or failed call on `what`, naming it and the RBAC `verb`; a
/// refusal says which grant is missing and where it goes.
fn object_failure(verb: &str, what: &str, res: Option<&Resource>, e: kube::Error) -> Failure {
    match &e {
        kube::Error::Api(s) if s.code == 403 => {
            let grant = match res {
                Some(r) if r.ar.kind == CRD_KIND => format!(
                    "CustomResourceDefinitions are cluster-scoped, so no Role can grant them: a cluster admin must bind the receiver's service account to a ClusterRole that grants get, create and patch on customresourcedefinitions.apiextensions.k8s.io (docs/configuration.md, \"[deploy] on Kubernetes\"), or install the CRD once and leave it out of the manifests ({verb} was refused)"
                ),
                Some(r) => format!(
                    "the receiver's Role must grant {verb}{} on {} (manifests/receiver/role.yaml grants the kinds devd knows; add a rule for this one)",
                    if verb == "patch" { " and create" } else { "" },
                    r.rbac_name()
                ),
                None => format!("the receiver's service account needs {verb} on it"),
            };
            Failure::new(format!(
                "Kubernetes refused to {verb} {what}: {} — {grant}",
                s.message
            ))
        }
        _ => api_failure(&format!("{verb} {what}"), e),
    }
}

/// `Kind name` for messages.
fn describe(obj: &StackObject) -> String {
    format!("{} {} (from {})", obj.kind, obj.name, obj.source)
}

impl KubernetesBackend {
    /// The parent Secret of `set`, checked to be devd's, and the
    /// group-kinds it lists.
    pub(super) async fn stack_parent(
        &self,
        set: &ApplySet,
    ) -> Result<Option<(Secret, BTreeSet<GroupKind>)>, Failure> {
        let secrets: Api<Secret> = self.api();
        let parent = secrets
            .get_opt(&set.name)
            .await
            .map_err(|e| object_failure("get", &format!("Secret {}", set.name), None, e))?;
        let Some(parent) = parent else {
            return Ok(None);
        };
        let annotations = parent.metadata.annotations.clone().unwrap_or_default();
        let tooling = annotations.get(ANNOTATION_TOOLING).map(String::as_str);
        let tool = tooling.map(|t| t.rsplit_once('/').map_or(t, |(name, _)| name));
        let id = parent
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(super::applyset::LABEL_APPLYSET_ID));
        if tool != Some("devd") || id != Some(&set.id) {
            return Err(Failure::new(format!(
                "Secret {} in namespace {} is not devd's ApplySet parent (tooling {:?}, id {:?}; devd's would be {TOOLING} and {}): rename or delete it, devd keeps the stack's record in it",
                set.name, self.s.namespace, tooling, id, set.id
            )));
        }
        let kinds = parse_group_kinds(
            annotations
                .get(ANNOTATION_GROUP_KINDS)
                .map_or("", String::as_str),
        );
        Ok(Some((parent, kinds)))
    }

    async fn apply_parent(
        &self,
        set: &ApplySet,
        kinds: &BTreeSet<GroupKind>,
    ) -> Result<(), Failure> {
        let secrets: Api<Secret> = self.api();
        secrets
            .patch(
                &set.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&set.parent(kinds)),
            )
            .await
            .map(|_| ())
            .map_err(|e| {
                object_failure(
                    "patch",
                    &format!("Secret {} (the stack's ApplySet parent)", set.name),
                    Some(&Resource::known(known("v1", "Secret").expect("known"))),
                    e,
                )
            })
    }

    /// The API resource of `obj`: known, from a CRD of the render, or
    /// through discovery of its group version.
    async fn resolve(
        &self,
        obj: &StackObject,
        crd_names: &BTreeMap<GroupKind, (String, bool)>,
        cache: &mut BTreeMap<(String, String), Resource>,
    ) -> Result<Resource, Failure> {
        if let Some(k) = known(&obj.api_version, &obj.kind) {
            return Ok(Resource::known(k));
        }
        let cache_key = (obj.api_version.clone(), obj.kind.clone());
        if let Some(r) = cache.get(&cache_key) {
            return Ok(r.clone());
        }
        let (group, version) = obj
            .api_version
            .split_once('/')
            .unwrap_or(("", obj.api_version.as_str()));
        let gvk = GroupVersionKind::gvk(group, version, &obj.kind);
        let res = match crd_names.get(&GroupKind::of(obj)) {
            Some((plural, namespaced)) => Resource {
                ar: ApiResource::from_gvk_with_plural(&gvk, plural),
                namespaced: *namespaced,
            },
            None => {
                let (ar, caps) = kube::discovery::pinned_kind(&self.client, &gvk)
                    .await
                    .map_err(|e| {
                        Failure::new(format!(
                            "cannot apply {}: the cluster serves no {} in {} ({e}); is its CustomResourceDefinition installed, or in the manifests?",
                            describe(obj),
                            obj.kind,
                            obj.api_version
                        ))
                    })?;
                Resource {
                    ar,
                    namespaced: caps.scope == Scope::Namespaced,
                }
            }
        };
        cache.insert(cache_key, res.clone());
        Ok(res)
    }

    /// The API resource of a group-kind the parent lists (to find its
    /// members), if the cluster still serves it.
    async fn resolve_group_kind(
        &self,
        gk: &GroupKind,
        planned: &[Planned<'_>],
    ) -> Option<Resource> {
        if let Some(p) = planned.iter().find(|p| &p.gk == gk) {
            return Some(p.res.clone());
        }
        if let Some(k) = known_group_kind(gk) {
            return Some(Resource::known(k));
        }
        match kube::discovery::group(&self.client, &gk.group).await {
            Ok(g) => g.recommended_kind(&gk.kind).map(|(ar, caps)| Resource {
                ar,
                namespaced: caps.scope == Scope::Namespaced,
            }),
            Err(e) => {
                tracing::warn!(group_kind = %gk, error = %e, "no discovery for a kind of the stack");
                None
            }
        }
    }

    /// The members of `set` of each of `kinds`, by group-kind and name.
    async fn members(
        &self,
        set: &ApplySet,
        kinds: &BTreeSet<GroupKind>,
        planned: &[Planned<'_>],
        warnings: &mut Vec<String>,
    ) -> Result<BTreeMap<(GroupKind, String), Member>, Failure> {
        let mut out = BTreeMap::new();
        for gk in kinds.iter().filter(|gk| !gk.is_crd()) {
            let res = self.resolve_group_kind(gk, planned).await;
            // Members are namespaced: nothing is ever listed cluster-wide.
            let Some(res) = res.filter(|r| r.namespaced) else {
                warnings.push(format!(
                    "the stack had objects of kind {gk}, which the cluster no longer serves: they are left as they are"
                ));
                continue;
            };
            let api: Api<DynamicObject> = self.dynamic(&res);
            let list = match api
                .list(&ListParams::default().labels(&set.selector()))
                .await
            {
                Ok(list) => list,
                // Not served (yet): a custom resource whose CRD this
                // apply creates has no members; one whose CRD is gone
                // has none devd can reach.
                Err(e) if is_status(&e, 404) => {
                    if !planned.iter().any(|p| &p.gk == gk) {
                        warnings.push(format!(
                            "the stack had objects of kind {gk}, which the cluster no longer serves: they are left as they are"
                        ));
                    }
                    continue;
                }
                Err(e) => {
                    return Err(object_failure(
                        "list",
                        &format!("the stack's {gk} objects"),
                        Some(&res),
                        e,
                    ));
                }
            };
            // Checked here too: a server that ignored the selector must
            // not make devd prune what it did not apply.
            for o in list
                .items
                .into_iter()
                .filter(|o| set.has_member(o.metadata.labels.as_ref()))
            {
                let digest = o
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(ANNOTATION_APPLIED))
                    .cloned();
                let name = o.metadata.name.unwrap_or_default();
                out.insert(
                    (gk.clone(), name),
                    Member {
                        digest,
                        res: res.clone(),
                    },
                );
            }
        }
        Ok(out)
    }

    /// Server-side apply one object, forced, as `devd`.
    async fn patch_object(&self, p: &Planned<'_>) -> Result<(), kube::Error> {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        if p.gk.is_crd() {
            let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
            crds.patch(&p.obj.name, &params, &Patch::Apply(&p.body))
                .await
                .map(|_| ())
        } else {
            let api: Api<DynamicObject> = self.dynamic(&p.res);
            api.patch(&p.obj.name, &params, &Patch::Apply(&p.body))
                .await
                .map(|_| ())
        }
    }

    /// Apply one object; a Job whose pod template changed, or a Pod whose
    /// spec did, cannot be changed in place (the API server says the field
    /// is immutable): it is deleted and made anew, as Skaffold does.
    /// Whether it was replaced.
    async fn apply_object(&self, p: &Planned<'_>) -> Result<bool, Failure> {
        let failure = |e| object_failure("patch", &describe(p.obj), Some(&p.res), e);
        match self.patch_object(p).await {
            Ok(()) => Ok(false),
            Err(e) if REPLACED_KINDS.contains(&p.obj.kind.as_str()) && immutable(&e) => {
                tracing::info!(object = %p.obj.key(), "immutable: replacing it");
                let api: Api<DynamicObject> = self.dynamic(&p.res);
                match api.delete(&p.obj.name, &DeleteParams::background()).await {
                    Ok(_) => {}
                    Err(e) if is_status(&e, 404) => {}
                    Err(e) => {
                        return Err(object_failure("delete", &describe(p.obj), Some(&p.res), e));
                    }
                }
                // Gone once its pods have terminated (a grace period).
                let start = Instant::now();
                let mut delay = Duration::from_millis(100).min(self.s.poll_interval);
                loop {
                    match api.get_opt(&p.obj.name).await {
                        Ok(None) => break,
                        Ok(Some(_)) if start.elapsed() < REPLACE_WAIT => {}
                        Ok(Some(_)) => {
                            return Err(Failure::new(format!(
                                "{} was deleted to be made anew (a field of it is immutable), but it still exists after {}s",
                                describe(p.obj),
                                REPLACE_WAIT.as_secs()
                            )));
                        }
                        Err(e) => {
                            return Err(object_failure("get", &describe(p.obj), Some(&p.res), e));
                        }
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.s.poll_interval);
                }
                self.patch_object(p).await.map_err(failure)?;
                Ok(true)
            }
            Err(e) => Err(failure(e)),
        }
    }

    /// Wait until CustomResourceDefinition `name` is `Established`.
    async fn wait_established(&self, name: &str) -> Result<(), Failure> {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let start = Instant::now();
        let mut delay = Duration::from_millis(100).min(self.s.poll_interval);
        loop {
            let crd = crds.get(name).await.map_err(|e| {
                object_failure("get", &format!("CustomResourceDefinition {name}"), None, e)
            })?;
            let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
            if conditions
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
            {
                return Ok(());
            }
            if start.elapsed() >= CRD_WAIT.min(self.s.rollout_timeout) {
                let why = conditions
                    .iter()
                    .find(|c| c.status == "False")
                    .map(|c| format!(": {} {}", c.type_, c.message.clone().unwrap_or_default()))
                    .unwrap_or_default();
                return Err(Failure::new(format!(
                    "CustomResourceDefinition {name} is not Established after {}s{why}; its custom resources cannot be applied",
                    start.elapsed().as_secs()
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(self.s.poll_interval);
        }
    }

    /// See the module docs and [`crate::build::backend::Backend::apply_stack`].
    pub(super) async fn apply_stack_in(
        &self,
        workspace: &str,
        stack: &Stack,
    ) -> Result<StackReport, Failure> {
        let ns = self.s.namespace.clone();
        let set = ApplySet::new(workspace, &ns);
        let log = |text: &str| append_log(&stack.log, text);
        self.remember_stack_images(workspace, &stack.images);
        let mut report = StackReport::default();

        // 1. Resolve and prepare everything before touching the cluster.
        let mut crd_names: BTreeMap<GroupKind, (String, bool)> = BTreeMap::new();
        for o in stack.objects.iter().filter(|o| GroupKind::of(o).is_crd()) {
            let spec = &o.body["spec"];
            let (Some(group), Some(kind), Some(plural)) = (
                spec["group"].as_str(),
                spec["names"]["kind"].as_str(),
                spec["names"]["plural"].as_str(),
            ) else {
                return Err(Failure::new(format!(
                    "{} has no spec.group, spec.names.kind and spec.names.plural",
                    describe(o)
                )));
            };
            crd_names.insert(
                GroupKind::new(group, kind),
                (plural.to_owned(), spec["scope"] != "Cluster"),
            );
        }
        let mut cache = BTreeMap::new();
        let mut planned: Vec<Planned<'_>> = Vec::new();
        let mut seen = BTreeSet::new();
        for o in &stack.objects {
            let gk = GroupKind::of(o);
            if !seen.insert((gk.clone(), o.name.clone())) {
                return Err(Failure::new(format!(
                    "the manifests have {} twice (the second from {})",
                    o.key(),
                    o.source
                )));
            }
            if gk.kind == "Secret" && gk.group.is_empty() && o.name == set.name {
                return Err(Failure::new(format!(
                    "{}: devd keeps the stack's ApplySet in a Secret of that name; rename it",
                    describe(o)
                )));
            }
            let res = self.resolve(o, &crd_names, &mut cache).await?;
            match (&o.namespace, res.namespaced) {
                (Some(n), true) if *n == ns => {}
                (None, true) => {
                    return Err(Failure::new(format!(
                        "{} has no namespace: the render puts every namespaced object into {ns}",
                        describe(o)
                    )));
                }
                (Some(n), true) => {
                    return Err(Failure::new(format!(
                        "{} is in namespace {n}: devd applies only into the workspace's namespace {ns}",
                        describe(o)
                    )));
                }
                (None, false) if gk.is_crd() => {}
                _ => {
                    return Err(Failure::new(format!(
                        "{} is cluster-scoped: a workspace applies only into its namespace {ns} (CustomResourceDefinitions excepted)",
                        describe(o)
                    )));
                }
            }
            let (body, digest) = prepare(o, &set).map_err(Failure::new)?;
            planned.push(Planned {
                obj: o,
                gk,
                res,
                body,
                digest,
            });
        }
        // CRDs first, workloads last; the render's order otherwise.
        planned.sort_by_key(|p| rank(p.obj));

        // 2. The parent covers old and new kinds before anything changes.
        let (parent, old) = match self.stack_parent(&set).await? {
            Some((p, kinds)) => (Some(p), kinds),
            None => (None, BTreeSet::new()),
        };
        let new: BTreeSet<GroupKind> = planned
            .iter()
            .filter(|p| !p.gk.is_crd())
            .map(|p| p.gk.clone())
            .collect();
        let union: BTreeSet<GroupKind> = old.union(&new).cloned().collect();
        if (parent.is_none() && !union.is_empty()) || (parent.is_some() && union != old) {
            self.apply_parent(&set, &union).await?;
        }
        let members = self
            .members(&set, &union, &planned, &mut report.warnings)
            .await?;
        let mut existing: BTreeMap<(GroupKind, String), Option<String>> = members
            .iter()
            .map(|(k, m)| (k.clone(), m.digest.clone()))
            .collect();
        for p in planned.iter().filter(|p| p.gk.is_crd()) {
            let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
            let crd = crds
                .get_opt(&p.obj.name)
                .await
                .map_err(|e| object_failure("get", &describe(p.obj), Some(&p.res), e))?;
            if let Some(crd) = crd {
                let digest = crd
                    .metadata
                    .annotations
                    .and_then(|mut a| a.remove(ANNOTATION_APPLIED));
                existing.insert((p.gk.clone(), p.obj.name.clone()), digest);
            }
        }

        // 3. Apply what changed, in order.
        let mut changed = BTreeSet::new();
        for p in &planned {
            let key = p.obj.key();
            let was = existing.get(&(p.gk.clone(), p.obj.name.clone()));
            if was.is_some_and(|d| d.as_deref() == Some(p.digest.as_str())) {
                log(&format!("{key} unchanged"));
                continue;
            }
            let replaced = match self.apply_object(p).await {
                Ok(r) => r,
                Err(f) => {
                    log(&format!("{key} failed: {}", f.error));
                    return Err(f);
                }
            };
            let line = format!(
                "{key} {}",
                match (replaced, was.is_some()) {
                    (true, _) => "replaced",
                    (false, true) => "configured",
                    (false, false) => "created",
                }
            );
            tracing::info!(workspace, object = %key, "applied");
            log(&line);
            report.changes.push(line);
            changed.insert(key);
            if p.gk.is_crd() {
                let served = crd_names.keys().find(|gk| {
                    p.obj.body["spec"]["group"] == gk.group.as_str()
                        && p.obj.body["spec"]["names"]["kind"] == gk.kind.as_str()
                });
                if served.is_some_and(|gk| planned.iter().any(|q| &q.gk == gk)) {
                    self.wait_established(&p.obj.name).await?;
                }
            }
        }

        // 4. Prune what the render no longer has.
        let wanted: BTreeSet<(GroupKind, String)> = planned
            .iter()
            .map(|p| (p.gk.clone(), p.obj.name.clone()))
            .collect();
        for ((gk, name), m) in &members {
            if wanted.contains(&(gk.clone(), name.clone())) {
                continue;
            }
            let key = format!("{}/{name}", gk.kind.to_ascii_lowercase());
            let api: Api<DynamicObject> = self.dynamic(&m.res);
            match api.delete(name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(e) if is_status(&e, 404) => {}
                Err(e) => {
                    return Err(object_failure(
                        "delete",
                        &format!("{} {name} (no longer in the manifests)", gk.kind),
                        Some(&m.res),
                        e,
                    ));
                }
            }
            tracing::info!(workspace, object = %key, "pruned");
            let line = format!("{key} pruned");
            log(&line);
            report.changes.push(line);
        }
        if new != union {
            // (A parent listing no kinds stays: kubectl's does too.)
            self.apply_parent(&set, &new).await?;
        }

        // 5. Workloads and URLs.
        let workloads: Vec<Watched> = planned
            .iter()
            .filter(|p| p.obj.is_workload())
            .map(|p| Watched {
                key: p.obj.key(),
                kind: p.obj.kind.clone(),
                name: p.obj.name.clone(),
                res: p.res.clone(),
                changed: changed.contains(&p.obj.key()),
            })
            .collect();
        report.workloads = self.settle(&stack.log, workloads).await;
        let template = self.s.url_template.as_ref().map(|t| {
            t.replace("{domain}", self.s.domain.as_deref().unwrap_or(""))
                .replace("{workspace}", workspace)
        });
        report.urls = service_urls(&stack.objects, &ns, template.as_deref());
        for w in &report.warnings {
            log(&format!("warning: {w}"));
        }
        Ok(report)
    }

    /// See [`crate::build::backend::Backend::remove_stack`].
    pub(super) async fn remove_stack_in(&self, workspace: &str) -> Result<Vec<String>, Failure> {
        let set = ApplySet::new(workspace, &self.s.namespace);
        self.remember_stack_images(workspace, &BTreeMap::new());
        let Some((_, kinds)) = self.stack_parent(&set).await? else {
            return Ok(Vec::new());
        };
        let mut warnings = Vec::new();
        let members = self.members(&set, &kinds, &[], &mut warnings).await?;
        for w in warnings {
            tracing::warn!(workspace, "{w}");
        }
        let mut removed = Vec::new();
        for ((gk, name), m) in &members {
            let api: Api<DynamicObject> = self.dynamic(&m.res);
            match api.delete(name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(e) if is_status(&e, 404) => continue,
                Err(e) => {
                    return Err(object_failure(
                        "delete",
                        &format!("{} {name}", gk.kind),
                        Some(&m.res),
                        e,
                    ));
                }
            }
            removed.push(format!("{}/{name} deleted", gk.kind.to_ascii_lowercase()));
        }
        let secrets: Api<Secret> = self.api();
        match secrets.delete(&set.name, &DeleteParams::default()).await {
            Ok(_) => removed.push(format!("secret/{} deleted", set.name)),
            Err(e) if is_status(&e, 404) => {}
            Err(e) => {
                return Err(object_failure(
                    "delete",
                    &format!("Secret {} (the stack's ApplySet parent)", set.name),
                    None,
                    e,
                ));
            }
        }
        tracing::info!(workspace, objects = removed.len(), "stack removed");
        Ok(removed)
    }
}
