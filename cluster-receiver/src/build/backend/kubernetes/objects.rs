//! The objects the backend sends to the API server, as JSON: the build
//! Job, and for a run spec the Deployment, Service and Ingress (or, for an
//! existing Deployment, an apply of one container's image). Also the URL a
//! deployed service is reached at.

use super::KubernetesBackend;
use super::names::{
    ANNOTATION_CONTEXT, ANNOTATION_GENERATION, BUILD_MOUNT, CONTEXT_DIR, DOCKER_CONFIG_DIR,
    FETCH_CONTAINER, FETCH_UID, KANIKO_CONTAINER, KANIKO_COPY_AS_ROOT, LABEL_CONTEXT,
    LABEL_SERVICE, build_pod_labels, ingress_host, label_value, step_container,
};
use crate::build::backend::BuildRequest;
use devd_sync::catalog::{Expose, Run, Service};
use serde_json::{Value, json};

/// Istio's per-pod switch for sidecar injection.
const SIDECAR_INJECT: &str = "sidecar.istio.io/inject";

impl KubernetesBackend {
    /// The Job that builds `req`, fetching its context from `url` (an
    /// archive with blake3 `blake3`).
    pub fn job_spec(&self, req: &BuildRequest, name: &str, url: &str, blake3: &str) -> Value {
        let s = &self.s;
        let context_label = label_value(&req.context.digest[..40.min(req.context.digest.len())]);
        // The Job keeps the service label (`kubectl get jobs -l
        // dev.devd/service=web`); its pods do not (names::LABEL_BUILD_OF).
        let mut labels = self.labels(&req.workspace, &req.service.name);
        labels.insert(LABEL_CONTEXT.into(), context_label.clone());
        let mut pod_labels = build_pod_labels(&req.workspace, &req.service.name);
        pod_labels.insert(LABEL_CONTEXT.into(), context_label);
        // Istio's sidecar never exits, so a Job pod with one never
        // completes: opt out (the label is Istio's current switch, the
        // annotation the older one; Kyma's Kaniko build Jobs set it too).
        pod_labels.insert(SIDECAR_INJECT.into(), "false".into());
        let mut args = vec![
            format!("--dockerfile={CONTEXT_DIR}/{}", req.context.dockerfile),
            format!("--context=dir://{CONTEXT_DIR}"),
            format!("--destination={}:{}", req.repository, req.tag),
            "--digest-file=/dev/termination-log".to_owned(),
        ];
        for (k, v) in &req.service.build_args {
            args.push(format!("--build-arg={k}={v}"));
        }
        if s.insecure_registry {
            args.push("--insecure".into());
            args.push("--skip-tls-verify".into());
        }
        args.extend(s.kaniko_args.iter().cloned());
        let mut kaniko_mounts = vec![json!({"name": "workspace", "mountPath": BUILD_MOUNT})];
        let mut volumes = vec![json!({
            "name": "workspace",
            "emptyDir": {"sizeLimit": s.resources.workspace_size_limit},
        })];
        if let Some(secret) = &s.registry_secret {
            kaniko_mounts.push(json!({
                "name": "docker-config",
                "mountPath": DOCKER_CONFIG_DIR,
                "readOnly": true,
            }));
            volumes.push(json!({
                "name": "docker-config",
                "secret": {
                    "secretName": secret,
                    "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
                },
            }));
        }
        let mut init_containers = vec![json!({
            "name": FETCH_CONTAINER,
            "image": s.fetcher_image,
            "command": [
                "devd-receiver", "fetch-context",
                "--url", url,
                "--dest", CONTEXT_DIR,
                "--blake3", blake3,
            ],
            "volumeMounts": [{"name": "workspace", "mountPath": BUILD_MOUNT}],
            "resources": {
                "requests": {"cpu": "50m", "memory": "64Mi"},
                "limits": {"cpu": "1", "memory": "256Mi"},
            },
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": FETCH_UID,
                "runAsGroup": FETCH_UID,
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "terminationMessagePolicy": "FallbackToLogsOnError",
        })];
        // Build steps: in order, on the same emptyDir, as root (the fetched
        // files belong to the fetcher's uid), with the Kaniko resources.
        for step in &req.service.steps {
            let workdir = match &step.workdir {
                Some(w) => format!("{CONTEXT_DIR}/{}", w.as_str()),
                None => CONTEXT_DIR.to_owned(),
            };
            let env: Vec<Value> = step
                .env
                .iter()
                .map(|(k, v)| json!({"name": k, "value": v}))
                .collect();
            init_containers.push(json!({
                "name": step_container(&step.name),
                "image": step.image,
                "command": step.command,
                "workingDir": workdir,
                "env": env,
                "volumeMounts": [{"name": "workspace", "mountPath": BUILD_MOUNT}],
                "resources": {
                    "requests": {"cpu": s.resources.cpu_request, "memory": s.resources.memory_request},
                    "limits": {"cpu": s.resources.cpu_limit, "memory": s.resources.memory_limit},
                },
                "securityContext": {"runAsUser": 0, "runAsGroup": 0},
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }));
        }
        let mut pod_spec = json!({
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            // Pod Security `baseline` and `restricted` both accept
            // RuntimeDefault; Kaniko needs no syscall it blocks (it runs no
            // namespaces or mounts of its own).
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "initContainers": init_containers,
            "containers": [{
                "name": KANIKO_CONTAINER,
                "image": s.kaniko_image,
                "args": args,
                "env": [{"name": KANIKO_COPY_AS_ROOT, "value": "true"}],
                "volumeMounts": kaniko_mounts,
                "resources": {
                    "requests": {"cpu": s.resources.cpu_request, "memory": s.resources.memory_request},
                    "limits": {"cpu": s.resources.cpu_limit, "memory": s.resources.memory_limit},
                },
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }],
            "volumes": volumes,
        });
        if let Some(sa) = &s.service_account {
            pod_spec["serviceAccountName"] = json!(sa);
        }
        if let Some(secrets) = self.pull_secrets() {
            pod_spec["imagePullSecrets"] = secrets;
        }
        json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": name,
                "namespace": s.namespace,
                "labels": labels,
                "annotations": {
                    ANNOTATION_CONTEXT: req.context.digest,
                    ANNOTATION_GENERATION: req.generation.to_string(),
                },
            },
            "spec": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": s.active_deadline_seconds,
                "ttlSecondsAfterFinished": s.ttl_seconds_after_finished,
                "template": {
                    "metadata": {
                        "labels": pod_labels,
                        "annotations": {SIDECAR_INJECT: "false"},
                    },
                    "spec": pod_spec,
                },
            },
        })
    }

    /// `imagePullSecrets` of the pods devd creates, if any are configured.
    fn pull_secrets(&self) -> Option<Value> {
        (!self.s.image_pull_secrets.is_empty()).then(|| {
            self.s
                .image_pull_secrets
                .iter()
                .map(|n| json!({"name": n}))
                .collect()
        })
    }

    /// The URL of a deployed service.
    pub fn url(&self, workspace: &str, service: &Service) -> Option<String> {
        let ns = &self.s.namespace;
        let port = service.port();
        if let Some(t) = &self.s.url_template {
            return Some(
                t.replace("{service}", &service.name)
                    .replace("{namespace}", ns)
                    .replace("{domain}", self.s.domain.as_deref().unwrap_or(""))
                    .replace("{port}", &port.map(|p| p.to_string()).unwrap_or_default())
                    .replace("{workspace}", workspace),
            );
        }
        match &service.run {
            Run::Spec(spec) => match (spec.expose, port) {
                (Expose::External, _) => self
                    .s
                    .domain
                    .as_ref()
                    .map(|d| format!("http://{}", ingress_host(&service.name, ns, d))),
                (Expose::Internal, Some(p)) => Some(format!(
                    "http://{}.{ns}.svc.cluster.local:{p}",
                    service.name
                )),
                _ => None,
            },
            Run::Existing { deployment, .. } => {
                port.map(|p| format!("http://{deployment}.{ns}.svc.cluster.local:{p}"))
            }
            Run::Manifests => None,
        }
    }

    /// The Deployment devd applies for a run spec.
    pub fn deployment_spec(&self, workspace: &str, service: &Service, image: &str) -> Value {
        let Run::Spec(spec) = &service.run else {
            return Value::Null;
        };
        let labels = self.labels(workspace, &service.name);
        let mut pod_spec = json!({"enableServiceLinks": false});
        if let Some(secrets) = self.pull_secrets() {
            pod_spec["imagePullSecrets"] = secrets;
        }
        let mut container = json!({
            "name": service.name,
            "image": image,
            "env": spec.env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>(),
        });
        if let Some(p) = spec.port {
            container["ports"] = json!([{"name": "http", "containerPort": p, "protocol": "TCP"}]);
            container["readinessProbe"] = json!({
                "tcpSocket": {"port": "http"},
                "periodSeconds": 2,
                "failureThreshold": 3,
            });
        }
        pod_spec["containers"] = json!([container]);
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": service.name, "namespace": self.s.namespace, "labels": labels},
            "spec": {
                "replicas": spec.replicas,
                "selector": {"matchLabels": {LABEL_SERVICE: label_value(&service.name)}},
                "progressDeadlineSeconds": self.s.rollout_timeout.as_secs().clamp(10, 600),
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
                },
                "template": {
                    "metadata": {"labels": labels},
                    "spec": pod_spec,
                },
            },
        })
    }

    /// The Service devd applies for a run spec with a port.
    pub fn service_spec(&self, workspace: &str, service: &Service) -> Value {
        let port = service.port().unwrap_or(80);
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": service.name,
                "namespace": self.s.namespace,
                "labels": self.labels(workspace, &service.name),
            },
            "spec": {
                "type": "ClusterIP",
                "selector": {LABEL_SERVICE: label_value(&service.name)},
                "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
            },
        })
    }

    /// The Ingress devd applies for an external service.
    pub fn ingress_spec(&self, workspace: &str, service: &Service, domain: &str) -> Value {
        let port = service.port().unwrap_or(80);
        let mut spec = json!({
            "rules": [{
                "host": ingress_host(&service.name, &self.s.namespace, domain),
                "http": {"paths": [{
                    "path": "/",
                    "pathType": "Prefix",
                    "backend": {"service": {"name": service.name, "port": {"number": port}}},
                }]},
            }],
        });
        if let Some(c) = &self.s.ingress_class {
            spec["ingressClassName"] = json!(c);
        }
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {
                "name": service.name,
                "namespace": self.s.namespace,
                "labels": self.labels(workspace, &service.name),
            },
            "spec": spec,
        })
    }

    /// The apply that sets only `container`'s image in `deployment`.
    pub fn image_patch(&self, deployment: &str, container: &str, image: &str) -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": deployment, "namespace": self.s.namespace},
            "spec": {"template": {"spec": {"containers": [{"name": container, "image": image}]}}},
        })
    }
}
