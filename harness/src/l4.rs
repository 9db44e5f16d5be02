//! Calls the gateway's network (L4) listener as a workload: mTLS with the workload's certificate (the
//! mesh's own TLS, whose SNI names the destination), then either plain bytes (a `tcp` destination: the
//! gateway originates mTLS to the partner) or the workload's own TLS inside it (a `tls` passthrough
//! destination: its ClientHello names a host the gateway checks).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme, StreamOwned};

use crate::pki::{CertFiles, GATEWAY_HOST};
use crate::topology::GATEWAY_L4_PORT;
use crate::{err, Result};

/// What one L4 call got.
#[derive(Debug, Clone, Default)]
pub struct L4Outcome {
    /// The TLS handshake with the gateway completed.
    pub connected: bool,
    /// Everything received before the connection closed.
    pub received: String,
    /// Why it ended, when it did not end with a clean close.
    pub error: Option<String>,
}

/// Calls the gateway's L4 listener on 127.0.0.1:[`GATEWAY_L4_PORT`].
#[derive(Debug, Clone)]
pub struct L4Client {
    mesh_ca: PathBuf,
    partner_ca: PathBuf,
    port: u16,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| err(format!("{}: {e}", ca.display())))? {
        roots.add(cert.map_err(|e| err(format!("{}: {e}", ca.display())))?).map_err(|e| err(e.to_string()))?;
    }
    Ok(roots)
}

/// Verifies the gateway's certificate for [`GATEWAY_HOST`] whatever SNI the call sends: in the mesh, the
/// SNI of the connection to the gateway names the destination, not the gateway.
#[derive(Debug)]
struct GatewayVerifier(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for GatewayVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let gateway = ServerName::try_from(GATEWAY_HOST).map_err(|e| rustls::Error::General(e.to_string()))?;
        self.0.verify_server_cert(end_entity, intermediates, &gateway, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The mesh's mTLS as a workload speaks it to the gateway: its certificate (`None`: none), and the gateway's
/// verified against `mesh_ca` for [`GATEWAY_HOST`] whatever the SNI.
pub(crate) fn mesh_tls_config(mesh_ca: &Path, identity: Option<&CertFiles>) -> Result<ClientConfig> {
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots(mesh_ca)?), provider())
        .build()
        .map_err(|e| err(e.to_string()))?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(GatewayVerifier(verifier)));
    Ok(match identity {
        None => builder.with_no_client_auth(),
        Some(identity) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&identity.cert)
                .map_err(|e| err(format!("{}: {e}", identity.cert.display())))?
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| err(e.to_string()))?;
            let key = PrivateKeyDer::from_pem_file(&identity.key)
                .map_err(|e| err(format!("{}: {e}", identity.key.display())))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| err(e.to_string()))?
        }
    })
}

/// The certificate the gateway's listener serves to a caller naming `sni`, verified against `ca` (PEM) for
/// [`GATEWAY_HOST`]: DER of the leaf. The handshake is made with `identity` (the listener requires a client
/// certificate).
pub fn served_certificate(sni: &str, ca: &Path, identity: &CertFiles) -> Result<Vec<u8>> {
    let config = mesh_tls_config(ca, Some(identity))?;
    let name = ServerName::try_from(sni.to_string()).map_err(|e| err(e.to_string()))?;
    let mut connection = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| err(e.to_string()))?;
    let mut tcp = TcpStream::connect(("127.0.0.1", crate::topology::GATEWAY_PORT))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    while connection.is_handshaking() {
        connection.complete_io(&mut tcp).map_err(|e| err(format!("handshake with the gateway: {e}")))?;
    }
    let leaf = connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or_else(|| err("the gateway sent no certificate"))?;
    Ok(leaf.to_vec())
}

/// Reads until the peer closes (or the read times out); what arrived, and how it ended.
fn read_all(stream: &mut impl Read) -> (String, Option<String>) {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&received).into_owned(), None),
            Ok(n) => received.extend_from_slice(buf.get(..n).unwrap_or_default()),
            Err(e) => return (String::from_utf8_lossy(&received).into_owned(), Some(e.to_string())),
        }
    }
}

