//! The root context (one per worker VM): loads the configuration, owns the certificate cache and the
//! counters, publishes the configuration generation, and follows Envoy's log level.

use std::cell::RefCell;
use std::rc::Rc;

use egress_identity_core::audit;
use egress_identity_core::certificate_cache::CertificateCache;
use egress_identity_core::config::Config;
use egress_identity_core::config_generation::{self, Generation};
use egress_identity_core::metrics;
use egress_identity_core::pending_connections::PendingConnections;
use proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
use proxy_wasm::types::ContextType;

use crate::abi;
use crate::counters::Counters;
use crate::guard::HandshakeGuard;
use crate::host::{self, Envoy, Host};
use crate::http::EgressIdentityFilter;
use crate::logger;
use crate::stream::EgressIdentityConnection;

/// A root id ending in this makes the plugin the network (L4) filter.
pub const L4_ROOT_ID_SUFFIX: &str = "-l4";
/// A root id ending in this makes the plugin the handshake guard ([`crate::guard`]): a network filter
/// before an HTTP connection manager that closes connections silent at their deadline, and decides nothing.
pub const GUARD_ROOT_ID_SUFFIX: &str = "-guard";

/// Per-VM (per worker) state.
pub struct EgressIdentityRoot {
    host: Rc<dyn Host>,
    config: Option<Rc<Config>>,
    cache: Option<Rc<RefCell<CertificateCache>>>,
    counters: Rc<Counters>,
    log_level: Option<u32>,
    /// Loaded as the network filter (root id `…-l4`): connections, not requests.
    l4: bool,
    /// Loaded as the handshake guard (root id `…-guard`).
    guard: bool,
    /// The network filter's undecided connections, closed on the timer at their deadline.
    pending: Rc<RefCell<PendingConnections>>,
}

impl Default for EgressIdentityRoot {
    fn default() -> Self {
        Self {
            host: Rc::new(Envoy),
            config: None,
            cache: None,
            counters: Rc::default(),
            log_level: None,
            l4: false,
            guard: false,
            pending: Rc::default(),
        }
    }
}

impl EgressIdentityRoot {
    /// Sets the plugin's log level to Envoy's, so `debug` lines appear exactly when Envoy logs Wasm at
    /// debug. Asked at configure time and on every tick (the level can change at run time).
    fn follow_envoy_log_level(&mut self) {
        let level = host::envoy_log_level();
        if level.is_some() && level != self.log_level {
            self.log_level = level;
            if let Some(level) = level {
                logger::init(logger::filter_of(level));
            }
        }
    }
}

impl EgressIdentityRoot {
    /// Closes the connections still undecided at their deadline (each context then counts its denial when
    /// its close reaches it). Runs on every tick: a deadline is kept to within the tick period (1 s).
    fn close_overdue_connections(&mut self) {
        if !self.l4 && !self.guard {
            return;
        }
        let Ok(now) = self.host.now_ms() else {
            log::warn!("egress-identity: cannot read the host's clock: undecided connections wait for the next tick");
            return;
        };
        let overdue = match self.pending.try_borrow_mut() {
            Ok(mut pending) => pending.expire(now),
            Err(_) => return,
        };
        for id in overdue {
            // A connection already gone fails here: nothing to close.
            let _ = self.host.close_connection_of(id);
        }
    }
}

impl Context for EgressIdentityRoot {
    /// The plugin is being removed (e.g. a listener update): publish what was counted since the last tick.
    fn on_done(&mut self) -> bool {
        self.counters.flush();
        true
    }
}

