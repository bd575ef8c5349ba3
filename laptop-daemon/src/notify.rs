//! Desktop notifications: a bubble when a service is deployed (its name,
//! short digest, how long the deploy took and its URL; clicking opens the
//! URL), when a save was copied into the running containers (live update:
//! how long, how many files) and when a build, deploy or live update fails
//! (the first error line and how to see the log).
//!
//! One bubble per service: every notification of a service replaces the
//! previous one (the notification id is reused), and only the events that
//! end a build — `Deployed`, `LiveUpdated` and `Failed` — notify, never `Queued`,
//! `Started` or a file change. The receiver coalesces edits into at most
//! one queued build per service, so a burst of saves gives one bubble per
//! deploy.
//!
//! Notifications go over the D-Bus session bus (notify-rust with pure-Rust
//! zbus) from a task of their own: the events loop only hands a [`Note`]
//! to a bounded queue and never waits for the bus. Without a notification
//! server (no session bus, nobody owning `org.freedesktop.Notifications`)
//! the daemon logs one warning, then only debug lines, and goes on.

use crate::config::NotificationConfig;
use crate::status_view::human_duration as duration;
use devd_protocol::{BuildEvent, EventKind, ServiceStatus};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Notes waiting for the bus; more are dropped (with a debug line).
const QUEUE: usize = 64;

/// A notification server that does not answer within this is treated as
/// missing for that note.
const SHOW_TIMEOUT: Duration = Duration::from_secs(10);

/// The D-Bus action key a click on the bubble invokes.
#[cfg(all(unix, not(target_os = "macos")))]
const ACTION_DEFAULT: &str = "default";
/// The action key of the bubble's "Open" button.
#[cfg(all(unix, not(target_os = "macos")))]
const ACTION_OPEN: &str = "open";

/// What one notification says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// `service` runs `digest` and answers at `url`.
    Deployed {
        service: String,
        digest: Option<String>,
        url: Option<String>,
        /// From the apply that triggered the build to the deploy.
        total_ms: u64,
        /// The image existed already: nothing was built.
        reused: bool,
    },
    /// The build or the deploy of `service` failed; what ran before runs on.
    Failed { service: String, error: String },
    /// `files` paths were copied into `service`'s running containers, no
    /// image built (`restarted`: its whole live difference again, into a
    /// container that started again).
    LiveUpdated {
        service: String,
        url: Option<String>,
        files: u64,
        total_ms: u64,
        restarted: bool,
    },
    /// Every workload of the repository's manifests (`[deploy]`) is ready
    /// after an apply that changed something.
    StackDeployed {
        workloads: usize,
        total_ms: u64,
        url: Option<String>,
    },
    /// A workload of the manifests failed (`deployment/web`: why).
    WorkloadFailed { key: String, reason: String },
}

/// The bubble id stack notes share.
pub const STACK: &str = "stack";

impl Note {
    /// The note a new stack status deserves, given the one before: the
    /// whole render deployed (after an apply that changed something), or
    /// a workload that has failed since (or the render itself).
    pub fn from_stack(
        before: Option<&devd_protocol::event::StackStatus>,
        now: &devd_protocol::event::StackStatus,
        on_failure: bool,
    ) -> Option<Self> {
        let failed_before = |key: &str| {
            before.is_some_and(|b| {
                b.workloads
                    .iter()
                    .any(|w| w.key == key && w.state == "failed")
            })
        };
        if let Some(e) = &now.error {
            let same = before.and_then(|b| b.error.as_ref()) == Some(e);
            return (on_failure && !same).then(|| Self::WorkloadFailed {
                key: "the manifests".into(),
                reason: first_line(e).to_owned(),
            });
        }
        if let Some(w) = now
            .workloads
            .iter()
            .find(|w| w.state == "failed" && !failed_before(&w.key))
        {
            return on_failure.then(|| Self::WorkloadFailed {
                key: w.key.clone(),
                reason: w.reason.clone().unwrap_or_else(|| "not ready".into()),
            });
        }
        let news = now.applied_ms.is_some()
            && before.is_none_or(|b| b.applied_ms != now.applied_ms || !b.deployed());
        (now.deployed()
            && news
            && (!now.changes.is_empty() || before.is_some_and(|b| !b.deployed())))
        .then(|| Self::StackDeployed {
            workloads: now.workloads.iter().filter(|w| w.state == "ready").count(),
            total_ms: now.total_ms.unwrap_or(0),
            url: now.urls.first().map(|(_, u)| u.clone()),
        })
    }

