//! The client side of the wire: QUIC, or TCP + TLS where UDP does not get
//! through (office firewalls, `kubectl port-forward`).
//!
//! Both use rustls with ring, the receiver's self-signed certificate pinned
//! by fingerprint (the TLS 1.3 handshake signature is still verified), ALPN
//! `devd/1`, no 0-RTT, and carry the same frames. A QUIC connection
//! multiplexes streams; on TCP each stream is its own TLS connection that
//! authenticates with `Hello` first. [`Link`] hides the difference.
//!
//! With `transport = "auto"` (the default) QUIC gets a head start and TCP
//! is tried alongside once QUIC has not answered within
//! [`QUIC_HEAD_START`]; the first to connect is used.

use devd_protocol::PROTOCOL_VERSION;
use devd_protocol::message::{ClientMsg, MAX_FRAME, ServerMsg};
use devd_sync::framed::Framed;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde::Deserialize;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

/// How long QUIC may take before TCP is tried alongside it.
pub const QUIC_HEAD_START: Duration = Duration::from_millis(1500);
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = devd_sync::tls::fingerprint(end_entity);
        if got.eq_ignore_ascii_case(&self.fingerprint) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "receiver certificate fingerprint {got} does not match the pinned {}; re-pair with the receiver",
                self.fingerprint
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used by devd".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Errors connecting to a receiver.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve receiver address {addr}: {reason}")]
    Resolve { addr: String, reason: String },
    #[error("cannot reach the receiver at {addr}: {reason}")]
    Connect { addr: String, reason: String },
}

/// Resolve `host:port`.
pub async fn resolve(addr: &str) -> Result<SocketAddr, ConnectError> {
    tokio::net::lookup_host(addr)
        .await
        .map_err(|e| ConnectError::Resolve {
            addr: addr.into(),
            reason: e.to_string(),
        })?
        .next()
        .ok_or_else(|| ConnectError::Resolve {
            addr: addr.into(),
            reason: "no address".into(),
        })
}

/// The TLS client configuration: TLS 1.3, the pinned certificate, ALPN
/// `devd/1`, no early data.
fn client_tls(fingerprint_hex: &str) -> Result<rustls::ClientConfig, rustls::Error> {
    devd_sync::net::install_crypto();
    let provider = Arc::new(devd_sync::net::crypto_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            fingerprint: fingerprint_hex.to_owned(),
            provider,
        }))
        .with_no_client_auth();
    tls.alpn_protocols = vec![devd_protocol::ALPN.to_vec()];
    tls.enable_early_data = false;
    Ok(tls)
}

/// Connect over QUIC to a receiver whose certificate has `fingerprint_hex`.
pub async fn connect_quic(
    addr: SocketAddr,
    fingerprint_hex: &str,
) -> Result<quinn::Connection, ConnectError> {
    let err = |reason: String| ConnectError::Connect {
        addr: addr.to_string(),
        reason,
    };
    let tls = client_tls(fingerprint_hex).map_err(|e| err(e.to_string()))?;
    let quic =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| err(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(devd_sync::net::transport_config());
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse().expect("addr")
    } else {
        "0.0.0.0:0".parse().expect("addr")
    };
    let mut ep = quinn::Endpoint::client(bind).map_err(|e| err(e.to_string()))?;
    ep.set_default_client_config(cfg);
    let connecting = ep
        .connect(addr, "devd-receiver")
        .map_err(|e| err(e.to_string()))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(err(e.to_string())),
        Err(_) => Err(err(
            "no QUIC answer within 5 s (is the receiver running, and is UDP open?)".into(),
        )),
    }
}

/// Which transport to use: `[receiver] transport` in `devd.local.toml`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TransportMode {
    /// QUIC, with TCP + TLS tried alongside when QUIC is slow to answer.
    #[default]
    Auto,
    /// QUIC over UDP only.
    Quic,
    /// TCP + TLS only.
    Tcp,
}

/// Who we are to the receiver: the `Hello` each TCP stream starts with.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub workspace: String,
    pub token: String,
}

impl Credentials {
    fn hello(&self) -> ClientMsg {
        ClientMsg::Hello {
            version: PROTOCOL_VERSION,
            workspace: self.workspace.clone(),
            token: self.token.clone(),
        }
    }
}

/// A connection to the receiver over either transport.
#[derive(Clone)]
pub enum Link {
    Quic(quinn::Connection),
    Tcp(Arc<TcpLink>),
}

/// The TCP + TLS fallback: where to open further streams, and the bytes
/// every stream of this link put on the wire.
pub struct TcpLink {
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
    credentials: Credentials,
    closed: CancellationToken,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
}

