//! The filter's counters (names and tags: [`metrics`]). Each worker counts in its own VM and hands the
//! counts to Envoy once per [`metrics::FLUSH_INTERVAL`]: an `increment_metric` host call per request would
//! cost about 1 µs of gateway CPU each. Allowed decisions are counted in an array indexed by the core's
//! dense identity index ([`ExternalIdentity::index`]), so an allowed request costs no lookup by name; the
//! first [`MAX_IDENTITY_SERIES_UP_FRONT`] identities' counters are defined up front, the others' at their
//! first allowed decision (defining a stat costs Envoy ~70 µs: 10,000 of them would add 0.7 s to every
//! configuration).
//! Denials are counted per (kind, policy, destination); the series a configuration can produce are defined
//! up front, up to [`MAX_DENIAL_SERIES`] (then at their first occurrence; past the bound, per kind only).
//! Each filter (HTTP, network) defines only series it can count: none for the other filter's identities, and
//! of the other filter's destinations only `protocol_mismatch`.
//! Upstream failures (allowed, then never reached the partner) are counted per identity and outcome, in an
//! array indexed like the allowed ones (times the outcomes); the first [`MAX_UPSTREAM_FAILURE_SERIES_UP_FRONT`]
//! series are defined up front, the others at their first failure.
//!
//! [`ExternalIdentity::index`]: egress_identity_core::identity_mapping::ExternalIdentity::index

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::rc::Rc;

use egress_identity_core::audit::Outcome;
use egress_identity_core::config::Config;
use egress_identity_core::config_document::Protocol;
use egress_identity_core::decision::{Denial, DenialKind, Evaluation, Layer};
use egress_identity_core::metrics;
use egress_identity_core::principal::{CacheUse, Caller, Resolution};

use crate::host::Host;

/// A counter whose increments stay in the VM until the next flush.
pub struct Counter {
    id: u32,
    pending: Cell<u64>,
}

impl Counter {
    fn define(host: Option<&dyn Host>, name: &str) -> Option<Counter> {
        host?.define_counter(name).ok().map(|id| Counter { id, pending: Cell::new(0) })
    }

    /// Hands the pending increments to Envoy; kept for the next flush if the host refuses.
    fn flush(&self, host: &dyn Host) {
        let pending = self.pending.get();
        if pending == 0 {
            return;
        }
        if host.increment_counter(self.id, i64::try_from(pending).unwrap_or(i64::MAX)).is_ok() {
            self.pending.set(0);
        }
    }
}

/// Counts one (a counter that could not be defined counts nothing).
pub fn increment(counter: Option<&Counter>) {
    if let Some(c) = counter {
        c.pending.set(c.pending.get().saturating_add(1));
    }
}

/// How many identities' allow counters a configuration defines up front (the rest at first use).
pub const MAX_IDENTITY_SERIES_UP_FRONT: usize = 1024;

/// How many denial series (kind, policy, destination) one configuration defines at most.
pub const MAX_DENIAL_SERIES: usize = 1024;

/// How many upstream-failure series (identity, outcome) a configuration defines up front (the rest at their
/// first failure): three per identity would otherwise triple what the allow counters cost a configuration.
pub const MAX_UPSTREAM_FAILURE_SERIES_UP_FRONT: usize = 1024;

/// The filter's counters, defined once per configuration.
#[derive(Default)]
pub struct Counters {
    /// Where the counters live (none: a root context before its first configuration counts nothing).
    host: Option<Rc<dyn Host>>,
    /// `http` or `l4`: the `protocol` tag of this filter's decisions.
    protocol: &'static str,
    /// Indexed by `ExternalIdentity::index`: decisions forwarded as that external identity (defined up
    /// front for the first [`MAX_IDENTITY_SERIES_UP_FRONT`], else at the first one).
    allowed: Vec<OnceCell<Option<Counter>>>,
    /// Indexed by `ExternalIdentity::index * Outcome::ALL.len() + Outcome::index`: allowed decisions that
    /// never reached the partner.
    upstream_failures: Vec<OnceCell<Option<Counter>>>,
    denied: RefCell<DenialSeries>,
    host_errors: Option<Counter>,
    host_error_decisions: Option<Counter>,
    cache_hits: Option<Counter>,
    cache_misses: Option<Counter>,
    shadow_allow: Option<Counter>,
    shadow_deny: Option<Counter>,
    legacy_kuma_sans: Option<Counter>,
    /// The handshake guard's closes ([`crate::guard`]).
    handshake_timeouts: Option<Counter>,
}

