//! Which containers of the manifests run a devd-built image, and putting
//! devd's image (by digest) in their place.
//!
//! A service's `image` matches a container's `image:` when, with the tag
//! and digest taken off the container's reference, the repository
//!
//! - is the service's `image` (`frontend` matches `frontend`,
//!   `frontend:latest`, `frontend@sha256:…`), or
//! - ends in `/` + the service's `image` (`frontend` matches
//!   `registry.example/frontend:v1` and `docker.io/team/frontend`;
//!   `team/frontend` matches `ghcr.io/team/frontend`), or
//! - is the service's `image` once Docker Hub's implied prefixes are added
//!   or taken off (`docker.io/library/redis` is `redis`).
//!
//! Matching is by whole path components (`frontend` does not match
//! `my-frontend`). When several services match one reference, the longest
//! `image` wins. This is Skaffold's rule (a manifest image is replaced
//! when its name without tag is the artifact's image), widened to the
//! registry prefix a repository's manifests usually carry.
//!
//! Images are replaced in `containers` and `initContainers` of the pod
//! template of Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs,
//! CronJobs (`jobTemplate`) and of Pods.

use devd_sync::catalog::Service;

/// The repository of an image reference: without `@digest` and `:tag`.
pub fn repository_of(reference: &str) -> &str {
    let no_digest = reference.split_once('@').map_or(reference, |(r, _)| r);
    let last_slash = no_digest.rfind('/').map_or(0, |i| i + 1);
    match no_digest[last_slash..].rfind(':') {
        Some(i) => &no_digest[..last_slash + i],
        None => no_digest,
    }
}

/// `repository` with Docker Hub's implied parts taken off
/// (`docker.io/library/redis` → `redis`, `index.docker.io/team/x` → `team/x`).
fn short(repository: &str) -> &str {
    let r = repository
        .strip_prefix("docker.io/")
        .or_else(|| repository.strip_prefix("index.docker.io/"))
        .unwrap_or(repository);
    r.strip_prefix("library/").unwrap_or(r)
}

/// Whether service image `image` names the container image `reference`.
pub fn matches(image: &str, reference: &str) -> bool {
    let repo = repository_of(reference);
    let image = short(image);
    let repo_short = short(repo);
    repo_short == image || repo.ends_with(&format!("/{image}"))
}

/// The service whose image `reference` is (the longest match).
pub fn service_for<'a>(services: &'a [Service], reference: &str) -> Option<&'a Service> {
    services
        .iter()
        .filter(|s| matches(&s.image, reference))
        .max_by_key(|s| s.image.len())
}

/// The pod spec of a workload object, if it has one.
pub fn pod_spec_mut(obj: &mut serde_json::Value) -> Option<&mut serde_json::Value> {
    let kind = obj.get("kind")?.as_str()?.to_owned();
    let spec = obj.get_mut("spec")?;
    match kind.as_str() {
        "Pod" => Some(spec),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            spec.get_mut("template")?.get_mut("spec")
        }
        "CronJob" => spec
            .get_mut("jobTemplate")?
            .get_mut("spec")?
            .get_mut("template")?
            .get_mut("spec"),
        _ => None,
    }
}

/// The pod template's labels of a workload (a Pod's own labels).
pub fn pod_labels(obj: &serde_json::Value) -> Option<&serde_json::Map<String, serde_json::Value>> {
    let spec = obj.get("spec")?;
    let meta = match obj.get("kind")?.as_str()? {
        "Pod" => obj.get("metadata")?,
        "CronJob" => spec
            .get("jobTemplate")?
            .get("spec")?
            .get("template")?
            .get("metadata")?,
        _ => spec.get("template")?.get("metadata")?,
    };
    meta.get("labels")?.as_object()
}

/// Replace the image of every container of `obj` that runs a service of
/// `services` by `image_of(service)`; the names of the services found.
pub fn substitute(
    obj: &mut serde_json::Value,
    services: &[Service],
    image_of: &dyn Fn(&Service) -> Option<String>,
) -> Vec<String> {
    let mut found = Vec::new();
    let Some(spec) = pod_spec_mut(obj) else {
        return found;
    };
    for list in ["initContainers", "containers"] {
        let Some(containers) = spec.get_mut(list).and_then(|c| c.as_array_mut()) else {
            continue;
        };
        for c in containers {
            let Some(reference) = c.get("image").and_then(|i| i.as_str()) else {
                continue;
            };
            let Some(service) = service_for(services, reference) else {
                continue;
            };
            if let Some(image) = image_of(service) {
                c["image"] = serde_json::Value::String(image);
            }
            if !found.contains(&service.name) {
                found.push(service.name.clone());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_rules() {
        for (image, reference, yes) in [
            ("frontend", "frontend", true),
            ("frontend", "frontend:latest", true),
            ("frontend", "registry.example/frontend:v1", true),
            (
                "frontend",
                "registry.example:5000/team/frontend@sha256:ab",
                true,
            ),
            ("frontend", "my-frontend", false),
            ("frontend", "frontend-admin:v1", false),
            ("team/frontend", "ghcr.io/team/frontend:v2", true),
            ("team/frontend", "frontend", false),
            ("redis", "docker.io/library/redis:7", true),
            ("docker.io/library/redis", "redis:7", true),
            ("localhost:5000/web", "localhost:5000/web:dev", true),
            ("localhost:5000/web", "web", false),
        ] {
            assert_eq!(matches(image, reference), yes, "{image} vs {reference}");
        }
        assert_eq!(repository_of("h:5000/a/b:t@sha256:x"), "h:5000/a/b");
        assert_eq!(repository_of("h:5000/a/b"), "h:5000/a/b");
    }
}
