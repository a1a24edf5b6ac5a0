//! Certificates and keys for the TLS and RS256 tests, made in-process with
//! rcgen (no `openssl` command, so no test skips for the lack of one).

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_RSA_SHA256,
};

/// A server certificate and its key, both PEM.
pub struct ServerCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A test CA (P-256) that signs server certificates for `127.0.0.1` and
/// `localhost`.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    /// A new CA named `name` (its common name is `test CA {name}`).
    pub fn new(name: &str) -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("test CA {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(TestCa { issuer })
    }

    /// The CA certificate, PEM: what a client trusts.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `127.0.0.1` and `localhost` signed by this CA.
    pub fn server_cert(&self) -> Result<ServerCert> {
        self.server_cert_for(&["localhost", "127.0.0.1"])
    }

    /// A server certificate for these names and addresses signed by this CA.
    pub fn server_cert_for(&self, names: &[&str]) -> Result<ServerCert> {
        let key = KeyPair::generate()?;
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A self-signed server certificate for `127.0.0.1` and `localhost`.
pub fn self_signed_server() -> Result<ServerCert> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.self_signed(&key)?;
    Ok(ServerCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// An RSA 2048 key pair for RS256 tokens: (private key as PKCS#8 PEM, public
/// key as SubjectPublicKeyInfo PEM), the forms `openssl genpkey` and
/// `openssl pkey -pubout` write and operators configure.
pub fn rsa_key_pair() -> Result<(String, String)> {
    let key = KeyPair::generate_for(&PKCS_RSA_SHA256)?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

/// A TLS front for plain MQTT clients: each connection accepted on
/// [`TlsFront::port`] is carried over TLS to `127.0.0.1:server_port`,
/// trusting only the CA certificates in `ca_pem` (rustls on aws-lc-rs, the
/// process's one crypto provider). When the server's certificate is not
/// trusted the handshake fails and the plain connection is closed, so the
/// MQTT client behind it sees its connect fail, as a TLS client would.
/// Dropping the front stops new connections; carried ones run on.
pub struct TlsFront {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl TlsFront {
    pub async fn start(server_port: u16, ca_pem: &[u8]) -> Result<TlsFront> {
        use rustls_pki_types::{pem::PemObject, CertificateDer, ServerName};
        use std::sync::Arc;
        use tokio_rustls::rustls;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem) {
            roots.add(c?)?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let name = ServerName::try_from("127.0.0.1")?.to_owned();
        let task = tokio::spawn(async move {
            while let Ok((mut plain, _)) = listener.accept().await {
                let connector = connector.clone();
                let name = name.clone();
                tokio::spawn(async move {
                    let Ok(tcp) = tokio::net::TcpStream::connect(("127.0.0.1", server_port)).await
                    else {
                        return;
                    };
                    // an untrusted certificate ends here: `plain` is dropped
                    let Ok(mut tls) = connector.connect(name, tcp).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut plain, &mut tls).await;
                });
            }
        });
        Ok(TlsFront { port, task })
    }

    /// The plain port an MQTT client connects to.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}