    /// The note an event deserves, if any: deploys, and failures when
    /// `on_failure`. `status` is the service's state with `event` applied.
    pub fn from_event(
        event: &BuildEvent,
        status: &ServiceStatus,
        on_failure: bool,
    ) -> Option<Self> {
        match &event.kind {
            EventKind::Deployed {
                image,
                url,
                total_ms,
            } => Some(Self::Deployed {
                service: event.service.clone(),
                digest: devd_protocol::event::image_digest(image).map(str::to_owned),
                url: url.clone(),
                total_ms: *total_ms,
                reused: status.reused,
            }),
            EventKind::Failed { error, .. } if on_failure => Some(Self::Failed {
                service: event.service.clone(),
                error: first_line(error).to_owned(),
            }),
            // `files: 0`: where the service stands, after a snapshot (no
            // news).
            EventKind::LiveUpdated {
                files,
                total_ms,
                restarted,
                ..
            } if *files > 0 => Some(Self::LiveUpdated {
                service: event.service.clone(),
                url: status.url.clone(),
                files: *files,
                total_ms: *total_ms,
                restarted: *restarted,
            }),
            _ => None,
        }
    }

    /// The service the note is about.
    pub fn service(&self) -> &str {
        match self {
            Self::Deployed { service, .. }
            | Self::Failed { service, .. }
            | Self::LiveUpdated { service, .. } => service,
            Self::StackDeployed { .. } | Self::WorkloadFailed { .. } => STACK,
        }
    }

    /// The URL a click opens.
    pub fn url(&self) -> Option<&str> {
        match self {
            Self::Deployed { url, .. }
            | Self::LiveUpdated { url, .. }
            | Self::StackDeployed { url, .. } => url.as_deref(),
            Self::Failed { .. } | Self::WorkloadFailed { .. } => None,
        }
    }

    /// The bubble's title.
    pub fn summary(&self) -> String {
        match self {
            Self::Deployed {
                service, total_ms, ..
            } => format!("{service} deployed in {}", duration(*total_ms)),
            Self::LiveUpdated {
                service,
                files,
                total_ms,
                restarted,
                ..
            } => format!(
                "{service} live-updated in {} ({files} file{}{})",
                duration(*total_ms),
                if *files == 1 { "" } else { "s" },
                if *restarted { ", after a restart" } else { "" }
            ),
            Self::StackDeployed {
                workloads,
                total_ms,
                ..
            } => format!(
                "manifests deployed in {} ({workloads} workload{} ready)",
                duration(*total_ms),
                if *workloads == 1 { "" } else { "s" }
            ),
            Self::WorkloadFailed { key, .. } => format!("{key} failed"),
            Self::Failed { service, error } => {
                if error.starts_with("live update of") {
                    format!("{service}: live update failed")
                } else if error.starts_with("deploy of") {
                    format!("{service}: deploy failed")
                } else {
                    format!("{service}: build failed")
                }
            }
        }
    }

