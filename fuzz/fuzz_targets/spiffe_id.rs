#![no_main]
//! `SpiffeId::parse` (URI SANs and `io.istio.peer_principal`) on arbitrary strings.
libfuzzer_sys::fuzz_target!(|input: &str| egress_identity_fuzz::check_spiffe_id(input));
