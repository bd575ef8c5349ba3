//! QUIC client: rustls with ring, the receiver's self-signed certificate
//! pinned by fingerprint (the TLS 1.3 handshake signature is still
//! verified), ALPN `devd/1`, keep-alive, no 0-RTT.

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::net::SocketAddr;
use std::sync::Arc;

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
        let got = devd_receiver::tls::fingerprint(end_entity);
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

/// Connect to a receiver whose certificate has `fingerprint_hex`.
pub async fn connect(addr: SocketAddr, fingerprint_hex: &str) -> anyhow::Result<quinn::Connection> {
    Ok(connect_quic(addr, fingerprint_hex).await?)
}

/// [`connect`] with a typed error.
pub async fn connect_quic(
    addr: SocketAddr,
    fingerprint_hex: &str,
) -> Result<quinn::Connection, ConnectError> {
    devd_receiver::server::install_crypto();
    let err = |reason: String| ConnectError::Connect {
        addr: addr.to_string(),
        reason,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| err(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            fingerprint: fingerprint_hex.to_owned(),
            provider,
        }))
        .with_no_client_auth();
    tls.alpn_protocols = vec![devd_protocol::ALPN.to_vec()];
    tls.enable_early_data = false;
    let quic =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| err(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(devd_receiver::server::transport_config());
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
    match tokio::time::timeout(std::time::Duration::from_secs(5), connecting).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(err(e.to_string())),
        Err(_) => Err(err(
            "no answer within 5 s (is the receiver running, and is UDP open?)".into(),
        )),
    }
}
