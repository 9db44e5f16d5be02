//! Test-only VM traps (cargo feature `test-trap`, never in dist/): `tests/fail_closed.rs` builds a variant
//! that executes the wasm `unreachable` instruction when a request carries `x-egress-identity-test-trap:
//! entry` (before anything else) or `after-allow` (after an allowed request's internal headers are set, just
//! before the request would continue), to prove Envoy fails closed when the VM crashes.

use crate::abi;

#[derive(PartialEq, Eq)]
pub enum Point {
    Entry,
    AfterAllow,
}

pub fn maybe_trap(point: Point) {
    let want = match point {
        Point::Entry => "entry",
        Point::AfterAllow => "after-allow",
    };
    let value = abi::get_header(abi::REQUEST_HEADERS, "x-egress-identity-test-trap");
    if matches!(value, Ok(Some(v)) if v == want.as_bytes()) {
        log::warn!("egress-identity: test-trap: trapping ({want})");
        trap();
    }
}

#[cfg(target_arch = "wasm32")]
fn trap() -> ! {
    core::arch::wasm32::unreachable()
}

#[cfg(not(target_arch = "wasm32"))]
fn trap() -> ! {
    std::process::abort()
}
