//! Replays the inputs under fuzz/regressions/<target>/ (crashes the fuzz targets once found) through the
//! same core entry points as the targets, so a fixed crash stays fixed. See fuzz/regressions/README.md.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::PathBuf;

use egress_identity::config::Config;
use egress_identity::peer_certificate::{principal_from_pem, SanPolicy};
use egress_identity::spiffe_id::SpiffeId;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions").join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut files: Vec<_> = entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
    files.sort();
    files.into_iter().map(|p| { let b = std::fs::read(&p).unwrap(); (p, b) }).collect()
}

#[test]
fn config_regressions_load_without_panicking() {
    for target in ["config_load", "config_json"] {
        for (path, bytes) in inputs(target) {
            if let Err(errors) = Config::load(&bytes) {
                assert!(!errors.is_empty(), "{}", path.display());
            }
        }
    }
}

#[test]
fn spiffe_id_regressions_parse_without_panicking() {
    for (path, bytes) in inputs("spiffe_id") {
        if let Ok(id) = SpiffeId::parse(&String::from_utf8_lossy(&bytes)) {
            assert_eq!(SpiffeId::parse(id.as_str()).as_ref(), Ok(&id), "{}", path.display());
        }
    }
}

#[test]
fn certificate_regressions_validate_without_panicking() {
    for target in ["cert_pem", "cert_der"] {
        for (_path, bytes) in inputs(target) {
            for policy in [SanPolicy::Strict, SanPolicy::AcceptLegacyKuma] {
                let _ = principal_from_pem(&bytes, policy);
            }
        }
    }
}

/// Open finding of the spiffe_id fuzz target: `SpiffeId::namespace()` is documented as the namespace of an
/// Istio-style `/ns/<ns>/sa/<sa>` path, but returns `Some("teapp1")` for `spiffe://cluster.local/ns/teapp1`
/// (and the 2nd segment of any `/ns/<x>/...` path), so a `namespaces: ["teapp1"]` rule matches an ID that is
/// not Istio-shaped. (Istio itself matches `namespaces` as the regex `.*/ns/<ns>/.*` on the SAN.) Un-ignore
/// once src/spiffe_id.rs decides; then tighten check_spiffe_id in fuzz/src/lib.rs the same way.
#[test]
fn namespace_is_only_read_from_istio_shaped_paths() {
    for (path, bytes) in inputs("spiffe_id") {
        let Ok(id) = SpiffeId::parse(&String::from_utf8_lossy(&bytes)) else { continue };
        if let Some(ns) = id.namespace() {
            let rest = id.path().strip_prefix(&format!("/ns/{ns}/sa/")).unwrap_or("");
            assert!(!rest.is_empty(), "{}: namespace {ns:?} from {:?}", path.display(), id.path());
        }
    }
}
