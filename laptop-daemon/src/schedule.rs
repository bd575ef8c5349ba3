//! When the daemon's uplink loop makes its next attempt: at once for a
//! new snapshot, with a backoff after failures, held back after a refusal
//! retrying cannot fix (a full receiver disk, another writer) until
//! `devd sync` asks again. Bookkeeping apart from the wait in
//! [`Schedule::next`], so its timing is tested with paused time.

use crate::uplink::Snapshot;
use backon::BackoffBuilder;
use devd_protocol::message::Ack;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// First delay after a failed sync or reconnect; it doubles each time.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest delay between failed attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// With nothing to send and nothing lost, look again after this long.
pub(crate) const IDLE_RECHECK: Duration = Duration::from_secs(3600);
/// First wait after the receiver refused for want of disk space; it
/// doubles up to [`HOLD_MAX`]. Edits do not cut it short (each retry would
/// upload the same blobs again); `devd sync` does.
const HOLD_MIN: Duration = Duration::from_secs(30);
/// Longest wait between attempts while the receiver's disk is full.
const HOLD_MAX: Duration = Duration::from_secs(600);

/// What the uplink loop does next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// Bring the receiver to the latest snapshot.
    Sync,
    /// Reconnect, so that build events keep arriving.
    Reconnect,
}

/// When the uplink loop makes its next attempt: at once while a snapshot
/// is pending, after a backoff delay after a failure ([`BACKOFF_MIN`]
/// doubling up to [`BACKOFF_MAX`], reset by a success), and with nothing
/// pending only to reconnect a lost event stream (or every
/// [`IDLE_RECHECK`]). A new snapshot cuts any wait short. Apart from the
/// wait in [`Schedule::next`] this is bookkeeping, so its timing can be
/// tested with paused time and no sockets.
pub(crate) struct Schedule {
    delays: backon::ExponentialBackoff,
    /// Wait this long before the next attempt (once).
    retry_in: Option<Duration>,
    /// The event stream ended: reconnect even without anything to sync.
    reconnect: bool,
    /// The receiver refused for a reason an immediate retry cannot fix:
    /// the next wait is this long, and only a kick cuts it short.
    hold: Option<Duration>,
    /// Whether the next wait is held back ([`Schedule::hold`]).
    held: bool,
    /// Ends a held wait (`devd sync`).
    kick: Arc<tokio::sync::Notify>,
}

impl Schedule {
    pub(crate) fn new() -> Self {
        Self {
            delays: Self::backoff(),
            retry_in: None,
            reconnect: false,
            hold: None,
            held: false,
            kick: Arc::default(),
        }
    }

    /// Use `kick` to end held waits.
    pub(crate) fn with_kick(mut self, kick: Arc<tokio::sync::Notify>) -> Self {
        self.kick = kick;
        self
    }

    fn backoff() -> backon::ExponentialBackoff {
        backon::ExponentialBuilder::default()
            .with_min_delay(BACKOFF_MIN)
            .with_max_delay(BACKOFF_MAX)
            .without_max_times()
            .build()
    }

