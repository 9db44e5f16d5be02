//! A gRPC SDS server (state of the world, `SecretDiscoveryService.StreamSecrets`): the certificate source
//! of the single-cluster destinations (README.md, "Identity scale"), standing in for what production
//! gateways use (the Istio agent's or the SPIRE agent's SDS over a Unix socket).
//!
//! File-based SDS cannot serve them: Envoy reads exactly one secret from a `path_config_source` file,
//! and the on-demand certificate selector has one config source for all its secrets.
//!
//! Each stream gets the secrets it asks for (`resource_names`) that exist, and again whenever one of them
//! is added or replaced ([`SdsServer::put`]); a name nobody has published gets no answer (Envoy keeps
//! waiting, as with a real agent). Every stream's requests are counted ([`SdsServer::requested`]), so a
//! test or benchmark can tell when, and how often, Envoy fetched a secret.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret, TlsCertificate};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::{err, Result};

/// The published secrets; `version` moves on every change.
#[derive(Default)]
struct Store {
    /// Name → (secret, the version that last changed it).
    secrets: BTreeMap<String, (Any, u64)>,
    version: u64,
    /// Secret name → how many discovery requests have named it (a fetch, then one ACK per answer).
    requested: BTreeMap<String, u64>,
}

#[derive(Clone)]
struct Service {
    store: Arc<Mutex<Store>>,
    changed: watch::Receiver<u64>,
}

/// A running SDS server; it stops with the process (or when dropped, its runtime shuts down).
pub struct SdsServer {
    address: SocketAddr,
    store: Arc<Mutex<Store>>,
    changed: watch::Sender<u64>,
    _runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for SdsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SdsServer").field("address", &self.address).finish_non_exhaustive()
    }
}

fn inline(text: String) -> Option<DataSource> {
    Some(DataSource { specifier: Some(data_source::Specifier::InlineString(text)), ..Default::default() })
}

/// A `tls_certificate` secret (chain and key PEM inlined), as the `Any` an SDS response carries.
pub fn tls_certificate(name: &str, chain_pem: String, key_pem: String) -> Any {
    let secret = Secret {
        name: name.to_string(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(chain_pem),
            private_key: inline(key_pem),
            ..Default::default()
        })),
    };
    Any { type_url: Secret::type_url(), value: secret.encode_to_vec() }
}

impl SdsServer {
    /// Listens on `address` (e.g. `127.0.0.1:18447`, port 0 for any) and serves until dropped.
    pub fn start(address: SocketAddr) -> Result<SdsServer> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| err(format!("SDS server runtime: {e}")))?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(address))
            .map_err(|e| err(format!("SDS server: binding {address}: {e}")))?;
        let address = listener.local_addr().map_err(|e| err(format!("SDS server: {e}")))?;
        let store = Arc::new(Mutex::new(Store::default()));
        let (changed, watcher) = watch::channel(0);
        let service = Service { store: store.clone(), changed: watcher };
        runtime.spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            // One stream per secret Envoy watches: thousands at once.
            let served = tonic::transport::Server::builder()
                .max_concurrent_streams(Some(u32::MAX))
                .add_service(SecretDiscoveryServiceServer::new(service))
                .serve_with_incoming(incoming)
                .await;
            if let Err(e) = served {
                eprintln!("SDS server stopped: {e}");
            }
        });
        Ok(SdsServer { address, store, changed, _runtime: runtime })
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Publishes (adds or replaces) secrets; every stream that asked for one of them gets them again.
    pub fn put(&self, secrets: impl IntoIterator<Item = (String, Any)>) {
        let version = {
            let mut store = self.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            store.version += 1;
            let version = store.version;
            store.secrets.extend(secrets.into_iter().map(|(name, secret)| (name, (secret, version))));
            version
        };
        let _ = self.changed.send(version);
    }

    /// How many discovery requests have named `secret` so far (0: Envoy never asked for it).
    pub fn requested(&self, secret: &str) -> u64 {
        let store = self.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        store.requested.get(secret).copied().unwrap_or(0)
    }

    /// Every secret name Envoy has asked for.
    pub fn requested_names(&self) -> BTreeSet<String> {
        let store = self.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        store.requested.keys().cloned().collect()
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = std::result::Result<DiscoveryResponse, Status>> + Send>>;
type DeltaStream = Pin<Box<dyn Stream<Item = std::result::Result<DeltaDiscoveryResponse, Status>> + Send>>;

impl Service {
    /// The response for `names`: the published ones among them, if one changed after version `since`
    /// (`None`: never answered), and the store's version.
    fn response(&self, names: &BTreeSet<String>, since: Option<u64>, nonce: u64) -> Option<(DiscoveryResponse, u64)> {
        let store = self.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let published: Vec<&(Any, u64)> = names.iter().filter_map(|n| store.secrets.get(n)).collect();
        if published.is_empty() || published.iter().all(|(_, changed)| since.is_some_and(|s| *changed <= s)) {
            return None;
        }
        let resources = published.into_iter().map(|(secret, _)| secret.clone()).collect();
        let response = DiscoveryResponse {
            version_info: store.version.to_string(),
            resources,
            type_url: Secret::type_url(),
            nonce: nonce.to_string(),
            ..Default::default()
        };
        Some((response, store.version))
    }

    fn count(&self, names: &[String]) {
        let mut store = self.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for n in names {
            *store.requested.entry(n.clone()).or_default() += 1;
        }
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for Service {
    type DeltaSecretsStream = DeltaStream;
    type StreamSecretsStream = ResponseStream;

    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> std::result::Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented("state-of-the-world SDS only (api_type: GRPC)"))
    }

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> std::result::Result<Response<Self::StreamSecretsStream>, Status> {
        let mut requests = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let service = self.clone();
        let mut changed = self.changed.clone();
        tokio::spawn(async move {
            let mut names: BTreeSet<String> = BTreeSet::new();
            // The store version of the last answer on this stream.
            let mut answered: Option<u64> = None;
            let mut nonce = 0u64;
            loop {
                tokio::select! {
                    next = requests.next() => {
                        let Some(Ok(req)) = next else { return };
                        service.count(&req.resource_names);
                        let wanted: BTreeSet<String> = req.resource_names.into_iter().collect();
                        if wanted != names {
                            // New names: answer with all of them (state of the world).
                            names = wanted;
                            answered = None;
                        }
                        // Otherwise an ACK (or NACK) of the last answer: only news gets an answer.
                    }
                    moved = changed.changed() => {
                        if moved.is_err() { return }
                    }
                }
                nonce += 1;
                if let Some((response, version)) = service.response(&names, answered, nonce) {
                    answered = Some(version);
                    if tx.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> std::result::Result<Response<DiscoveryResponse>, Status> {
        let names: BTreeSet<String> = request.into_inner().resource_names.into_iter().collect();
        self.response(&names, None, 0).map(|(r, _)| Response::new(r)).ok_or_else(|| Status::not_found("no such secret"))
    }
}