impl RootContext for EgressIdentityRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        self.follow_envoy_log_level();
        let root_id = host::plugin_root_id();
        self.l4 = root_id.ends_with(L4_ROOT_ID_SUFFIX);
        self.guard = root_id.ends_with(GUARD_ROOT_ID_SUFFIX);
        #[cfg(feature = "bench-ladder")]
        crate::bench_ladder::configure(&root_id);
        let bytes = match abi::get_buffer(abi::PLUGIN_CONFIGURATION, 0, usize::MAX) {
            Ok(Some(bytes)) if !bytes.is_empty() => bytes,
            _ => {
                log::error!("egress-identity: invalid configuration: .: no plugin configuration given");
                return false;
            }
        };
        let config = match Config::load(&bytes) {
            Ok(config) => config,
            Err(errors) => {
                for error in errors {
                    log::error!("egress-identity: invalid configuration: {error}");
                }
                return false;
            }
        };
        if self.l4 && !config.destinations.has_l4() {
            log::warn!("egress-identity: loaded as the network filter, but no destination is tcp or tls: every connection is denied");
        }
        self.cache = Some(Rc::new(RefCell::new(CertificateCache::new(config.certificate_cache_size))));
        self.counters.flush();
        self.counters = Rc::new(if self.guard {
            Counters::guard(Rc::clone(&self.host))
        } else {
            Counters::define(Rc::clone(&self.host), &config, self.l4)
        });
        // One table for the VM's life: connections of a previous configuration keep their deadlines, and the
        // timer keeps closing them.
        if let Ok(mut pending) = self.pending.try_borrow_mut() {
            pending.set_timeout_ms(config.connection_decision_timeout_ms);
        }
        let period = u32::try_from(metrics::FLUSH_INTERVAL.as_millis()).unwrap_or(1000);
        if let Err(status) = abi::set_tick_period_ms(period) {
            log::warn!("egress-identity: cannot set the tick period, counters are not published (and undecided connections not closed): status {status}");
        }
        publish_build_info();
        let fingerprint = config_generation::fingerprint(&bytes);
        // Logged once per configuration: by the worker whose load moved the generation.
        if let Some(generation) = publish_config_generation(fingerprint) {
            log::info!(
                "version {} (revision {}): configuration {fingerprint:016x} (generation {generation}) loaded: {} gateway policies, {} destinations ({} tcp/tls), {} identities, platform {}",
                env!("CARGO_PKG_VERSION"),
                env!("EGRESS_IDENTITY_REVISION"),
                config.gateway.len(),
                config.destinations.iter().count(),
                config.destinations.iter().filter(|d| d.protocol.is_l4()).count(),
                config.identities.len(),
                config.platform.describe()
            );
        }
        // Declared only when written (`auditRecord`).
        if !self.guard && config.audit_record.object() && self.host.declare_decision_property(self.l4).is_err() {
            log::warn!(
                "cannot declare filter state {}; the access log's decision object stays empty",
                audit::STRUCT_FILTER_STATE_KEY
            );
        }
        self.config = Some(Rc::new(config));
        true
    }

    fn on_tick(&mut self) {
        self.close_overdue_connections();
        self.counters.flush();
        self.follow_envoy_log_level();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(EgressIdentityFilter::new(
            Rc::clone(&self.host),
            self.config.clone(),
            self.cache.clone(),
            Rc::clone(&self.counters),
        )))
    }

    fn create_stream_context(&self, context_id: u32) -> Option<Box<dyn StreamContext>> {
        if self.guard {
            return Some(Box::new(HandshakeGuard::new(
                Rc::clone(&self.host),
                context_id,
                Rc::clone(&self.counters),
                Rc::clone(&self.pending),
            )));
        }
        Some(Box::new(EgressIdentityConnection::new(
            Rc::clone(&self.host),
            context_id,
            self.config.clone(),
            self.cache.clone(),
            Rc::clone(&self.counters),
            Rc::clone(&self.pending),
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(if self.l4 || self.guard { ContextType::StreamContext } else { ContextType::HttpContext })
    }
}

/// Sets the build-info gauge (`egress_identity_build_info{version,revision}`) to 1.
fn publish_build_info() {
    let name = metrics::build_info(env!("CARGO_PKG_VERSION"), env!("EGRESS_IDENTITY_REVISION"));
    let recorded = abi::define_metric(abi::GAUGE, &name).and_then(|gauge| abi::record_metric(gauge, 1));
    if let Err(status) = recorded {
        log::warn!("egress-identity: cannot publish {name}: status {status}");
    }
}

/// Sets the config-generation gauge from the record in shared data (see [`Generation::next`]),
/// retrying when another worker updates the record at the same time.
/// Returns the generation when this call moved it (the first worker to load a new configuration).
fn publish_config_generation(fingerprint: u64) -> Option<u64> {
    let gauge = match abi::define_metric(abi::GAUGE, metrics::CONFIG_GENERATION) {
        Ok(gauge) => gauge,
        Err(status) => {
            log::warn!("egress-identity: cannot define the config-generation gauge: status {status}");
            return None;
        }
    };
    for _ in 0..8 {
        let (stored, cas) = match abi::get_shared_data(config_generation::SHARED_DATA_KEY) {
            Ok(found) => found,
            Err(status) => {
                log::warn!("egress-identity: cannot read the config generation: status {status}");
                return None;
            }
        };
        let next = Generation::next(stored.as_deref(), fingerprint);
        let moved = stored.as_deref().and_then(Generation::parse) != Some(next);
        match abi::set_shared_data(config_generation::SHARED_DATA_KEY, next.record().as_bytes(), cas) {
            Ok(()) => {
                if let Err(status) = abi::record_metric(gauge, next.generation) {
                    log::warn!("egress-identity: cannot record the config generation: status {status}");
                }
                return moved.then_some(next.generation);
            }
            Err(abi::CAS_MISMATCH) => continue,
            Err(status) => {
                log::warn!("egress-identity: cannot store the config generation: status {status}");
                return None;
            }
        }
    }
    None
}
