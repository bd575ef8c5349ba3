//! The TCP + TLS fallback: where UDP does not get through (an office
//! firewall, `kubectl port-forward`), the daemon reaches the receiver over
//! TCP with the same protocol, on its own, and says so in `devd status`.
//!
//! "UDP blocked" is a path that carries only TCP: a TCP forwarder in front
//! of the receiver (what `kubectl port-forward` is), and on the same port a
//! UDP socket that swallows every datagram (what a firewall's DROP rule
//! does). QUIC's handshake goes unanswered there; TCP gets through.

use devd::transport::{Credentials, TransportMode, connect_link};
use devd_protocol::message::ServerMsg;
use devd_protocol::{ErrorCode, PROTOCOL_VERSION};
use devd_tests::daemon::first_json_object;
use devd_tests::{FAST_SYNC, Fixture, Receiver, assert_worktrees_equal, poll_until};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A TCP-only path to `target`: TCP is forwarded, UDP is dropped.
struct TcpOnlyPath {
    addr: SocketAddr,
    /// Bytes forwarded in both directions.
    tcp_bytes: Arc<AtomicU64>,
    /// Datagrams that arrived (and were dropped).
    udp_dropped: Arc<AtomicU64>,
    _udp: Arc<UdpSocket>,
}

impl TcpOnlyPath {
    fn new(target: SocketAddr) -> Self {
        // One port number for both: bind TCP, then UDP on the same port.
        let (listener, udp) = loop {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind the TCP forwarder");
            let port = l.local_addr().expect("forwarder address").port();
            if let Ok(u) = UdpSocket::bind(("127.0.0.1", port)) {
                break (l, u);
            }
        };
        let addr = listener.local_addr().expect("forwarder address");
        let tcp_bytes = Arc::new(AtomicU64::new(0));
        let udp_dropped = Arc::new(AtomicU64::new(0));
        let udp = Arc::new(udp);
        {
            let (udp, dropped) = (udp.clone(), udp_dropped.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while udp.recv_from(&mut buf).is_ok() {
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        {
            let bytes = tcp_bytes.clone();
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { continue };
                    let Ok(server) = TcpStream::connect(target) else {
                        continue;
                    };
                    for (mut from, mut to) in [
                        (client.try_clone().unwrap(), server.try_clone().unwrap()),
                        (server, client),
                    ] {
                        let bytes = bytes.clone();
                        std::thread::spawn(move || {
                            let mut buf = [0u8; 65536];
                            loop {
                                match from.read(&mut buf) {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => {
                                        bytes.fetch_add(n as u64, Ordering::Relaxed);
                                        if to.write_all(&buf[..n]).is_err() {
                                            break;
                                        }
                                    }
                                }
                            }
                            let _ = to.shutdown(std::net::Shutdown::Write);
                        });
                    }
                }
            });
        }
        Self {
            addr,
            tcp_bytes,
            udp_dropped,
            _udp: udp,
        }
    }
}

/// `devd.local.toml` pointing the daemon at `rx` through `via`.
fn local_config(rx: &Receiver<'_>, via: SocketAddr, transport: &str) -> String {
    format!(
        "{}address = \"{via}\"\ntransport = \"{transport}\"\n",
        rx.config_toml()
    )
}

