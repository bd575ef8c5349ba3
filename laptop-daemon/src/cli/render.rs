//! `devd render`: the objects the receiver would apply for the
//! repository's own manifests (`[deploy]`), rendered here from the
//! worktree with the receiver's own code, each devd-built image shown as
//! the tag its build gets (`REPOSITORY:devd-<context digest>`). Needs the
//! cargo feature `embedded` (the receiver's render and context digest).

use std::path::PathBuf;

#[cfg(not(feature = "embedded"))]
pub(super) async fn run(
    dir: PathBuf,
    output: &str,
    service: Option<String>,
    namespace: Option<String>,
    registry: Option<String>,
) -> anyhow::Result<()> {
    let _ = (dir, output, service, namespace, registry);
    anyhow::bail!(
        "this devd was built without the cargo feature `embedded`, which `devd render` needs (it renders with the receiver's code)"
    );
}

#[cfg(feature = "embedded")]
pub(super) async fn run(
    dir: PathBuf,
    output: &str,
    service: Option<String>,
    namespace: Option<String>,
    registry: Option<String>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use devd_receiver::build::{backend, context, render};
    use devd_sync::catalog::Catalog;
    use std::collections::BTreeMap;

    let repo = crate::repo::Repo::discover(&dir)?;
    let root = repo.workdir().to_owned();
    let catalog = Catalog::load(&root)?;
    anyhow::ensure!(
        catalog.deploy.is_some(),
        "devd.toml has no [deploy] table: devd generates each service's workload from its run fields, so there is nothing of yours to render. Add [deploy] kustomize = \"DIR\" or manifests = [\"k8s/*.yaml\"] to deploy your own manifests"
    );
    if let Some(name) = &service {
        anyhow::ensure!(
            catalog.get(name).is_some(),
            "no service {name:?} in devd.toml; declared: {}",
            catalog
                .services
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let cfg = crate::config::Config::load(&root)?;
    let namespace = namespace
        .or_else(|| cfg.receiver.workspace.clone())
        .unwrap_or_else(|| "local".into());
    let secrets = crate::secrets::collect(&root, &cfg.secrets).map_err(anyhow::Error::msg)?;
    // The tag each image gets: its context digest, as the receiver computes it.
    let scratch = tempfile::Builder::new()
        .prefix("devd-render-")
        .tempdir()
        .context("create a temporary directory")?;
    let mut images = BTreeMap::new();
    for s in &catalog.services {
        let (r, svc, d) = (root.clone(), s.clone(), scratch.path().join(&s.name));
        let snap = tokio::task::spawn_blocking(move || context::snapshot(&r, &svc, &d, b""))
            .await?
            .with_context(|| format!("build context of {}", s.name))?;
        images.insert(
            s.name.clone(),
            format!(
                "{}:{}",
                backend::qualify(&s.image, registry.as_deref()),
                snap.tag()
            ),
        );
    }
    let image_of = |s: &devd_sync::catalog::Service| images.get(&s.name).cloned();
    let kubectl =
        std::env::var_os("DEVD_KUBECTL").map_or_else(|| PathBuf::from("kubectl"), PathBuf::from);
    let rendered = render::render(&render::Input {
        root: &root,
        catalog: &catalog,
        namespace: &namespace,
        image_of: &image_of,
        kubectl: &kubectl,
    })?;
    for w in &rendered.warnings {
        eprintln!("warning: {w}");
    }
    let keep: Option<Vec<String>> = service.as_ref().map(|name| {
        let mut keys = rendered.runs.get(name).cloned().unwrap_or_default();
        keys.extend(
            rendered
                .services_of(name)
                .into_iter()
                .map(|s| format!("service/{s}")),
        );
        keys
    });
    // devd.local.toml's [secrets], as the receiver adds them, without
    // their values.
    let mut rendered = rendered;
    for secret in &secrets {
        rendered
            .objects
            .retain(|o| o.key() != format!("secret/{}", secret.name));
        let keys: serde_json::Map<String, serde_json::Value> = secret
            .data
            .iter()
            .map(|(k, _)| (k.clone(), "".into()))
            .collect();
        rendered.objects.push(devd_receiver::build::backend::stack::StackObject {
            api_version: "v1".into(),
            kind: "Secret".into(),
            name: secret.name.clone(),
            namespace: Some(namespace.clone()),
            source: "devd.local.toml [secrets]".into(),
            body: serde_json::json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": secret.name,
                    "namespace": namespace,
                    "labels": {"app.kubernetes.io/managed-by": "devd"},
                    "annotations": {"devd.dev/values": "from devd.local.toml [secrets]; not shown"},
                },
                "type": "Opaque",
                "data": keys,
            }),
        });
    }
    let objects: Vec<&serde_json::Value> = rendered
        .objects
        .iter()
        .filter(|o| keep.as_ref().is_none_or(|k| k.contains(&o.key())))
        .map(|o| &o.body)
        .collect();
    if output == "json" {
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        print!("{}", render::to_yaml(&objects)?);
    }
    Ok(())
}