/// One denial series: kind, policy, destination.
struct DenialKey {
    kind: DenialKind,
    policy: Option<Box<str>>,
    destination: Option<Box<str>>,
}

/// The denial counters met so far, by a hash of their key (collisions kept apart by comparing the key).
#[derive(Default)]
struct DenialSeries {
    host: Option<Rc<dyn Host>>,
    by_hash: HashMap<u64, Vec<(DenialKey, Option<Counter>)>>,
    len: usize,
}

/// Whether denials of this kind name a destination (the layers after the destination lookup).
fn has_destination(kind: DenialKind) -> bool {
    matches!(kind.layer(), Layer::Destination | Layer::Identity) && kind != DenialKind::UnknownDestination
}

fn denial_hash(kind: DenialKind, policy: Option<&str>, destination: Option<&str>) -> u64 {
    let mut hasher = rustc_hash::FxHasher::default();
    (kind, policy, destination).hash(&mut hasher);
    hasher.finish()
}

impl DenialSeries {
    /// Counts one denial, defining its series the first time (no allocation once defined).
    fn count(&mut self, protocol: &str, kind: DenialKind, policy: Option<&str>, destination: Option<&str>) {
        // Past the bound, new combinations are counted per kind only.
        let (policy, destination) = if self.len >= MAX_DENIAL_SERIES && !self.has(kind, policy, destination) {
            (None, None)
        } else {
            (policy, destination)
        };
        let bucket = self.by_hash.entry(denial_hash(kind, policy, destination)).or_default();
        let same = |key: &DenialKey| {
            key.kind == kind && key.policy.as_deref() == policy && key.destination.as_deref() == destination
        };
        if let Some((_, counter)) = bucket.iter().find(|(key, _)| same(key)) {
            increment(counter.as_ref());
            return;
        }
        self.define(protocol, kind, policy, destination);
        self.count(protocol, kind, policy, destination);
    }

    /// Defines a series now, at zero.
    fn define(&mut self, protocol: &str, kind: DenialKind, policy: Option<&str>, destination: Option<&str>) {
        let counter = Counter::define(self.host.as_deref(), &metrics::denied(protocol, kind, policy, destination));
        let key = DenialKey { kind, policy: policy.map(Box::from), destination: destination.map(Box::from) };
        self.by_hash.entry(denial_hash(kind, policy, destination)).or_default().push((key, counter));
        self.len += 1;
    }

    fn has(&self, kind: DenialKind, policy: Option<&str>, destination: Option<&str>) -> bool {
        self.by_hash.get(&denial_hash(kind, policy, destination)).is_some_and(|bucket| {
            bucket.iter().any(|(key, _)| {
                key.kind == kind && key.policy.as_deref() == policy && key.destination.as_deref() == destination
            })
        })
    }

    fn counters(&self) -> impl Iterator<Item = &Counter> {
        self.by_hash.values().flatten().filter_map(|(_, counter)| counter.as_ref())
    }
}