impl Link {
    /// `"quic"` or `"tcp"`.
    pub fn transport(&self) -> &'static str {
        match self {
            Link::Quic(_) => "quic",
            Link::Tcp(_) => "tcp",
        }
    }

    /// True once the link was closed (by us, the peer, or a timeout).
    pub fn is_closed(&self) -> bool {
        match self {
            Link::Quic(c) => c.close_reason().is_some(),
            Link::Tcp(t) => t.closed.is_cancelled(),
        }
    }

    /// Close the link and every stream on it.
    pub fn close(&self) {
        match self {
            Link::Quic(c) => c.close(0u32.into(), b"bye"),
            Link::Tcp(t) => t.closed.cancel(),
        }
    }

    /// Resolves when the link is closed.
    pub async fn closed(&self) {
        match self {
            Link::Quic(c) => {
                c.closed().await;
            }
            Link::Tcp(t) => t.closed.cancelled().await,
        }
    }

    /// Bytes sent and received on the wire so far (UDP datagrams for
    /// QUIC; TLS records for TCP).
    pub fn bytes(&self) -> (u64, u64) {
        match self {
            Link::Quic(c) => {
                let s = c.stats();
                (s.udp_tx.bytes, s.udp_rx.bytes)
            }
            Link::Tcp(t) => (
                t.sent.load(Ordering::Relaxed),
                t.received.load(Ordering::Relaxed),
            ),
        }
    }

    /// Open a further stream for events or logs: ready for its first
    /// request (`Subscribe`, `Logs`). On TCP this is a new connection that
    /// has already been welcomed.
    pub async fn open_side(&self) -> Result<Framed, String> {
        match self {
            Link::Quic(c) => {
                let (send, recv) = c
                    .open_bi()
                    .await
                    .map_err(|e| format!("cannot open a stream to the receiver: {e}"))?;
                Ok(Framed::new(send, recv, MAX_FRAME))
            }
            Link::Tcp(t) => {
                let mut io = tcp_stream(t.addr, &t.tls, &t.sent, &t.received)
                    .await
                    .map_err(|e| e.to_string())?;
                io.send(&t.credentials.hello())
                    .await
                    .map_err(|e| format!("cannot greet the receiver: {e}"))?;
                match io.recv::<ServerMsg>().await {
                    Ok(Some(ServerMsg::Welcome { .. })) => Ok(io),
                    Ok(Some(ServerMsg::Rejected { message, .. })) => {
                        Err(format!("the receiver refused: {message}"))
                    }
                    Ok(other) => Err(format!("unexpected answer from the receiver: {other:?}")),
                    Err(e) => Err(format!("connection to the receiver lost: {e}")),
                }
            }
        }
    }
}

/// Connect with `mode` and open the first stream (the one that carries
/// `Hello` and then the syncs).
pub async fn connect_link(
    addr: SocketAddr,
    fingerprint_hex: &str,
    mode: TransportMode,
    credentials: Credentials,
) -> Result<(Link, Framed), ConnectError> {
    let quic = async {
        let c = connect_quic(addr, fingerprint_hex).await?;
        let (send, recv) = c.open_bi().await.map_err(|e| ConnectError::Connect {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
        Ok::<_, ConnectError>((Link::Quic(c), Framed::new(send, recv, MAX_FRAME)))
    };
    let tcp = connect_tcp(addr, fingerprint_hex, credentials);
    match mode {
        TransportMode::Quic => quic.await,
        TransportMode::Tcp => tcp.await,
        TransportMode::Auto => {
            tokio::pin!(quic);
            let quic_failed = tokio::select! {
                r = &mut quic => match r {
                    Ok(l) => return Ok(l),
                    Err(e) => Some(e),
                },
                _ = tokio::time::sleep(QUIC_HEAD_START) => None,
            };
            if let Some(qe) = quic_failed {
                return tcp.await.map_err(|te| both_failed(addr, &qe, &te));
            }
            tokio::pin!(tcp);
            tokio::select! {
                r = &mut quic => match r {
                    Ok(l) => Ok(l),
                    Err(qe) => tcp.await.map_err(|te| both_failed(addr, &qe, &te)),
                },
                r = &mut tcp => match r {
                    Ok(l) => {
                        tracing::info!(%addr, "QUIC did not answer; using the TCP + TLS fallback");
                        Ok(l)
                    }
                    Err(te) => quic.await.map_err(|qe| both_failed(addr, &qe, &te)),
                },
            }
        }
    }
}

fn both_failed(addr: SocketAddr, quic: &ConnectError, tcp: &ConnectError) -> ConnectError {
    let reason = |e: &ConnectError| match e {
        ConnectError::Connect { reason, .. } | ConnectError::Resolve { reason, .. } => {
            reason.clone()
        }
    };
    ConnectError::Connect {
        addr: addr.to_string(),
        reason: format!("QUIC: {}; TCP: {}", reason(quic), reason(tcp)),
    }
}

async fn connect_tcp(
    addr: SocketAddr,
    fingerprint_hex: &str,
    credentials: Credentials,
) -> Result<(Link, Framed), ConnectError> {
    let tls = client_tls(fingerprint_hex).map_err(|e| ConnectError::Connect {
        addr: addr.to_string(),
        reason: e.to_string(),
    })?;
    let link = TcpLink {
        addr,
        tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
        credentials,
        closed: CancellationToken::new(),
        sent: Arc::default(),
        received: Arc::default(),
    };
    let io = tcp_stream(addr, &link.tls, &link.sent, &link.received).await?;
    Ok((Link::Tcp(Arc::new(link)), io))
}

/// One TCP + TLS connection, its wire bytes counted.
async fn tcp_stream(
    addr: SocketAddr,
    tls: &tokio_rustls::TlsConnector,
    sent: &Arc<AtomicU64>,
    received: &Arc<AtomicU64>,
) -> Result<Framed, ConnectError> {
    let err = |reason: String| ConnectError::Connect {
        addr: addr.to_string(),
        reason,
    };
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| err(format!("TCP: {e}")))?;
        devd_sync::net::tune_tcp(&tcp);
        let counted = Counted {
            inner: tcp,
            sent: sent.clone(),
            received: received.clone(),
        };
        let name = ServerName::try_from("devd-receiver").expect("valid server name");
        tls.connect(name, counted)
            .await
            .map_err(|e| err(format!("TLS over TCP: {e}")))
    };
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| err("no TCP answer within 5 s".into()))??;
    let (recv, send) = tokio::io::split(stream);
    Ok(Framed::new(send, recv, MAX_FRAME))
}

/// A byte stream that counts what passes through it.
struct Counted<S> {
    inner: S,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.received.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.sent.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
