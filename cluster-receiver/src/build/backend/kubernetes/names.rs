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
/// Where the build context is unpacked and read.
pub const WORKSPACE_DIR: &str = "/workspace";
/// Where Kaniko looks for `config.json` with registry credentials.
pub const DOCKER_CONFIG_DIR: &str = "/kaniko/.docker";
/// The uid the fetcher runs as (non-root; the emptyDir is world-writable).
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
/// managed by devd, with the service and workspace as label values.
pub fn labels(workspace: &str, service: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_owned(), "devd".to_owned()),
        (LABEL_SERVICE.to_owned(), label_value(service)),
        (LABEL_WORKSPACE.to_owned(), label_value(workspace)),
    ])
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