impl Counters {
    /// The counters of the HTTP filter, or (`l4`) of the network filter: the same families, told apart by
    /// their `protocol` tag.
    pub fn define(host: Rc<dyn Host>, config: &Config, l4: bool) -> Self {
        let protocol = metrics::protocol(l4);
        // Series that exist from the start: Prometheus' rate() and increase() only see a series' increments
        // after its first sample, so the first denial of a series born at 1 would go unseen. Every denial
        // without a destination (request, principal, gateway layers, unknown destinations), then each
        // destination's, until MAX_DENIAL_SERIES; past that, a destination's series appear at its first
        // denial.
        let mut denied = DenialSeries { host: Some(Rc::clone(&host)), ..DenialSeries::default() };
        let h = Some(&*host);
        // decision_timeout: connections only.
        let kinds = DenialKind::ALL.iter().copied().filter(|k| l4 || *k != DenialKind::DecisionTimeout);
        for kind in kinds.filter(|k| !has_destination(*k)) {
            if kind == DenialKind::GatewayDeniedByPolicy {
                for policy in config.gateway.deny_policy_names() {
                    denied.define(protocol, kind, Some(policy), None);
                }
            } else {
                denied.define(protocol, kind, None, None);
            }
        }
        for d in config.destinations.iter() {
            let name = Some(&*d.name);
            let mut series: Vec<(DenialKind, Option<&str>)> =
                d.policies.deny_policy_names().map(|p| (DenialKind::DestinationDeniedByPolicy, Some(p))).collect();
            series.extend([
                (DenialKind::DestinationNoMatchingAllow, None),
                (DenialKind::NoIdentityMapping, None),
                (DenialKind::ProtocolMismatch, None),
            ]);
            if d.protocol == Protocol::Tls {
                series.extend(
                    [
                        DenialKind::SniMismatch,
                        DenialKind::MultipleServerNames,
                        DenialKind::MultipleSniExtensions,
                        DenialKind::ServerNameNotHostName,
                    ]
                    .map(|kind| (kind, None)),
                );
                if !d.allow_encrypted_client_hello {
                    series.push((DenialKind::EncryptedClientHello, None));
                }
            }
            series.retain(|(kind, _)| metrics::denial_possible(*kind, d.protocol, l4));
            if denied.len + series.len() > MAX_DENIAL_SERIES {
                break;
            }
            for (kind, policy) in series {
                denied.define(protocol, kind, policy, name);
            }
        }
        // The other filter's identities get an empty slot: this filter never forwards to them.
        let mut up_front = 0;
        let allowed: Vec<OnceCell<Option<Counter>>> = metrics::identity_counters(config, l4)
            .map(|name| match name {
                Some(name) if up_front < MAX_IDENTITY_SERIES_UP_FRONT => {
                    up_front += 1;
                    OnceCell::from(Counter::define(h, &name))
                }
                _ => OnceCell::new(),
            })
            .collect();
        let mut up_front = 0;
        let upstream_failures: Vec<OnceCell<Option<Counter>>> = metrics::upstream_failure_counters(config, l4)
            .map(|name| match name {
                Some(name) if up_front < MAX_UPSTREAM_FAILURE_SERIES_UP_FRONT => {
                    up_front += 1;
                    OnceCell::from(Counter::define(h, &name))
                }
                _ => OnceCell::new(),
            })
            .collect();
        Self {
            host: Some(Rc::clone(&host)),
            protocol,
            allowed,
            upstream_failures,
            denied: RefCell::new(denied),
            host_errors: Counter::define(h, metrics::HOST_ERRORS),
            host_error_decisions: Counter::define(h, &metrics::plugin_denied(protocol, "host_error")),
            cache_hits: Counter::define(h, metrics::CERTIFICATE_CACHE_HITS),
            cache_misses: Counter::define(h, metrics::CERTIFICATE_CACHE_MISSES),
            shadow_allow: Counter::define(h, &metrics::dry_run("allow")),
            shadow_deny: Counter::define(h, &metrics::dry_run("deny")),
            legacy_kuma_sans: Counter::define(h, metrics::LEGACY_KUMA_SANS),
            handshake_timeouts: None,
        }
    }

    /// The handshake guard's only counter: it decides nothing.
    pub fn guard(host: Rc<dyn Host>) -> Self {
        let handshake_timeouts = Counter::define(Some(&*host), metrics::HANDSHAKE_TIMEOUTS);
        Self { host: Some(host), handshake_timeouts, ..Self::default() }
    }

    /// Counts how the caller's principal was found: from the certificate cache or not, and whether only
    /// `acceptLegacyKumaSans` let it in.
    pub fn count_resolution(&self, resolution: &Resolution) {
        match resolution.cache {
            CacheUse::Hit => increment(self.cache_hits.as_ref()),
            CacheUse::Miss => increment(self.cache_misses.as_ref()),
            CacheUse::None => {}
        }
        if resolution.principal.as_ref().is_ok_and(Caller::legacy_kuma_sans) {
            increment(self.legacy_kuma_sans.as_ref());
        }
    }

    /// Counts what dry-run policies would have decided.
    pub fn count_dry_run(&self, evaluation: &Evaluation<'_>) {
        match evaluation.shadow_allowed() {
            None => {}
            Some(true) => increment(self.shadow_allow.as_ref()),
            Some(false) => increment(self.shadow_deny.as_ref()),
        }
    }

