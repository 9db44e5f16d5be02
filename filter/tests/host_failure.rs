//! A host call that fails does not take the filter down: the real gateway runs a variant of the filter built
//! with the `test-host-failure` cargo feature (to `target/test-host-failure/`, never `dist/`), in which a
//! request carrying `x-egress-identity-test-host-failure: next-write` makes the filter's next header write
//! name a header map that does not exist. Envoy refuses it (BadArgument): a real failed host write. The
//! request is refused with 500 `host_error` (never forwarded), and the next requests on the same VM are
//! decided as usual. (With the SDK's own host calls, that refusal was a panic: the VM was gone, and the
//! worker answered 503 from then on.)
#![cfg(test)]
#![cfg(not(target_arch = "wasm32"))]

use std::path::Path;

use egress_identity_harness::client::Call;
use egress_identity_harness::topology::{self, Options, Topology};

#[test]
fn a_failed_host_write_is_a_host_error_and_the_vm_lives_on() {
    let mut opts = Options::new(Path::new(env!("CARGO_TARGET_TMPDIR")).join("host-failure"));
    opts.wasm = topology::build_wasm_variant("test-host-failure").unwrap();
    let t = Topology::start(&opts).unwrap();
    let app1 = t.pki().workload("team-app1");
    let app2 = t.pki().workload("team-app2");

    for round in 0..3 {
        let failed = egress_identity_harness::unique_path("/host-failure/failed");
        let r = t
            .client()
            .send(&Call::get(&app1, &failed).header("x-egress-identity-test-host-failure", "next-write"))
            .unwrap();
        assert_eq!((r.status, r.field("reason")), (500, Some("host_error")), "round {round}: {}", r.summary());
        // Both workers' VMs keep deciding (requests land on either).
        for _ in 0..4 {
            for (who, cn) in [(&app1, "CN=team.app1"), (&app2, "CN=team.app2")] {
                let path = egress_identity_harness::unique_path("/host-failure/after");
                let r = t.client().send(&Call::get(who, &path)).unwrap();
                assert_eq!((r.status, r.field("client_subject")), (200, Some(cn)), "round {round}: {}", r.summary());
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(t.external_requests_for(&failed).is_empty(), "{failed} reached the partner");
    }
    let log = t.gateway_log();
    assert!(!log.contains("panicked"), "the filter panicked:\n{}", egress_identity_harness::process::tail(&log, 20));
    assert_eq!(t.stat("wasm.egress-identity.vm_reload").unwrap_or(0), 0, "a VM was reloaded");
    t.settle_counters();
    assert_eq!(t.metric("egress_identity_host_errors_total", &[]), 3);
}
