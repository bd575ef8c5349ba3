//! The ingress controller of [`crate::kube_cluster`]'s played cluster, both
//! halves:
//! - its control loop takes (gives an address to) the Ingresses whose
//!   `ingressClassName` names an IngressClass that exists and leaves the
//!   others alone, as ingress-nginx 1.0 and later do (the emulator plays
//!   the API server's DefaultIngressClass admission, which gives a new
//!   class-less Ingress the default class when there is one);
//! - its data path is a real HTTP server on loopback, the address and port
//!   it reports in the Ingress's `status.loadBalancer.ingress`: a request
//!   whose `Host` is a rule of a taken Ingress gets that host's answer (200
//!   unless a test set another, e.g. 503 for a backend without endpoints),
//!   any other host the default backend's 404 — so the receiver's check
//!   that an external URL answers goes over a real socket.

use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The address the played ingress controller gives the Ingresses it takes.
pub const INGRESS_ADDRESS: &str = "127.0.0.1";
/// The IngressClass [`crate::kube_cluster::Setup`] installs, marked default.
pub const DEFAULT_INGRESS_CLASS: &str = "nginx";
/// The annotation marking an IngressClass the cluster's default.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

#[derive(Default)]
struct Routes {
    /// Host → the status its requests get.
    answers: HashMap<String, u16>,
    /// The `Host` of every request the data path served, in order.
    requests: Vec<String>,
}

/// The played ingress controller; its data path serves until the runtime
/// it was started on stops.
#[derive(Clone)]
pub struct IngressController {
    port: u16,
    routes: Arc<Mutex<Routes>>,
}

impl IngressController {
    /// Bind the data path on loopback and serve it on the current runtime.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind((INGRESS_ADDRESS, 0)).await?;
        let this = Self {
            port: listener.local_addr()?.port(),
            routes: Default::default(),
        };
        let routes = this.routes.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, routes.clone()));
            }
        });
        Ok(this)
    }

    /// The port of the data path, reported in the Ingresses' status.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Answer requests for `host` with `status` from now on (also before
    /// its Ingress is taken, which then keeps it).
    pub fn answer(&self, host: &str, status: u16) {
        self.routes
            .lock()
            .unwrap()
            .answers
            .insert(host.to_owned(), status);
    }

    /// The `Host` of every request served so far, in order.
    pub fn requests(&self) -> Vec<String> {
        self.routes.lock().unwrap().requests.clone()
    }

    /// Take the Ingresses of namespace `ns` this controller serves: route
    /// their hosts and give them its address and port.
    pub async fn admit(&self, client: &kube::Client, ns: &str) -> anyhow::Result<()> {
        let classes: Api<IngressClass> = Api::all(client.clone());
        let classes = classes.list(&ListParams::default()).await?.items;
        let ingresses: Api<Ingress> = Api::namespaced(client.clone(), ns);
        for ing in ingresses.list(&ListParams::default()).await?.items {
            let taken = ing
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|l| l.ingress.as_ref())
                .is_some_and(|i| !i.is_empty());
            let Some(spec) = ing.spec.as_ref().filter(|_| !taken) else {
                continue;
            };
            let served = spec.ingress_class_name.as_ref().is_some_and(|c| {
                classes
                    .iter()
                    .any(|k| k.metadata.name.as_deref() == Some(c.as_str()))
            });
            if !served {
                continue;
            }
            {
                let mut routes = self.routes.lock().unwrap();
                for host in spec.rules.iter().flatten().filter_map(|r| r.host.clone()) {
                    routes.answers.entry(host).or_insert(200);
                }
            }
            let name = ing.metadata.name.clone().unwrap_or_default();
            let status = json!({"status": {"loadBalancer": {"ingress": [{
                "ip": INGRESS_ADDRESS,
                "ports": [{"port": self.port, "protocol": "TCP"}],
            }]}}});
            ingresses
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                .await?;
        }
        Ok(())
    }
}

/// Answer one HTTP/1.1 request by its `Host`, then close.
async fn serve(mut conn: tokio::net::TcpStream, routes: Arc<Mutex<Routes>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let host = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("host").then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    // Ingress rules match the host without the port.
    let host = match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h.to_owned(),
        _ => host,
    };
    let status = {
        let mut routes = routes.lock().unwrap();
        routes.requests.push(host.clone());
        routes.answers.get(&host).copied().unwrap_or(404)
    };
    let body = match status {
        404 => "default backend - 404\n".to_owned(),
        s => format!("{s} from the played ingress controller for {host}\n"),
    };
    let reply = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(reply.as_bytes()).await;
    let _ = conn.shutdown().await;
}

/// Install IngressClass [`DEFAULT_INGRESS_CLASS`], marked default, as an
/// ingress-nginx install does.
pub async fn install_default_ingress_class(client: &kube::Client) -> anyhow::Result<()> {
    let classes: Api<IngressClass> = Api::all(client.clone());
    let class: IngressClass = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": DEFAULT_INGRESS_CLASS,
            "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
        "spec": {"controller": "k8s.io/ingress-nginx"},
    }))?;
    classes.create(&PostParams::default(), &class).await?;
    Ok(())
}
