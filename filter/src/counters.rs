//! The filter's counters. Each worker counts in its own VM and hands the counts to Envoy once per
//! [`metrics::FLUSH_INTERVAL`]: an `increment_metric` host call per request would cost about 1 µs of
//! gateway CPU each. Per-kind and per-identity counters are arrays indexed by the core's dense indexes
//! ([`DenialKind::index`], [`ExternalIdentity::index`]), so a request costs no lookup by name.
//!
//! [`ExternalIdentity::index`]: egress_identity_core::identity_mapping::ExternalIdentity::index

use std::cell::Cell;

use egress_identity_core::config::Config;
use egress_identity_core::decision::DenialKind;
use egress_identity_core::metrics;
use egress_identity_core::principal::{CacheUse, Caller, Resolution};
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

/// A counter whose increments stay in the VM until the next flush.
pub struct Counter {
    id: u32,
    pending: Cell<u64>,
}

impl Counter {
    fn define(name: &str) -> Option<Counter> {
        match hostcalls::define_metric(MetricType::Counter, name) {
            Ok(id) => Some(Counter { id, pending: Cell::new(0) }),
            Err(status) => {
                log::warn!("egress-identity: cannot define metric {name}: {status:?}");
                None
            }
        }
    }

    /// Hands the pending increments to Envoy; kept for the next flush if the host refuses.
    fn flush(&self) {
        let pending = self.pending.get();
        if pending == 0 {
            return;
        }
        match hostcalls::increment_metric(self.id, i64::try_from(pending).unwrap_or(i64::MAX)) {
            Ok(()) => self.pending.set(0),
            Err(status) => log::warn!("egress-identity: cannot increment metric {}: {status:?}", self.id),
        }
    }
}

/// Counts one (a counter that could not be defined counts nothing).
pub fn increment(counter: Option<&Counter>) {
    if let Some(c) = counter {
        c.pending.set(c.pending.get().saturating_add(1));
    }
}

/// The filter's counters, defined once per configuration.
#[derive(Default)]
pub struct Counters {
    pub allowed: Option<Counter>,
    pub denied: Option<Counter>,
    /// Indexed by [`DenialKind::index`].
    denied_by: Vec<Option<Counter>>,
    /// Indexed by `ExternalIdentity::index`: requests forwarded as that external identity.
    identities: Vec<Option<Counter>>,
    pub cache_hits: Option<Counter>,
    pub cache_misses: Option<Counter>,
    pub shadow_allow: Option<Counter>,
    pub shadow_deny: Option<Counter>,
    pub legacy_kuma_sans: Option<Counter>,
    pub host_errors: Option<Counter>,
}

impl Counters {
    /// The counters of the HTTP filter, or (`l4`) of the network filter: that one counts connections
    /// allowed and denied under their own names and shares the rest (per-kind denials, per-identity,
    /// cache) with the HTTP filter.
    pub fn define(config: &Config, l4: bool) -> Self {
        let (allowed, denied) = if l4 {
            (metrics::CONNECTIONS_ALLOWED, metrics::CONNECTIONS_DENIED)
        } else {
            (metrics::REQUESTS_ALLOWED, metrics::REQUESTS_DENIED)
        };
        Self {
            allowed: Counter::define(allowed),
            denied: Counter::define(denied),
            denied_by: DenialKind::ALL.iter().map(|kind| Counter::define(&metrics::denied(*kind))).collect(),
            identities: metrics::identity_counters(config).map(|name| Counter::define(&name)).collect(),
            cache_hits: Counter::define(metrics::CERTIFICATE_CACHE_HITS),
            cache_misses: Counter::define(metrics::CERTIFICATE_CACHE_MISSES),
            shadow_allow: Counter::define(metrics::DRY_RUN_SHADOW_ALLOW),
            shadow_deny: Counter::define(metrics::DRY_RUN_SHADOW_DENY),
            legacy_kuma_sans: Counter::define(metrics::LEGACY_KUMA_SAN_REQUESTS),
            host_errors: Counter::define(metrics::HOST_ERRORS),
        }
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

    pub fn denied_by(&self, kind: DenialKind) -> Option<&Counter> {
        self.denied_by.get(kind.index()).and_then(Option::as_ref)
    }

    pub fn identity(&self, index: usize) -> Option<&Counter> {
        self.identities.get(index).and_then(Option::as_ref)
    }

    pub fn flush(&self) {
        let singles = [
            &self.allowed,
            &self.denied,
            &self.cache_hits,
            &self.cache_misses,
            &self.shadow_allow,
            &self.shadow_deny,
            &self.legacy_kuma_sans,
            &self.host_errors,
        ];
        singles.into_iter().chain(&self.denied_by).chain(&self.identities).flatten().for_each(Counter::flush);
    }
}
