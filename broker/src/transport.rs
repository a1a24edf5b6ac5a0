//! Byte transports under MQTT: TCP, TLS, WebSocket (path `/mqtt`), WebSocket over TLS.
//!
//! Handshakes (TLS, WebSocket upgrade) run in the connection's own task under
//! the connect timeout, never in the accept loop: an idle half-open socket
//! delays nobody but itself.

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use std::io;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A TCP or TLS stream.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// The transport of one connection.
pub(crate) enum Io {
    Stream(Box<dyn Stream>),
    Ws(Box<WebSocketStream<Box<dyn Stream>>>),
}

/// Which listener accepted a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Tcp => "tcp",
            Kind::Tls => "tls",
            Kind::Ws => "ws",
            Kind::Wss => "wss",
        }
    }
}

/// Performs the TLS and/or WebSocket handshake for a freshly accepted socket.
pub(crate) async fn handshake(
    kind: Kind,
    tcp: tokio::net::TcpStream,
    tls: Option<Arc<tokio_rustls::TlsAcceptor>>,
    max_frame: usize,
) -> io::Result<Io> {
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Stream> = match kind {
        Kind::Tcp | Kind::Ws => Box::new(tcp),
        Kind::Tls | Kind::Wss => {
            let acceptor = tls.ok_or_else(|| io::Error::other("tls not configured"))?;
            Box::new(acceptor.accept(tcp).await?)
        }
    };
    match kind {
        Kind::Tcp | Kind::Tls => Ok(Io::Stream(stream)),
        Kind::Ws | Kind::Wss => {
            let mut cfg = WebSocketConfig::default();
            cfg.max_message_size = Some(max_frame);
            cfg.max_frame_size = Some(max_frame);
            let ws =
                tokio_tungstenite::accept_hdr_async_with_config(stream, check_upgrade, Some(cfg))
                    .await
                    .map_err(io::Error::other)?;
            Ok(Io::Ws(Box::new(ws)))
        }
    }
}

/// Accepts only `GET /mqtt`, and answers the `mqtt` subprotocol that MQTT
/// clients (MQTT.js, Paho) ask for.
#[allow(clippy::result_large_err)]
fn check_upgrade(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    if req.uri().path() != "/mqtt" {
        let mut err = ErrorResponse::new(Some("MQTT is served on /mqtt".into()));
        *err.status_mut() = StatusCode::NOT_FOUND;
        return Err(err);
    }
    let wants_mqtt = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("mqtt"));
    if wants_mqtt {
        resp.headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
    }
    Ok(resp)
}

impl Io {
    /// Reads more bytes into `buf`, with room for at least `want` of them
    /// (a WebSocket frame comes whole); `Ok(0)` when the peer closed.
    pub(crate) async fn read(&mut self, buf: &mut BytesMut, want: usize) -> io::Result<usize> {
        match self {
            Io::Stream(s) => {
                buf.reserve(want);
                s.read_buf(buf).await
            }
            Io::Ws(ws) => loop {
                match ws.next().await {
                    None => return Ok(0),
                    Some(Err(e)) => return Err(io::Error::other(e)),
                    Some(Ok(Message::Binary(data))) => {
                        if data.is_empty() {
                            continue;
                        }
                        buf.extend_from_slice(&data);
                        return Ok(data.len());
                    }
                    Some(Ok(Message::Close(_))) => return Ok(0),
                    Some(Ok(Message::Text(_))) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "MQTT over WebSocket must use binary frames",
                        ))
                    }
                    // ping/pong are answered by tungstenite itself
                    Some(Ok(_)) => continue,
                }
            },
        }
    }

    /// Writes all of `data` and flushes.
    pub(crate) async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Io::Stream(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Io::Ws(ws) => ws
                .send(Message::Binary(bytes::Bytes::copy_from_slice(data)))
                .await
                .map_err(io::Error::other),
        }
    }

    pub(crate) async fn close(&mut self) {
        match self {
            Io::Stream(s) => {
                let _ = s.shutdown().await;
            }
            Io::Ws(ws) => {
                let _ = SinkExt::close(&mut **ws).await;
            }
        }
    }
}

/// Loads a rustls server config from PEM files; also returns the files
/// contents (the reloader compares them with what it reads later).
pub(crate) fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<(tokio_rustls::TlsAcceptor, Vec<Vec<u8>>), String> {
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let (cert_pem, key_pem) = (read(cert)?, read(key)?);
    let acceptor = tls_acceptor_from_pem(&cert_pem, &key_pem)
        .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))?;
    Ok((acceptor, vec![cert_pem, key_pem]))
}

/// A rustls server config from a PEM certificate chain and private key;
/// refuses a key that does not belong to the certificate.
pub(crate) fn tls_acceptor_from_pem(
    cert: &[u8],
    key: &[u8],
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::{self, PemObject};
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let certs = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| match e {
        pem::Error::NoItemsFound => "no private key".to_string(),
        e => format!("private key: {e}"),
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::tls_acceptor_from_pem;

    fn pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        let cert = params.self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn pem_files_are_checked_with_clear_errors() {
        let (cert, key) = pair();
        assert!(tls_acceptor_from_pem(cert.as_bytes(), key.as_bytes()).is_ok());
        let err = |c: &str, k: &str| match tls_acceptor_from_pem(c.as_bytes(), k.as_bytes()) {
            Ok(_) => panic!("accepted"),
            Err(e) => e,
        };
        assert_eq!(err("", &key), "no certificate");
        assert_eq!(err(&key, &key), "no certificate");
        assert_eq!(err(&cert, ""), "no private key");
        assert_eq!(err(&cert, &cert), "no private key");
        // a key that does not belong to the certificate
        let (_, other_key) = pair();
        assert!(!err(&cert, &other_key).is_empty());
    }
}
