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

/// The receiver's QUIC endpoint settings, with a stateless reset key
/// derived from `secret` (see [`crate::tls::Identity::reset_secret`]).
///
/// A receiver that restarted knows nothing of the laptops' connections and
/// answers their packets with a stateless reset. A laptop accepts a reset
/// only if its token was made with the key of the endpoint that issued the
/// connection ids; with a random key per process (quinn's default) every
/// reset after a restart is ignored and the laptop waits for its idle
/// timeout. A key that survives the restart makes the reset count: the
/// laptop notices at its next packet and reconnects.
///
/// quinn's default connection ids carry a tag keyed per process, and a
/// packet whose id fails that check is dropped without a reset; these ids
/// are plain random, so a restarted receiver answers every packet of an
/// unknown connection (rate-limited by quinn, and always smaller than the
/// packet that caused it).
pub fn endpoint_config(secret: [u8; 32]) -> quinn::EndpointConfig {
    let mut cfg = quinn::EndpointConfig::new(Arc::new(ResetKey(secret)));
    cfg.cid_generator(|| Box::new(RandomCids::new()));
    cfg
}

/// Random 8-byte connection ids (blake3 of a random seed and a counter).
struct RandomCids {
    seed: [u8; 32],
    counter: u64,
}

impl RandomCids {
    fn new() -> Self {
        use std::io::Read;
        let mut seed = [0u8; 32];
        if std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut seed))
            .is_err()
        {
            // No urandom: the time and pid still make ids unique per process.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            seed = *blake3::hash(format!("{t}/{}", std::process::id()).as_bytes()).as_bytes();
        }
        Self { seed, counter: 0 }
    }
}

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        self.counter += 1;
        let h = blake3::keyed_hash(&self.seed, &self.counter.to_le_bytes());
        quinn::ConnectionId::new(&h.as_bytes()[..8])
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// A keyed blake3 MAC as quinn's stateless reset key.
struct ResetKey([u8; 32]);

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], out: &mut [u8]) {
        out.copy_from_slice(blake3::keyed_hash(&self.0, data).as_bytes());
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        // `Hash` compares in constant time.
        let want = blake3::keyed_hash(&self.0, data);
        let got: [u8; 32] = signature
            .try_into()
            .map_err(|_| quinn::crypto::CryptoError)?;
        if want == blake3::Hash::from(got) {
            Ok(())
        } else {
            Err(quinn::crypto::CryptoError)
        }
    }
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
