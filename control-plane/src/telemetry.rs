//! Metric names of the control plane, defined once. Labels are bounded (result, kind,
//! reason); never an id.

/// Admin logins, by `result` = `ok` | `failed`.
pub(crate) const LOGINS_TOTAL: &str = "larachat_admin_logins_total";
/// Requests refused by admin authentication, by `reason` = `missing` | `invalid` | `expired`
/// | `unknown_admin`.
pub(crate) const AUTH_REJECTED_TOTAL: &str = "larachat_admin_auth_rejected_total";
/// API keys issued, by `kind` = `secret` | `publishable`.
pub(crate) const API_KEYS_CREATED_TOTAL: &str = "larachat_admin_api_keys_created_total";
/// API key revocations (repeated revocations of one key included).
pub(crate) const API_KEYS_REVOKED_TOTAL: &str = "larachat_admin_api_keys_revoked_total";
/// Control events published on the bus, by `result` = `ok` | `failed`.
pub(crate) const CONTROL_EVENTS_TOTAL: &str = "larachat_admin_control_events_total";

pub(crate) fn login(ok: bool) {
    metrics::counter!(LOGINS_TOTAL, "result" => if ok { "ok" } else { "failed" }).increment(1);
}

pub(crate) fn auth_rejected(reason: &'static str) {
    metrics::counter!(AUTH_REJECTED_TOTAL, "reason" => reason).increment(1);
}

pub(crate) fn api_key_created(kind: larachat_core::model::KeyKind) {
    let kind = match kind {
        larachat_core::model::KeyKind::Secret => "secret",
        larachat_core::model::KeyKind::Publishable => "publishable",
    };
    metrics::counter!(API_KEYS_CREATED_TOTAL, "kind" => kind).increment(1);
}

pub(crate) fn api_key_revoked() {
    metrics::counter!(API_KEYS_REVOKED_TOTAL).increment(1);
}

pub(crate) fn control_event(ok: bool) {
    metrics::counter!(CONTROL_EVENTS_TOTAL, "result" => if ok { "ok" } else { "failed" })
        .increment(1);
}
