//! What the store keeps: endpoints, the state of each (event, endpoint) delivery, and the
//! log of attempts.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use larachat_core::event::EventKind;
use larachat_core::id::{EventId, InvalidId, ProjectId, parse_uuid};

use crate::signing::Secret;

/// An endpoint's id (UUIDv7).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointId(Uuid);

impl EndpointId {
    pub fn new_v7() -> Self {
        Self(Uuid::now_v7())
    }
    pub const fn from_uuid(u: Uuid) -> Self {
        Self(u)
    }
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EndpointId({})", self.0.hyphenated())
    }
}

impl FromStr for EndpointId {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, InvalidId> {
        parse_uuid(s).map(Self)
    }
}

impl Serialize for EndpointId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EndpointId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The event name of the `test` event an integrator can send to an endpoint. Not a domain
/// event; every endpoint receives it whatever its filter.
pub const TEST_EVENT: &str = "webhook.test";

/// Which events an endpoint receives: all, or the listed kinds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EventFilter {
    All,
    Only(Vec<EventKind>),
}

impl EventFilter {
    pub fn matches(&self, kind: EventKind) -> bool {
        match self {
            EventFilter::All => true,
            EventFilter::Only(kinds) => kinds.contains(&kind),
        }
    }

    /// The stored form: `*` or the names joined by commas.
    pub fn to_stored(&self) -> String {
        match self {
            EventFilter::All => "*".into(),
            EventFilter::Only(kinds) => {
                kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(",")
            }
        }
    }

    pub fn from_stored(s: &str) -> Self {
        if s == "*" {
            return EventFilter::All;
        }
        EventFilter::Only(s.split(',').filter_map(|n| n.parse().ok()).collect())
    }
}

/// A registered endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub id: EndpointId,
    pub project_id: ProjectId,
    /// Checked by [`crate::TargetUrl::parse`] when it was set.
    pub url: String,
    pub description: String,
    pub filter: EventFilter,
    pub enabled: bool,
    /// Why it is disabled (`gone`: the receiver answered 410; `client`: by the API).
    pub disabled_reason: Option<String>,
    /// The current secret: signs every delivery.
    pub secret: Secret,
    /// The secret before the last rotation, signing too until its expiry.
    pub previous_secret: Option<(Secret, DateTime<Utc>)>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Endpoint {
    /// The secrets that sign a delivery made at `now`: the current one, and the previous
    /// one while its overlap lasts.
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> Vec<Secret> {
        let mut out = vec![self.secret.clone()];
        if let Some((old, until)) = &self.previous_secret
            && *until > now
        {
            out.push(old.clone());
        }
        out
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its next attempt.
    Pending,
    /// A 2xx was received.
    Succeeded,
    /// Every attempt failed, or the endpoint answered 410: a dead letter, kept and
    /// redeliverable.
    Failed,
}

impl DeliveryStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => DeliveryStatus::Pending,
            "succeeded" => DeliveryStatus::Succeeded,
            "failed" => DeliveryStatus::Failed,
            _ => return None,
        })
    }
}

/// The state of one event's delivery to one endpoint. There is at most one per
/// (endpoint, event): that row is what keeps several workers from delivering an event twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub project_id: ProjectId,
    pub endpoint_id: EndpointId,
    pub event_id: EventId,
    /// `message.sent`, …, or [`TEST_EVENT`].
    pub event: String,
    /// The exact body sent (the event's JSON).
    pub payload: String,
    pub status: DeliveryStatus,
    /// Attempts made in all (the attempt log numbers them 1, 2, …).
    pub attempts: u32,
    /// Attempts made in the current series (a redelivery starts a new series).
    pub series_attempts: u32,
    /// When the current series began: the retry schedule is anchored there.
    pub series_started_at: DateTime<Utc>,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_response_code: Option<u16>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Delivery {
    /// A fresh delivery, due at `now`.
    pub fn new(
        project_id: ProjectId,
        endpoint_id: EndpointId,
        event_id: EventId,
        event: impl Into<String>,
        payload: impl Into<String>,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            project_id,
            endpoint_id,
            event_id,
            event: event.into(),
            payload: payload.into(),
            status: DeliveryStatus::Pending,
            attempts: 0,
            series_attempts: 0,
            series_started_at: now,
            next_attempt_at: Some(now),
            last_response_code: None,
            created_at: now,
            updated_at: now,
        }
    }
}

/// One line of the attempts log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub project_id: ProjectId,
    pub endpoint_id: EndpointId,
    pub event_id: EventId,
    /// 1, 2, … over the delivery's whole life.
    pub attempt: u32,
    pub at: DateTime<Utc>,
    /// `succeeded` or `failed`.
    pub succeeded: bool,
    pub response_code: Option<u16>,
    /// Up to `webhooks.response_body_cap` bytes.
    pub response_body: String,
    pub duration_ms: u32,
    /// Why there was no response (`timeout`, `refused_target: …`, `connect: …`).
    pub error: Option<String>,
    /// When the next attempt is due, if one is.
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// Which deliveries a listing returns (of one endpoint), in event-id order (oldest first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryQuery {
    pub status: Option<DeliveryStatus>,
    /// Only deliveries whose event id is after this one (the page cursor).
    pub after: Option<EventId>,
    /// Only events that occurred at or after this time (UUIDv7 time of the event id).
    pub since: Option<DateTime<Utc>>,
    /// Only events that occurred before this time.
    pub until: Option<DateTime<Utc>>,
    /// Clamped to 1..=1000.
    pub limit: usize,
}

/// The creation time embedded in a UUIDv7 event id (milliseconds).
pub fn event_time(id: &EventId) -> DateTime<Utc> {
    let ms = id
        .as_uuid()
        .get_timestamp()
        .map(|t| {
            let (s, n) = t.to_unix();
            s as i64 * 1000 + i64::from(n / 1_000_000)
        })
        .unwrap_or(0);
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// The smallest UUIDv7 of a millisecond: the lower bound of a time range over event ids.
pub fn event_id_floor(t: DateTime<Utc>) -> Uuid {
    let ms = t.timestamp_millis().max(0) as u64;
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    bytes[6] = 0x70;
    bytes[8] = 0x80;
    Uuid::from_bytes(bytes)
}
