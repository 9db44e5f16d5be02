//! The `log` crate's sink: Envoy's log, through the raw ABI. (The SDK's logger panics when the host refuses
//! a line, and its panic hook panics again; here a refused line is all a failure costs.)

use crate::abi;

struct HostLogger;

static LOGGER: HostLogger = HostLogger;

/// Installs the logger (once) and its panic hook, at `level`.
pub fn init(level: log::LevelFilter) {
    if log::set_logger(&LOGGER).is_ok() {
        std::panic::set_hook(Box::new(|info| {
            let _ = abi::log(CRITICAL, &info.to_string());
        }));
    }
    log::set_max_level(level);
}

/// proxy-wasm's critical level.
const CRITICAL: u32 = 5;

/// The `log` filter for Envoy's level (0 trace .. 5 critical).
pub fn filter_of(envoy_level: u32) -> log::LevelFilter {
    match envoy_level {
        0 => log::LevelFilter::Trace,
        1 => log::LevelFilter::Debug,
        2 => log::LevelFilter::Info,
        3 => log::LevelFilter::Warn,
        4 => log::LevelFilter::Error,
        _ => log::LevelFilter::Off,
    }
}

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Trace => 0,
            log::Level::Debug => 1,
            log::Level::Info => 2,
            log::Level::Warn => 3,
            log::Level::Error => 4,
        };
        let _ = abi::log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_levels_map_to_log_filters() {
        assert_eq!(filter_of(1), log::LevelFilter::Debug);
        assert_eq!(filter_of(4), log::LevelFilter::Error);
        assert_eq!(filter_of(5), log::LevelFilter::Off);
        assert_eq!(filter_of(99), log::LevelFilter::Off);
    }
}
