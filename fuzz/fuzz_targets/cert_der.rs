#![no_main]
//! `principal_from_pem` on mutated DER wrapped as PEM (plain and URL-encoded, as Envoy may hand it over);
//! corpus seeded with the DER of the fixtures in core/tests/certs/.
use egress_identity_fuzz::{check_certificate, der_to_pem};

libfuzzer_sys::fuzz_target!(|der: &[u8]| {
    check_certificate(&der_to_pem(der, false));
    if der.first().is_some_and(|b| b & 1 == 1) {
        check_certificate(&der_to_pem(der, true));
    }
});
