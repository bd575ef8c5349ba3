//! Network settings both ends share: the process-wide crypto provider
//! (ring), the QUIC transport parameters, and TCP socket tuning for the
//! TCP + TLS fallback.

use std::sync::Arc;
use std::time::Duration;

/// Install ring as rustls' process-wide provider (once; later calls no-op).
pub fn install_crypto() {
    let _ = crypto_provider().install_default();
}

/// rustls' *ring* provider, the one devd uses on both ends (it builds
/// with a C compiler alone; aws-lc-rs needs cmake). rustls 0.23.48
/// deprecates it for its lack of post-quantum key exchange, to steer new
/// code to aws-lc-rs; devd keeps it and builds
/// with `Cargo.lock`'s rustls, so the deprecation is allowed here, the one
/// place that names it.
#[allow(deprecated)]
pub fn crypto_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // A dead peer (UDP: no reset) is noticed after the idle timeout; the
    // keep-alives keep a live but busy peer (a long apply) from timing out.
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    t.max_idle_timeout(Some(
        Duration::from_secs(10)
            .try_into()
            .expect("valid idle timeout"),
    ));
    t.stream_receive_window((32u32 << 20).into());
    t.receive_window((64u32 << 20).into());
    t.send_window(64 << 20);
    t.max_concurrent_bidi_streams(4u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    t
}

/// The QUIC transport settings shared by both ends.
pub fn transport_config() -> Arc<quinn::TransportConfig> {
    Arc::new(transport())
}

/// Settings for both ends of a TCP fallback connection: no Nagle delay
/// (small request/response frames), and keep-alives so that a dead peer
/// (a pod gone without a reset) is noticed within about 15 s, as QUIC's idle
/// timeout does.
pub fn tune_tcp(tcp: &tokio::net::TcpStream) {
    let _ = tcp.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(2))
        .with_retries(4);
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "cannot set TCP keep-alive");
    }
}