    /// Counts a decision forwarded as the identity of this index (of `config`, the configuration these
    /// counters were defined for), defining its counter if this is its first.
    pub fn allowed(&self, config: &Config, identity: usize) {
        let Some(cell) = self.allowed.get(identity) else { return };
        let counter = cell.get_or_init(|| {
            let (d, i) = config.destinations.identities().nth(identity)?;
            Counter::define(self.host.as_deref(), &metrics::allowed(self.protocol, &d.name, &i.name))
        });
        increment(counter.as_ref());
    }

    /// Counts an allowed decision, forwarded as the identity of this index (of `config`), that never reached
    /// the partner, defining its counter if this is its first.
    pub fn upstream_failure(&self, config: &Config, identity: usize, outcome: Outcome) {
        let slot = identity.checked_mul(Outcome::ALL.len()).and_then(|i| i.checked_add(outcome.index()));
        let Some(cell) = slot.and_then(|i| self.upstream_failures.get(i)) else { return };
        let counter = cell.get_or_init(|| {
            let (d, i) = config.destinations.identities().nth(identity)?;
            Counter::define(self.host.as_deref(), &metrics::upstream_failure(self.protocol, &d.name, &i.name, outcome))
        });
        increment(counter.as_ref());
    }

    /// Counts a denial, with the destination when the decision got that far.
    pub fn denied(&self, denial: &Denial<'_>, destination: Option<&str>) {
        if let Ok(mut series) = self.denied.try_borrow_mut() {
            series.count(self.protocol, denial.kind(), denial.policy, destination);
        }
    }

    /// Counts a refusal because a host call failed.
    pub fn host_error(&self) {
        increment(self.host_errors.as_ref());
        increment(self.host_error_decisions.as_ref());
    }

    /// Counts a connection the handshake guard closed at its deadline.
    pub fn handshake_timeout(&self) {
        increment(self.handshake_timeouts.as_ref());
    }

    pub fn flush(&self) {
        let Some(host) = self.host.as_deref() else { return };
        let singles = [
            &self.host_errors,
            &self.host_error_decisions,
            &self.cache_hits,
            &self.cache_misses,
            &self.shadow_allow,
            &self.shadow_deny,
            &self.legacy_kuma_sans,
            &self.handshake_timeouts,
        ];
        singles
            .into_iter()
            .flatten()
            .chain(self.allowed.iter().filter_map(|c| c.get()?.as_ref()))
            .chain(self.upstream_failures.iter().filter_map(|c| c.get()?.as_ref()))
            .for_each(|c| c.flush(host));
        if let Ok(series) = self.denied.try_borrow() {
            series.counters().for_each(|c| c.flush(host));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::mock::MockHost;

    const POLICY: &str = r#"{ "localTrustDomain": "cluster.local",
      "identities": [ { "name": "team.app1", "principals": ["cluster.local/ns/team/sa/app1"] } ],
      "destinations": [ { "name": "api", "host": "api.example", "port": 443, "identities": ["team.app1"] } ] }"#;

    /// Counts stay in the VM until a flush; a flush the host refuses keeps them for the next one.
    #[test]
    fn counts_wait_for_a_flush_and_survive_a_refused_one() {
        let config = Config::load(POLICY.as_bytes()).unwrap();
        let host = Rc::new(MockHost::default());
        let counters = Counters::define(host.clone(), &config, false);
        let allowed = metrics::allowed("http", "api", "team.app1");
        counters.allowed(&config, 0);
        counters.allowed(&config, 0);
        counters.host_error();
        assert_eq!(host.counter(&allowed), 0, "not before the flush");
        host.fail("increment_counter");
        counters.flush();
        assert_eq!(host.counter(&allowed), 0);
        host.heal();
        counters.flush();
        assert_eq!(host.counter(&allowed), 2);
        assert_eq!(host.counter(metrics::HOST_ERRORS), 1);
        counters.flush();
        assert_eq!(host.counter(&allowed), 2, "counted once");
        // Identities out of range, and counters the host would not define, count nothing (and do not panic).
        counters.allowed(&config, 99);
        let refused = Rc::new(MockHost::default());
        refused.fail("define_counter");
        let none = Counters::define(refused.clone(), &config, false);
        none.allowed(&config, 0);
        none.flush();
        assert!(refused.counters.borrow().is_empty());
    }
}
