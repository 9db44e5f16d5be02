//! Calls an Istio waypoint as ztunnel does: HBONE, an HTTP/2 CONNECT over mTLS (TLS 1.3, ALPN h2) to the
//! waypoint's tunnel listener, authenticated with the source workload's certificate, whose `:authority` is
//! the destination's address (`VIP:port`); inside the tunnel, the workload's own bytes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::ServerName;

use crate::l4::mesh_tls_config;
use crate::pki::{CertFiles, GATEWAY_HOST};
use crate::{err, Result};

/// How long a tunnel may take to answer, and to finish.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What one tunnel got.
#[derive(Debug, Clone, Default)]
pub struct Tunneled {
    /// The status of the CONNECT.
    pub connect_status: u16,
    /// Everything the tunnel carried back before it closed.
    pub received: Vec<u8>,
    /// Why it ended, when it did not end with a clean close.
    pub error: Option<String>,
}

impl Tunneled {
    /// (status, body) of the HTTP/1.1 response the tunnel carried back.
    pub fn http_response(&self) -> Option<(u16, String)> {
        crate::topology::parse_http_response(&self.received)
    }
}

/// Opens HBONE tunnels to 127.0.0.1:`port`, trusting the mesh CA for the waypoint's certificate.
#[derive(Debug, Clone)]
pub struct HboneClient {
    mesh_ca: PathBuf,
    port: u16,
}

impl HboneClient {
    pub fn new(mesh_ca: PathBuf, port: u16) -> HboneClient {
        HboneClient { mesh_ca, port }
    }

    /// A tunnel to `authority` as `identity`: sends `send` and reads until the tunnel closes.
    pub fn exchange(&self, identity: &CertFiles, authority: &str, send: &[u8]) -> Result<Tunneled> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(self.tunnel(identity, authority, send))
    }

    /// `GET <path>` with `Host: <host>` (and `Connection: close`) through a tunnel to `authority`.
    pub fn http_get(&self, identity: &CertFiles, authority: &str, host: &str, path: &str) -> Result<Tunneled> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        self.exchange(identity, authority, request.as_bytes())
    }

    async fn tunnel(&self, identity: &CertFiles, authority: &str, send: &[u8]) -> Result<Tunneled> {
        let mut config = mesh_tls_config(&self.mesh_ca, Some(identity))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        let name = ServerName::try_from(GATEWAY_HOST).map_err(|e| err(e.to_string()))?;
        let tls = connector.connect(name, tcp).await?;
        let (mut client, connection) = h2::client::handshake(tls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = http::Request::builder().method(http::Method::CONNECT).uri(authority).body(())?;
        let (response, mut stream) = client.send_request(request, false)?;
        stream.send_data(Bytes::copy_from_slice(send), false)?;
        let response = tokio::time::timeout(TIMEOUT, response).await.map_err(|_| err("no answer to CONNECT"))??;
        let mut out = Tunneled { connect_status: response.status().as_u16(), ..Default::default() };
        let mut body = response.into_body();
        loop {
            match tokio::time::timeout(TIMEOUT, body.data()).await {
                Ok(Some(Ok(chunk))) => {
                    let _ = body.flow_control().release_capacity(chunk.len());
                    out.received.extend_from_slice(&chunk);
                }
                Ok(Some(Err(e))) => {
                    out.error = Some(e.to_string());
                    break;
                }
                Ok(None) => break,
                Err(_) => {
                    out.error = Some("the tunnel did not close".into());
                    break;
                }
            }
        }
        Ok(out)
    }
}
