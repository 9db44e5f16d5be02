//! The handshake guard: the module as a network filter in front of an HTTP connection manager (root id
//! `…-guard`), for gateways whose filter chains have no handshake deadline of their own and cannot be given
//! one (Kuma's zone egress: README.md, "Threat model"). It decides nothing: it closes a connection that has
//! sent no bytes through the chain `connectionDecisionTimeoutMs` after it was accepted, and then steps aside.
//!
//! Envoy calls `on_new_connection` when it accepts the connection, before the TLS handshake; the first
//! `on_downstream_data` comes only once the handshake is done and the caller has sent something. So a
//! caller that stalls its handshake, or completes it and sends nothing, is closed at the deadline (by the
//! root context's timer, as undecided L4 connections are: [`PendingConnections`]); one that speaks is left
//! to the HTTP connection manager and its own deadlines.

use std::cell::RefCell;
use std::rc::Rc;

use egress_identity_core::pending_connections::PendingConnections;
use proxy_wasm::traits::{Context, StreamContext};
use proxy_wasm::types::{Action, PeerType};

use crate::counters::Counters;
use crate::host::Host;

/// One per connection.
pub struct HandshakeGuard {
    host: Rc<dyn Host>,
    id: u32,
    counters: Rc<Counters>,
    pending: Rc<RefCell<PendingConnections>>,
}

impl HandshakeGuard {
    pub fn new(host: Rc<dyn Host>, id: u32, counters: Rc<Counters>, pending: Rc<RefCell<PendingConnections>>) -> Self {
        Self { host, id, counters, pending }
    }
}

impl Context for HandshakeGuard {}

impl StreamContext for HandshakeGuard {
    fn on_new_connection(&mut self) -> Action {
        // Without the host's clock the connection is due at once: closed on the next tick unless it speaks
        // first (fail closed, never held for ever).
        let now = self.host.now_ms().unwrap_or(0);
        if let Ok(mut pending) = self.pending.try_borrow_mut() {
            pending.start(self.id, now);
        }
        Action::Continue
    }

    fn on_downstream_data(&mut self, _data_size: usize, _end_of_stream: bool) -> Action {
        if let Ok(mut pending) = self.pending.try_borrow_mut() {
            pending.decided(self.id);
        }
        Action::Continue
    }

    fn on_downstream_close(&mut self, _peer_type: PeerType) {
        let timed_out = self.pending.try_borrow_mut().map(|mut pending| pending.closed(self.id)).unwrap_or(false);
        if timed_out {
            log::info!("egress-identity: connection closed at its deadline: no TLS handshake completed, or nothing sent after it");
            self.counters.handshake_timeout();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::mock::MockHost;
    use egress_identity_core::metrics;

    fn guard() -> (Rc<MockHost>, Rc<RefCell<PendingConnections>>, Rc<Counters>, HandshakeGuard) {
        let host = Rc::new(MockHost::default());
        host.now_ms.set(1_000);
        let pending = Rc::new(RefCell::new(PendingConnections::new(10_000)));
        let counters = Rc::new(Counters::guard(host.clone()));
        let g = HandshakeGuard::new(host.clone(), 9, Rc::clone(&counters), Rc::clone(&pending));
        (host, pending, counters, g)
    }

    /// A connection that never speaks is due at its deadline, and its close is counted.
    #[test]
    fn a_silent_connection_is_due_at_the_deadline_and_counted() {
        let (host, pending, counters, mut g) = guard();
        assert!(matches!(g.on_new_connection(), Action::Continue));
        assert!(pending.borrow_mut().expire(10_999).is_empty());
        assert_eq!(pending.borrow_mut().expire(11_000), vec![9]);
        g.on_downstream_close(PeerType::Local);
        counters.flush();
        assert_eq!(host.counter(metrics::HANDSHAKE_TIMEOUTS), 1);
    }

    /// A connection whose first bytes arrive in time is left alone, and its close counts nothing.
    #[test]
    fn a_connection_that_speaks_is_left_to_the_chain() {
        let (host, pending, counters, mut g) = guard();
        g.on_new_connection();
        assert!(matches!(g.on_downstream_data(100, false), Action::Continue));
        assert!(pending.borrow_mut().expire(u64::MAX).is_empty());
        g.on_downstream_close(PeerType::Remote);
        counters.flush();
        assert_eq!(host.counter(metrics::HANDSHAKE_TIMEOUTS), 0);
        assert!(!host.calls.borrow().iter().any(|c| c.starts_with("close")), "{:?}", host.calls.borrow());
    }

    /// Without the host's clock, the connection is due at once (never held for ever).
    #[test]
    fn without_a_clock_the_connection_is_due_at_once() {
        let (host, pending, _counters, mut g) = guard();
        host.fail("now_ms");
        g.on_new_connection();
        assert_eq!(pending.borrow_mut().expire(10_000), vec![9]);
    }
}
