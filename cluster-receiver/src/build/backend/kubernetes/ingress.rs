//! An external service's Ingress: applied so that the API server can give
//! it the cluster's default IngressClass, then waited for until an ingress
//! controller has taken it (given it an address) and its URL answers
//! through that controller, so that devd never announces a URL that does
//! not work.
//!
//! No controller takes an Ingress without `ingressClassName` (ingress-nginx
//! 1.0 and later ignore them unless told otherwise). The API server's
//! DefaultIngressClass admission gives a new class-less Ingress the class
//! marked default, so one read back without a class means the cluster has
//! no default class: the deploy then fails within [`NO_CLASS_GRACE`] asking
//! for `[kubernetes] ingress_class`, not after the whole wait. The
//! admission acts on creation only, so a class-less Ingress devd created
//! before a default class existed is created anew.

use super::KubernetesBackend;
use super::api_failure;
use super::names::LABEL_MANAGED_BY;
use super::state::has_label;
use crate::build::backend::Failure;
use devd_sync::catalog::Service;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// How long a class-less Ingress may wait for a controller that takes
/// Ingresses without a class (ingress-nginx's
/// `--watch-ingress-without-class`) before the deploy asks for a class.
pub const NO_CLASS_GRACE: Duration = Duration::from_secs(10);
/// One request to the ingress controller.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Where an ingress controller serves an Ingress: the first address of its
/// `status.loadBalancer.ingress`, and the port it reports there (else 80).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressAddress {
    /// An IP address or a DNS name (cloud load balancers).
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for IngressAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// The address an ingress controller gave `ing`, if any.
pub fn ingress_address(ing: &Ingress) -> Option<IngressAddress> {
    let first = ing
        .status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?
        .first()?;
    let host = first
        .ip
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| first.hostname.clone().filter(|s| !s.is_empty()))?;
    let port = first
        .ports
        .iter()
        .flatten()
        .find(|p| p.protocol.eq_ignore_ascii_case("TCP"))
        .and_then(|p| u16::try_from(p.port).ok())
        .unwrap_or(80);
    Some(IngressAddress { host, port })
}

fn ingress_class(ing: &Ingress) -> Option<&str> {
    ing.spec.as_ref()?.ingress_class_name.as_deref()
}

/// Whether an answer with `status` shows the URL works: anything but the
/// gateway errors a controller gives when it cannot reach the service's
/// pods (a 404 may be the app's own answer for `/`).
pub fn answers(status: u16) -> bool {
    !matches!(status, 502..=504)
}

/// Ask the ingress controller at `at` for `http://{host}/`, as a browser
/// resolving `host` to it would.
pub async fn probe(host: &str, at: &IngressAddress) -> Result<u16, String> {
    let addr = match at.host.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, at.port),
        Err(_) => tokio::net::lookup_host((at.host.as_str(), at.port))
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", at.host))?
            .next()
            .ok_or_else(|| format!("{} has no address", at.host))?,
    };
    // reqwest's rustls needs the process's provider even for plain HTTP.
    devd_sync::net::install_crypto();
    let client = reqwest::Client::builder()
        .resolve(host, addr)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(PROBE_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let url = match at.port {
        80 => format!("http://{host}/"),
        p => format!("http://{host}:{p}/"),
    };
    let response = client.get(&url).send().await.map_err(|e| {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text = format!("{text}: {s}");
            source = s.source();
        }
        text
    })?;
    Ok(response.status().as_u16())
}

impl KubernetesBackend {
    /// Apply the Ingress of external `service` with host `host`. Without a
    /// configured class, a class-less Ingress no controller took is deleted
    /// first, so the API server's admission can give the new one the
    /// default class that may exist by now.
    pub(super) async fn apply_ingress(
        &self,
        workspace: &str,
        service: &Service,
        domain: &str,
    ) -> Result<(), Failure> {
        let name = &service.name;
        if self.s.ingress_class.is_none() {
            let api: Api<Ingress> = self.api();
            let old = api
                .get_opt(name)
                .await
                .map_err(|e| api_failure(&format!("read Ingress {name}"), e))?;
            if let Some(old) = old
                && has_label(&old.metadata, LABEL_MANAGED_BY, "devd")
                && ingress_class(&old).is_none()
                && ingress_address(&old).is_none()
            {
                tracing::info!(ingress = %name, "recreating a class-less Ingress no controller took, for the default IngressClass");
                api.delete(name, &DeleteParams::default())
                    .await
                    .map_err(|e| api_failure(&format!("delete Ingress {name}"), e))?;
            }
        }
        self.apply::<Ingress>(name, &self.ingress_spec(workspace, service, domain))
            .await
    }

