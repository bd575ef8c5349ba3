//! The tray icon (cargo feature `tray`, Linux only): a StatusNotifierItem
//! over D-Bus (ksni, no GTK) whose icon and title say whether devd is idle,
//! syncing, building or failed, and whose menu lists the services with
//! their URLs (a click opens one) and Quit (stops the daemon).
//!
//! It reads the daemon's [`Status`] twice a second and changes nothing in
//! it, so the daemon behaves the same with or without the feature. Without
//! a tray host (no StatusNotifierWatcher on the session bus) it logs one
//! warning and waits for one to appear (a panel started after devd); with
//! no session bus at all it logs one warning and gives up. The daemon goes
//! on either way.

use crate::notify::open_url;
use crate::status::{DaemonState, Status};
use ksni::menu::{MenuItem, StandardItem};
use ksni::{Icon, ToolTip, TrayMethods};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often the tray looks at the status.
const REFRESH: Duration = Duration::from_millis(500);

/// What the icon shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrayState {
    /// Everything synced and deployed.
    Idle,
    /// Scanning or sending changes.
    Syncing,
    /// A service is queued, building or deploying.
    Building,
    /// A build failed, the catalog is invalid, the receiver is unreachable
    /// or the daemon stopped on an error.
    Failed,
}

impl TrayState {
    /// The state `status` shows; a failure outranks work in progress.
    pub fn of(status: &Status) -> Self {
        use devd_protocol::event::ServiceState;
        let svc =
            |states: &[ServiceState]| status.services.iter().any(|s| states.contains(&s.state));
        if matches!(
            status.state,
            DaemonState::Error | DaemonState::Disconnected | DaemonState::Superseded
        ) || status.catalog_error.is_some()
            || svc(&[ServiceState::Failed])
        {
            Self::Failed
        } else if svc(&[
            ServiceState::Queued,
            ServiceState::Building,
            ServiceState::Deploying,
        ]) {
            Self::Building
        } else if matches!(
            status.state,
            DaemonState::Starting | DaemonState::Scanning | DaemonState::Syncing
        ) {
            Self::Syncing
        } else {
            Self::Idle
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Syncing => "syncing",
            Self::Building => "building",
            Self::Failed => "failed",
        }
    }

    /// A freedesktop icon name (themes have these).
    fn icon_name(self) -> &'static str {
        match self {
            Self::Idle => "emblem-default",
            Self::Syncing => "emblem-synchronizing",
            Self::Building => "system-run",
            Self::Failed => "dialog-error",
        }
    }

    /// A disc in the state's colour, for hosts without those icons.
    fn pixmap(self) -> Icon {
        let (r, g, b) = match self {
            Self::Idle => (0x2e, 0x9e, 0x44),
            Self::Syncing => (0x1c, 0x71, 0xd8),
            Self::Building => (0xe5, 0xa5, 0x0a),
            Self::Failed => (0xc0, 0x1c, 0x28),
        };
        const SIZE: i32 = 22;
        let c = (SIZE as f32 - 1.0) / 2.0;
        let mut data = Vec::with_capacity((SIZE * SIZE * 4) as usize);
        for y in 0..SIZE {
            for x in 0..SIZE {
                let d = ((x as f32 - c).powi(2) + (y as f32 - c).powi(2)).sqrt();
                let a = if d <= c - 1.0 { 0xff } else { 0 };
                data.extend_from_slice(&[a, r, g, b]);
            }
        }
        Icon {
            width: SIZE,
            height: SIZE,
            data,
        }
    }
}

/// One service in the menu.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ServiceItem {
    name: String,
    state: String,
    url: Option<String>,
}

/// What the tray shows, taken from the status.
#[derive(Clone, Debug, PartialEq, Eq)]
struct View {
    state: TrayState,
    repo: String,
    services: Vec<ServiceItem>,
}

