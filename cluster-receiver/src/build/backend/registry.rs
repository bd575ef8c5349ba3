//! Registry lookups over the OCI distribution HTTP API (oci-client): does
//! `repo:tag` exist, and under which manifest digest. This is the "build
//! only once" check: a tag is a context digest, so an existing tag is an
//! image someone already built from the same inputs.

use super::Failure;
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

/// Credentials for a registry.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// A registry client.
pub struct RegistryClient {
    client: Client,
    auth: RegistryAuth,
}

impl RegistryClient {
    /// `insecure`: registries (`host:port`) spoken to over plain HTTP.
    pub fn new(insecure: Vec<String>, credentials: Option<Credentials>) -> Self {
        devd_sync::net::install_crypto();
        let client = Client::new(oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::HttpsExcept(insecure),
            ..Default::default()
        });
        let auth = match credentials {
            Some(c) => RegistryAuth::Basic(c.username, c.password),
            None => RegistryAuth::Anonymous,
        };
        Self { client, auth }
    }

    /// `repository@sha256:…` if `repository:tag` exists, `None` if not.
    pub async fn lookup(&self, repository: &str, tag: &str) -> Result<Option<String>, Failure> {
        let reference: Reference = format!("{repository}:{tag}").parse().map_err(|e| {
            Failure::new(format!("{repository}:{tag} is not an image reference: {e}"))
        })?;
        match self
            .client
            .fetch_manifest_digest(&reference, &self.auth)
            .await
        {
            Ok(digest) => Ok(Some(format!("{repository}@{digest}"))),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(Failure::new(format!(
                "registry lookup of {repository}:{tag} failed: {e}"
            ))),
        }
    }
}

fn not_found(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown
            )
        }),
        _ => false,
    }
}
