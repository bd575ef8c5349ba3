//! Polling helpers for outcomes driven by the watcher, not by a command.

use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(25);

/// Poll `cond` until it holds; `Some(elapsed)` then, `None` after `timeout`.
pub fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Poll `cond` until it holds and return how long that took; panic naming
/// `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, cond: impl FnMut() -> bool) -> Duration {
    poll_until(timeout, cond)
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting until {what}"))
}
