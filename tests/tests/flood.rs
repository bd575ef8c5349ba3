//! A flood of unauthenticated connections must not lock the paired laptop
//! out (issue 17, item 1).
//!
//! The attacker knows the receiver's address (and its public certificate
//! fingerprint, so its QUIC handshakes complete) but no token. It holds 200
//! idle connections over QUIC and 200 over TCP: a QUIC connection that never
//! opens a stream, a TCP connection that never starts TLS. Whatever the
//! receiver closes, it reopens after a short pause, as a flooding client
//! would. Meanwhile a paired daemon starts, syncs and keeps syncing.

use devd_tests::{FAST_SYNC, Fixture, Receiver, assert_worktrees_equal, wait_for_worktrees_equal};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// Idle connections per transport.
const IDLE: usize = 200;
/// How long a flooding client waits before reopening a closed connection.
const REOPEN_AFTER: Duration = Duration::from_secs(2);
/// Generous bound on one sync while under the flood (an unflooded sync on
/// loopback takes well under a second).
const SYNC_BOUND: Duration = Duration::from_secs(30);

/// 200 idle QUIC and/or TCP connections, held open and reopened until drop.
struct Flood {
    rt: tokio::runtime::Runtime,
    stop: Arc<AtomicBool>,
    /// Connections currently open.
    held: Arc<AtomicUsize>,
    /// Connections that completed their handshake (TCP: the TCP one).
    opened: Arc<AtomicUsize>,
}

impl Flood {
    fn start(addr: SocketAddr, fingerprint: &str, quic: bool, tcp: bool) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let flood = Self {
            rt,
            stop: Arc::default(),
            held: Arc::default(),
            opened: Arc::default(),
        };
        for _ in 0..IDLE {
            let (stop, held, opened) =
                (flood.stop.clone(), flood.held.clone(), flood.opened.clone());
            let fp = fingerprint.to_owned();
            if quic {
                let (stop, held, opened) = (stop.clone(), held.clone(), opened.clone());
                flood.rt.spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok(conn) = devd::transport::connect_quic(addr, &fp).await {
                            opened.fetch_add(1, Ordering::Relaxed);
                            held.fetch_add(1, Ordering::Relaxed);
                            // Never open a stream: just sit there.
                            conn.closed().await;
                            held.fetch_sub(1, Ordering::Relaxed);
                        }
                        tokio::time::sleep(REOPEN_AFTER).await;
                    }
                });
            }
            if tcp {
                flood.rt.spawn(async move {
                    use tokio::io::AsyncReadExt;
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                            opened.fetch_add(1, Ordering::Relaxed);
                            held.fetch_add(1, Ordering::Relaxed);
                            // Never start TLS: wait for the receiver to give up.
                            let mut buf = [0u8; 64];
                            while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                            held.fetch_sub(1, Ordering::Relaxed);
                        }
                        tokio::time::sleep(REOPEN_AFTER).await;
                    }
                });
            }
        }
        flood
    }

    /// Wait until every flooding client has tried at least once (what the
    /// receiver made of it aside).
    fn wait_established(&self, want: usize) {
        let reached = devd_tests::poll_until(Duration::from_secs(60), || {
            self.opened.load(Ordering::Relaxed) >= want
        });
        println!(
            "flood: {} connections opened, {} held{}",
            self.opened.load(Ordering::Relaxed),
            self.held.load(Ordering::Relaxed),
            if reached.is_none() {
                " (not all handshakes completed: the receiver refused some)"
            } else {
                ""
            }
        );
    }

    fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Start the daemon with `transport` while the flood holds its
/// connections; its first sync and a later edit both arrive.
fn daemon_syncs_under(fx: &Fixture, rx: &Receiver<'_>, flood: &Flood, transport: &str) {
    fx.write_config(FAST_SYNC);
    fx.write_local_config(&format!(
        "{}transport = \"{transport}\"\n",
        rx.config_toml()
    ));
    let devd = fx.devd();
    println!("held while the daemon starts: {}", flood.held());
    let run = devd.run_timeout(&["start", "--wait"], SYNC_BOUND + Duration::from_secs(30));
    assert!(
        run.success(),
        "under a flood of {IDLE} idle connections the paired daemon could not sync:\n{}",
        run.describe()
    );
    assert_worktrees_equal(fx.laptop(), &rx.worktree());
    fx.write("src/flooded.rs", "pub const UNDER_FLOOD: bool = true;\n");
    let took = wait_for_worktrees_equal(fx.laptop(), &rx.worktree(), SYNC_BOUND);
    println!(
        "edit arrived in {took:?} with {} flood connections held",
        flood.held()
    );
    assert_eq!(
        std::fs::read(rx.worktree().join("src/flooded.rs")).unwrap(),
        b"pub const UNDER_FLOOD: bool = true;\n"
    );
    let st = devd.status();
    assert_eq!(
        st.raw["receiver"]["transport"].as_str(),
        Some(transport),
        "the daemon synced over {transport}: {}",
        st.raw
    );
}

#[test]
fn idle_quic_connections_do_not_lock_the_laptop_out() {
    let fx = Fixture::new();
    let rx = fx.receiver();
    let p = rx.pairing();
    let flood = Flood::start(rx.addr(), &p.fingerprint, true, false);
    flood.wait_established(IDLE);
    daemon_syncs_under(&fx, &rx, &flood, "quic");
}

#[test]
fn idle_tcp_connections_do_not_lock_the_laptop_out() {
    let fx = Fixture::new();
    let rx = fx.receiver();
    let p = rx.pairing();
    let flood = Flood::start(rx.addr(), &p.fingerprint, false, true);
    flood.wait_established(IDLE);
    daemon_syncs_under(&fx, &rx, &flood, "tcp");
}
