//! Replays the fuzz corpus that has a meaning outside libFuzzer through the same core entry points as the
//! fuzz targets (fuzz/fuzz_targets/), on every `make test`:
//!
//! * `fuzz/regressions/<target>/`: inputs that once crashed or misled a target (see its README), so a fixed
//!   finding stays fixed;
//! * `fuzz/seeds/<target>/` of the targets whose input is the document itself (configurations, SPIFFE IDs,
//!   certificates): each seed must still give the outcome its name says.
//!
//! Every target of fuzz/fuzz_targets/ needs a replay here, and every corpus directory must name a target:
//! a renamed target or a misspelled directory fails the test instead of silently replaying nothing.
#![cfg(test)]
#![cfg(not(target_arch = "wasm32"))]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use egress_identity_core::config::Config;
use egress_identity_core::peer_certificate::{principal_from_pem, CertificateError, SanPolicy};
use egress_identity_core::spiffe_id::{SpiffeId, SpiffeIdError};
use x509_parser::pem::parse_x509_pem;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// File stems of a directory's entries (files or directories), sorted.
fn names(dir: &Path, want_dirs: bool) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.path().is_dir() == want_dirs)
        .filter_map(|e| e.path().file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    names.sort();
    names
}

/// (file name, bytes) of every file in `fuzz/<corpus>/<target>/`.
fn inputs(corpus: &str, target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fuzz_dir().join(corpus).join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir).into_iter().flatten().flatten().map(|e| e.path()).collect();
    files.retain(|p| p.is_file());
    files.sort();
    files
        .into_iter()
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect()
}

fn targets() -> Vec<String> {
    let targets = names(&fuzz_dir().join("fuzz_targets"), false);
    assert!(targets.len() >= 6, "fuzz targets not found under {}", fuzz_dir().display());
    targets
}

#[test]
fn every_corpus_directory_names_a_fuzz_target() {
    let targets = targets();
    for corpus in ["regressions", "seeds"] {
        for dir in names(&fuzz_dir().join(corpus), true) {
            assert!(targets.contains(&dir), "fuzz/{corpus}/{dir}/ names no fuzz target (targets: {targets:?})");
        }
    }
}

/// What replaying one target found: files replayed per corpus.
fn replay(target: &str) -> BTreeMap<&'static str, usize> {
    let mut replayed = BTreeMap::new();
    for corpus in ["regressions", "seeds"] {
        let files = inputs(corpus, target);
        let count = files.len();
        for (name, bytes) in files {
            let what = format!("fuzz/{corpus}/{target}/{name}");
            match (target, corpus) {
                ("config_load", _) | ("config_json", "regressions") => replay_config(&what, &bytes, corpus == "seeds"),
                ("spiffe_id", _) => replay_spiffe_id(&what, &bytes),
                ("cert_pem", _) => replay_certificate(&what, &bytes, corpus == "seeds"),
                ("cert_der", "seeds") => replay_der_seed(&what, &bytes),
                ("cert_der", "regressions") => replay_certificate(&what, &bytes, false),
                ("decide", "regressions") => replay_decide(&what, &bytes),
                // Raw libFuzzer bytes, decoded by the target's generator (fuzz/src/lib.rs): not replayable here.
                ("config_json" | "decide", "seeds") => continue,
                _ => panic!("{what}: no replay for fuzz target {target}; add one to core/tests/fuzz_regressions.rs"),
            }
        }
        replayed.insert(corpus, count);
    }
    replayed
}

#[test]
fn every_fuzz_target_is_replayed() {
    for target in targets() {
        let replayed = replay(&target);
        // Targets whose seeds are documents must have some.
        if ["config_load", "spiffe_id", "cert_pem", "cert_der"].contains(&target.as_str()) {
            assert!(replayed["seeds"] > 0, "{target}: no seeds replayed: {replayed:?}");
        }
    }
}

/// The config_load seeds are documents of the current format: policies (which compile as plain Envoy) and a
/// plugin configuration as `render` writes it, whose platform renames destinations and clusters.
#[test]
fn config_seeds_are_policies_and_a_plugin_configuration() {
    let seeds = inputs("seeds", "config_load");
    let platforms: Vec<(&str, &str)> = seeds
        .iter()
        .map(|(name, bytes)| match Config::load(bytes) {
            Ok(config) => (name.as_str(), config.platform.name()),
            Err(errors) => panic!("fuzz/seeds/config_load/{name} does not load: {errors:?}"),
        })
        .collect();
    for platform in ["envoy", "kuma"] {
        assert!(platforms.iter().any(|(_, p)| *p == platform), "no {platform} seed: {platforms:?}");
    }
}

