//! The receiver's build events folded into the daemon's status, its
//! desktop notifications and the boot count; and, once per daemon start,
//! the retry of every service the receiver has not deployed (a failure
//! whose cause was outside the worktree, fixed since, needs no edit).

use crate::requests::{self, Live};
use crate::status::{BootTracker, Status};
use devd_protocol::message::{ClientMsg, ServerMsg};
use devd_protocol::{EventKind, ServiceState, ServiceStatus};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, mpsc};

/// What the events loop works with beside the events.
pub struct EventsLoop {
    pub status: Arc<Mutex<Status>>,
    /// Notified when a connection's event stream ends (reconnect).
    pub lost: Arc<Notify>,
    pub notifier: crate::notify::Notifier,
    /// The daemon's start: the boot counts from here.
    pub started: std::time::Instant,
    /// Ask the receiver to retry what it has not deployed, after the
    /// first snapshot of the services (a watching daemon only).
    pub retry_on_start: Option<Live>,
    /// Notified by `devd retry`: the boot counts again from then if it
    /// had not brought every service up.
    pub boot_restart: Arc<Notify>,
    /// `[secrets]` of devd.local.toml, sent to the receiver on each new
    /// event stream (each connection): the connection and the Secrets.
    pub secrets: Option<(Live, Vec<devd_protocol::message::Secret>)>,
}

impl EventsLoop {
    /// Run until the event sender is gone.
    pub async fn run(self, mut rx: mpsc::Receiver<Option<ServerMsg>>) {
        let mut services: Vec<ServiceStatus> = Vec::new();
        // Per service: (paths since the image, when) from `LiveUpdated`;
        // the receiver sends one after each snapshot for the services
        // that differ from their image.
        let mut live: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let mut boot = BootTracker::new(self.started);
        let mut retry_on_start = self.retry_on_start;
        // A snapshot was just received: a stack status follows it if the
        // catalog has [deploy]; anything else first means it has none.
        let mut stack_follows = false;
        loop {
            let msg = tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => m,
                    None => return,
                },
                _ = self.boot_restart.notified() => {
                    boot.restart(std::time::Instant::now());
                    continue;
                }
            };
            let mut catalog_error = None;
            if std::mem::take(&mut stack_follows) && !matches!(msg, Some(ServerMsg::Stack(_))) {
                self.status.lock().expect("status lock").stack = None;
            }
            match msg {
                None => {
                    self.lost.notify_one();
                    continue;
                }
                Some(ServerMsg::Services {
                    services: s,
                    catalog_error: e,
                }) => {
                    services = s;
                    live.clear();
                    stack_follows = true;
                    if let Some((live, secrets)) = &self.secrets {
                        send_secrets(live.clone(), secrets.clone());
                    }
                    catalog_error = Some(e);
                    if let Some(live) = retry_on_start.take() {
                        retry_undeployed(live, &services);
                    }
                }
                Some(ServerMsg::Event(e)) => {
                    boot.event(&e);
                    match services.iter_mut().find(|s| s.name == e.service) {
                        Some(s) => s.apply(&e),
                        None => {
                            let mut s = ServiceStatus::new(&e.service);
                            s.apply(&e);
                            services.push(s);
                            services.sort_by(|a, b| a.name.cmp(&b.name));
                        }
                    }
                    match &e.kind {
                        EventKind::Failed { error, .. } => {
                            tracing::warn!(service = %e.service, %error, "build failed");
                        }
                        EventKind::LiveUpdated { since_image, .. } => {
                            live.insert(e.service.clone(), (*since_image, e.at_ms));
                        }
                        // A new image: it holds everything.
                        EventKind::Deployed { .. } => {
                            live.remove(&e.service);
                        }
                        _ => {}
                    }
                    if let Some(s) = services.iter().find(|s| s.name == e.service) {
                        self.notifier.event(&e, s);
                    }
                }
                Some(ServerMsg::Stack(now)) => {
                    let mut st = self.status.lock().expect("status lock");
                    self.notifier.stack(st.stack.as_ref(), &now);
                    st.stack = Some(now);
                    continue;
                }
                Some(_) => continue,
            }
            let mut st = self.status.lock().expect("status lock");
            st.set_services(
                services
                    .iter()
                    .map(|s| {
                        let mut v = crate::status::ServiceView::from(s);
                        if let Some((n, at)) = live.get(&s.name) {
                            v.live_files = *n;
                            v.live_updated_ms = Some(*at);
                        }
                        v
                    })
                    .collect(),
            );
            st.boot = boot.status(&st.services);
            if let Some(e) = catalog_error {
                st.catalog_error = e;
            }
        }
    }
}

/// Send the Secrets of devd.local.toml to the receiver (in the background).
fn send_secrets(live: Live, secrets: Vec<devd_protocol::message::Secret>) {
    tokio::spawn(async move {
        match requests::ask(&live, ClientMsg::Secrets { secrets }).await {
            Ok(names) => tracing::debug!(?names, "secrets sent to the receiver"),
            Err(e) => tracing::warn!(error = %e, "cannot send [secrets] to the receiver"),
        }
    });
}

/// The daemon just started: services the receiver reports pending (never
/// deployed, e.g. by an embedded receiver that restarted with the daemon)
/// or failed are built and deployed at the current content, in the
/// background.
fn retry_undeployed(live: Live, services: &[ServiceStatus]) {
    let names: Vec<String> = services
        .iter()
        .filter(|s| matches!(s.state, ServiceState::Pending | ServiceState::Failed))
        .map(|s| s.name.clone())
        .collect();
    if names.is_empty() {
        return;
    }
    tokio::spawn(async move {
        tracing::info!(services = ?names, "not deployed at start: building and deploying them");
        if let Err(e) = requests::ask(&live, ClientMsg::Retry { services: names }).await {
            tracing::warn!(error = %e, "cannot ask the receiver to deploy the services");
        }
    });
}
