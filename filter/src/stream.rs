//! The network (L4) context: one per connection, for `tcp` and `tls` passthrough destinations.
//!
//! Envoy calls `on_new_connection` before the caller's TLS handshake completes, so the peer certificate is
//! not there yet. The context holds the filter chain there, so tcp_proxy's own `on_new_connection`, where
//! it picks its cluster, waits too; on the first bytes (the certificate is there by then) it decides,
//! names the chosen cluster in the well-known filter state `envoy.tcp_proxy.cluster`, and lets the chain
//! go on: tcp_proxy then picks that cluster and connects. tcp_proxy must be configured with
//! `max_early_data_bytes` (and `upstream_connect_mode: ON_DOWNSTREAM_DATA`): without it, it stops reading
//! the connection until its upstream is up, so no first bytes would ever arrive here (the connection
//! hangs, and nothing is forwarded). A denied connection is closed before any
//! upstream connection is made. Protocols where the server speaks first cannot be decided this way (nothing
//! arrives to decide on): see README.md, "L4 egress".
//!
//! In an Istio ambient waypoint (`L4Front::FilterChainName`) none of that applies: the chain the connection
//! landed on names its destination (`inbound-vip|<port>|tcp|<host>`) and the HBONE termination has put the
//! caller's principal in filter state, so the connection is decided in `on_new_connection`, before Istio's
//! stock tcp_proxy (which connects at once) runs; nothing is held and no deadline is needed. A `tls`
//! passthrough there is decided the same way and let go on (tcp_proxy connects to the partner: TCP only), but
//! its bytes are held in `on_downstream_data` until the ClientHello names the destination's host (closed
//! otherwise, or at the deadline): nothing of the caller's reaches the partner before that.
//!
//! A connection that is still undecided after `connectionDecisionTimeoutMs` (its caller sent nothing, or
//! not the whole ClientHello) is closed by the root context's timer ([`PendingConnections`]): the filter
//! holds tcp_proxy until it decides, so no timeout of tcp_proxy's would ever run.
//!
//! When an allowed connection closes, Envoy's records say whether tcp_proxy ever connected to the partner
//! ([`upstream`]): if not, the connection's audit record is written again with the outcome (tcp_proxy
//! writes its access log after this, when the connection is gone) and the failure is counted.

use std::cell::RefCell;
use std::rc::Rc;

use egress_identity_core::certificate_cache::CertificateCache;
use egress_identity_core::config::Config;
use egress_identity_core::config_document::Protocol;
use egress_identity_core::decision::{Decision, Denial, Evaluation, Layer, PassthroughVerdict, Reason};
use egress_identity_core::pending_connections::PendingConnections;
use egress_identity_core::platform::{waypoint_chain, L4Front};
use egress_identity_core::principal::{self, Caller, HostError};
use egress_identity_core::request::normalize_host;
use egress_identity_core::tls_client_hello::{self, MAX_CLIENT_HELLO};
use proxy_wasm::traits::{Context, StreamContext};
use proxy_wasm::types::{Action, PeerType};

use crate::counters::Counters;
use crate::host::Host;
use crate::record::Record;
use crate::upstream::{self, Forwarded};

/// The filter-state key tcp_proxy reads its upstream cluster from.
const TCP_PROXY_CLUSTER: &str = "envoy.tcp_proxy.cluster";
use crate::host::DYNAMIC_HOST;

enum State {
    /// Waiting for the first bytes (and, with them, the caller's certificate).
    Undecided,
    /// Allowed to a `tls` passthrough destination; waiting for the whole ClientHello.
    AwaitingClientHello(Passthrough),
    Forwarding,
    Closed,
}

/// An allowed passthrough connection until its ClientHello has arrived.
struct Passthrough {
    destination: Box<str>,
    /// The partner's host, which the caller's ClientHello must name.
    host: Box<str>,
    /// The destination forwards an encrypted ClientHello on its outer name.
    allow_encrypted: bool,
    /// The cluster to name for tcp_proxy; `None` on a waypoint, where tcp_proxy's own cluster is the path
    /// and it has connected already.
    cluster: Option<Box<str>>,
    identity: usize,
    /// The caller, for the record of a later denial.
    principal: Box<str>,
    record: Record,
}