impl L4Client {
    pub fn new(mesh_ca: PathBuf, partner_ca: PathBuf) -> Self {
        Self { mesh_ca, partner_ca, port: GATEWAY_L4_PORT }
    }

    /// The same client, calling another of the gateway's L4 ports.
    pub fn on_port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// The mesh mTLS connection to the gateway, as `identity`, with `sni` naming the destination.
    fn connect(&self, identity: Option<&CertFiles>, sni: &str) -> Result<StreamOwned<ClientConnection, TcpStream>> {
        let config = mesh_tls_config(&self.mesh_ca, identity)?;
        let name = ServerName::try_from(sni.to_string()).map_err(|e| err(e.to_string()))?;
        let connection = ClientConnection::new(Arc::new(config), name).map_err(|e| err(e.to_string()))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(5)))?;
        Ok(StreamOwned::new(connection, tcp))
    }

    /// A `tcp` call: connects as `identity` with `sni`, sends `send`, and reads the answer to the end.
    pub fn call(&self, identity: &CertFiles, sni: &str, send: &[u8]) -> Result<L4Outcome> {
        self.exchange(Some(identity), sni, send)
    }

    /// A `tcp` call that presents no client certificate.
    pub fn call_without_certificate(&self, sni: &str, send: &[u8]) -> Result<L4Outcome> {
        self.exchange(None, sni, send)
    }

    fn exchange(&self, identity: Option<&CertFiles>, sni: &str, send: &[u8]) -> Result<L4Outcome> {
        let mut outer = self.connect(identity, sni)?;
        if let Err(e) = outer.write_all(send).and_then(|()| outer.flush()) {
            return Ok(L4Outcome {
                connected: !outer.conn.is_handshaking(),
                error: Some(e.to_string()),
                ..Default::default()
            });
        }
        let (received, error) = read_all(&mut outer);
        Ok(L4Outcome { connected: !outer.conn.is_handshaking(), received, error })
    }

    /// Opens the mesh connection as `identity` with `sni`, completes its handshake, sends `send` (perhaps
    /// nothing) and then stays silent: how long until the gateway closed it, or `None` if it was still open
    /// after `max`.
    pub fn held_open(&self, identity: &CertFiles, sni: &str, send: &[u8], max: Duration) -> Result<Option<Duration>> {
        let mut outer = self.connect(Some(identity), sni)?;
        while outer.conn.is_handshaking() {
            outer.conn.complete_io(&mut outer.sock)?;
        }
        let start = std::time::Instant::now();
        if !send.is_empty() {
            outer.write_all(send)?;
            outer.flush()?;
        }
        outer.sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut buf = [0u8; 1024];
        while start.elapsed() < max {
            match outer.read(&mut buf) {
                Ok(0) => return Ok(Some(start.elapsed())),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                // A reset, or the close without TLS close_notify: closed.
                Err(_) => return Ok(Some(start.elapsed())),
            }
        }
        Ok(None)
    }

    /// A `tls` passthrough call: the mesh connection with `sni`, and inside it the workload's own TLS to
    /// the partner naming `inner_sni` (verified against the partner's CA); sends `send`, reads the answer.
    pub fn passthrough(&self, identity: &CertFiles, sni: &str, inner_sni: &str, send: &[u8]) -> Result<L4Outcome> {
        let mut outer = self.connect(Some(identity), sni)?;
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| err(e.to_string()))?
            .with_root_certificates(roots(&self.partner_ca)?)
            .with_no_client_auth();
        let name = ServerName::try_from(inner_sni.to_string()).map_err(|e| err(e.to_string()))?;
        let mut inner = ClientConnection::new(Arc::new(config), name).map_err(|e| err(e.to_string()))?;
        let mut stream = rustls::Stream::new(&mut inner, &mut outer);
        if let Err(e) = stream.write_all(send).and_then(|()| stream.flush()) {
            let connected = !stream.sock.conn.is_handshaking();
            return Ok(L4Outcome { connected, error: Some(e.to_string()), ..Default::default() });
        }
        let (received, error) = read_all(&mut stream);
        Ok(L4Outcome { connected: !outer.conn.is_handshaking(), received, error })
    }
}

