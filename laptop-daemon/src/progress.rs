//! Progress of long work (the full scan of a large worktree, the upload of
//! many blobs): the daemon side publishes it in the status at a coarse
//! interval ([`Reporter`]); the CLI side polls the status over the control
//! socket and draws it ([`View`]): a bar on a terminal, plain periodic
//! lines otherwise.
//!
//! This module knows nothing of the daemon's status: the sink that writes
//! progress into it, `Reporter::for_status`, lives in [`crate::status`],
//! so types flow one way (status uses progress, not back).

use indicatif::HumanBytes;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Work of at least this many items is "long" and shows progress.
pub const MIN_ITEMS: u64 = 1000;
/// Work of at least this many bytes is "long" too.
pub const MIN_BYTES: u64 = 16 << 20;
/// How often the daemon publishes progress into the status.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// What the daemon is doing, with counts. `total == 0`: not known yet.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Progress {
    /// "scanning" | "uploading"
    pub phase: String,
    /// Files compared (scanning) or blobs sent (uploading).
    pub done: u64,
    pub total: u64,
    /// Bytes read to hash (scanning) or raw bytes sent (uploading).
    pub bytes_done: u64,
    /// Bytes to send (uploading); 0 when unknown.
    pub bytes_total: u64,
}

/// The two phases that report progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Scanning,
    Uploading,
}

impl Phase {
    /// The name in [`Progress::phase`].
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Scanning => "scanning",
            Phase::Uploading => "uploading",
        }
    }
}

type Sink = Arc<dyn Fn(Option<Progress>) + Send + Sync>;

/// Publishes one phase's progress, throttled to [`PUBLISH_EVERY`], and
/// only for long work ([`MIN_ITEMS`], [`MIN_BYTES`]). Cheap to clone; the
/// scanner and the uplink each hold one.
#[derive(Clone)]
pub struct Reporter {
    phase: Phase,
    sink: Sink,
    last: Arc<Mutex<Option<Instant>>>,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("phase", &self.phase)
            .finish()
    }
}

impl Reporter {
    /// A reporter calling `sink` (`None`: the work finished).
    pub fn new(phase: Phase, sink: Arc<dyn Fn(Option<Progress>) + Send + Sync>) -> Self {
        Self {
            phase,
            sink,
            last: Arc::default(),
        }
    }

    /// Whether work of this size shows progress.
    pub fn is_long(total: u64, bytes_total: u64) -> bool {
        total >= MIN_ITEMS || bytes_total >= MIN_BYTES
    }

