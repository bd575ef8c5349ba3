//! The address laptops dial: checking `--address`, and discovering it
//! from the receiver's QUIC Service (a LoadBalancer's ingress, or the
//! address of the node running the receiver and the nodePort). A
//! LoadBalancer that a cloud refuses (mixed UDP+TCP on EKS's in-tree
//! provider or an older GKE) or that no controller serves (kind) is
//! reported within seconds, with what to do, instead of at `--timeout`.

use super::receiver::{POLL, Receiver};
use super::{QUIC_SERVICE, api_error};
use anyhow::{Context, bail};
use devd_sync::pairing::Pairing;
use k8s_openapi::api::core::v1::{Event, Node, Pod, Service};
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

/// How long a LoadBalancer Service may go without any word from a load
/// balancer controller (an event) before `create` gives up on it: a cloud
/// controller says `EnsuringLoadBalancer` within seconds; kind has none.
const LB_SILENCE: Duration = Duration::from_secs(30);

/// The receiver pod's labels (its Deployment's selector).
const RECEIVER_SELECTOR: &str =
    "app.kubernetes.io/name=devd-receiver,app.kubernetes.io/instance=devd-receiver";

/// What to do instead of a LoadBalancer, for the messages below.
const LB_ALTERNATIVES: &str = "use `devd workspace create --node-port` (a node's address and a nodePort), \
     or --address HOST:PORT (e.g. `kubectl port-forward deploy/devd-receiver 7447`, TCP only); \
     the README's cluster compatibility table says what each cluster needs";

/// Why a pending LoadBalancer will not get an address, from the Service's
/// events and how long it has waited: a controller's warning (e.g.
/// `SyncLoadBalancerFailed: … mixed protocol is not supported`) at once,
/// or silence from every controller for [`LB_SILENCE`].
fn lb_verdict(events: &[Event], waited: Duration) -> Option<String> {
    let warning = events
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .max_by_key(|e| e.last_timestamp.clone().map(|t| t.0));
    if let Some(w) = warning {
        return Some(format!(
            "the load balancer controller refused Service {QUIC_SERVICE}: {}: {}",
            w.reason.as_deref().unwrap_or("Warning"),
            w.message.as_deref().unwrap_or_default()
        ));
    }
    if events.is_empty() && waited >= LB_SILENCE {
        return Some(format!(
            "no load balancer controller acted on Service {QUIC_SERVICE} within {}s (kind has none; k3s's ServiceLB needs the host port free on a node)",
            LB_SILENCE.as_secs()
        ));
    }
    None
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
        let waiting_since = Instant::now();
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
                    if let Some(why) = self.lb_stuck(waiting_since.elapsed()).await {
                        bail!(
                            "Service {QUIC_SERVICE} in {ns} gets no address: {why}; {LB_ALTERNATIVES}"
                        );
                    }
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

    /// Why the QUIC Service's LoadBalancer will get no address, if its
    /// events say so (see [`lb_verdict`]); `None` while it may still come.
    async fn lb_stuck(&self, waited: Duration) -> Option<String> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        let fields = format!("involvedObject.kind=Service,involvedObject.name={QUIC_SERVICE}");
        let list = events
            .list(&ListParams::default().fields(&fields))
            .await
            .ok()?;
        // Checked here too: not every server applies field selectors.
        let mine: Vec<Event> = list
            .items
            .into_iter()
            .filter(|e| {
                e.involved_object.kind.as_deref() == Some("Service")
                    && e.involved_object.name.as_deref() == Some(QUIC_SERVICE)
            })
            .collect();
        lb_verdict(&mine, waited)
    }

    /// The address of the node that runs the receiver's pod (its
    /// ExternalIP, else its InternalIP): the Service's Cluster traffic
    /// policy forwards from any node, but this one needs no extra hop and
    /// is never a control-plane node that takes no traffic. Without a
    /// running receiver pod, a node that is not a control plane.
    async fn node_address(&self) -> anyhow::Result<String> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let on = pods
            .list(&ListParams::default().labels(RECEIVER_SELECTOR))
            .await
            .map_err(|e| {
                api_error(
                    e,
                    &format!("listing the receiver's pods in {}", self.namespace),
                )
            })?
            .items
            .into_iter()
            .filter(|p| {
                p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    && p.metadata.deletion_timestamp.is_none()
            })
            .find_map(|p| p.spec.and_then(|s| s.node_name));
        let candidates = match &on {
            Some(name) => vec![nodes.get(name).await.map_err(|e| {
                api_error(
                    e,
                    &format!("reading node {name} (your kubeconfig needs `get nodes`)"),
                )
            })?],
            None => {
                let mut all = nodes
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| {
                        api_error(e, "listing nodes (your kubeconfig needs `list nodes`)")
                    })?
                    .items;
                all.sort_by_key(is_control_plane);
                all
            }
        };
        for node in &candidates {
            let addresses = node
                .status
                .as_ref()
                .and_then(|s| s.addresses.clone())
                .unwrap_or_default();
            for kind in ["ExternalIP", "InternalIP"] {
                if let Some(a) = addresses.iter().find(|a| a.type_ == kind) {
                    return Ok(a.address.clone());
                }
            }
        }
        match on {
            Some(name) => bail!(
                "node {name}, which runs the receiver, has no ExternalIP or InternalIP address"
            ),
            None => bail!("no node has an ExternalIP or InternalIP address"),
        }
    }
}

/// A control-plane node (kubeadm's and kind's label).
fn is_control_plane(n: &Node) -> bool {
    n.metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key("node-role.kubernetes.io/control-plane"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(type_: &str, reason: &str, message: &str) -> Event {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "e"}, "involvedObject": {"kind": "Service", "name": QUIC_SERVICE},
            "type": type_, "reason": reason, "message": message,
        }))
        .unwrap()
    }

    #[test]
    fn a_refused_or_unserved_load_balancer_is_named_early() {
        let mixed = event(
            "Warning",
            "SyncLoadBalancerFailed",
            "Error syncing load balancer: failed to ensure load balancer: mixed protocol is not supported for LoadBalancer",
        );
        let ensuring = event("Normal", "EnsuringLoadBalancer", "Ensuring load balancer");
        let at_once = lb_verdict(&[ensuring.clone(), mixed], Duration::from_secs(2)).unwrap();
        assert!(
            at_once.contains("SyncLoadBalancerFailed") && at_once.contains("mixed protocol"),
            "{at_once}"
        );
        // A controller at work: wait (a cloud may take minutes).
        assert_eq!(
            lb_verdict(std::slice::from_ref(&ensuring), Duration::from_secs(600)),
            None
        );
        // Nobody at all: give up after LB_SILENCE, not before.
        assert_eq!(lb_verdict(&[], Duration::from_secs(5)), None);
        let silent = lb_verdict(&[], LB_SILENCE).unwrap();
        assert!(silent.contains("no load balancer controller"), "{silent}");
    }

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
