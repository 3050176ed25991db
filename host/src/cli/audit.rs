//! `sluice audit`: recomputes every key's balance from the ledger, through
//! the admin API when the gateway runs and the store when it is stopped, and
//! fails on any mismatch.

use anyhow::bail;

use super::admin_client::admin_call;
use super::args::{Target, load_for_tools, out};
use crate::store::ledger::AuditReport;

/// Runs the audit and prints its report; an error when anything mismatches.
pub(super) async fn audit(target: &Target) -> anyhow::Result<()> {
    let config = load_for_tools(&target.config)?;
    let report: AuditReport =
        match admin_call(&config, http::Method::GET, "/admin/audit", None).await? {
            Some(v) => serde_json::from_value(v)?,
            None => crate::store::open(config.store.backend, &config.store.path)?.audit()?,
        };
    out(&format!(
        "{} keys, {} ledger entries, {} credits charged, {} entries without a log record",
        report.keys, report.entries, report.charged, report.entries_without_record
    ))?;
    for mismatch in &report.mismatches {
        out(&format!("MISMATCH {mismatch}"))?;
    }
    if !report.mismatches.is_empty() {
        bail!(
            "the ledger does not match {} balance(s)",
            report.mismatches.len()
        );
    }
    out("ok: every balance matches its ledger")
}
