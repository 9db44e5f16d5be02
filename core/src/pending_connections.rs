//! Connections the network filter holds undecided, each with the time it must be decided by.
//!
//! The network filter decides on a connection's first bytes (and, for a `tls` passthrough destination, on its
//! whole ClientHello), holding the filter chain until then: tcp_proxy, and with it every timeout of its own,
//! starts only once the filter lets the connection go on. A caller that sends nothing, or a ClientHello a
//! byte at a time, would hold the connection for ever. So each connection starts here and leaves when it is
//! decided or closed; one still here at its deadline is closed by the gateway, a denial of its own
//! (`request`/`decision_timeout`). The adapter sweeps the table on its timer.

use rustc_hash::{FxHashMap, FxHashSet};

use crate::decision::{Denial, Layer, Reason};

/// Connections waiting for their decision, per worker. Its size is bounded by the worker's connections:
/// each entry leaves when its connection is decided or closed.
#[derive(Debug, Default)]
pub struct PendingConnections {
    timeout_ms: u64,
    /// Connection (context id) → its deadline, in milliseconds since the epoch.
    deadlines: FxHashMap<u32, u64>,
    /// Connections closed for their deadline, until the close reaches them.
    expired: FxHashSet<u32>,
}

impl PendingConnections {
    /// A table whose connections must be decided within `timeout_ms`.
    pub fn new(timeout_ms: u64) -> Self {
        Self { timeout_ms, ..Self::default() }
    }

    /// The timeout of connections that start from now on (a new configuration's); those already waiting
    /// keep their deadline.
    pub fn set_timeout_ms(&mut self, timeout_ms: u64) {
        self.timeout_ms = timeout_ms;
    }

    /// Connection `id` started undecided at `now_ms`.
    pub fn start(&mut self, id: u32, now_ms: u64) {
        self.deadlines.insert(id, now_ms.saturating_add(self.timeout_ms));
    }

    /// Connection `id` was decided (allowed or denied): no deadline any more.
    pub fn decided(&mut self, id: u32) {
        self.deadlines.remove(&id);
    }

    /// The connections whose deadline has passed at `now_ms`, oldest deadline first: they leave the table,
    /// marked expired until [`Self::closed`] is told.
    pub fn expire(&mut self, now_ms: u64) -> Vec<u32> {
        let mut due: Vec<(u64, u32)> =
            self.deadlines.iter().filter(|(_, deadline)| **deadline <= now_ms).map(|(id, d)| (*d, *id)).collect();
        due.sort_unstable();
        for (_, id) in &due {
            self.deadlines.remove(id);
            self.expired.insert(*id);
        }
        due.into_iter().map(|(_, id)| id).collect()
    }

    /// Connection `id` closed: whether it was closed for its deadline (then it is denied
    /// [`Self::DENIAL`]). It leaves the table either way.
    pub fn closed(&mut self, id: u32) -> bool {
        self.deadlines.remove(&id);
        self.expired.remove(&id)
    }

    /// How many connections wait for their decision.
    pub fn len(&self) -> usize {
        self.deadlines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.deadlines.is_empty()
    }

    /// The denial of a connection still undecided at its deadline.
    pub const DENIAL: Denial<'static> = Denial { layer: Layer::Request, policy: None, reason: Reason::DecisionTimeout };
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_bindgen_test::wasm_bindgen_test;

    #[wasm_bindgen_test(unsupported = test)]
    fn an_undecided_connection_expires_at_its_deadline_and_only_then() {
        let mut pending = PendingConnections::new(10_000);
        pending.start(1, 1_000);
        pending.start(2, 2_000);
        pending.start(3, 3_000);
        pending.decided(2);
        assert_eq!(pending.expire(10_999), Vec::<u32>::new());
        assert_eq!(pending.expire(11_000), [1]);
        assert_eq!(pending.expire(11_000), Vec::<u32>::new(), "once");
        assert_eq!(pending.len(), 1);
        assert_eq!(pending.expire(60_000), [3]);
        assert!(pending.is_empty());
        // The close that follows tells expired connections from others.
        assert!(pending.closed(1));
        assert!(!pending.closed(1), "once");
        pending.start(4, 0);
        assert!(!pending.closed(4), "closed by the caller before its deadline");
        assert_eq!(pending.expire(u64::MAX), Vec::<u32>::new());
        // A new timeout applies to connections that start after it.
        pending.start(5, 0);
        pending.set_timeout_ms(1);
        pending.start(6, 0);
        assert_eq!(pending.expire(1), [6]);
        assert_eq!(pending.expire(10_000), [5]);
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn several_expire_oldest_first() {
        let mut pending = PendingConnections::new(5);
        for (id, at) in [(7, 30), (8, 10), (9, 20)] {
            pending.start(id, at);
        }
        assert_eq!(pending.expire(100), [8, 9, 7]);
        assert_eq!(PendingConnections::DENIAL.reason_code(), "decision_timeout");
        assert_eq!(PendingConnections::DENIAL.layer, Layer::Request);
    }
}
