//! Metric names of the control plane and their HELP text, defined once. Labels are bounded
//! (result, kind, reason); never an id.

use metrics::{Unit, describe_counter, describe_gauge};

/// Admin logins, by `result` = `ok` | `failed`.
pub(crate) const LOGINS_TOTAL: &str = "larachat_admin_logins_total";
/// Requests refused by admin authentication, by `reason` = `missing` | `invalid` | `expired`
/// | `unknown_admin`.
pub(crate) const AUTH_REJECTED_TOTAL: &str = "larachat_admin_auth_rejected_total";
/// API keys issued, by `kind` = `secret` | `publishable`.
pub(crate) const API_KEYS_CREATED_TOTAL: &str = "larachat_admin_api_keys_created_total";
/// API key revocations (repeated revocations of one key included).
pub(crate) const API_KEYS_REVOKED_TOTAL: &str = "larachat_admin_api_keys_revoked_total";
/// Logins refused (503) because the argon2 slots and their wait queue were full.
pub(crate) const LOGINS_REFUSED_TOTAL: &str = "larachat_admin_logins_refused_total";
/// Logins waiting for an argon2 slot.
pub(crate) const PASSWORD_CHECKS_WAITING: &str = "larachat_admin_password_checks_waiting";
/// Control events published on the bus, by `result` = `ok` | `failed`.
pub(crate) const CONTROL_EVENTS_TOTAL: &str = "larachat_admin_control_events_total";

pub(crate) fn login(ok: bool) {
    metrics::counter!(LOGINS_TOTAL, "result" => if ok { "ok" } else { "failed" }).increment(1);
}

pub(crate) fn login_refused() {
    metrics::counter!(LOGINS_REFUSED_TOTAL).increment(1);
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

/// Gives every control-plane metric family its HELP text (and unit). Once per process.
pub fn describe() {
    describe_counter!(
        LOGINS_TOTAL,
        Unit::Count,
        "Admin logins, by result (ok, failed)."
    );
    describe_counter!(
        LOGINS_REFUSED_TOTAL,
        Unit::Count,
        "Admin logins answered 503 without a password check because every argon2 slot and queue place was taken."
    );
    describe_gauge!(
        PASSWORD_CHECKS_WAITING,
        Unit::Count,
        "Admin logins waiting for an argon2 slot."
    );
    describe_counter!(
        AUTH_REJECTED_TOTAL,
        Unit::Count,
        "Admin API requests refused by admin authentication, by reason (missing, invalid, expired, unknown_admin)."
    );
    describe_counter!(
        API_KEYS_CREATED_TOTAL,
        Unit::Count,
        "API keys issued, by kind (secret, publishable)."
    );
    describe_counter!(
        API_KEYS_REVOKED_TOTAL,
        Unit::Count,
        "API key revocations (repeated revocations of one key included)."
    );
    describe_counter!(
        CONTROL_EVENTS_TOTAL,
        Unit::Count,
        "Control events published on the bus for gateways, by result (ok, failed)."
    );
}