    /// Wait until an ingress controller has taken Ingress `name`, at most
    /// [`Settings::ingress_wait`](super::Settings::ingress_wait) (or
    /// [`NO_CLASS_GRACE`] when it has no class), then until
    /// `http://{host}/` answers through it, at most as long again.
    pub(super) async fn wait_ingress(&self, name: &str, host: &str) -> Result<(), Failure> {
        let wait = self.s.ingress_wait;
        if wait.is_zero() {
            return Ok(());
        }
        let at = self.wait_ingress_address(name, wait).await?;
        let start = Instant::now();
        let mut delay = Duration::from_millis(100).min(self.s.poll_interval);
        loop {
            let last = match probe(host, &at).await {
                Ok(status) if answers(status) => {
                    tracing::info!(ingress = %name, %host, %at, status, "the external URL answers");
                    return Ok(());
                }
                Ok(status) => format!(
                    "it answered {status} (the controller reaches no ready pod of the service?)"
                ),
                Err(e) => e,
            };
            if start.elapsed() >= wait {
                return Err(Failure::new(format!(
                    "Ingress {name} was taken by an ingress controller at {at}, but http://{host}/ did not answer through it within {}s: {last}. devd asks from inside the cluster; if the load balancer does not carry traffic from inside back in, [kubernetes] ingress_wait_seconds = 0 skips this check",
                    wait.as_secs()
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(self.s.poll_interval);
        }
    }

    async fn wait_ingress_address(
        &self,
        name: &str,
        wait: Duration,
    ) -> Result<IngressAddress, Failure> {
        let api: Api<Ingress> = self.api();
        let start = Instant::now();
        let mut delay = Duration::from_millis(100).min(self.s.poll_interval);
        loop {
            let ing = api
                .get(name)
                .await
                .map_err(|e| api_failure(&format!("read Ingress {name}"), e))?;
            if let Some(at) = ingress_address(&ing) {
                return Ok(at);
            }
            let waited = start.elapsed();
            match ingress_class(&ing) {
                None if waited >= NO_CLASS_GRACE.min(wait) => {
                    return Err(Failure::new(format!(
                        "Ingress {name} has no ingressClassName: the cluster has no default IngressClass (the API server gives a new Ingress the one marked default), and no controller took it within {}s, so its URL would not answer: set [kubernetes] ingress_class to one of `kubectl get ingressclass`, or mark one default (annotation ingressclass.kubernetes.io/is-default-class=true)",
                        waited.as_secs()
                    )));
                }
                Some(class) if waited >= wait => {
                    return Err(Failure::new(format!(
                        "Ingress {name} got no address from an ingress controller within {}s, so its URL would not answer: is the ingress controller of IngressClass {class:?} running (`kubectl get ingressclass`)? ([kubernetes] ingress_wait_seconds = 0 skips this check)",
                        wait.as_secs()
                    )));
                }
                _ => {}
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(self.s.poll_interval);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ingress(status: serde_json::Value) -> Ingress {
        serde_json::from_value(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "web"}, "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn the_address_is_the_first_ip_or_hostname_and_its_tcp_port() {
        assert_eq!(ingress_address(&ingress(json!({}))), None);
        assert_eq!(
            ingress_address(&ingress(json!({"loadBalancer": {"ingress": []}}))),
            None
        );
        let ip = ingress(json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}));
        assert_eq!(ingress_address(&ip).unwrap().to_string(), "203.0.113.7:80");
        let named = ingress(json!({"loadBalancer": {"ingress": [{
            "hostname": "a1b2.elb.example.com",
            "ports": [{"port": 8443, "protocol": "UDP"}, {"port": 8080, "protocol": "TCP"}]}]}}));
        assert_eq!(
            ingress_address(&named).unwrap(),
            IngressAddress {
                host: "a1b2.elb.example.com".into(),
                port: 8080
            }
        );
        let v6 = ingress(json!({"loadBalancer": {"ingress": [{"ip": "2001:db8::1"}]}}));
        assert_eq!(
            ingress_address(&v6).unwrap().to_string(),
            "[2001:db8::1]:80"
        );
    }

    #[test]
    fn gateway_errors_are_not_answers() {
        for ok in [200, 301, 308, 401, 404, 500] {
            assert!(answers(ok), "{ok}");
        }
        for bad in [502, 503, 504] {
            assert!(!answers(bad), "{bad}");
        }
    }
}