pub struct EgressIdentityConnection {
    host: Rc<dyn Host>,
    /// This connection's context id (the key of [`PendingConnections`]).
    id: u32,
    config: Option<Rc<Config>>,
    cache: Option<Rc<RefCell<CertificateCache>>>,
    counters: Rc<Counters>,
    /// The worker's undecided connections, which the root context closes at their deadline.
    pending: Rc<RefCell<PendingConnections>>,
    state: State,
    /// Allowed and handed to tcp_proxy, until the connection closes.
    forwarded: Option<Forwarded>,
}

impl EgressIdentityConnection {
    pub fn new(
        host: Rc<dyn Host>,
        id: u32,
        config: Option<Rc<Config>>,
        cache: Option<Rc<RefCell<CertificateCache>>>,
        counters: Rc<Counters>,
        pending: Rc<RefCell<PendingConnections>>,
    ) -> Self {
        Self { host, id, config, cache, counters, pending, state: State::Undecided, forwarded: None }
    }

    /// The connection is decided (forwarded or closed by the filter): no deadline any more.
    fn settled(&self) {
        if let Ok(mut pending) = self.pending.try_borrow_mut() {
            pending.decided(self.id);
        }
    }
}

impl Context for EgressIdentityConnection {}

impl StreamContext for EgressIdentityConnection {
    fn on_new_connection(&mut self) -> Action {
        if let Some(config) = self.config.clone().filter(|c| c.platform.l4_front() == L4Front::FilterChainName) {
            // An Istio waypoint: the chain names the destination and the caller's principal is in filter state
            // already, so decide now, before Istio's stock tcp_proxy connects (it does at once).
            let decided = self.decide(&config, 0, false);
            return self.or_close(decided);
        }
        // The deadline runs from now. Without the host's clock the connection is due at once: it is closed on
        // the next tick unless decided before (fail closed, never held for ever).
        let now = self.host.now_ms().unwrap_or(0);
        if let Ok(mut pending) = self.pending.try_borrow_mut() {
            pending.start(self.id, now);
        }
        // Hold the filters after this one, tcp_proxy included: it picks its cluster in its own
        // on_new_connection, which now runs only once this context has decided and named the cluster.
        Action::Pause
    }

    fn on_downstream_data(&mut self, data_size: usize, end_of_stream: bool) -> Action {
        let Some(config) = self.config.clone() else {
            log::error!("egress-identity: connection refused: the plugin has no valid configuration");
            return self.close();
        };
        let stepped = self.step(&config, data_size, end_of_stream);
        self.or_close(stepped)
    }

    /// The connection is closing (tcp_proxy closes it when it could not connect upstream): one host call
    /// (the response flags) for every allowed connection.
    fn on_downstream_close(&mut self, _peer_type: PeerType) {
        let timed_out = self.pending.try_borrow_mut().map(|mut pending| pending.closed(self.id)).unwrap_or(false);
        if timed_out {
            self.timed_out();
        }
        if let Some(forwarded) = self.forwarded.take() {
            if let (Some(config), Some(failure)) = (self.config.as_deref(), upstream::failure(&*self.host, false)) {
                upstream::record(&*self.host, config, &self.counters, forwarded, &failure);
            }
        }
    }
}

impl EgressIdentityConnection {
    /// The action decided, or, when a host call failed, the connection closed (a host error).
    fn or_close(&mut self, decided: Result<Action, HostError>) -> Action {
        decided.unwrap_or_else(|HostError| {
            log::error!("egress-identity: a host call failed; closing the connection");
            self.counters.host_error();
            self.close()
        })
    }

