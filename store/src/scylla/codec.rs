//! Conversions between CQL rows/values and the domain model, and driver errors to
//! [`StoreError`]. Nothing read from the database is trusted: a value that does not decode is
//! an `Internal` error, never a panic.

use chrono::{DateTime, TimeZone, Utc};
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::value::{CqlTimestamp, CqlValue};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::StoreError;

/// A driver failure: unreachable / overloaded / timed out is `Unavailable` (the caller may
/// retry), anything else `Internal`.
pub(crate) fn exec_error(e: ExecutionError) -> StoreError {
    let unavailable = match &e {
        ExecutionError::ConnectionPoolError(_)
        | ExecutionError::EmptyPlan
        | ExecutionError::RequestTimeout(_) => true,
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, _)) => matches!(
            db,
            DbError::Unavailable { .. }
                | DbError::Overloaded
                | DbError::IsBootstrapping
                | DbError::ReadTimeout { .. }
                | DbError::WriteTimeout { .. }
                | DbError::ReadFailure { .. }
                | DbError::WriteFailure { .. }
                | DbError::RateLimitReached { .. }
        ),
        ExecutionError::LastAttemptError(RequestAttemptError::BrokenConnectionError(_))
        | ExecutionError::LastAttemptError(RequestAttemptError::UnableToAllocStreamId) => true,
        _ => false,
    };
    if unavailable {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Internal(e.to_string())
    }
}

/// Any other driver-side failure (result decoding, preparation): a bug or corruption.
pub(crate) fn internal(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(e.to_string())
}

pub(crate) fn corrupt(what: &str) -> StoreError {
    StoreError::Internal(format!("corrupt row: {what}"))
}

pub(crate) fn ts(t: DateTime<Utc>) -> CqlTimestamp {
    CqlTimestamp(t.timestamp_millis())
}

pub(crate) fn from_ts(t: CqlTimestamp) -> StoreResult<DateTime<Utc>> {
    Utc.timestamp_millis_opt(t.0)
        .single()
        .ok_or_else(|| corrupt("timestamp out of range"))
}

pub(crate) fn from_opt_ts(t: Option<CqlTimestamp>) -> StoreResult<Option<DateTime<Utc>>> {
    t.map(from_ts).transpose()
}

type StoreResult<T> = Result<T, StoreError>;

pub(crate) fn json_text(v: &serde_json::Value) -> String {
    v.to_string()
}

pub(crate) fn parse_json(s: Option<&str>) -> StoreResult<serde_json::Value> {
    match s {
        None => Ok(serde_json::Value::Object(Default::default())),
        Some(s) => serde_json::from_str(s).map_err(|_| corrupt("json")),
    }
}

/// The snake_case name serde gives a unit enum variant.
pub(crate) fn enum_str<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        // Unit variants always serialise to strings; keep a visible marker otherwise.
        _ => String::from("?"),
    }
}

pub(crate) fn parse_enum<T: DeserializeOwned>(s: &str, what: &str) -> StoreResult<T> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| corrupt(what))
}

// --- dynamic values (batches and bucket walks) ----------------------------------------------

pub(crate) type Values = Vec<Option<CqlValue>>;

pub(crate) fn vu(u: Uuid) -> Option<CqlValue> {
    Some(CqlValue::Uuid(u))
}

pub(crate) fn vt(s: &str) -> Option<CqlValue> {
    Some(CqlValue::Text(s.to_owned()))
}

pub(crate) fn vot(s: Option<&str>) -> Option<CqlValue> {
    s.map(|s| CqlValue::Text(s.to_owned()))
}

pub(crate) fn vi(i: i64) -> Option<CqlValue> {
    Some(CqlValue::BigInt(i))
}

pub(crate) fn vts(t: DateTime<Utc>) -> Option<CqlValue> {
    Some(CqlValue::Timestamp(ts(t)))
}

pub(crate) fn vots(t: Option<DateTime<Utc>>) -> Option<CqlValue> {
    t.map(|t| CqlValue::Timestamp(ts(t)))
}

pub(crate) fn vbool(b: bool) -> Option<CqlValue> {
    Some(CqlValue::Boolean(b))
}

pub(crate) fn vuuid_set(ids: impl IntoIterator<Item = Uuid>) -> Option<CqlValue> {
    Some(CqlValue::Set(ids.into_iter().map(CqlValue::Uuid).collect()))
}
