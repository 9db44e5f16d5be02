//! Callers that try to hold the gateway's resources without ever being decided: a TLS handshake that stalls,
//! request headers that never end. The rendered gateway's own deadlines (edge-proxy hardening) close them;
//! the filter's deadline for undecided L4 connections is in `l4.rs`.
#![cfg(test)]
#![cfg(not(target_arch = "wasm32"))]

use std::path::Path;
use std::time::{Duration, Instant};

use egress_identity_harness::client::raw_exchange;
use egress_identity_harness::l4::{held, real_client_hello};
use egress_identity_harness::pki::GATEWAY_HOST;
use egress_identity_harness::topology::{Options, Topology, GATEWAY_L4_PORT, GATEWAY_PORT};

/// How long a connection may be held before the gateway must have closed it (its deadlines are 10 s).
const HELD_AT_MOST: Duration = Duration::from_secs(13);

#[test]
fn stalled_handshakes_and_endless_headers_are_cut_off() {
    let t = Topology::start(&Options::new(Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostile-callers"))).unwrap();
    let hello = real_client_hello(GATEWAY_HOST).unwrap();
    let max = Duration::from_secs(20);
    let results: Vec<(&str, Option<Duration>)> = std::thread::scope(|s| {
        let cases: Vec<(&str, u16, Vec<u8>)> = vec![
            // A ClientHello, then nothing: the gateway answers and waits for the rest of the handshake.
            ("HTTP listener, stalled handshake", GATEWAY_PORT, hello.clone()),
            ("L4 listener, stalled handshake", GATEWAY_L4_PORT, hello.clone()),
            // Half a ClientHello.
            ("HTTP listener, half a ClientHello", GATEWAY_PORT, hello.get(..hello.len() / 2).unwrap().to_vec()),
        ];
        let handles: Vec<_> = cases
            .into_iter()
            .map(|(name, port, send)| (name, s.spawn(move || held(port, &send, max).unwrap())))
            .collect();
        let mut out: Vec<_> = handles.into_iter().map(|(name, h)| (name, h.join().unwrap())).collect();
        // Request headers that never end, from an authenticated caller.
        let start = Instant::now();
        let got = raw_exchange(
            &t.pki().mesh_ca_cert(),
            GATEWAY_PORT,
            GATEWAY_HOST,
            &t.pki().workload("team-app1"),
            b"GET /slow HTTP/1.1\r\nHost: api.partner.example\r\nX-Slow: 1\r\n",
            max,
        )
        .unwrap();
        let elapsed = start.elapsed();
        out.push(("endless request headers", (elapsed < max).then_some(elapsed)));
        eprintln!("endless request headers: {got:?}");
        out
    });
    let report: Vec<String> = results.iter().map(|(case, held)| format!("{case}: {held:?}")).collect();
    for (case, held) in &results {
        assert!(
            held.is_some_and(|h| h <= HELD_AT_MOST),
            "{case} held too long (None: still open after {max:?}):\n{}",
            report.join("\n")
        );
    }
}
