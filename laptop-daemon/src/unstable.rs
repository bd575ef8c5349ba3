//! Files that change while they are being sent (a log written to every
//! few milliseconds): the sync does not fail over and over. The file is
//! held at the version the receiver has (the last acknowledged snapshot's
//! entry) for a while that doubles with each try, everything else syncs
//! meanwhile, and the scanner lists it as unstable after a few tries; once
//! a snapshot that did not hold it back is acknowledged, it has settled.

use crate::uplink::Snapshot;
use devd_protocol::{Entry, RelPath};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What the scanner is to do with a file that changed while being sent.
#[derive(Debug)]
pub struct Hold {
    pub path: RelPath,
    /// The receiver's entry (`None`: the base's, or none).
    pub keep: Option<Entry>,
    pub until: Instant,
    pub tries: u32,
}

/// Send `msg` on `tx` at `at` (the rescan that ends a hold).
pub fn send_at<T: Send + 'static>(at: Instant, tx: mpsc::Sender<T>, msg: T) {
    tokio::spawn(async move {
        tokio::time::sleep_until(at.into()).await;
        let _ = tx.send(msg).await;
    });
}

/// Files that changed while being sent: how often in a row, and what the
/// receiver has of them (the last acknowledged snapshot).
#[derive(Default)]
pub struct Unstable {
    tries: std::collections::HashMap<RelPath, u32>,
    acked: Option<Snapshot>,
}

/// First hold of a file that changed while being sent; doubles per try.
const HOLD_FIRST: Duration = Duration::from_millis(200);
/// Longest hold.
const HOLD_MAX: Duration = Duration::from_secs(10);

impl Unstable {
    /// `path` changed while being sent: the scanner is to hold it at what
    /// the receiver has for a while (doubling with each try), then rescan
    /// it.
    pub fn changed(&mut self, path: RelPath) -> Hold {
        let (hold, tries) = self.count(&path);
        tracing::debug!(%path, tries, hold_ms = hold.as_millis() as u64, "file changed while being sent; holding it back");
        Hold {
            keep: self.acked_entry(&path),
            path,
            until: Instant::now() + hold,
            tries,
        }
    }

    /// How long to hold `path`, and the tries so far.
    fn count(&mut self, path: &RelPath) -> (Duration, u32) {
        let n = self.tries.entry(path.clone()).or_insert(0);
        *n += 1;
        let hold = HOLD_FIRST
            .saturating_mul(1 << (*n - 1).min(16))
            .min(HOLD_MAX);
        (hold, *n)
    }

    /// The receiver's entry for `path` (`None`: the base's, or none).
    fn acked_entry(&self, path: &RelPath) -> Option<Entry> {
        self.acked.as_ref()?.overlay.get(path).cloned()
    }

    /// `snap` was acknowledged: the files it did not hold back went through
    /// (returned: they are listed no more).
    pub fn settled(&mut self, snap: &Snapshot) -> Vec<RelPath> {
        self.acked = Some(snap.clone());
        let settled: Vec<_> = self
            .tries
            .keys()
            .filter(|p| !snap.held.contains(p))
            .cloned()
            .collect();
        for p in &settled {
            self.tries.remove(p);
        }
        settled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    #[test]
    fn holds_double_up_to_the_cap_and_a_snapshot_without_the_hold_settles_it() {
        let mut u = Unstable::default();
        let ms: Vec<u64> = (0..8)
            .map(|_| u.count(&p("log")).0.as_millis() as u64)
            .collect();
        assert_eq!(ms, [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
        let overlay = Arc::new(devd_protocol::Overlay::new());
        let mut snap = Snapshot {
            base: devd_protocol::message::Base::Uploaded,
            tree: Arc::default(),
            digest: overlay.digest(),
            overlay,
            noticed: Instant::now(),
            held: Arc::new(vec![p("log")]),
        };
        assert!(u.settled(&snap).is_empty(), "still held back");
        snap.held = Arc::default();
        assert_eq!(u.settled(&snap), [p("log")]);
        assert_eq!(u.count(&p("log")).1, 1, "tries start over");
    }
}