    /// The bubble's text (plain; see [`markup_escape`]).
    pub fn body(&self) -> String {
        match self {
            Self::Deployed {
                digest,
                url,
                reused,
                ..
            } => {
                let image = format!(
                    "image {} ({})",
                    digest.as_deref().map(short_digest).unwrap_or("?"),
                    if *reused { "reused" } else { "built" }
                );
                match url {
                    Some(u) => format!("{u}\n{image}"),
                    None => format!("{image}\nno URL: the service is not exposed"),
                }
            }
            Self::Failed { service, error } => {
                format!("{error}\nThe old version keeps running. Log: devd logs {service} --build")
            }
            Self::StackDeployed { url, .. } => match url {
                Some(u) => format!("{u}\nevery workload of the manifests runs"),
                None => "every workload of the manifests runs".to_owned(),
            },
            Self::WorkloadFailed { reason, .. } => {
                format!("{reason}\nWhat ran before keeps running. See: devd status")
            }
            Self::LiveUpdated { url, .. } => match url {
                Some(u) => format!("{u}\nno image built: the files were copied in"),
                None => "no image built: the files were copied in".to_owned(),
            },
        }
    }
}

/// The first non-empty line of `s`, trimmed.
fn first_line(s: &str) -> &str {
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
}

/// `sha256:0123456789abcdef…` → `0123456789ab`.
pub fn short_digest(digest: &str) -> &str {
    let hex = digest.rsplit_once(':').map_or(digest, |(_, h)| h);
    &hex[..hex.len().min(12)]
}

/// Notification bodies may carry markup (every common server advertises
/// `body-markup`): escape what would be taken for it.
pub fn markup_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// The command that opens a URL in the browser.
pub fn opener() -> &'static str {
    if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    }
}

/// Open `url` in the user's browser without waiting for it.
pub fn open_url(url: &str) {
    let opener = opener();
    match tokio::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        // tokio reaps the child in the background once it exits.
        Ok(_child) => tracing::info!(%url, "opening the URL"),
        Err(e) => tracing::warn!(%url, error = %e, "cannot run {opener} to open the URL"),
    }
}

/// Hands notes to the notification task. Cheap to call from the events
/// loop: it never waits.
#[derive(Clone, Debug)]
pub struct Notifier {
    tx: Option<mpsc::Sender<Note>>,
    on_failure: bool,
}

impl Notifier {
    /// A notifier that shows nothing (`[notifications] enabled = false`).
    pub fn disabled() -> Self {
        Self {
            tx: None,
            on_failure: false,
        }
    }

