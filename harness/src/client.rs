//! Calls the gateway as a workload, with the `curl` binary (`$CURL_BIN`, else `curl`).

use std::path::PathBuf;
use std::process::Command;

use crate::pki::{CertFiles, GATEWAY_HOST};
use crate::topology::GATEWAY_PORT;
use crate::{err, Result};

/// One request to the gateway.
#[derive(Debug, Clone)]
pub struct Call {
    /// Client certificate to present (`None`: no client certificate).
    pub identity: Option<CertFiles>,
    /// HTTP method.
    pub method: String,
    /// `Host` header, i.e. the external destination (`api.partner.example`).
    pub host: String,
    /// Path and query, sent as is.
    pub path: String,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Speak HTTP/2 (ALPN h2) instead of HTTP/1.1.
    pub http2: bool,
}

impl Call {
    /// `GET https://api.partner.example<path>` through the gateway as `identity`.
    pub fn get(identity: &CertFiles, path: &str) -> Call {
        Call {
            identity: Some(identity.clone()),
            method: "GET".into(),
            host: crate::pki::EXTERNAL_HOST.into(),
            path: path.into(),
            headers: Vec::new(),
            http2: false,
        }
    }

    /// Replace the `Host` header.
    pub fn host(mut self, host: &str) -> Call {
        self.host = host.into();
        self
    }

    /// Replace the method.
    pub fn method(mut self, method: &str) -> Call {
        self.method = method.into();
        self
    }

    /// Add a request header.
    pub fn header(mut self, name: &str, value: &str) -> Call {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Speak HTTP/2 (HTTP/2 lets a client send, e.g., a lower-case method).
    pub fn http2(mut self) -> Call {
        self.http2 = true;
        self
    }

    /// Present no client certificate.
    pub fn without_certificate(mut self) -> Call {
        self.identity = None;
        self
    }
}

/// What came back.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status; 0 if there was no HTTP response (e.g. TLS handshake failure).
    pub status: u16,
    /// Response body.
    pub body: String,
    /// The body parsed as JSON, when it is JSON.
    pub json: Option<serde_json::Value>,
    /// curl's exit code (0 on any HTTP response).
    pub curl_exit: i32,
    /// curl's error output.
    pub stderr: String,
}

impl Response {
    /// A top-level string field of the JSON body.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.json.as_ref()?.get(name)?.as_str()
    }

    /// One-line summary for assertion messages.
    pub fn summary(&self) -> String {
        if self.status == 0 {
            format!("no HTTP response (curl exit {}): {}", self.curl_exit, self.stderr.trim())
        } else {
            format!("HTTP {} {}", self.status, self.body.trim())
        }
    }
}

/// Talks to the gateway on 127.0.0.1:10443 as `egress-gateway.local`, trusting the mesh CA.
#[derive(Debug, Clone)]
pub struct Client {
    ca: PathBuf,
    port: u16,
    /// [`Client::as_sidecar`]: the SNI, and the gateway's public key (PEM) to pin.
    sidecar: Option<(String, PathBuf)>,
}

const STATUS_MARK: &str = "\n@@egress-identity-harness-status:";

impl Client {
    /// A client trusting `mesh_ca` for the gateway's server certificate.
    pub fn new(mesh_ca: PathBuf) -> Client {
        Client { ca: mesh_ca, port: GATEWAY_PORT, sidecar: None }
    }

    /// The same client calling as an Istio sidecar calls an egress gateway: the TLS server name is the
    /// destination's host `sni` (the gateway's filter chains are chosen by it), and the gateway is
    /// authenticated by its key, pinned to `gateway_public_key` (PEM), not by a host name (a sidecar checks
    /// the gateway's SPIFFE ID, which curl cannot).
    pub fn as_sidecar(mut self, sni: &str, gateway_public_key: PathBuf) -> Client {
        self.sidecar = Some((sni.to_string(), gateway_public_key));
        self
    }

    /// The same client for a gateway listening on `port` (e.g. a benchmark's second gateway).
    pub fn on_port(mut self, port: u16) -> Client {
        self.port = port;
        self
    }

    /// Send `call` (HTTP/1.1 unless [`Call::http2`], 20 s timeout).
    pub fn send(&self, call: &Call) -> Result<Response> {
        let curl = std::env::var_os("CURL_BIN").unwrap_or_else(|| "curl".into());
        let mut cmd = Command::new(&curl);
        let version = if call.http2 { "--http2" } else { "--http1.1" };
        let server = match &self.sidecar {
            None => {
                cmd.args(["-sS", version, "--path-as-is", "--max-time", "20", "--cacert"]).arg(&self.ca);
                GATEWAY_HOST
            }
            Some((sni, key)) => {
                // --insecure skips the name check only: the pinned key is still required.
                cmd.args(["-sS", version, "--path-as-is", "--max-time", "20", "--insecure", "--pinnedpubkey"]).arg(key);
                sni.as_str()
            }
        };
        cmd.arg("--resolve").arg(format!("{server}:{}:127.0.0.1", self.port));
        if let Some(id) = &call.identity {
            cmd.arg("--cert").arg(&id.cert).arg("--key").arg(&id.key);
        }
        cmd.arg("-X").arg(&call.method).arg("-H").arg(format!("Host: {}", call.host));
        for (k, v) in &call.headers {
            cmd.arg("-H").arg(format!("{k}: {v}"));
        }
        cmd.arg("-w").arg(format!("{STATUS_MARK}%{{http_code}}"));
        cmd.arg(format!("https://{server}:{}{}", self.port, call.path));
        let out = cmd.output().map_err(|e| err(format!("running {curl:?}: {e}")))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = match stdout.rfind(STATUS_MARK) {
            Some(i) => {
                let code = stdout.get(i + STATUS_MARK.len()..).unwrap_or("").trim();
                (stdout.get(..i).unwrap_or("").to_string(), code.parse().unwrap_or(0))
            }
            None => (stdout, 0),
        };
        Ok(Response {
            status,
            json: serde_json::from_str(&body).ok(),
            body,
            curl_exit: out.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// Sends `head` (a request's head, and perhaps some body) on a fresh mTLS connection to the gateway as
/// `identity`, with server name `sni`, and returns what the gateway sends back within `wait` or until it
/// closes: to see what a client sees before it sends the rest (e.g. a `100 Continue`), which curl hides.
pub fn raw_exchange(
    mesh_ca: &std::path::Path,
    port: u16,
    sni: &str,
    identity: &CertFiles,
    head: &[u8],
    wait: std::time::Duration,
) -> Result<String> {
    use std::io::{Read, Write};
    let mut config = crate::l4::mesh_tls_config(mesh_ca, Some(identity))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).map_err(|e| err(e.to_string()))?;
    let connection =
        rustls::ClientConnection::new(std::sync::Arc::new(config), name).map_err(|e| err(e.to_string()))?;
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(wait))?;
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    tls.write_all(head)?;
    tls.flush()?;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(buf.get(..n).unwrap_or_default()),
            Err(_) => break, // timed out (or reset): what came so far is the answer
        }
    }
    Ok(String::from_utf8_lossy(&received).into_owned())
}
