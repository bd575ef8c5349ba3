//! Names and label values of the objects devd creates in the cluster,
//! shared by the backend (Jobs, Deployments, Services, Ingresses) and the
//! DevBuild recorder. The label keys themselves live in
//! [`devd_sync::labels`]: the laptop reads them too.

use std::collections::BTreeMap;

/// Server-side-apply field manager.
pub const FIELD_MANAGER: &str = "devd";
pub use devd_sync::labels::{LABEL_CONTEXT, LABEL_MANAGED_BY, LABEL_SERVICE, LABEL_WORKSPACE};
/// The whole context digest and the generation, on the Job.
pub const ANNOTATION_CONTEXT: &str = "dev.devd/context-digest";
pub const ANNOTATION_GENERATION: &str = "dev.devd/generation";
/// The build pod's containers.
pub const KANIKO_CONTAINER: &str = "kaniko";
pub const FETCH_CONTAINER: &str = "fetch-context";
/// Build steps run as init containers named `step-NAME`, after the fetch.
pub const STEP_CONTAINER_PREFIX: &str = "step-";
/// Where the build pod's emptyDir is mounted, in every container: where
/// Skaffold's Kaniko builder mounts its context too
/// (`DefaultEmptyDirMountPath` in Skaffold's kaniko constants). Not
/// `/workspace`: Kaniko does not snapshot mounted paths (kaniko#464), so a
/// Dockerfile with `WORKDIR /workspace` (PyTorch and NGC base images) would
/// silently lose its files there, and `RUN mkdir /workspace` fails (#1508).
/// Kaniko leaves everything under `/kaniko` out of the image.
pub const BUILD_MOUNT: &str = "/kaniko/buildcontext";
/// Where the build context is unpacked and read: a subdirectory of the
/// emptyDir, which `fetch-context` creates with mode 0755. The emptyDir's
/// own root is 0777, and Kaniko can carry the source directory's mode onto
/// the target of `COPY . /app` (kaniko#2136): the image would get a
/// world-writable directory that `docker build` does not give.
pub const CONTEXT_DIR: &str = "/kaniko/buildcontext/context";
/// Label of the build pods naming the service built. Not [`LABEL_SERVICE`]:
/// that label is the whole selector of the service's Deployment, and a build
/// pod carrying it would be taken for one of the app's pods.
pub const LABEL_BUILD_OF: &str = "dev.devd/build-of";
/// Kaniko's switch (the maintained fork's feature flag) for `COPY` from the
/// context to give files to root:root, as `docker build` does, instead of
/// keeping the context's owner (the fetcher's uid; kaniko#2921, #1921).
pub const KANIKO_COPY_AS_ROOT: &str = "FF_KANIKO_COPY_AS_ROOT";
/// Where Kaniko looks for `config.json` with registry credentials.
pub const DOCKER_CONFIG_DIR: &str = "/kaniko/.docker";
/// The uid the fetcher runs as (non-root; the emptyDir is world-writable):
/// the context's files belong to it, hence [`KANIKO_COPY_AS_ROOT`].
pub const FETCH_UID: i64 = 65532;

/// A label value from free text: at most 63 characters of
/// `[A-Za-z0-9._-]`, starting and ending alphanumeric.
pub fn label_value(s: &str) -> String {
    let v: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    v.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

/// The Job name of a build: `devd-{service}-{generation}-{context[..8]}`,
/// the service part shortened to keep it within 63 characters.
pub fn job_name(service: &str, generation: u64, context: &str) -> String {
    let short = &context[..8.min(context.len())];
    let fixed = format!("-{generation}-{short}");
    let room = 63 - "devd-".len() - fixed.len();
    let svc: String = service.chars().take(room).collect();
    format!("devd-{}{fixed}", svc.trim_end_matches('-'))
}

/// The init container that runs build step `step`.
pub fn step_container(step: &str) -> String {
    format!("{STEP_CONTAINER_PREFIX}{step}")
}

/// The host of a service's Ingress: `{service}.{namespace}.{domain}`.
pub fn ingress_host(service: &str, namespace: &str, domain: &str) -> String {
    format!("{service}.{namespace}.{}", domain.trim_start_matches('.'))
}

/// The labels of everything devd creates for `service` of `workspace`:
/// managed by devd, with the service and workspace as label values. Build
/// pods get [`build_pod_labels`] instead.
pub fn labels(workspace: &str, service: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_owned(), "devd".to_owned()),
        (LABEL_SERVICE.to_owned(), label_value(service)),
        (LABEL_WORKSPACE.to_owned(), label_value(workspace)),
    ])
}

/// The labels of a build pod of `service`: devd's and the workspace's, and
/// [`LABEL_BUILD_OF`] instead of [`LABEL_SERVICE`], so no selector of the
/// service's own pods picks it.
pub fn build_pod_labels(workspace: &str, service: &str) -> BTreeMap<String, String> {
    let mut l = labels(workspace, service);
    l.remove(LABEL_SERVICE);
    l.insert(LABEL_BUILD_OF.to_owned(), label_value(service));
    l
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::backend::kubernetes::state::valid_digest;

    #[test]
    fn names_labels_and_digests() {
        let d = "0123456789abcdef".repeat(4);
        assert_eq!(job_name("web", 7, &d), "devd-web-7-01234567");
        let long = job_name(&"a".repeat(40), u64::MAX, &d);
        assert!(long.len() <= 63, "{long}");
        assert!(long.ends_with(&format!("-{}-01234567", u64::MAX)), "{long}");
        assert!(devd_sync::catalog::valid_dns_label(&long, 63), "{long}");
        let dashy = job_name(&format!("{}-b", "a".repeat(22)), u64::MAX, &d);
        assert!(!dashy.contains("--"), "{dashy}");
        assert_eq!(label_value("-my_ws-"), "my_ws");
        assert_eq!(label_value("a/b c"), "a-b-c");
        assert_eq!(label_value(&"x".repeat(80)).len(), 63);
        assert!(valid_digest(&format!("sha256:{d}")));
        assert!(!valid_digest(&format!("sha256:{}", d.to_uppercase())));
        assert!(!valid_digest(&format!("sha256:{}", &d[1..])));
        assert!(!valid_digest(&format!("sha512:{d}")));
        assert!(!valid_digest("error building image: exit status 1"));
    }
}