    /// Start the notification task (unless `cfg` turns notifications off).
    pub fn start(
        cfg: &NotificationConfig,
        tracker: &TaskTracker,
        cancel: &CancellationToken,
    ) -> Self {
        if !cfg.enabled {
            tracing::debug!("desktop notifications are off ([notifications] enabled = false)");
            return Self::disabled();
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        tracker.spawn(run(rx, cfg.timeout_ms, cancel.clone()));
        Self {
            tx: Some(tx),
            on_failure: cfg.on_failure,
        }
    }

    /// Notify about a new stack status (see [`Note::from_stack`]).
    pub fn stack(
        &self,
        before: Option<&devd_protocol::event::StackStatus>,
        now: &devd_protocol::event::StackStatus,
    ) {
        let Some(tx) = &self.tx else { return };
        if let Some(note) = Note::from_stack(before, now, self.on_failure)
            && let Err(e) = tx.try_send(note)
        {
            tracing::debug!(error = %e, "notification dropped");
        }
    }

    /// Notify about `event` if it ends a build; `status` is the service
    /// with the event applied.
    pub fn event(&self, event: &BuildEvent, status: &ServiceStatus) {
        let Some(tx) = &self.tx else { return };
        let Some(note) = Note::from_event(event, status, self.on_failure) else {
            return;
        };
        if let Err(e) = tx.try_send(note) {
            tracing::debug!(service = %event.service, error = %e, "notification dropped");
        }
    }
}

/// The notification task: shows notes one at a time, replacing each
/// service's previous bubble, and keeps one click listener per service.
async fn run(mut rx: mpsc::Receiver<Note>, timeout_ms: Option<u32>, cancel: CancellationToken) {
    let mut shown = Shown::default();
    let mut warned = false;
    loop {
        let note = tokio::select! {
            _ = cancel.cancelled() => break,
            n = rx.recv() => match n {
                Some(n) => n,
                None => break,
            },
        };
        let res = tokio::select! {
            _ = cancel.cancelled() => break,
            r = tokio::time::timeout(SHOW_TIMEOUT, shown.show(&note, timeout_ms)) => r,
        };
        let err = match res {
            Ok(Ok(())) => {
                tracing::debug!(service = %note.service(), summary = %note.summary(), "notified");
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("the notification server did not answer within {SHOW_TIMEOUT:?}"),
        };
        if warned {
            tracing::debug!(service = %note.service(), error = %err, "notification not shown");
        } else {
            warned = true;
            let bus =
                std::env::var("DBUS_SESSION_BUS_ADDRESS").unwrap_or_else(|_| "unset".to_owned());
            tracing::warn!(
                error = %err,
                dbus_session_bus_address = %bus,
                "desktop notifications unavailable (no notification server on the session bus?); \
                 devd goes on without them and logs this once. Set `[notifications] enabled = false` \
                 in devd.local.toml to stop trying"
            );
        }
    }
    shown.clear();
}

/// What is on screen: per service, the bubble's id and the task listening
/// for a click on it. The listener tasks belong to `listeners`: they end
/// with this value (dropping a `JoinSet` aborts its tasks), so none
/// outlives the notification task.
#[derive(Default)]
struct Shown {
    #[cfg(all(unix, not(target_os = "macos")))]
    by_service: std::collections::HashMap<String, (u32, tokio::task::AbortHandle)>,
    #[cfg(all(unix, not(target_os = "macos")))]
    listeners: tokio::task::JoinSet<()>,
}

#[cfg(all(unix, not(target_os = "macos")))]
impl Shown {
    async fn show(
        &mut self,
        note: &Note,
        timeout_ms: Option<u32>,
    ) -> notify_rust::error::Result<()> {
        use notify_rust::{Hint, Notification, NotificationResponse, Timeout, Urgency};
        let mut n = Notification::new();
        n.appname("devd")
            .summary(&note.summary())
            .body(&markup_escape(&note.body()))
            .hint(Hint::Category(
                match note {
                    Note::Deployed { .. }
                    | Note::LiveUpdated { .. }
                    | Note::StackDeployed { .. } => "transfer.complete",
                    Note::Failed { .. } | Note::WorkloadFailed { .. } => "transfer.error",
                }
                .into(),
            ))
            .timeout(match timeout_ms {
                None => Timeout::Default,
                Some(0) => Timeout::Never,
                Some(ms) => Timeout::Milliseconds(ms),
            });
        match note {
            Note::Deployed { .. } | Note::LiveUpdated { .. } | Note::StackDeployed { .. } => {
                n.icon("dialog-information").urgency(Urgency::Normal)
            }
            Note::Failed { .. } | Note::WorkloadFailed { .. } => {
                n.icon("dialog-error").urgency(Urgency::Normal)
            }
        };
        if note.url().is_some() {
            n.action(ACTION_DEFAULT, "Open")
                .action(ACTION_OPEN, "Open URL");
        }
        let previous = self.by_service.remove(note.service());
        if let Some((id, listener)) = &previous {
            n.id(*id);
            listener.abort();
        }
        let handle = n.show_async().await?;
        let id = handle.id();
        // The server sends a click to the connection that showed the
        // bubble: keep it open in a listener until the bubble closes or is
        // replaced.
        // Reap the listeners of bubbles that closed since.
        while self.listeners.try_join_next().is_some() {}
        let listener = match note.url().map(str::to_owned) {
            Some(url) => self.listeners.spawn(async move {
                handle
                    .wait_for_action_async(|r: &NotificationResponse| match r {
                        NotificationResponse::Default => open_url(&url),
                        NotificationResponse::Action(a) if a == ACTION_OPEN => open_url(&url),
                        _ => {}
                    })
                    .await;
            }),
            None => self.listeners.spawn(async move { drop(handle) }),
        };
        self.by_service
            .insert(note.service().to_owned(), (id, listener));
        Ok(())
    }

    fn clear(&mut self) {
        self.by_service.clear();
        self.listeners.abort_all();
    }
}

#[cfg(target_os = "macos")]
impl Shown {
    async fn show(
        &mut self,
        note: &Note,
        timeout_ms: Option<u32>,
    ) -> notify_rust::error::Result<()> {
        let mut n = notify_rust::Notification::new();
        n.appname("devd")
            .summary(&note.summary())
            .body(&note.body());
        if let Some(ms) = timeout_ms {
            n.timeout(notify_rust::Timeout::Milliseconds(ms));
        }
        // Showing blocks on macOS: keep it off the runtime's threads.
        match tokio::task::spawn_blocking(move || n.show().map(drop)).await {
            Ok(r) => r,
            Err(_) => Ok(()),
        }
    }

    fn clear(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind) -> BuildEvent {
        BuildEvent {
            service: "web".into(),
            generation: 2,
            at_ms: 1,
            kind,
        }
    }

    fn note(kind: EventKind, on_failure: bool) -> Option<Note> {
        let e = ev(kind);
        let mut s = ServiceStatus::new("web");
        s.apply(&e);
        Note::from_event(&e, &s, on_failure)
    }

    #[test]
    fn only_the_end_of_a_build_notifies() {
        assert_eq!(note(EventKind::Queued, true), None);
        let started = EventKind::Started {
            context: "c".into(),
            tag: "t".into(),
        };
        assert_eq!(note(started, true), None);
        let built = EventKind::Built {
            image: "r@sha256:aa".into(),
            duration_ms: 5,
        };
        assert_eq!(note(built, true), None);
        let reused = EventKind::Reused {
            context: "c".into(),
            image: "r@sha256:aa".into(),
        };
        assert_eq!(note(reused, true), None);
        assert_eq!(
            note(
                EventKind::Unchanged {
                    context: "c".into()
                },
                true
            ),
            None
        );
        let failed = || EventKind::Failed {
            error: "build of web failed: error building at STEP \"RUN x\"\nmore".into(),
            log_tail: vec!["a".into()],
        };
        assert_eq!(note(failed(), false), None, "on_failure = false");
        assert_eq!(
            note(failed(), true),
            Some(Note::Failed {
                service: "web".into(),
                error: "build of web failed: error building at STEP \"RUN x\"".into()
            })
        );
    }

    #[test]
    fn a_deploy_says_service_digest_time_and_url() {
        let n = note(
            EventKind::Deployed {
                image: "localhost/demo/web@sha256:0123456789abcdef0123".into(),
                url: Some("http://127.0.0.1:4711".into()),
                total_ms: 4_230,
            },
            true,
        )
        .unwrap();
        assert_eq!(n.summary(), "web deployed in 4.2 s");
        assert_eq!(
            n.body(),
            "http://127.0.0.1:4711\nimage 0123456789ab (built)"
        );
        assert_eq!(n.url(), Some("http://127.0.0.1:4711"));
        let n = Note::Deployed {
            service: "api".into(),
            digest: None,
            url: None,
            total_ms: 61_500,
            reused: true,
        };
        assert_eq!(n.summary(), "api deployed in 1m 1s");
        assert!(n.body().contains("(reused)") && n.body().contains("not exposed"));
        assert_eq!(n.url(), None);
    }

    #[test]
    fn a_live_update_says_service_time_and_files() {
        let live = |files, restarted| EventKind::LiveUpdated {
            files,
            since_image: 5,
            total_ms: 180,
            restarted,
        };
        let n = note(live(3, false), true).unwrap();
        assert_eq!(n.summary(), "web live-updated in 180 ms (3 files)");
        assert!(n.body().contains("no image built"), "{}", n.body());
        let n = note(live(1, true), true).unwrap();
        assert_eq!(
            n.summary(),
            "web live-updated in 180 ms (1 file, after a restart)"
        );
        // The report that follows a snapshot is no news.
        assert_eq!(note(live(0, false), true), None);
        let n = Note::Failed {
            service: "web".into(),
            error: "live update of web failed: `make` exited with 2".into(),
        };
        assert_eq!(n.summary(), "web: live update failed");
    }

    #[test]
    fn a_failure_says_the_error_and_where_the_log_is() {
        let n = Note::Failed {
            service: "web".into(),
            error: "build of web failed: <nil> & co".into(),
        };
        assert_eq!(n.summary(), "web: build failed");
        assert!(n.body().starts_with("build of web failed: <nil> & co\n"));
        assert!(n.body().contains("devd logs web --build"));
        assert_eq!(
            markup_escape(&n.body()).lines().next(),
            Some("build of web failed: &lt;nil&gt; &amp; co")
        );
        let n = Note::Failed {
            service: "web".into(),
            error: "deploy of web failed: container exited".into(),
        };
        assert_eq!(n.summary(), "web: deploy failed");
    }

    #[test]
    fn durations_and_digests_read_well() {
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(1_000), "1.0 s");
        assert_eq!(duration(125_000), "2m 5s");
        assert_eq!(short_digest("sha256:abcdef0123456789"), "abcdef012345");
        assert_eq!(short_digest("abc"), "abc");
        assert_eq!(first_line("\n  first \nsecond"), "first");
    }

    #[tokio::test]
    async fn a_disabled_notifier_takes_events_and_does_nothing() {
        let cfg = NotificationConfig {
            enabled: false,
            ..NotificationConfig::default()
        };
        let n = Notifier::start(&cfg, &TaskTracker::new(), &CancellationToken::new());
        assert!(n.tx.is_none());
        let e = ev(EventKind::Queued);
        n.event(&e, &ServiceStatus::new("web"));
    }

    #[test]
    fn the_stack_notifies_when_all_runs_and_when_a_workload_fails() {
        use devd_protocol::event::{StackStatus, WorkloadInfo};
        let w = |key: &str, state: &str| WorkloadInfo {
            key: key.into(),
            state: state.into(),
            reason: (state == "failed").then(|| "ImagePullBackOff: no such image".into()),
            ..Default::default()
        };
        let ready = StackStatus {
            applied_ms: Some(1),
            total_ms: Some(850),
            workloads: vec![w("deployment/web", "ready"), w("statefulset/db", "ready")],
            urls: vec![("web".into(), "http://127.0.0.1:4100".into())],
            changes: vec!["deployment/web configured".into()],
            ..Default::default()
        };
        let note = Note::from_stack(None, &ready, true).unwrap();
        assert_eq!(
            note.summary(),
            "manifests deployed in 850 ms (2 workloads ready)"
        );
        assert_eq!(note.url(), Some("http://127.0.0.1:4100"));
        assert_eq!(note.service(), STACK);
        // The same status again (a resubscription): no news.
        assert_eq!(Note::from_stack(Some(&ready), &ready, true), None);
        // An apply that changed nothing: no bubble.
        let quiet = StackStatus {
            applied_ms: Some(2),
            changes: vec![],
            ..ready.clone()
        };
        assert_eq!(Note::from_stack(Some(&ready), &quiet, true), None);
        let failing = StackStatus {
            applied_ms: Some(3),
            workloads: vec![w("deployment/web", "failed"), w("statefulset/db", "ready")],
            ..ready.clone()
        };
        let note = Note::from_stack(Some(&ready), &failing, true).unwrap();
        assert_eq!(note.summary(), "deployment/web failed");
        assert!(note.body().starts_with("ImagePullBackOff: no such image\n"));
        assert_eq!(Note::from_stack(Some(&ready), &failing, false), None);
        // Still failing: said once.
        assert_eq!(Note::from_stack(Some(&failing), &failing, true), None);
        // Fixed: all runs again.
        let note = Note::from_stack(Some(&failing), &ready, true).unwrap();
        assert!(note.summary().starts_with("manifests deployed"));
        let broken = StackStatus {
            error: Some("the manifests were not applied: k8s/web.yaml:4: bad".into()),
            ..ready.clone()
        };
        let note = Note::from_stack(Some(&ready), &broken, true).unwrap();
        assert_eq!(note.summary(), "the manifests failed");
    }
}
