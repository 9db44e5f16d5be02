//! Native micro-benchmarks of the core (criterion): `make bench` (bench/run.sh) or
//! `cargo bench --bench decision`. See BENCHMARKS.md.
//!
//! * `decide/<N>`: `Config::decide` for the benchmark caller at N = 10, 1,000, 10,000 rules, with the policy
//!   of bench/policy.py (the caller is allowed by the LAST allow rule of both layers, after every deny rule
//!   missed, and mapped by the LAST mapping: the worst case of first-match evaluation);
//! * `principal_from_pem`: validating one peer certificate (PEM parse, X.509 parse, SVID checks) — what a
//!   certificate-cache miss costs; `certificate_cache_hit`: what a hit costs;
//! * `config_load/<N>`: `Config::load` (JSON parse + validation + compilation) of the N-rule policy.

// A benchmark is not a test for clippy.toml; it may fail loudly on a broken setup.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use egress_identity_core::certificate_cache::CertificateCache;
use egress_identity_core::config::Config;
use egress_identity_core::decision::Decision;
use egress_identity_core::peer_certificate::{principal_from_pem, SanPolicy};
use egress_identity_core::request::Request;
use egress_identity_core::spiffe_id::SpiffeId;
use serde_json::{json, Value};

const CALLER: &str = "spiffe://cluster.local/ns/team/sa/app1";
const SIZES: [usize; 3] = [10, 1_000, 10_000];

fn allow_rules(n: usize) -> Vec<Value> {
    let mut rules: Vec<Value> = (0..n - 1)
        .map(|i| json!({ "from": [ { "source": { "principals": [format!("cluster.local/ns/other-{i}/sa/app")] } } ] }))
        .collect();
    rules.push(json!({ "from": [ { "source": { "principals": ["cluster.local/ns/team/sa/app1"] } } ] }));
    rules
}

/// The same document as bench/policy.py's `plugin_config(n)`.
fn policy(n: usize) -> Vec<u8> {
    let mut declared: Vec<Value> = (0..n - 1)
        .map(|i| json!({ "name": format!("svc-{i}"), "principals": [format!("cluster.local/ns/other-{i}/sa/app")] }))
        .collect();
    declared.extend(
        (0..n - 1).map(
            |i| json!({ "name": format!("other-{i}"), "principals": [format!("cluster.local/ns/other-{i}/sa/*")] }),
        ),
    );
    declared.push(json!({ "name": "team.app1", "principals": [CALLER] }));
    let mut destinations: Vec<Value> = (0..n - 1)
        .map(|i| {
            json!({
                "name": format!("svc-{i}"),
                "host": format!("svc-{i}.partner.example"),
                "port": 443,
                "policies": [ { "name": "allow-all", "action": "ALLOW", "rules": [ {} ] } ],
                "identities": [format!("svc-{i}")],
            })
        })
        .collect();
    let mut mapped: Vec<Value> = (0..n - 1).map(|i| json!(format!("other-{i}"))).collect();
    mapped.push(json!("team.app1"));
    let deny_paths: Vec<Value> =
        (0..n).map(|i| json!({ "to": [ { "operation": { "paths": [format!("/admin-{i}*")] } } ] })).collect();
    destinations.push(json!({
        "name": "partner-api",
        "host": "api.partner.example",
        "port": 443,
        "policies": [
            { "name": "deny-paths", "action": "DENY", "rules": deny_paths },
            { "name": "allow-callers", "action": "ALLOW", "rules": allow_rules(n) },
        ],
        "identities": mapped,
    }));
    let deny_blocked: Vec<Value> = (0..n)
        .map(|i| json!({ "from": [ { "source": { "principals": [format!("cluster.local/ns/blocked-{i}/*")] } } ] }))
        .collect();
    serde_json::to_vec(&json!({
        "localTrustDomain": "cluster.local",
        "trustDomainAliases": ["example.com", "example.org"],
        "identities": declared,
        "gateway": { "policies": [
            { "name": "deny-blocked", "action": "DENY", "rules": deny_blocked },
            { "name": "allow-callers", "action": "ALLOW", "rules": allow_rules(n) },
        ] },
        "destinations": destinations,
    }))
    .unwrap()
}

fn bench_decide(c: &mut Criterion) {
    let caller = SpiffeId::parse(CALLER).unwrap();
    let request = Request { authority: "api.partner.example", method: "GET", path: "/bench?x=1" };
    let mut group = c.benchmark_group("decide");
    for n in SIZES {
        let config = Config::load(&policy(n)).unwrap();
        match config.decide(Ok(&caller), &request) {
            Decision::Allow(allowed) => assert_eq!(&*allowed.identity.cluster, "partner-api|team-app1"),
            Decision::Deny(denial) => panic!("the benchmark caller is denied at {n} rules: {denial}"),
        }
        group.bench_with_input(BenchmarkId::from_parameter(n), &config, |b, config| {
            b.iter(|| black_box(config.decide(Ok(black_box(&caller)), black_box(&request))))
        });
    }
    group.finish();
}

fn bench_certificate(c: &mut Criterion) {
    let pem = include_bytes!("../tests/certs/app1.pem").to_vec();
    let validated = principal_from_pem(&pem, SanPolicy::Strict).unwrap();
    assert_eq!(validated.id.as_str(), CALLER);
    c.bench_function("principal_from_pem", |b| {
        b.iter(|| black_box(principal_from_pem(black_box(&pem), SanPolicy::Strict)))
    });
    // What the filter pays per request on a hit: a digest lookup in the per-worker cache.
    let mut cache = CertificateCache::new(1024);
    let digest = "a3f1c2d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
    let _ = cache.insert(digest, principal_from_pem(&pem, SanPolicy::Strict));
    c.bench_function("certificate_cache_hit", |b| b.iter(|| black_box(cache.get(black_box(digest)))));
}

fn bench_config_load(c: &mut Criterion) {
    let mut group = c.benchmark_group("config_load");
    group.sample_size(10);
    for n in [10, 10_000] {
        let json = policy(n);
        group.bench_with_input(BenchmarkId::from_parameter(n), &json, |b, json| {
            b.iter(|| black_box(Config::load(black_box(json)).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_decide, bench_certificate, bench_config_load);
criterion_main!(benches);