fn replay_config(what: &str, bytes: &[u8], must_load: bool) {
    match Config::load(bytes) {
        Ok(_) => {}
        Err(errors) => {
            assert!(!errors.is_empty(), "{what}: refused without a reason");
            assert!(!must_load, "{what}: a seed policy no longer loads: {errors:?}");
        }
    }
}

fn replay_spiffe_id(what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let Ok(id) = SpiffeId::parse(text.trim_end_matches('\n')) else { return };
    assert_eq!(SpiffeId::parse(id.as_str()).as_ref(), Ok(&id), "{what}: does not round-trip");
    // The finding of fuzz/regressions/spiffe_id/namespace-without-sa: only `/ns/<ns>/sa/<sa>` has a namespace.
    if let Some(ns) = id.namespace() {
        let rest = id.path().strip_prefix(&format!("/ns/{ns}/sa/")).unwrap_or("");
        assert!(!rest.is_empty(), "{what}: namespace {ns:?} from {:?}", id.path());
    }
}

/// The outcome each fixture name stands for (core/tests/certs/generate.sh).
fn expected_certificate(name: &str) -> Option<Result<&'static str, CertificateError>> {
    let stem = name.split('.').next()?;
    Some(match stem {
        "app1" => Ok("spiffe://cluster.local/ns/team/sa/app1"),
        "bad-spiffe-id" => Err(CertificateError::InvalidSpiffeId(SpiffeIdError::DotSegment)),
        "ca" | "key-cert-sign" => Err(CertificateError::CaCertificate),
        "no-key-usage" | "no-digital-signature" => Err(CertificateError::KeyUsage),
        // A valid certificate; the decision refuses it as a caller (trust_domain_id).
        "trust-domain-id" => Ok("spiffe://cluster.local"),
        "no-uri" => Err(CertificateError::NoUriSan),
        "two-uris" | "kuma-legacy" | "kuma-two-spiffe" | "kuma-other-scheme" => Err(CertificateError::MultipleUriSans),
        _ => return None,
    })
}

fn replay_certificate(what: &str, pem: &[u8], is_seed: bool) {
    let strict = principal_from_pem(pem, SanPolicy::Strict);
    let _ = principal_from_pem(pem, SanPolicy::AcceptLegacyKuma);
    if is_seed {
        let name = what.rsplit('/').next().unwrap_or_default();
        let expected =
            expected_certificate(name).unwrap_or_else(|| panic!("{what}: no expected outcome for this seed"));
        assert_eq!(strict.as_ref().map(|c| c.id.as_str()).map_err(|e| *e), expected, "{what}");
    }
}

/// A DER seed is the DER of the fixture of the same name in core/tests/certs/: replayed as that PEM.
fn replay_der_seed(what: &str, der: &[u8]) {
    let name = what.rsplit('/').next().unwrap_or_default().replace(".der", ".pem");
    let pem = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/certs").join(&name))
        .unwrap_or_else(|e| panic!("{what}: no fixture core/tests/certs/{name}: {e}"));
    let (_, parsed) = parse_x509_pem(&pem).unwrap();
    assert_eq!(parsed.contents, der, "{what} is not the DER of core/tests/certs/{name}");
    replay_certificate(&format!("{what} (as {name})"), &pem, true);
}

/// A decide regression: `{"config": ..., "principal": "spiffe://..." | null, "authority", "method", "path"}`.
fn replay_decide(what: &str, bytes: &[u8]) {
    use egress_identity_core::decision::Decision;
    use egress_identity_core::principal::PrincipalError;
    use egress_identity_core::request::Request;
    let s: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("{what}: not JSON: {e}"));
    let Ok(config) = Config::load(s["config"].to_string().as_bytes()) else { return };
    let id = s["principal"].as_str().map(|p| SpiffeId::parse(p).unwrap());
    let principal = id.as_ref().ok_or(PrincipalError::Missing);
    let text = |k: &str| s[k].as_str().unwrap_or_default().to_string();
    let (authority, method, path) = (text("authority"), text("method"), text("path"));
    let request = Request { authority: &authority, method: &method, path: &path };
    let decision = config.decide(principal, &request);
    assert_eq!(decision, config.evaluate(principal, &request).decision, "{what}");
    if id.is_none() {
        assert!(!matches!(decision, Decision::Allow(_)), "{what}: allowed without a principal");
    }
}