#[test]
fn with_udp_blocked_the_daemon_falls_back_to_tcp_syncs_and_gets_events() {
    let fx = Fixture::new();
    let rx = fx.receiver();
    let path = TcpOnlyPath::new(rx.addr());
    fx.write_config(FAST_SYNC);
    fx.write_local_config(&local_config(&rx, path.addr, "auto"));
    let devd = fx.devd();
    devd.start_wait();
    assert_worktrees_equal(fx.laptop(), &rx.worktree());

    let status = devd.status();
    let receiver = &status.raw["receiver"];
    assert_eq!(
        receiver["transport"], "tcp",
        "devd status --json should say the TCP fallback is in use: {receiver}"
    );
    assert!(
        path.udp_dropped.load(Ordering::Relaxed) > 0,
        "QUIC was never tried first: no datagram reached the UDP port"
    );
    let human = devd.run(&["status"]);
    assert!(
        human.stdout.contains("over TCP + TLS"),
        "devd status does not show the transport:\n{}",
        human.stdout
    );

    // An edit (content and exec bit) arrives over TCP, and its bytes went
    // through the TCP-only path.
    let before = path.tcp_bytes.load(Ordering::Relaxed);
    fx.write("bin/run.sh", "#!/bin/sh\necho over tcp\n");
    let script = fx.laptop().join("bin/run.sh");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let report = devd.sync();
    assert_worktrees_equal(fx.laptop(), &rx.worktree());
    let on_receiver = rx.worktree().join("bin/run.sh");
    assert_eq!(
        std::fs::read_to_string(&on_receiver).unwrap(),
        "#!/bin/sh\necho over tcp\n"
    );
    assert_eq!(
        std::fs::metadata(&on_receiver)
            .unwrap()
            .permissions()
            .mode()
            & 0o111,
        0o111,
        "the exec bit did not survive the TCP path"
    );
    let forwarded = path.tcp_bytes.load(Ordering::Relaxed) - before;
    assert!(
        report.bytes_sent > 0 && forwarded >= report.bytes_sent,
        "the sync reported {} bytes sent but only {forwarded} bytes crossed the TCP path",
        report.bytes_sent
    );

    // Build events ride a second TCP connection: a broken service catalog
    // is reported by the receiver on that stream and shows in the status.
    // (The fixture git-ignores devd.toml; this repository commits it.)
    fx.write(".gitignore", "*.log\ntarget/\ndevd.local.toml\n");
    fx.write(
        "devd.toml",
        format!("{FAST_SYNC}\n[services.web]\ncontext = \"../elsewhere\"\nport = 1\n"),
    );
    devd.sync();
    let shown = poll_until(Duration::from_secs(20), || {
        devd.status().raw["catalog_error"]
            .as_str()
            .is_some_and(|e| e.contains("../elsewhere"))
    });
    assert!(
        shown.is_some(),
        "the receiver's catalog error never reached the daemon over the TCP event stream: {}",
        devd.status().raw
    );
}

#[test]
fn the_daemon_prefers_quic_when_udp_gets_through() {
    let fx = Fixture::new();
    let rx = fx.receiver();
    fx.write_config(FAST_SYNC);
    fx.write_local_config(&local_config(&rx, rx.addr(), "auto"));
    let devd = fx.devd();
    devd.start_wait();
    assert_worktrees_equal(fx.laptop(), &rx.worktree());
    assert_eq!(devd.status().raw["receiver"]["transport"], "quic");
}

#[test]
fn transport_quic_does_not_fall_back_and_says_why() {
    let fx = Fixture::new();
    let rx = fx.receiver();
    let path = TcpOnlyPath::new(rx.addr());
    fx.write_config(FAST_SYNC);
    fx.write_local_config(&local_config(&rx, path.addr, "quic"));
    let devd = fx.devd();
    devd.start();
    let mut error = String::new();
    poll_until(Duration::from_secs(30), || {
        // Not `devd.status()`: that insists on a first sync.
        let run = devd.run(&["status", "--json"]);
        let status = first_json_object(&run.stdout).unwrap_or_default();
        error = status["receiver"]["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        !error.is_empty()
    })
    .expect("with transport = \"quic\" and UDP blocked, the status shows no connection error");
    assert!(
        error.contains("UDP"),
        "the error does not point at UDP: {error}"
    );
    assert_eq!(path.tcp_bytes.load(Ordering::Relaxed), 0, "TCP was used");
}

#[tokio::test]
async fn over_tcp_a_wrong_token_or_fingerprint_is_refused() {
    let fx = Fixture::new();
    let rx = fx.receiver();
    let pairing = rx.pairing();
    let creds = Credentials {
        workspace: pairing.workspace.clone(),
        token: "not-the-token".into(),
    };
    let (_link, mut io) = connect_link(rx.addr(), &pairing.fingerprint, TransportMode::Tcp, creds)
        .await
        .expect("TCP + TLS connection to the receiver");
    io.send(&devd_protocol::message::ClientMsg::Hello {
        version: PROTOCOL_VERSION,
        workspace: pairing.workspace.clone(),
        token: "not-the-token".into(),
    })
    .await
    .unwrap();
    match io.recv::<ServerMsg>().await {
        Ok(Some(ServerMsg::Rejected { code, message, .. })) => {
            assert_eq!(code, ErrorCode::Unauthorized, "{message}");
            assert!(message.contains("wrong token"), "{message}");
        }
        other => panic!("a wrong token over TCP was not refused: {other:?}"),
    }
    // The stream ends after the refusal.
    assert!(matches!(io.recv::<ServerMsg>().await, Ok(None) | Err(_)));

    let wrong_fp = "00".repeat(32);
    let creds = Credentials {
        workspace: pairing.workspace.clone(),
        token: pairing.token.clone(),
    };
    let err = connect_link(rx.addr(), &wrong_fp, TransportMode::Tcp, creds)
        .await
        .err()
        .expect("a receiver with another certificate was accepted over TCP");
    assert!(err.to_string().contains("fingerprint"), "{err}");
}