    /// Wait for the next attempt, given what the receiver acknowledged;
    /// `None` once `cancel` fires or the scanner is gone.
    pub(crate) async fn next(
        &mut self,
        acked: Option<Ack>,
        snaps: &mut watch::Receiver<Option<Snapshot>>,
        lost: &tokio::sync::Notify,
        cancel: &CancellationToken,
    ) -> Option<Attempt> {
        let pending = snaps
            .borrow()
            .as_ref()
            .is_some_and(|s| acked.is_none_or(|a| a.digest != s.digest || a.base != s.base));
        let wait = match (pending, self.retry_in.take()) {
            (true, None) => None,
            // A retry: of a sync, or of a reconnect for the event stream.
            (true, Some(d)) => Some(d),
            (false, Some(d)) if self.reconnect => Some(d),
            (false, _) => Some(IDLE_RECHECK),
        };
        let held = std::mem::take(&mut self.held);
        if let Some(d) = wait {
            tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = tokio::time::sleep(d) => {}
                _ = self.kick.notified(), if held => {}
                r = snaps.changed(), if !held => if r.is_err() { return None },
                _ = lost.notified(), if !pending && !held => self.reconnect = true,
            }
        }
        if cancel.is_cancelled() {
            return None;
        }
        Some(if self.reconnect && !pending {
            Attempt::Reconnect
        } else {
            Attempt::Sync
        })
    }

    /// A sync succeeded: the next failure backs off from the start.
    pub(crate) fn succeeded(&mut self) {
        self.delays = Self::backoff();
        self.hold = None;
    }

    /// Another daemon writes the workspace: no attempt until a kick.
    pub(crate) fn park(&mut self) {
        self.retry_in = Some(IDLE_RECHECK);
        self.held = true;
        self.reconnect = false;
    }

    /// The receiver refused for want of space: wait [`HOLD_MIN`] (doubling
    /// up to [`HOLD_MAX`] while it keeps refusing), and let neither edits
    /// nor a lost connection cut the wait short, only a kick. Returns the
    /// wait.
    pub(crate) fn hold(&mut self) -> Duration {
        let d = self.hold.map_or(HOLD_MIN, |d| (d * 2).min(HOLD_MAX));
        self.hold = Some(d);
        self.retry_in = Some(d);
        self.held = true;
        d
    }

    /// The reconnect succeeded.
    pub(crate) fn reconnected(&mut self) {
        self.reconnect = false;
        self.succeeded();
    }

    /// An attempt failed: the next one comes after the next backoff delay
    /// (returned), in whole milliseconds (the backoff doubles in `f32`
    /// seconds; the timer would round 200.000003 ms up to 201).
    pub(crate) fn failed(&mut self) -> Duration {
        let d = self.delays.next().unwrap_or(BACKOFF_MAX);
        let d = Duration::from_millis(d.as_millis() as u64);
        self.retry_in = Some(d);
        d
    }

    /// Make the next attempt after `d`, whatever the backoff says.
    pub(crate) fn retry_after(&mut self, d: Duration) {
        self.retry_in = Some(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devd_protocol::message::Base;
    use devd_protocol::{GitOid, Overlay};
    use std::time::Instant;
    use tokio::sync::Notify;

    /// The empty overlay on base commit `[n; 20]`.
    fn snapshot(n: u8) -> Snapshot {
        let overlay = Arc::new(Overlay::new());
        Snapshot {
            base: Base::Commit(GitOid([n; 20])),
            tree: Arc::default(),
            digest: overlay.digest(),
            overlay,
            noticed: Instant::now(),
            held: Arc::default(),
        }
    }

    fn ack_of(s: &Snapshot) -> Ack {
        Ack {
            generation: 1,
            digest: s.digest,
            base: s.base,
        }
    }

    fn ms(d: Duration) -> u64 {
        d.as_millis() as u64
    }

    /// A schedule and what it waits on: the snapshots, the lost event
    /// stream, the daemon's cancellation.
    struct Fixture {
        schedule: Schedule,
        snaps: watch::Sender<Option<Snapshot>>,
        snaps_rx: watch::Receiver<Option<Snapshot>>,
        lost: Arc<Notify>,
        cancel: CancellationToken,
    }

    impl Fixture {
        fn new(snap: Option<Snapshot>) -> Self {
            let (snaps, snaps_rx) = watch::channel(snap);
            Self {
                schedule: Schedule::new(),
                snaps,
                snaps_rx,
                lost: Arc::default(),
                cancel: CancellationToken::new(),
            }
        }

        /// The next attempt, and the (paused, auto-advancing) time it took
        /// to come, in milliseconds. Marks the snapshot seen, as the uplink
        /// loop does.
        async fn next(&mut self, acked: Option<Ack>) -> (Option<Attempt>, u64) {
            let t0 = tokio::time::Instant::now();
            let a = self
                .schedule
                .next(acked, &mut self.snaps_rx, &self.lost, &self.cancel)
                .await;
            self.snaps_rx.borrow_and_update();
            (a, ms(t0.elapsed()))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_syncs_back_off_from_100_ms_doubling_to_5_s_and_a_success_resets_it() {
        let mut f = Fixture::new(Some(snapshot(1)));
        assert_eq!(f.next(None).await, (Some(Attempt::Sync), 0));
        for want in [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000] {
            assert_eq!(ms(f.schedule.failed()), want);
            assert_eq!(f.next(None).await, (Some(Attempt::Sync), want));
        }
        f.schedule.succeeded();
        // Still pending (say the receiver refused): no wait without a failure.
        assert_eq!(f.next(None).await, (Some(Attempt::Sync), 0));
        f.schedule.failed();
        assert_eq!(f.next(None).await, (Some(Attempt::Sync), 100));
        f.schedule.retry_after(Duration::from_millis(5));
        assert_eq!(f.next(None).await, (Some(Attempt::Sync), 5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_event_stream_reconnects_at_once_then_with_backoff_while_idle() {
        let snap = snapshot(1);
        let acked = Some(ack_of(&snap));
        let mut f = Fixture::new(Some(snap));
        let lost = f.lost.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            lost.notify_one();
        });
        // Nothing to sync: the loop sleeps until the stream is lost.
        assert_eq!(f.next(acked).await, (Some(Attempt::Reconnect), 30_000));
        for want in [100, 200, 400] {
            f.schedule.failed();
            assert_eq!(f.next(acked).await, (Some(Attempt::Reconnect), want));
        }
        f.schedule.reconnected();
        // Connected and up to date: only the hourly look remains.
        assert_eq!(f.next(acked).await, (Some(Attempt::Sync), 3_600_000));
        // The backoff started over.
        f.lost.notify_one();
        assert_eq!(f.next(acked).await, (Some(Attempt::Reconnect), 0));
        f.schedule.failed();
        assert_eq!(f.next(acked).await, (Some(Attempt::Reconnect), 100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pending_snapshot_syncs_instead_of_reconnecting() {
        let mut f = Fixture::new(Some(snapshot(1)));
        f.lost.notify_one();
        f.schedule.failed();
        // The sync reconnects by itself; the lost stream is not waited on.
        assert_eq!(f.next(None).await, (Some(Attempt::Sync), 100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_snapshot_cuts_a_backoff_short() {
        let mut f = Fixture::new(Some(snapshot(1)));
        for _ in 0..4 {
            f.schedule.failed();
        }
        let snaps = f.snaps.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            snaps.send_replace(Some(snapshot(2)));
        });
        // The backoff says 800 ms; the edit comes after 300.
        assert_eq!(f.next(None).await, (Some(Attempt::Sync), 300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_receiver_disk_holds_retries_back_until_a_kick() {
        let mut f = Fixture::new(Some(snapshot(1)));
        let kick = Arc::new(Notify::new());
        f.schedule = Schedule::new().with_kick(kick.clone());
        assert_eq!(f.next(None).await, (Some(Attempt::Sync), 0));
        // Edits and a lost connection do not cut the hold short.
        assert_eq!(ms(f.schedule.hold()), 30_000);
        let (snaps, lost) = (f.snaps.clone(), f.lost.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            snaps.send_replace(Some(snapshot(2)));
            lost.notify_one();
        });
        assert_eq!(f.next(None).await, (Some(Attempt::Sync), 30_000));
        // It doubles while the receiver keeps refusing, up to ten minutes.
        for want in [60_000, 120_000, 240_000, 480_000, 600_000, 600_000] {
            assert_eq!(ms(f.schedule.hold()), want);
        }
        // `devd sync` kicks: the next attempt comes at once.
        let k = kick.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            k.notify_waiters();
        });
        assert_eq!(f.next(None).await, (Some(Attempt::Sync), 2_000));
        // A success starts the holds over.
        f.schedule.succeeded();
        assert_eq!(ms(f.schedule.hold()), 30_000);
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_ends_any_wait() {
        let snap = snapshot(1);
        let acked = Some(ack_of(&snap));
        let mut f = Fixture::new(Some(snap));
        let cancel = f.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            cancel.cancel();
        });
        assert_eq!(f.next(acked).await, (None, 2000));
    }
}
