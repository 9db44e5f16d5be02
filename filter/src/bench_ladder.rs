//! Benchmark only (cargo feature `bench-ladder`, never in dist/): the real filter stopped after a given
//! step, to attribute its cost per request step by step (BENCHMARKS.md, "The ladder"). The rung comes from
//! the root id, `egress-identity-rung-<N>`; any other root id runs the whole filter.
//!
//! | rung | what a request does (each rung adds one step to the one before) |
//! |---|---|
//! | 0 | nothing: the module's own context creation and dispatch |
//! | 1 | read the peer certificate's digest |
//! | 2 | resolve the principal (digest + certificate-cache lookup) |
//! | 3 | read the headers the policy uses (`:authority`, and `:path`/`:method` when rules look at them) |
//! | 4 | the decision (both layers, the identity mapping) |
//! | 5 | set the internal headers (the route then picks the identity's cluster) |
//! | 6 | the audit record (filter state for the access log) |
//! | 7 | the counters: the whole filter |

use std::sync::atomic::{AtomicU8, Ordering};

/// Every step: the whole filter.
const WHOLE: u8 = 7;
static RUNG: AtomicU8 = AtomicU8::new(WHOLE);

/// Reads the rung from the plugin's root id.
pub fn configure(root_id: &str) {
    let rung = root_id.strip_prefix("egress-identity-rung-").and_then(|n| n.parse::<u8>().ok()).unwrap_or(WHOLE);
    RUNG.store(rung.min(WHOLE), Ordering::Relaxed);
    log::warn!("egress-identity: bench-ladder build, rung {rung}: not for production");
}

/// Whether this request stops before step `step`.
pub fn stops_before(step: u8) -> bool {
    RUNG.load(Ordering::Relaxed) < step
}
