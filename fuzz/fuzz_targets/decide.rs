#![no_main]
//! `Config::decide` on a generated configuration, principal and request: deterministic, agrees with
//! `evaluate`, and allows only through an enforced ALLOW policy of each layer to a declared cluster.
use arbitrary::Unstructured;
use egress_identity_fuzz::{check_decide, Scenario};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Scenario::generate(&mut Unstructured::new(data)) {
        check_decide(&s);
    }
});
