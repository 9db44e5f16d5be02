//! Test-only host failures (cargo feature `test-host-failure`, never in dist/): `tests/host_failure.rs`
//! builds a variant in which a request carrying `x-egress-identity-test-host-failure: next-write` makes the
//! filter's next request-header write ask Envoy for a header map that does not exist: Envoy refuses the write
//! (BadArgument), a real failed host call, which the filter must turn into a `host_error` denial without
//! taking its VM down.

use std::cell::Cell;

use crate::abi;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
}

/// Arms the failure when the current request asks for it (called as a request arrives).
pub fn arm_if_asked() {
    let asked = abi::get_header(abi::REQUEST_HEADERS, "x-egress-identity-test-host-failure");
    if matches!(asked, Ok(Some(v)) if v == b"next-write") {
        log::warn!("egress-identity: test-host-failure: the next header write fails");
        ARMED.with(|armed| armed.set(true));
    }
}

/// Whether this write is to fail (once).
pub fn take() -> bool {
    ARMED.with(|armed| armed.replace(false))
}
