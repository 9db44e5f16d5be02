//! A decision's audit record, built in the forms `auditRecord` asks for (core `audit.rs`) and then stored in
//! filter state for the access log; the same for requests and connections. Nothing is built that nobody
//! reads: the logfmt line only when it is written or the debug log is on. An allowed request's record is
//! kept until its upstream is known, and written again with the outcome if it never reached the partner
//! (filter state Envoy's Wasm host lets a filter overwrite; the access log is written after).

use egress_identity_core::audit::{self, Outcome};
use egress_identity_core::config_document::AuditRecord;
use egress_identity_core::decision::Evaluation;

use crate::host::Host;

pub struct Record {
    line: Option<String>,
    write_line: bool,
    structured: Option<Vec<u8>>,
}

impl Record {
    pub fn of(forms: AuditRecord, evaluation: &Evaluation<'_>, principal: &str, host_name: &str) -> Self {
        let line = (forms.line() || log::log_enabled!(log::Level::Debug))
            .then(|| audit::record(evaluation, principal, host_name));
        let structured = forms.object().then(|| audit::record_struct(evaluation, principal, host_name));
        Self { line, write_line: forms.line(), structured }
    }

    /// Writes the forms asked for to filter state, and the line to the debug log. A failed write costs the
    /// access log its record, nothing else (the host logs it).
    pub fn store(&self, host: &dyn Host) {
        if let Some(structured) = &self.structured {
            let _ = host.set_filter_state(audit::STRUCT_FILTER_STATE_KEY, structured);
        }
        if let Some(line) = &self.line {
            if self.write_line {
                let _ = host.set_filter_state(audit::FILTER_STATE_KEY, line.as_bytes());
            }
            log::debug!("egress-identity: {line}");
        }
    }

    /// Whether the logfmt line was built (written, or logged at debug).
    pub fn has_line(&self) -> bool {
        self.line.is_some()
    }

    /// Appends the outcome of an allowed request that never reached the partner, and Envoy's reason, to
    /// every form (store it again to write it).
    pub fn add_outcome(&mut self, outcome: Outcome, detail: &str) {
        if let Some(line) = &mut self.line {
            audit::push_outcome(line, outcome, detail);
        }
        if let Some(structured) = &mut self.structured {
            audit::push_outcome_struct(structured, outcome, detail);
        }
    }
}
