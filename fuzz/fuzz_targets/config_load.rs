#![no_main]
//! `Config::load` (the plugin's `on_configure`) on arbitrary bytes.
libfuzzer_sys::fuzz_target!(|data: &[u8]| egress_identity_fuzz::check_config_load(data));