/// TLS extension numbers a crafted ClientHello uses.
pub mod extension {
    /// server_name (RFC 6066 3).
    pub const SERVER_NAME: u16 = 0;
    /// supported_groups.
    pub const SUPPORTED_GROUPS: u16 = 10;
    /// encrypted_client_hello (RFC 9849).
    pub const ENCRYPTED_CLIENT_HELLO: u16 = 0xfe0d;
    /// encrypted_server_name (the ESNI drafts).
    pub const ENCRYPTED_SERVER_NAME: u16 = 0xffce;
}

/// A `server_name` extension's data listing these (name type, name) entries; type 0 is `host_name`.
pub fn server_name_list(entries: &[(u8, &str)]) -> Vec<u8> {
    let mut list = Vec::new();
    for (kind, name) in entries {
        list.push(*kind);
        list.extend(u16::try_from(name.len()).unwrap_or(u16::MAX).to_be_bytes());
        list.extend(name.as_bytes());
    }
    let mut data = u16::try_from(list.len()).unwrap_or(u16::MAX).to_be_bytes().to_vec();
    data.extend(list);
    data
}

/// A ClientHello (TLS 1.2 record and handshake framing, one TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 suite) with
/// exactly these extensions (type, data), in this order: to send a gateway what no TLS library would.
pub fn crafted_client_hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend([0x5a; 32]); // random
    body.push(0); // legacy_session_id
    body.extend([0, 2, 0xc0, 0x2f]); // cipher_suites
    body.extend([1, 0]); // compression: null
    let mut ext = Vec::new();
    for (kind, data) in extensions {
        ext.extend(kind.to_be_bytes());
        ext.extend(u16::try_from(data.len()).unwrap_or(u16::MAX).to_be_bytes());
        ext.extend(data);
    }
    body.extend(u16::try_from(ext.len()).unwrap_or(u16::MAX).to_be_bytes());
    body.extend(ext);
    let length = u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes();
    let mut handshake = vec![1]; // client_hello
    handshake.extend(length.get(1..).unwrap_or_default());
    handshake.extend(body);
    let mut record = vec![22, 3, 1];
    record.extend(u16::try_from(handshake.len()).unwrap_or(u16::MAX).to_be_bytes());
    record.extend(handshake);
    record
}

/// The ClientHello a TLS library (rustls, TLS 1.3 and 1.2) sends first for server name `sni`, as bytes to
/// put on a connection: e.g. to start a handshake and never finish it.
pub fn real_client_hello(sni: &str) -> Result<Vec<u8>> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err(e.to_string()))?
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    let name = ServerName::try_from(sni.to_string()).map_err(|e| err(e.to_string()))?;
    let mut connection = ClientConnection::new(Arc::new(config), name).map_err(|e| err(e.to_string()))?;
    let mut out = Vec::new();
    while connection.wants_write() {
        connection.write_tls(&mut out)?;
    }
    Ok(out)
}

/// Opens a TCP connection to 127.0.0.1:`port`, sends `send`, and reads until the gateway closes it: how long
/// that took (`None`: still open after `max`). E.g. a TLS handshake started and never finished.
pub fn held(port: u16, send: &[u8], max: Duration) -> Result<Option<Duration>> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_millis(200)))?;
    let start = std::time::Instant::now();
    tcp.write_all(send)?;
    let mut buf = [0u8; 4096];
    while start.elapsed() < max {
        match tcp.read(&mut buf) {
            Ok(0) => return Ok(Some(start.elapsed())),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return Ok(Some(start.elapsed())),
        }
    }
    Ok(None)
}