    fn step(&mut self, config: &Config, data_size: usize, end_of_stream: bool) -> Result<Action, HostError> {
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Forwarding => {
                self.state = State::Forwarding;
                Ok(Action::Continue)
            }
            State::Closed => Ok(Action::Pause),
            State::Undecided => self.decide(config, data_size, end_of_stream),
            State::AwaitingClientHello(pending) => self.check_client_hello(config, pending, data_size, end_of_stream),
        }
    }

    fn decide(&mut self, config: &Config, data_size: usize, end_of_stream: bool) -> Result<Action, HostError> {
        let host = Rc::clone(&self.host);
        let resolution = {
            let mut cache = self.cache.as_ref().and_then(|c| c.try_borrow_mut().ok());
            let lookup = |p| host.property(p);
            principal::resolve(config.principal_sources, config.san_policy, cache.as_deref_mut(), lookup)?
        };
        self.counters.count_resolution(&resolution);
        let principal_id = resolution.principal.as_ref().map(|p| p.id().as_str()).unwrap_or_default();
        let (sni, port) = match config.platform.l4_front() {
            L4Front::ServerName => (host.connection_server_name()?, host.destination_port()?),
            // Anything but a waypoint's L4 chain names no destination: malformed, denied.
            L4Front::FilterChainName => {
                let chain = host.filter_chain_name()?;
                waypoint_chain(&chain).map(|(h, p)| (h.to_string(), p)).unwrap_or_default()
            }
        };
        let evaluation =
            config.evaluate_connection(resolution.principal.as_ref().map(Caller::id).map_err(|e| *e), &sni, port);
        self.counters.count_dry_run(&evaluation);
        // A dynamic destination's concrete host (plain Envoy: the caller's SNI names the partner).
        let concrete = evaluation.dynamic_port.and_then(|_| normalize_host(&sni));
        let concrete = concrete.as_deref().unwrap_or_default();
        let record = Record::of(config.audit_record, &evaluation, principal_id, concrete);
        match evaluation.decision {
            Decision::Deny(denial) => Ok(self.deny(&denial, evaluation.destination, &record)),
            Decision::Allow(allowed) => {
                let (cluster, identity) = (allowed.identity.cluster.clone(), allowed.identity.index);
                if allowed.dynamic {
                    host.set_dynamic_upstream(concrete, allowed.port, allowed.protocol == Protocol::Tcp)?;
                } else if config.destinations.has_dynamic_l4() {
                    // The chain's sni_dynamic_forward_proxy would resolve this connection's SNI: an empty host
                    // tells it there is nothing to resolve (its cluster is not a forward proxy's).
                    host.set_envoy_filter_state(DYNAMIC_HOST, "")?;
                }
                if allowed.protocol == Protocol::Tls {
                    // The ClientHello must name the host that was allowed: a dynamic destination's concrete one.
                    let (destination, host) = (allowed.destination.into(), allowed.partner_host(concrete).into());
                    let allow_encrypted = allowed.allow_encrypted_client_hello;
                    let principal = principal_id.into();
                    let waypoint = config.platform.l4_front() == L4Front::FilterChainName;
                    let cluster = (!waypoint).then_some(cluster);
                    let pending =
                        Passthrough { destination, host, allow_encrypted, cluster, identity, principal, record };
                    if waypoint {
                        // At the connection's creation: no bytes yet. tcp_proxy goes on (and connects); the
                        // caller's bytes wait here for the ClientHello, until the deadline at most.
                        let now = self.host.now_ms().unwrap_or(0);
                        if let Ok(mut deadlines) = self.pending.try_borrow_mut() {
                            deadlines.start(self.id, now);
                        }
                        self.state = State::AwaitingClientHello(pending);
                        return Ok(Action::Continue);
                    }
                    return self.check_client_hello(config, pending, data_size, end_of_stream);
                }
                if let Some(secret) = &allowed.identity.secret {
                    // Single-cluster mode: the gateway's network set_filter_state, which runs only once this
                    // filter lets the connection go on, hands it to the upstream connection.
                    host.set_identity_secret(secret)?;
                }
                self.forward(config, Some(&cluster), identity, record)
            }
        }
    }

    /// A `tls` passthrough connection goes on only once its ClientHello names the partner's host of the
    /// destination that was allowed.
    fn check_client_hello(
        &mut self,
        config: &Config,
        pending: Passthrough,
        data_size: usize,
        end_of_stream: bool,
    ) -> Result<Action, HostError> {
        let data = self.host.downstream_data(data_size.min(MAX_CLIENT_HELLO + 64))?;
        let hello = tls_client_hello::parse(&data);
        match config.passthrough_verdict(&pending.host, pending.allow_encrypted, &hello) {
            PassthroughVerdict::Allow => {
                self.forward(config, pending.cluster.as_deref(), pending.identity, pending.record)
            }
            PassthroughVerdict::Wait if !end_of_stream => {
                self.state = State::AwaitingClientHello(pending);
                Ok(Action::Pause)
            }
            // The caller closed before its ClientHello was complete.
            PassthroughVerdict::Wait => {
                let denial = Denial { layer: Layer::Request, policy: None, reason: Reason::MalformedRequest };
                let record =
                    Record::of(config.audit_record, &Evaluation::of(Decision::Deny(denial)), &pending.principal, "");
                Ok(self.deny(&denial, Some(&pending.destination), &record))
            }
            PassthroughVerdict::Deny(denial) => {
                let evaluation = Evaluation::of(Decision::Deny(denial));
                let record = Record::of(config.audit_record, &evaluation, &pending.principal, "");
                Ok(self.deny(&denial, Some(&pending.destination), &record))
            }
        }
    }

    /// Closed by the root context at its deadline, undecided: a denial of its own.
    fn timed_out(&mut self) {
        if matches!(self.state, State::Closed) {
            // Decided (and counted) already; only its close had failed.
            return;
        }
        let denial = PendingConnections::DENIAL;
        // A request-layer denial: counted without a destination, like malformed requests.
        let principal = match &self.state {
            State::AwaitingClientHello(pending) => &*pending.principal,
            _ => "",
        };
        log::info!("egress-identity: connection closed undecided at its deadline: {denial}");
        if let Some(config) = self.config.as_deref() {
            Record::of(config.audit_record, &Evaluation::of(Decision::Deny(denial)), principal, "").store(&*self.host);
        }
        self.counters.denied(&denial, None);
        self.state = State::Closed;
    }

    /// Lets the connection go on, to `cluster` when the filter names it (else tcp_proxy's own).
    fn forward(
        &mut self,
        config: &Config,
        cluster: Option<&str>,
        identity: usize,
        record: Record,
    ) -> Result<Action, HostError> {
        if let Some(cluster) = cluster {
            self.host.set_envoy_filter_state(TCP_PROXY_CLUSTER, cluster)?;
        }
        self.settled();
        record.store(&*self.host);
        self.counters.allowed(config, identity);
        self.forwarded = Some(Forwarded { identity, record });
        self.state = State::Forwarding;
        Ok(Action::Continue)
    }

    fn deny(&mut self, denial: &Denial<'_>, destination: Option<&str>, record: &Record) -> Action {
        record.store(&*self.host);
        self.counters.denied(denial, destination);
        self.close()
    }

    fn close(&mut self) -> Action {
        self.state = State::Closed;
        // A close the host refuses leaves the connection paused (nothing is forwarded) and pending: the
        // deadline closes it.
        if self.host.close_downstream().is_ok() {
            self.settled();
        }
        Action::Pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::mock::MockHost;

    const POLICY: &str = r#"{
      "localTrustDomain": "cluster.local",
      "identities": [ { "name": "team.app1", "principals": ["cluster.local/ns/team/sa/app1"] } ],
      "gateway": { "policies": [ { "name": "mesh", "action": "ALLOW",
        "rules": [ { "from": [ { "source": { "namespaces": ["team"] } } ] } ] } ] },
      "destinations": [
        { "name": "db", "protocol": "tcp", "host": "db.partner.example", "port": 5432,
          "policies": [ { "name": "team", "action": "ALLOW",
            "rules": [ { "from": [ { "source": { "namespaces": ["team"] } } ] } ] } ],
          "identities": ["team.app1"] },
        { "name": "files", "protocol": "tls", "host": "files.partner.example", "port": 443,
          "policies": [ { "name": "team", "action": "ALLOW",
            "rules": [ { "from": [ { "source": { "namespaces": ["team"] } } ] } ] } ] } ]
    }"#;

    /// A connection from the workload of `core/tests/certs/app1.pem` with `sni` to `port`, on a mock host.
    fn connection(sni: &str, port: u16) -> (Rc<MockHost>, Rc<RefCell<PendingConnections>>, EgressIdentityConnection) {
        let config = Rc::new(Config::load(POLICY.as_bytes()).unwrap());
        let host = Rc::new(MockHost::default());
        let pem = include_bytes!("../../core/tests/certs/app1.pem").to_vec();
        let mut properties = host.properties.borrow_mut();
        properties.insert(b"connection\0peer_certificate".to_vec(), pem);
        properties.insert(b"connection\0requested_server_name".to_vec(), sni.as_bytes().to_vec());
        properties.insert(b"destination\0port".to_vec(), i64::from(port).to_le_bytes().to_vec());
        drop(properties);
        host.now_ms.set(1_000);
        let pending = Rc::new(RefCell::new(PendingConnections::new(config.connection_decision_timeout_ms)));
        let counters = Rc::new(Counters::define(host.clone(), &config, true));
        let c = EgressIdentityConnection::new(host.clone(), 7, Some(config), None, counters, Rc::clone(&pending));
        (host, pending, c)
    }

    fn calls(host: &MockHost) -> Vec<String> {
        let noise = |c: &&String| c.starts_with("property") || c.starts_with("set_filter_state") || *c == "now";
        host.calls.borrow().iter().filter(|c| !noise(c)).cloned().collect()
    }

    #[test]
    fn an_allowed_connection_names_its_cluster_and_leaves_the_deadline() {
        let (host, pending, mut c) = connection("db.partner.example", 5432);
        assert_eq!(c.on_new_connection(), Action::Pause);
        assert_eq!(pending.borrow().len(), 1);
        assert_eq!(c.on_downstream_data(5, false), Action::Continue);
        let said = calls(&host);
        assert!(said.iter().any(|s| s.starts_with("set_envoy_filter_state ")), "{said:?}");
        assert!(pending.borrow().is_empty(), "decided");
        assert_eq!(c.on_downstream_data(5, false), Action::Continue, "forwarding");
    }

    /// In an Istio waypoint the chain names the destination and filter state the caller: decided when the
    /// connection is created, with no hold and no deadline; anything but a tcp chain is refused.
    /// A connection in an Istio waypoint: on `chain`, from `principal` (as the HBONE termination sets it).
    fn waypoint_connection(
        chain: &str,
        principal: &str,
    ) -> (Rc<MockHost>, Rc<RefCell<PendingConnections>>, EgressIdentityConnection) {
        let waypoint = POLICY.replacen('{', r#"{ "platform": {"kind": "istio-waypoint"},"#, 1);
        let config = Rc::new(Config::load(waypoint.as_bytes()).unwrap());
        let host = Rc::new(MockHost::default());
        let mut properties = host.properties.borrow_mut();
        properties.insert(b"xds\0filter_chain_name".to_vec(), chain.as_bytes().to_vec());
        properties.insert(b"filter_state\0io.istio.peer_principal".to_vec(), principal.as_bytes().to_vec());
        drop(properties);
        let pending = Rc::new(RefCell::new(PendingConnections::new(config.connection_decision_timeout_ms)));
        let counters = Rc::new(Counters::define(host.clone(), &config, true));
        let c = EgressIdentityConnection::new(host.clone(), 7, Some(config), None, counters, Rc::clone(&pending));
        (host, pending, c)
    }

    #[test]
    fn a_waypoint_connection_is_decided_at_once_by_its_chain() {
        let run = |chain: &str, principal: &str| {
            let (host, pending, mut c) = waypoint_connection(chain, principal);
            let action = c.on_new_connection();
            assert!(pending.borrow().is_empty(), "no deadline");
            (action, calls(&host))
        };
        let app1 = "spiffe://cluster.local/ns/team/sa/app1";
        let (action, said) = run("inbound-vip|5432|tcp|db.partner.example", app1);
        assert_eq!(action, Action::Continue);
        let cluster = "inbound-vip|5432|tcp|team-app1.db.egress-identity.internal";
        let named = crate::protobuf::set_envoy_filter_state_arguments(TCP_PROXY_CLUSTER, cluster);
        assert_eq!(said, [format!("set_envoy_filter_state {named:?}")]);
        for (chain, principal) in [
            ("inbound-vip|5432|tcp|db.partner.example", "spiffe://cluster.local/ns/other/sa/x"),
            ("inbound-vip|5433|tcp|db.partner.example", app1),
            ("inbound-vip|80|http|db.partner.example", app1),
            ("direct-tcp", app1),
            ("", app1),
        ] {
            assert_eq!(run(chain, principal), (Action::Pause, vec!["close".to_string()]), "{chain} {principal}");
        }
    }

    /// A minimal TLS ClientHello record naming `name` (one cipher suite, the server_name extension).
    fn client_hello(name: &str) -> Vec<u8> {
        let len = |n: usize| u16::try_from(n).unwrap().to_be_bytes();
        let entry = [&[0u8][..], &len(name.len()), name.as_bytes()].concat();
        let sni = [&[0u8, 0][..], &len(entry.len() + 2), &len(entry.len()), &entry].concat();
        let body = [&[3u8, 3][..], &[7; 32], &[0, 0, 2, 0x13, 0x01, 1, 0], &len(sni.len()), &sni].concat();
        let message = [&[1u8, 0][..], &len(body.len()), &body].concat();
        [&[22u8, 3, 1][..], &len(message.len()), &message].concat()
    }

    /// A tls passthrough in a waypoint: decided at creation and let go on (tcp_proxy connects), its bytes
    /// held until the ClientHello names the destination's host, under a deadline; tcp_proxy's own cluster.
    #[test]
    fn a_waypoint_passthrough_holds_the_callers_bytes_until_its_client_hello() {
        for (sent, forwarded) in [("files.partner.example", true), ("other.partner.example", false)] {
            let chain = "inbound-vip|443|tcp|files.partner.example";
            let (host, pending, mut c) = waypoint_connection(chain, "spiffe://cluster.local/ns/team/sa/app1");
            assert_eq!(c.on_new_connection(), Action::Continue);
            assert_eq!(pending.borrow().len(), 1, "a deadline for the ClientHello");
            let hello = client_hello(sent);
            *host.downstream.borrow_mut() = hello[..9].to_vec();
            assert_eq!(c.on_downstream_data(9, false), Action::Pause, "a part of it: held");
            *host.downstream.borrow_mut() = hello.clone();
            let action = c.on_downstream_data(hello.len(), false);
            let said = calls(&host);
            let closed = said.iter().any(|c| c == "close");
            assert_eq!((action == Action::Continue, closed), (forwarded, !forwarded), "{sent}: {said:?}");
            assert!(!said.iter().any(|c| c.starts_with("set_envoy_filter_state")), "tcp_proxy's own cluster: {said:?}");
            assert!(pending.borrow().is_empty(), "{sent}: decided");
        }
    }

    #[test]
    fn a_denied_connection_is_closed_and_a_refused_close_keeps_its_deadline() {
        let (host, pending, mut c) = connection("unknown.example", 5432);
        c.on_new_connection();
        assert_eq!(c.on_downstream_data(5, false), Action::Pause);
        assert_eq!(calls(&host), ["close"]);
        assert!(pending.borrow().is_empty());

        let (host, pending, mut c) = connection("unknown.example", 5432);
        host.fail("close_downstream");
        c.on_new_connection();
        assert_eq!(c.on_downstream_data(5, false), Action::Pause);
        assert_eq!(pending.borrow().len(), 1, "still closed at its deadline");
        // The deadline's close reaches it; the denial was counted already.
        assert_eq!(pending.borrow_mut().expire(60_000), [7]);
        c.on_downstream_close(PeerType::Local);
        c.counters.flush();
        assert_eq!(
            host.counter(
                "egress_identity.decisions_total;protocol=l4;decision=deny;layer=request;reason=decision_timeout"
            ),
            0
        );
    }

    #[test]
    fn a_passthrough_waits_for_its_whole_client_hello_and_is_counted_at_its_deadline() {
        let (host, pending, mut c) = connection("files.partner.example", 443);
        c.on_new_connection();
        *host.downstream.borrow_mut() = vec![22, 3, 1, 0, 200, 1, 0]; // the start of a ClientHello
        assert_eq!(c.on_downstream_data(7, false), Action::Pause);
        assert_eq!(pending.borrow().len(), 1, "not decided yet");
        assert_eq!(pending.borrow_mut().expire(11_000), [7]);
        c.on_downstream_close(PeerType::Local);
        c.counters.flush();
        let timeouts =
            "egress_identity.decisions_total;protocol=l4;decision=deny;layer=request;reason=decision_timeout";
        assert_eq!(host.counter(timeouts), 1);
    }

    /// Every host call the decision needs, failing in turn: the connection is closed (a host_error), never
    /// handed to tcp_proxy.
    #[test]
    fn each_failing_host_call_closes_the_connection() {
        for failing in ["property", "foreign_function"] {
            let (host, _pending, mut c) = connection("db.partner.example", 5432);
            c.on_new_connection();
            host.fail(failing);
            assert_eq!(c.on_downstream_data(5, false), Action::Pause, "{failing}");
            let said = calls(&host);
            assert!(said.last().is_some_and(|s| s == "close"), "{failing}: {said:?}");
            c.counters.flush();
            assert_eq!(host.counter("egress_identity.host_errors_total"), 1, "{failing}");
        }
    }
}
