//! The receiver's self-signed certificate. Created once under the data
//! directory; laptops pin its fingerprint (blake3 of the DER certificate),
//! so no certificate authority is involved.

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::Path;

/// Errors creating or loading the certificate.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read or write the receiver certificate in {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot generate the receiver certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Certificate and key of this receiver.
#[derive(Debug)]
pub struct Identity {
    pub cert: CertificateDer<'static>,
    pub key: PrivatePkcs8KeyDer<'static>,
}

impl Identity {
    /// Load `cert.der`/`key.der` from `dir`, creating them on first start.
    pub fn load_or_create(dir: &Path) -> Result<Self, TlsError> {
        let io = |source| TlsError::Io {
            path: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let cert_path = dir.join("cert.der");
        let key_path = dir.join("key.der");
        if cert_path.exists() && key_path.exists() {
            let cert = std::fs::read(&cert_path).map_err(io)?;
            let key = std::fs::read(&key_path).map_err(io)?;
            return Ok(Self {
                cert: CertificateDer::from(cert),
                key: PrivatePkcs8KeyDer::from(key),
            });
        }
        let ck = rcgen::generate_simple_self_signed(vec!["devd-receiver".to_owned()])?;
        let cert = ck.cert.der().to_vec();
        let key = ck.signing_key.serialize_der();
        crate::fsutil::write_atomic(&key_path, &key, Some(0o600)).map_err(io)?;
        crate::fsutil::write_atomic(&cert_path, &cert, Some(0o644)).map_err(io)?;
        Ok(Self {
            cert: CertificateDer::from(cert),
            key: PrivatePkcs8KeyDer::from(key),
        })
    }

    /// The fingerprint laptops pin.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert)
    }

    /// A secret derived from the private key: the same across restarts on
    /// the same data, unknown to anyone without the key (for the QUIC
    /// stateless reset key, [`crate::net::endpoint_config`]).
    pub fn reset_secret(&self) -> [u8; 32] {
        blake3::derive_key(
            "devd-receiver 2026 QUIC stateless reset key",
            self.key.secret_pkcs8_der(),
        )
    }

    /// rustls server configuration with the devd ALPN.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let provider = std::sync::Arc::new(crate::net::crypto_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(
                vec![self.cert.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )?;
        cfg.alpn_protocols = vec![devd_protocol::ALPN.to_vec()];
        cfg.max_early_data_size = 0;
        Ok(cfg)
    }
}

/// blake3 of a DER certificate, hex.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    blake3::hash(cert.as_ref()).to_hex().to_string()
}