impl View {
    fn of(status: &Status) -> Self {
        Self {
            state: TrayState::of(status),
            repo: std::path::Path::new(&status.workdir)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            services: status
                .services
                .iter()
                .map(|s| ServiceItem {
                    name: s.name.clone(),
                    state: s.state.as_str().to_owned(),
                    url: s.url.clone(),
                })
                .collect(),
        }
    }
}

/// The tray item.
#[derive(Debug)]
struct DevdTray {
    view: View,
    /// The daemon's root token: Quit cancels it.
    cancel: CancellationToken,
    /// The missing tray host was reported.
    warned: AtomicBool,
}

impl DevdTray {
    fn title(&self) -> String {
        format!("devd: {} ({})", self.view.state.label(), self.view.repo)
    }
}

impl ksni::Tray for DevdTray {
    const MENU_ON_ACTIVATE: bool = true;

    fn id(&self) -> String {
        "devd".into()
    }

    fn watcher_online(&self) {
        tracing::info!("a tray host appeared: the devd icon is shown");
    }

    fn watcher_offline(&self, reason: ksni::OfflineReason) -> bool {
        match reason {
            // The panel went away (a restart, a logout): it comes back.
            ksni::OfflineReason::No => {
                tracing::info!("the tray host went away; the icon comes back with it")
            }
            reason if !self.warned.swap(true, Ordering::Relaxed) => tracing::warn!(
                ?reason,
                "no tray host (StatusNotifierWatcher) on the session bus; the devd icon appears \
                 when one starts, and devd goes on meanwhile"
            ),
            reason => tracing::debug!(?reason, "still no tray host"),
        }
        true
    }

    fn title(&self) -> String {
        DevdTray::title(self)
    }

    fn status(&self) -> ksni::Status {
        match self.view.state {
            TrayState::Failed => ksni::Status::NeedsAttention,
            _ => ksni::Status::Active,
        }
    }

    fn icon_name(&self) -> String {
        self.view.state.icon_name().into()
    }

    fn icon_pixmap(&self) -> Vec<Icon> {
        vec![self.view.state.pixmap()]
    }

    fn tool_tip(&self) -> ToolTip {
        ToolTip {
            title: DevdTray::title(self),
            description: self
                .view
                .services
                .iter()
                .map(|s| format!("{}: {}", s.name, s.state))
                .collect::<Vec<_>>()
                .join("\n"),
            ..Default::default()
        }
    }

    fn menu(&self) -> Vec<MenuItem<Self>> {
        let mut items: Vec<MenuItem<Self>> = vec![
            StandardItem {
                label: DevdTray::title(self),
                enabled: false,
                ..Default::default()
            }
            .into(),
            MenuItem::Separator,
        ];
        if self.view.services.is_empty() {
            items.push(
                StandardItem {
                    label: "no services (declare them in devd.toml)".into(),
                    enabled: false,
                    ..Default::default()
                }
                .into(),
            );
        }
        for s in &self.view.services {
            let label = match &s.url {
                Some(u) => format!("{} ({}): {u}", s.name, s.state),
                None => format!("{} ({})", s.name, s.state),
            };
            let url = s.url.clone();
            items.push(
                StandardItem {
                    label,
                    enabled: url.is_some(),
                    activate: Box::new(move |_: &mut Self| {
                        if let Some(u) = &url {
                            open_url(u);
                        }
                    }),
                    ..Default::default()
                }
                .into(),
            );
        }
        items.push(MenuItem::Separator);
        items.push(
            StandardItem {
                label: "Quit devd".into(),
                icon_name: "application-exit".into(),
                activate: Box::new(|t: &mut Self| {
                    tracing::info!("quit from the tray menu");
                    t.cancel.cancel();
                }),
                ..Default::default()
            }
            .into(),
        );
        items
    }
}

