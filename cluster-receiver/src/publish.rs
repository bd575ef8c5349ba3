//! Publishing the pairing in a Secret, for `devd workspace create`.
//!
//! A receiver in a cluster writes its pairing file on its volume, where no
//! laptop can read it. With `[kubernetes] pairing_secret = "devd-pairing"`
//! it also server-side-applies a Secret of that name in its namespace with
//! the pairing's fields as keys ([`devd_sync::pairing::KEYS`]): `address` (the advertised or
//! bound address), `fingerprint`, `workspace` and `token`. The developer's
//! `devd workspace create` reads it with their own credentials.
//!
//! The receiver reports ready (`/readyz`) only once the Secret is written,
//! so a Deployment that is available has published its pairing; a failed
//! write is logged and retried with a backoff, never dropped. The Role
//! grants `create` and `patch` on secrets of that one name only.
//!
//! The `address` is what the receiver knows; a laptop outside the cluster
//! dials the QUIC Service instead (its LoadBalancer ingress, or a node and
//! the nodePort), which `devd workspace create` reads from the Service.

use crate::config::{ConfigError, ReceiverConfig};
use devd_sync::pairing::{Pairing, secret};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use std::path::Path;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Server-side-apply field manager of the Secret.
pub const FIELD_MANAGER: &str = "devd-receiver";
/// The Secret's keys, one per pairing field.
/// Longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Errors publishing the pairing.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(
        "[kubernetes] pairing_secret publishes the pairing of one workspace, but this receiver serves {0}; run one receiver per workspace (as `devd workspace create` does) or remove pairing_secret"
    )]
    Workspaces(usize),
    #[error(
        "cannot write the pairing Secret {namespace}/{name}: {source}; the receiver's Role must grant create and patch on secrets named {name} (manifests/receiver/role.yaml)"
    )]
    Api {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error(transparent)]
    Pairing(#[from] devd_sync::pairing::PairingError),
}

/// Once the receiver serves its workspaces (their pairing files written):
/// publish the pairing of its one workspace in the background (on
/// `tracker`), retrying until it is written, then call `ready` (which marks
/// `/readyz` ready); without a publisher, call `ready` now.
pub fn ready_after_publishing<'a>(
    publisher: Option<Publisher>,
    pairing_files: impl IntoIterator<Item = &'a Path>,
    tracker: &TaskTracker,
    cancel: CancellationToken,
    ready: impl FnOnce() + Send + 'static,
) -> Result<(), PublishError> {
    let Some(publisher) = publisher else {
        ready();
        return Ok(());
    };
    let pairings = pairing_files
        .into_iter()
        .map(Pairing::load)
        .collect::<Result<Vec<_>, _>>()?;
    let pairing = one(&pairings)?.clone();
    tracker.spawn(async move {
        if publisher.publish_until_done(&pairing, &cancel).await {
            ready();
        }
    });
    Ok(())
}

/// Where the pairing goes.
#[derive(Clone)]
pub struct Publisher {
    client: Client,
    namespace: String,
    name: String,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .finish()
    }
}

/// The one pairing a Secret publishes: `pairings` must be exactly one.
pub fn one(pairings: &[Pairing]) -> Result<&Pairing, PublishError> {
    match pairings {
        [p] => Ok(p),
        _ => Err(PublishError::Workspaces(pairings.len())),
    }
}