    /// Report the counts; published if the work is long and the last
    /// publication is older than [`PUBLISH_EVERY`] (the first is at once).
    pub fn update(&self, done: u64, total: u64, bytes_done: u64, bytes_total: u64) {
        if !Self::is_long(total, bytes_total) {
            return;
        }
        {
            let mut last = self.last.lock().expect("progress lock");
            if last.is_some_and(|t| t.elapsed() < PUBLISH_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        (self.sink)(Some(Progress {
            phase: self.phase.as_str().to_owned(),
            done,
            total,
            bytes_done,
            bytes_total,
        }));
    }

    /// A guard that calls [`Reporter::finish`] when dropped, so an error
    /// return does not leave stale progress behind.
    pub fn finish_on_drop(self) -> FinishGuard {
        FinishGuard(self)
    }

    /// The work is over (done or failed).
    pub fn finish(&self) {
        let published = self.last.lock().expect("progress lock").take().is_some();
        if published {
            (self.sink)(None);
        }
    }
}

/// Finishes its reporter on drop.
#[derive(Debug)]
pub struct FinishGuard(Reporter);

impl Drop for FinishGuard {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// What a phase counts.
fn unit(phase: &str) -> &'static str {
    if phase == "uploading" {
        "blobs"
    } else {
        "files"
    }
}

/// One line describing `p`, for logs and non-terminal output:
/// `uploading: 1200/20000 blobs (6%), 1.20 MiB of 19.50 MiB`.
pub fn describe(p: &Progress) -> String {
    let mut s = format!("{}: {}", p.phase, p.done);
    if p.total > 0 {
        s.push_str(&format!(
            "/{} {} ({}%)",
            p.total,
            unit(&p.phase),
            (p.done.min(p.total) * 100) / p.total
        ));
    } else {
        s.push_str(&format!(" {}", unit(&p.phase)));
    }
    if p.bytes_total > 0 {
        s.push_str(&format!(
            ", {} of {}",
            HumanBytes(p.bytes_done),
            HumanBytes(p.bytes_total)
        ));
    } else if p.bytes_done > 0 {
        s.push_str(&format!(", {} read", HumanBytes(p.bytes_done)));
    }
    s
}

/// Draws the progress the CLI polls: an indicatif bar on stderr when it is
/// a terminal, else a plain line when the phase starts, at most every
/// `line_every` while it runs, and when it ends.
pub struct View {
    tty: bool,
    line_every: Duration,
    bar: Option<(String, indicatif::ProgressBar)>,
    /// The phase being shown and its last counts.
    current: Option<Progress>,
    last_line: Option<Instant>,
}

impl View {
    /// A view on stderr; a bar if stderr is a terminal.
    pub fn stderr() -> Self {
        Self::new(console::Term::stderr().is_term())
    }

    /// A view drawing bars (`tty`) or plain lines.
    pub fn new(tty: bool) -> Self {
        Self {
            tty,
            line_every: Duration::from_secs(2),
            bar: None,
            current: None,
            last_line: None,
        }
    }

    fn style(p: &Progress) -> indicatif::ProgressStyle {
        let counts = if p.total > 0 {
            "[{bar:30.cyan/blue}] {pos}/{len} "
        } else {
            "{spinner} {pos} "
        };
        let template = format!(
            "{{prefix:>9}} {counts}{}{{msg}}",
            unit(&p.phase).to_owned() + " "
        );
        indicatif::ProgressStyle::with_template(&template)
            .expect("progress template")
            .progress_chars("=> ")
    }

    fn bytes_msg(p: &Progress) -> String {
        if p.bytes_total > 0 {
            format!(
                "{} / {}",
                HumanBytes(p.bytes_done),
                HumanBytes(p.bytes_total)
            )
        } else if p.bytes_done > 0 {
            format!("{} read", HumanBytes(p.bytes_done))
        } else {
            String::new()
        }
    }

    /// Show the status's progress (`None`: nothing long is running).
    pub fn show(&mut self, p: Option<&Progress>) {
        let same_phase = match (p, &self.current) {
            (Some(p), Some(c)) => p.phase == c.phase,
            _ => false,
        };
        if !same_phase && self.current.is_some() {
            self.end_phase();
        }
        let Some(p) = p else { return };
        if self.tty {
            self.draw_bar(p);
        } else {
            let due = !same_phase
                || self
                    .last_line
                    .is_none_or(|t| t.elapsed() >= self.line_every);
            if due {
                eprintln!("{}", describe(p));
                self.last_line = Some(Instant::now());
            }
        }
        self.current = Some(p.clone());
    }

    fn draw_bar(&mut self, p: &Progress) {
        let fresh = !matches!(&self.bar, Some((phase, _)) if *phase == p.phase);
        if fresh {
            let bar = indicatif::ProgressBar::with_draw_target(
                Some(p.total),
                indicatif::ProgressDrawTarget::stderr_with_hz(10),
            );
            bar.set_style(Self::style(p));
            bar.set_prefix(p.phase.clone());
            self.bar = Some((p.phase.clone(), bar));
        }
        let (_, bar) = self.bar.as_ref().expect("bar");
        // The total becomes known once the scanner walked the worktree.
        if p.total > 0 && bar.length() != Some(p.total) {
            bar.set_style(Self::style(p));
            bar.set_length(p.total);
        }
        bar.set_position(p.done);
        bar.set_message(Self::bytes_msg(p));
    }

    /// The phase shown ended: leave it complete on screen (the daemon
    /// clears progress once the work is done).
    fn end_phase(&mut self) {
        let Some(mut c) = self.current.take() else {
            return;
        };
        c.done = c.done.max(c.total);
        c.bytes_done = c.bytes_done.max(c.bytes_total);
        if let Some((_, bar)) = self.bar.take() {
            if c.total > 0 {
                bar.set_position(c.total);
            }
            bar.set_message(Self::bytes_msg(&c));
            bar.finish();
        } else if !self.tty {
            eprintln!("{} done", describe(&c));
        }
        self.last_line = None;
        let _ = std::io::stderr().flush();
    }

    /// The work is over: finish what is shown.
    pub fn finish(&mut self) {
        self.end_phase();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_counts_and_bytes() {
        let p = Progress {
            phase: "uploading".into(),
            done: 1200,
            total: 20000,
            bytes_done: 3 << 20,
            bytes_total: 40 << 20,
        };
        assert_eq!(
            describe(&p),
            "uploading: 1200/20000 blobs (6%), 3.00 MiB of 40.00 MiB"
        );
        let p = Progress {
            phase: "scanning".into(),
            done: 300,
            total: 0,
            bytes_done: 0,
            bytes_total: 0,
        };
        assert_eq!(describe(&p), "scanning: 300 files");
    }
}