/// Show the tray icon until `cancel`; never fails the daemon.
pub fn spawn(status: Arc<Mutex<Status>>, cancel: CancellationToken, tracker: &TaskTracker) {
    tracker.spawn(async move {
        let snapshot = || View::of(&status.lock().expect("status lock"));
        let mut shown = snapshot();
        let tray = DevdTray {
            view: shown.clone(),
            cancel: cancel.clone(),
            warned: AtomicBool::new(false),
        };
        // A missing watcher is reported to `watcher_offline` and waited
        // for; only a missing session bus ends the tray here.
        let handle = tokio::select! {
            _ = cancel.cancelled() => return,
            r = tray.assume_sni_available(true).spawn() => match r {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(error = %e, "no tray icon (no D-Bus session bus?); devd goes on without it");
                    return;
                }
            },
        };
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(REFRESH) => {}
            }
            let now = snapshot();
            if now != shown {
                shown = now.clone();
                if handle.update(move |t| t.view = now).await.is_none() {
                    tracing::debug!("the tray service ended");
                    return;
                }
            }
        }
        handle.shutdown().await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::ServiceView;
    use ksni::Tray;

    /// A status from the names `devd status --json` prints.
    fn status(state: &str, services: &[(&str, &str, Option<&str>)]) -> Status {
        let named = |s: &str| serde_json::Value::String(s.to_owned());
        Status {
            state: serde_json::from_value(named(state)).unwrap(),
            workdir: "/home/me/demo".into(),
            services: services
                .iter()
                .map(|(n, s, u)| ServiceView {
                    name: (*n).into(),
                    state: serde_json::from_value::<ServiceView>(
                        serde_json::json!({ "state": named(s) }),
                    )
                    .unwrap()
                    .state,
                    url: u.map(Into::into),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_icon_follows_the_daemon_and_the_services() {
        let of = |st, svcs: &[(&str, &str, Option<&str>)]| TrayState::of(&status(st, svcs));
        assert_eq!(of("idle", &[("web", "deployed", None)]), TrayState::Idle);
        assert_eq!(
            of("syncing", &[("web", "deployed", None)]),
            TrayState::Syncing
        );
        assert_eq!(
            of(
                "syncing",
                &[("web", "building", None), ("api", "deployed", None)]
            ),
            TrayState::Building
        );
        assert_eq!(
            of(
                "idle",
                &[("web", "building", None), ("api", "failed", None)]
            ),
            TrayState::Failed,
            "a failure outranks work in progress"
        );
        assert_eq!(of("disconnected", &[]), TrayState::Failed);
        let mut s = status("idle", &[]);
        s.catalog_error = Some("devd.toml: bad".into());
        assert_eq!(TrayState::of(&s), TrayState::Failed);
        for st in [
            TrayState::Idle,
            TrayState::Syncing,
            TrayState::Building,
            TrayState::Failed,
        ] {
            let p = st.pixmap();
            assert_eq!(p.data.len(), (p.width * p.height * 4) as usize);
        }
    }

    #[test]
    fn the_menu_lists_services_with_urls_and_quit_stops_the_daemon() {
        let cancel = CancellationToken::new();
        let mut tray = DevdTray {
            view: View::of(&status(
                "idle",
                &[
                    ("api", "deployed", None),
                    ("web", "deployed", Some("http://127.0.0.1:4711")),
                ],
            )),
            cancel: cancel.clone(),
            warned: AtomicBool::new(false),
        };
        assert_eq!(tray.title(), "devd: idle (demo)");
        let items = tray.menu();
        let labels: Vec<(String, bool)> = items
            .iter()
            .filter_map(|i| match i {
                MenuItem::Standard(s) => Some((s.label.clone(), s.enabled)),
                _ => None,
            })
            .collect();
        assert_eq!(
            labels,
            [
                ("devd: idle (demo)".to_owned(), false),
                ("api (deployed)".to_owned(), false),
                ("web (deployed): http://127.0.0.1:4711".to_owned(), true),
                ("Quit devd".to_owned(), true),
            ]
        );
        let Some(MenuItem::Standard(quit)) = items.last() else {
            panic!("Quit is last")
        };
        assert!(!cancel.is_cancelled());
        (quit.activate)(&mut tray);
        assert!(
            cancel.is_cancelled(),
            "Quit cancels the daemon's root token"
        );
    }
}