impl Publisher {
    /// A publisher to Secret `name` in `namespace`.
    pub fn new(client: Client, namespace: &str, name: &str) -> Self {
        Self {
            client,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// The one configured by `[kubernetes] pairing_secret`, with the
    /// receiver's Kubernetes client (`None`: not configured).
    pub async fn from_config(cfg: &ReceiverConfig) -> Result<Option<Self>, ConfigError> {
        let Some(k) = &cfg.kubernetes else {
            return Ok(None);
        };
        let Some(name) = &k.pairing_secret else {
            return Ok(None);
        };
        let (client, namespace) = crate::config::kube_client(k).await?;
        Ok(Some(Self::new(client, &namespace, name)))
    }

    /// The Secret's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Secret's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Apply the Secret once.
    pub async fn publish(&self, pairing: &Pairing) -> Result<(), PublishError> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        secrets
            .patch(
                &self.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(secret(&self.name, pairing)),
            )
            .await
            .map_err(|source| PublishError::Api {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                source,
            })?;
        Ok(())
    }

    /// Apply the Secret, retrying with a backoff (1 s doubling to 30 s) and
    /// logging each failure, until it is written (`true`) or `cancel`
    /// fires (`false`).
    pub async fn publish_until_done(&self, pairing: &Pairing, cancel: &CancellationToken) -> bool {
        let mut pause = Duration::from_secs(1);
        loop {
            match self.publish(pairing).await {
                Ok(()) => {
                    tracing::info!(namespace = %self.namespace, secret = %self.name, "pairing published");
                    return true;
                }
                Err(e) => {
                    tracing::error!(error = %e, retry_in = ?pause, "pairing not published; not ready until it is");
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(MAX_BACKOFF);
        }
    }
}

#[cfg(test)]
mod request_shape_tests {
    //! The Secret write against a tower-test mock of the API server (no
    //! cluster runs here): its method, path, query, content type and body.
    use super::*;
    use devd_sync::pairing::pairing_of;
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::{Value, json};
    use tower_test::mock;

    fn pairing() -> Pairing {
        Pairing {
            address: "0.0.0.0:7447".into(),
            fingerprint: "ab".repeat(32),
            workspace: "alice".into(),
            token: "t0ken".into(),
        }
    }

    async fn next(
        handle: &mut mock::Handle<Request<Body>, Response<Body>>,
    ) -> (
        http::request::Parts,
        Value,
        mock::SendResponse<Response<Body>>,
    ) {
        let (req, send) = tokio::time::timeout(Duration::from_secs(10), handle.next_request())
            .await
            .expect("a request within 10 s")
            .expect("the client is alive");
        let (parts, body) = req.into_parts();
        let body: Value = serde_json::from_slice(&body.collect_bytes().await.unwrap()).unwrap();
        (parts, body, send)
    }

    fn reply(send: mock::SendResponse<Response<Body>>, status: u16, body: &Value) {
        send.send_response(
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(body).unwrap()))
                .unwrap(),
        );
    }

    #[tokio::test]
    async fn publish_applies_the_pairing_secret() {
        let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let publisher = Publisher::new(Client::new(svc, "default"), "devd-alice", "devd-pairing");
        let p = pairing();
        let task = tokio::spawn(async move { publisher.publish(&p).await });
        let (parts, body, send) = next(&mut handle).await;
        assert_eq!(parts.method, http::Method::PATCH);
        assert_eq!(
            parts.uri.path(),
            "/api/v1/namespaces/devd-alice/secrets/devd-pairing"
        );
        let query = parts.uri.query().unwrap_or_default();
        for q in ["fieldManager=devd-receiver", "force=true"] {
            assert!(query.split('&').any(|p| p == q), "{query} lacks {q}");
        }
        assert_eq!(
            parts.headers["content-type"],
            "application/apply-patch+yaml"
        );
        assert_eq!(body["apiVersion"], "v1");
        assert_eq!(body["kind"], "Secret");
        assert_eq!(body["type"], "Opaque");
        assert_eq!(body["metadata"]["name"], "devd-pairing");
        assert_eq!(
            body["metadata"]["labels"]["app.kubernetes.io/part-of"],
            "devd"
        );
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(
            body["data"],
            json!({
                "address": b64("0.0.0.0:7447"),
                "fingerprint": b64(&"ab".repeat(32)),
                "workspace": b64("alice"),
                "token": b64("t0ken"),
            })
        );
        // The Secret round-trips into the same pairing.
        let back: Secret = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(pairing_of(&back).unwrap(), pairing());
        reply(send, 200, &body);
        task.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_write_is_an_error_naming_the_secret_and_is_retried() {
        let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let publisher = Publisher::new(Client::new(svc, "default"), "devd-alice", "devd-pairing");
        let cancel = CancellationToken::new();
        let forbidden = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "Forbidden", "code": 403,
            "message": "secrets \"devd-pairing\" is forbidden"});
        let once = {
            let publisher = publisher.clone();
            tokio::spawn(async move { publisher.publish(&pairing()).await })
        };
        let (_, _, send) = next(&mut handle).await;
        reply(send, 403, &forbidden);
        let e = once.await.unwrap().unwrap_err().to_string();
        assert!(
            e.contains("devd-alice/devd-pairing") && e.contains("role.yaml"),
            "{e}"
        );
        let task = {
            let cancel = cancel.clone();
            tokio::spawn(async move { publisher.publish_until_done(&pairing(), &cancel).await })
        };
        // Refused twice, then written: the loop keeps going until it is.
        for _ in 0..2 {
            let (_, _, send) = next(&mut handle).await;
            reply(send, 403, &forbidden);
        }
        let (_, body, send) = next(&mut handle).await;
        reply(send, 200, &body);
        assert!(task.await.unwrap(), "published after the retries");
    }

    #[test]
    fn a_secret_missing_a_key_names_it() {
        let mut s = secret("devd-pairing", &pairing());
        s.data.as_mut().unwrap().remove("token");
        assert_eq!(pairing_of(&s).unwrap_err(), "token");
    }
}
