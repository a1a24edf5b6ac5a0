//! TLS to the nodes: rustls with the aws-lc-rs provider (the process's one;
//! passed explicitly, so the process never depends on a default provider).

use crate::store::StoreError;
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

fn tls_err(what: String) -> StoreError {
    StoreError::Unavailable(format!("[store.scylla] TLS: {what}"))
}

/// A client config trusting the CAs in the PEM file `ca`. The driver names
/// each node by its IP address; when `server_name` is set, certificates are
/// checked against that name instead.
pub(super) fn client_config(
    ca: &Path,
    server_name: &str,
) -> Result<Arc<rustls::ClientConfig>, StoreError> {
    use rustls_pki_types::{pem::PemObject, CertificateDer};
    let pem = std::fs::read(ca).map_err(|e| tls_err(format!("{}: {e}", ca.display())))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| tls_err(format!("{}: {e}", ca.display())))?;
        roots
            .add(cert)
            .map_err(|e| tls_err(format!("{}: {e}", ca.display())))?;
    }
    if roots.is_empty() {
        return Err(tls_err(format!("{}: no certificate", ca.display())));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?;
    let config = if server_name.is_empty() {
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| tls_err(format!("tls_server_name {server_name:?}: {e}")))?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| tls_err(e.to_string()))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(FixedName { name, inner }))
            .with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// Full WebPKI verification, against a configured name instead of the name
/// the connection was opened with (a node's IP address).
#[derive(Debug)]
struct FixedName {
    name: ServerName<'static>,
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for FixedName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
