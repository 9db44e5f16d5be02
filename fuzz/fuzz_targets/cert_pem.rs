#![no_main]
//! `principal_from_pem` (`connection.peer_certificate`) on arbitrary bytes; corpus seeded with the PEM
//! fixtures of core/tests/certs/.
libfuzzer_sys::fuzz_target!(|data: &[u8]| egress_identity_fuzz::check_certificate(data));
