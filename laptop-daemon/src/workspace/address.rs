//! The address laptops dial: checking `--address`, and discovering it
//! from the receiver's QUIC Service (a LoadBalancer's ingress, or a node's
//! address and the nodePort).

use super::receiver::{POLL, Receiver};
use super::{QUIC_SERVICE, api_error};
use anyhow::{Context, bail};
use devd_sync::pairing::Pairing;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, ListParams, Patch, PatchParams};
use std::time::{Duration, Instant};

/// `host:port`, with a non-empty host and a port number.
pub(super) fn check_address(a: &str) -> Result<(), BadAddress> {
    let ok = a
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if !ok {
        return Err(BadAddress(a.to_owned()));
    }
    Ok(())
}

/// An `--address` that is not `HOST:PORT`.
#[derive(Debug, thiserror::Error)]
#[error("bad --address {0:?}: expected HOST:PORT, e.g. 203.0.113.7:7447 or devd.example.com:30747")]
pub(super) struct BadAddress(String);

/// `host:port`, bracketing an IPv6 address.
fn host_port(host: &str, port: i32) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn is_wildcard(address: &str) -> bool {
    address
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_unspecified())
}

impl Receiver {
    /// The address a laptop dials, from the QUIC Service.
    pub(super) async fn service_address(
        &self,
        pairing: &Pairing,
        deadline: Instant,
        timeout: Duration,
        spinner: &indicatif::ProgressBar,
    ) -> anyhow::Result<(String, String)> {
        let ns = &self.namespace;
        let services: Api<Service> = Api::namespaced(self.client.clone(), ns);
        let fallback = || -> anyhow::Result<(String, String)> {
            if is_wildcard(&pairing.address) {
                bail!(
                    "laptops cannot reach the receiver in {ns} through Service {QUIC_SERVICE}, and it advertises only {}; \
                     pass --address HOST:PORT (e.g. a port-forward)",
                    pairing.address
                );
            }
            Ok((
                pairing.address.clone(),
                "the receiver's advertised address".into(),
            ))
        };
        loop {
            let svc = services
                .get_opt(QUIC_SERVICE)
                .await
                .map_err(|e| api_error(e, &format!("reading Service {QUIC_SERVICE} in {ns}")))?;
            let Some(svc) = svc else {
                return fallback();
            };
            let spec = svc.spec.clone().unwrap_or_default();
            let ports = spec.ports.clone().unwrap_or_default();
            let Some(port) = ports
                .iter()
                .find(|p| p.name.as_deref() == Some("quic"))
                .or(ports.first())
            else {
                return fallback();
            };
            match spec.type_.as_deref() {
                Some("LoadBalancer") => {
                    let ingress = svc
                        .status
                        .as_ref()
                        .and_then(|s| s.load_balancer.as_ref())
                        .and_then(|l| l.ingress.as_ref())
                        .and_then(|i| i.first())
                        .and_then(|i| i.ip.clone().or_else(|| i.hostname.clone()));
                    if let Some(host) = ingress {
                        return Ok((
                            host_port(&host, port.port),
                            format!("the LoadBalancer of Service {QUIC_SERVICE}"),
                        ));
                    }
                    spinner.set_message(format!(
                        "Service {QUIC_SERVICE} in {ns}: waiting for a LoadBalancer address"
                    ));
                    if Instant::now() >= deadline {
                        return Err(self.timed_out(
                            &format!("Service {QUIC_SERVICE} (LoadBalancer) got no address; without a load balancer controller pass --address HOST:PORT, or use a NodePort Service"),
                            timeout,
                        ));
                    }
                    tokio::time::sleep(POLL).await;
                }
                Some("NodePort") => {
                    let Some(node_port) = port.node_port else {
                        return fallback();
                    };
                    let host = self.node_address().await.with_context(|| {
                        format!("finding a node to reach nodePort {node_port} of Service {QUIC_SERVICE} on; pass --address NODE:{node_port} instead")
                    })?;
                    self.align_tcp_node_port(&svc, port.port, node_port).await;
                    return Ok((
                        host_port(&host, node_port),
                        format!("a node and the nodePort of Service {QUIC_SERVICE}"),
                    ));
                }
                _ => return fallback(),
            }
        }
    }

    /// The TCP + TLS fallback listens on the QUIC port's number, so its
    /// nodePort must be the UDP one's too; a cluster numbers the two
    /// independently. Set it, or warn that only UDP reaches this workspace.
    async fn align_tcp_node_port(&self, svc: &Service, port: i32, node_port: i32) {
        let mut ports = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default();
        let mut changed = false;
        for p in ports.iter_mut() {
            if p.protocol.as_deref() == Some("TCP")
                && p.port == port
                && p.node_port != Some(node_port)
            {
                p.node_port = Some(node_port);
                changed = true;
            }
        }
        if !changed {
            return;
        }
        let services: Api<Service> = Api::namespaced(self.client.clone(), &self.namespace);
        let patch = serde_json::json!({"spec": {"ports": ports}});
        match services
            .patch(QUIC_SERVICE, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => println!(
                "set the TCP fallback's nodePort of Service {QUIC_SERVICE} to {node_port}, the UDP one's"
            ),
            Err(e) => eprintln!(
                "warning: cannot give the TCP fallback of Service {QUIC_SERVICE} in {} nodePort {node_port} (the UDP one's): {e}; where UDP is blocked this workspace is unreachable",
                self.namespace
            ),
        }
    }

    /// A node's ExternalIP, else its InternalIP.
    async fn node_address(&self) -> anyhow::Result<String> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let list = nodes
            .list(&ListParams::default())
            .await
            .map_err(|e| api_error(e, "listing nodes (your kubeconfig needs `list nodes`)"))?;
        let addresses: Vec<_> = list
            .items
            .iter()
            .flat_map(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.addresses.clone())
                    .unwrap_or_default()
            })
            .collect();
        for kind in ["ExternalIP", "InternalIP"] {
            if let Some(a) = addresses.iter().find(|a| a.type_ == kind) {
                return Ok(a.address.clone());
            }
        }
        bail!("no node has an ExternalIP or InternalIP address")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_host_and_port() {
        for good in ["203.0.113.7:7447", "devd.example.com:30747", "[::1]:7447"] {
            check_address(good).unwrap();
        }
        for bad in [
            "",
            "7447",
            ":7447",
            "host:",
            "host:0",
            "host:99999",
            "host:p",
        ] {
            let e = check_address(bad).unwrap_err().to_string();
            assert!(e.contains("--address") && e.contains("HOST:PORT"), "{e}");
        }
        assert_eq!(host_port("203.0.113.7", 7447), "203.0.113.7:7447");
        assert_eq!(host_port("2001:db8::1", 7447), "[2001:db8::1]:7447");
        assert!(is_wildcard("0.0.0.0:7447") && is_wildcard("[::]:7447"));
        assert!(!is_wildcard("10.0.0.5:7447") && !is_wildcard("devd.example.com:7447"));
    }
}
