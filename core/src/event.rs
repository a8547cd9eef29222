//! Domain events: what happened, once, with a stable id — and the durable log they go to.
//!
//! A [`DomainEvent`] is built by exactly one function per kind ([`DomainEvent::message_sent`],
//! …) from the stored result of a change, inside the write that makes the change (the SQLite
//! writer's transaction, the CQL batch), so both stores emit identical events and an event
//! exists if and only if its change was committed. Its [`EventId`] (UUIDv7) is generated there,
//! once, and never regenerated: every redelivery, webhook retry and JetStream publish carries
//! the same id, which is what consumers de-duplicate by.
//!
//! Wire shape (JSON, the seed's webhook payload plus a stable `id` and the project):
//!
//! ```json
//! {"id":"0193…","event":"message.sent","timestamp":"2026-11-30T12:34:56.789Z",
//!  "project_id":"0193…","data":{"conversation_id":"…","message_id":"…", …}}
//! ```
//!
//! [`EventLog`] / [`EventConsumer`] are the consumer side: a named durable consumer reads the
//! log in commit order, acknowledges what it has handled, and resumes after a restart at its
//! checkpoint; several workers of one consumer name share the work (each event to one of them,
//! redelivered if not acknowledged within the ack wait). Implementations: the SQLite outbox
//! (`larachat-store`) and JetStream (`larachat-broker`). See docs/events.md.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::id::{ConversationId, EndUserId, EventId, MessageId, ProjectId};
use crate::model::{Actor, Conversation, ConversationStatus, EndUser, Message, ReadState};
use crate::plan::{Period, PlanId, QuotaMetric, ThresholdCrossing};

/// The kind of a domain event: the seed's seven webhook events, and the usage warnings of
/// the plans (`usage.threshold_reached`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EventKind {
    #[serde(rename = "conversation.created")]
    ConversationCreated,
    #[serde(rename = "conversation.updated")]
    ConversationUpdated,
    #[serde(rename = "conversation.closed")]
    ConversationClosed,
    #[serde(rename = "message.sent")]
    MessageSent,
    #[serde(rename = "message.read")]
    MessageRead,
    #[serde(rename = "user.created")]
    UserCreated,
    #[serde(rename = "user.updated")]
    UserUpdated,
    #[serde(rename = "usage.threshold_reached")]
    UsageThresholdReached,
}

impl EventKind {
    /// Every kind, for consumers that list or filter them.
    pub const ALL: [EventKind; 8] = [
        Self::ConversationCreated,
        Self::ConversationUpdated,
        Self::ConversationClosed,
        Self::MessageSent,
        Self::MessageRead,
        Self::UserCreated,
        Self::UserUpdated,
        Self::UsageThresholdReached,
    ];

    /// The name in the `event` field (`message.sent`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::ConversationCreated => "conversation.created",
            Self::ConversationUpdated => "conversation.updated",
            Self::ConversationClosed => "conversation.closed",
            Self::MessageSent => "message.sent",
            Self::MessageRead => "message.read",
            Self::UserCreated => "user.created",
            Self::UserUpdated => "user.updated",
            Self::UsageThresholdReached => "usage.threshold_reached",
        }
    }

    /// A subject-safe token (`message_sent`): `[a-z_]` only.
    pub const fn token(self) -> &'static str {
        match self {
            Self::ConversationCreated => "conversation_created",
            Self::ConversationUpdated => "conversation_updated",
            Self::ConversationClosed => "conversation_closed",
            Self::MessageSent => "message_sent",
            Self::MessageRead => "message_read",
            Self::UserCreated => "user_created",
            Self::UserUpdated => "user_updated",
            Self::UsageThresholdReached => "usage_threshold_reached",
        }
    }

    /// The kind of a [`EventKind::token`].
    pub fn from_token(token: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.token() == token)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for EventKind {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Self::ALL.into_iter().find(|k| k.name() == s).ok_or(())
    }
}

/// `data` of `message.sent`: the seed's fields plus the message's position and metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageSentData {
    pub conversation_id: ConversationId,
    pub message_id: MessageId,
    /// The message's place in its conversation (1, 2, 3, … without gaps).
    pub seq: u64,
    pub sender: Actor,
    pub text: String,
    pub metadata: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// `data` of `message.read`: a reader's marker moved forward to `message_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageReadData {
    pub conversation_id: ConversationId,
    pub reader: Actor,
    /// The newest message the reader has read.
    pub message_id: MessageId,
    pub read_at: DateTime<Utc>,
}

/// `data` of the `conversation.*` events: the conversation as it is after the change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationData {
    pub conversation_id: ConversationId,
    pub subject: Option<String>,
    pub status: ConversationStatus,
    pub members: Vec<EndUserId>,
    pub metadata: serde_json::Value,
    pub last_message_id: Option<MessageId>,
    /// The agent identifier the conversation is assigned to; `null` when unassigned (and in
    /// events logged before conversations had assignees).
    #[serde(default)]
    pub assignee: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `data` of the `user.*` events: the end user as they are after the change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserData {
    pub user_id: EndUserId,
    pub user_identifier: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
    pub avatar: Option<String>,
    pub metadata: serde_json::Value,
    pub is_anonymous: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `data` of `usage.threshold_reached`: a project's usage of a monthly plan limit reached
/// 80 % or 100 % of it. Emitted once per project, period, metric, threshold and limit (a
/// raised limit can be reached again).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageThresholdData {
    /// `monthly_active_users` or `messages_per_month`.
    pub metric: QuotaMetric,
    /// 80 or 100.
    pub threshold_percent: u8,
    /// The count when the threshold was seen reached (at least the threshold's share of the
    /// limit; in distributed mode possibly a little more).
    pub used: u64,
    pub limit: u64,
    pub plan: PlanId,
    /// The month, `YYYY-MM` (UTC).
    pub period: Period,
    /// When the month's quotas reset.
    pub resets_at: DateTime<Utc>,
}

/// The kind and its payload: `{"event": "<kind>", "data": {…}}` on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", content = "data")]
pub enum EventData {
    #[serde(rename = "conversation.created")]
    ConversationCreated(ConversationData),
    #[serde(rename = "conversation.updated")]
    ConversationUpdated(ConversationData),
    #[serde(rename = "conversation.closed")]
    ConversationClosed(ConversationData),
    #[serde(rename = "message.sent")]
    MessageSent(MessageSentData),
    #[serde(rename = "message.read")]
    MessageRead(MessageReadData),
    #[serde(rename = "user.created")]
    UserCreated(UserData),
    #[serde(rename = "user.updated")]
    UserUpdated(UserData),
    #[serde(rename = "usage.threshold_reached")]
    UsageThresholdReached(UsageThresholdData),
}

impl EventData {
    pub const fn kind(&self) -> EventKind {
        match self {
            Self::ConversationCreated(_) => EventKind::ConversationCreated,
            Self::ConversationUpdated(_) => EventKind::ConversationUpdated,
            Self::ConversationClosed(_) => EventKind::ConversationClosed,
            Self::MessageSent(_) => EventKind::MessageSent,
            Self::MessageRead(_) => EventKind::MessageRead,
            Self::UserCreated(_) => EventKind::UserCreated,
            Self::UserUpdated(_) => EventKind::UserUpdated,
            Self::UsageThresholdReached(_) => EventKind::UsageThresholdReached,
        }
    }

    /// The conversation the event is about, if any (the ordering key of conversation and
    /// message events).
    pub fn conversation_id(&self) -> Option<ConversationId> {
        match self {
            Self::ConversationCreated(c)
            | Self::ConversationUpdated(c)
            | Self::ConversationClosed(c) => Some(c.conversation_id),
            Self::MessageSent(m) => Some(m.conversation_id),
            Self::MessageRead(r) => Some(r.conversation_id),
            Self::UserCreated(_) | Self::UserUpdated(_) | Self::UsageThresholdReached(_) => None,
        }
    }
}

/// One domain event. Serializes as
/// `{"id","event","timestamp","project_id","data":{…}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainEvent {
    /// Stable across every redelivery.
    pub id: EventId,
    /// When the change happened (the changed row's own timestamp, millisecond precision).
    #[serde(rename = "timestamp")]
    pub occurred_at: DateTime<Utc>,
    pub project_id: ProjectId,
    #[serde(flatten)]
    pub data: EventData,
}

impl DomainEvent {
    fn new(project_id: ProjectId, occurred_at: DateTime<Utc>, data: EventData) -> Self {
        Self {
            id: EventId::new_v7(),
            occurred_at,
            project_id,
            data,
        }
    }

    pub const fn kind(&self) -> EventKind {
        self.data.kind()
    }

    /// `message.sent`, from the stored message.
    pub fn message_sent(m: &Message) -> Self {
        Self::new(
            m.project_id,
            m.created_at,
            EventData::MessageSent(MessageSentData {
                conversation_id: m.conversation_id,
                message_id: m.id,
                seq: m.seq,
                sender: m.sender.clone(),
                text: m.text.clone(),
                metadata: m.metadata.clone(),
                client_msg_id: m.client_msg_id.clone(),
                created_at: m.created_at,
            }),
        )
    }

    /// `message.sent` whose id is derived from the message id ([`EventId::of_message`]) rather
    /// than drawn at random: every writer of the same claimed message — its own writer, a
    /// reader repairing it, a retry of its `client_msg_id` — builds the same event, id
    /// included (the CQL store, where all three may write it).
    pub fn message_sent_derived(m: &Message) -> Self {
        Self {
            id: EventId::of_message(m.id),
            ..Self::message_sent(m)
        }
    }

    /// `message.read`, from the read state after the marker moved.
    pub fn message_read(project: ProjectId, r: &ReadState) -> Self {
        Self::new(
            project,
            r.updated_at,
            EventData::MessageRead(MessageReadData {
                conversation_id: r.conversation_id,
                reader: r.reader.clone(),
                message_id: r.last_read_message_id,
                read_at: r.updated_at,
            }),
        )
    }

    /// `conversation.created`, from the stored conversation.
    ///
    /// Its id is derived from the conversation's ([`EventId::of_conversation_created`]): a
    /// creation repeated with its idempotency key, or repaired, writes the same event.
    pub fn conversation_created(c: &Conversation) -> Self {
        Self {
            id: EventId::of_conversation_created(c.id),
            ..Self::new(
                c.project_id,
                c.created_at,
                EventData::ConversationCreated(ConversationData::of(c)),
            )
        }
    }

    /// `conversation.closed` when the change closed an open conversation, otherwise
    /// `conversation.updated`; `before` is the status before the change.
    pub fn conversation_changed(before: ConversationStatus, after: &Conversation) -> Self {
        let data = ConversationData::of(after);
        let data =
            if before != ConversationStatus::Closed && after.status == ConversationStatus::Closed {
                EventData::ConversationClosed(data)
            } else {
                EventData::ConversationUpdated(data)
            };
        Self::new(after.project_id, after.updated_at, data)
    }

    /// `user.created`, from the stored end user.
    ///
    /// Its id is derived from the user's ([`EventId::of_user_created`]): an identification
    /// repaired by a retry (CQL: the claim written, the user not yet) writes the same event.
    pub fn user_created(u: &EndUser) -> Self {
        Self {
            id: EventId::of_user_created(u.id),
            ..Self::new(
                u.project_id,
                u.created_at,
                EventData::UserCreated(UserData::of(u)),
            )
        }
    }

    /// `user.updated`, from the end user after a profile change.
    pub fn user_updated(u: &EndUser) -> Self {
        Self::new(
            u.project_id,
            u.updated_at,
            EventData::UserUpdated(UserData::of(u)),
        )
    }

    /// `usage.threshold_reached`: `percent` of `limit` on `metric` reached in `period`, with
    /// `used` counted, seen at `at`.
    pub fn usage_threshold_reached(
        project: ProjectId,
        at: DateTime<Utc>,
        crossing: &ThresholdCrossing,
        plan: PlanId,
        period: Period,
    ) -> Self {
        Self::new(
            project,
            at,
            EventData::UsageThresholdReached(UsageThresholdData {
                metric: crossing.metric,
                threshold_percent: crossing.percent,
                used: crossing.used,
                limit: crossing.limit,
                plan,
                period,
                resets_at: period.resets_at(),
            }),
        )
    }

    /// The JSON wire form.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing these plain structs cannot fail (string keys, no non-finite floats).
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses the JSON wire form.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

impl ConversationData {
    fn of(c: &Conversation) -> Self {
        Self {
            conversation_id: c.id,
            subject: c.subject.clone(),
            status: c.status,
            members: c.members.clone(),
            metadata: c.metadata.clone(),
            last_message_id: c.last_message_id,
            assignee: c.assignee.clone(),
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

impl UserData {
    fn of(u: &EndUser) -> Self {
        Self {
            user_id: u.id,
            user_identifier: u.user_identifier.clone(),
            name: u.name.clone(),
            email: u.email.clone(),
            avatar: u.avatar.clone(),
            metadata: u.metadata.clone(),
            is_anonymous: u.is_anonymous,
            created_at: u.created_at,
            updated_at: u.updated_at,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The consumer side of the log
// ---------------------------------------------------------------------------------------------

/// The name of a durable consumer (`webhooks`, `usage`, …): 1–64 chars of `[a-z0-9_-]`, so it
/// is valid as a JetStream durable name and as a SQLite key. Names come from our own code,
/// never from clients.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConsumerName(String);

impl ConsumerName {
    pub fn new(name: &str) -> Result<Self, EventLogError> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(EventLogError::Internal(format!(
                "invalid consumer name {name:?}: 1-64 chars of [a-z0-9_-]"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConsumerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Failures of the event log.
#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    /// The backend is unreachable right now; retry later.
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    /// Anything else (a bug, corruption, a misconfiguration).
    #[error("event log error: {0}")]
    Internal(String),
}

/// How a consumer is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerOptions {
    /// An event fetched and not acknowledged within this time is delivered again (to any
    /// worker of the consumer). Also: after a restart, every unacknowledged event is delivered
    /// again.
    pub ack_wait: Duration,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self {
            ack_wait: Duration::from_secs(30),
        }
    }
}

/// Acknowledges one delivery to its backend.
#[async_trait]
pub trait Acker: Send + Sync {
    /// Marks the delivery handled: it will not be delivered to this consumer again.
    async fn ack(self: Box<Self>) -> Result<(), EventLogError>;
}

/// One event handed to a consumer, to acknowledge once handled.
pub struct Delivery {
    pub event: DomainEvent,
    /// 1 on the first delivery to this consumer, 2 on the first redelivery, …
    pub attempt: u64,
    acker: Box<dyn Acker>,
}

impl Delivery {
    /// For backends.
    pub fn new(event: DomainEvent, attempt: u64, acker: Box<dyn Acker>) -> Self {
        Self {
            event,
            attempt,
            acker,
        }
    }

    /// Acknowledges the event: the consumer's checkpoint may move past it.
    pub async fn ack(self) -> Result<(), EventLogError> {
        self.acker.ack().await
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("event", &self.event)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// A worker of a durable consumer.
#[async_trait]
pub trait EventConsumer: Send {
    /// Waits up to `wait` for events and returns at most `max` of them (empty after `wait`
    /// without any), in log order. Events this worker or another worker of the same consumer
    /// holds unacknowledged (within the ack wait) are not returned.
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, EventLogError>;
}

/// The durable event log.
///
/// Guarantees (both backends): every event of a committed change is delivered to every
/// consumer at least once, in commit order within a conversation for a single worker;
/// an event whose change was not committed is never delivered; a consumer's progress survives
/// restarts of every process (it resumes after the last acknowledged event, redelivering what
/// was fetched and not acknowledged). Consumers de-duplicate by [`EventId`].
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// A worker of the durable consumer `name`, created at the start of the retained log if it
    /// does not exist yet. Several workers of one name share its events (work queue).
    async fn consumer(
        &self,
        name: &ConsumerName,
        options: ConsumerOptions,
    ) -> Result<Box<dyn EventConsumer>, EventLogError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Actor, ActorKind};

    fn message() -> Message {
        Message {
            id: MessageId::following(None),
            seq: 3,
            project_id: ProjectId::new_v7(),
            conversation_id: ConversationId::new_v7(),
            sender: Actor {
                kind: ActorKind::Agent,
                id: "ada".into(),
                name: Some("Ada".into()),
            },
            text: "Hello world".into(),
            metadata: serde_json::json!({"k": 1}),
            client_msg_id: Some("c-1".into()),
            created_at: crate::model::now(),
        }
    }

    #[test]
    fn wire_shape_is_the_seed_payload_with_a_stable_id() {
        let m = message();
        let e = DomainEvent::message_sent(&m);
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        let obj = v.as_object().unwrap();
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["data", "event", "id", "project_id", "timestamp"]);
        assert_eq!(v["event"], "message.sent");
        assert_eq!(v["id"], e.id.to_string());
        assert_eq!(v["project_id"], m.project_id.to_string());
        assert_eq!(v["data"]["message_id"], m.id.to_string());
        assert_eq!(v["data"]["conversation_id"], m.conversation_id.to_string());
        assert_eq!(v["data"]["sender"]["type"], "agent");
        assert_eq!(v["data"]["sender"]["name"], "Ada");
        assert_eq!(v["data"]["text"], "Hello world");
        assert_eq!(v["data"]["seq"], 3);
        let back = DomainEvent::from_json(&e.to_json()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn every_kind_round_trips_and_names_match() {
        let now = crate::model::now();
        let p = ProjectId::new_v7();
        let conv = Conversation {
            id: ConversationId::new_v7(),
            project_id: p,
            subject: Some("s".into()),
            status: ConversationStatus::Closed,
            members: vec![EndUserId::new_v7()],
            metadata: serde_json::json!({}),
            created_at: now,
            updated_at: now,
            last_message_id: None,
            assignee: Some("agent-7".into()),
        };
        let user = EndUser {
            id: EndUserId::new_v7(),
            project_id: p,
            user_identifier: Some("u1".into()),
            name: None,
            email: Some("a@b.c".into()),
            avatar: None,
            metadata: serde_json::json!({}),
            is_anonymous: false,
            last_seen_at: None,
            created_at: now,
            updated_at: now,
        };
        let read = ReadState {
            conversation_id: conv.id,
            reader: Actor::end_user(user.id, None),
            last_read_message_id: MessageId::following(None),
            updated_at: now,
        };
        let events = [
            DomainEvent::conversation_created(&conv),
            DomainEvent::conversation_changed(ConversationStatus::Closed, &conv),
            DomainEvent::conversation_changed(ConversationStatus::Open, &conv),
            DomainEvent::message_sent(&message()),
            DomainEvent::message_read(p, &read),
            DomainEvent::user_created(&user),
            DomainEvent::user_updated(&user),
        ];
        let kinds: Vec<EventKind> = events.iter().map(DomainEvent::kind).collect();
        assert_eq!(
            kinds,
            [
                EventKind::ConversationCreated,
                EventKind::ConversationUpdated,
                EventKind::ConversationClosed,
                EventKind::MessageSent,
                EventKind::MessageRead,
                EventKind::UserCreated,
                EventKind::UserUpdated,
            ]
        );
        for e in events {
            let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
            assert_eq!(v["event"], e.kind().name());
            assert_eq!(e.kind().name().parse::<EventKind>(), Ok(e.kind()));
            assert_eq!(EventKind::from_token(e.kind().token()), Some(e.kind()));
            assert_eq!(DomainEvent::from_json(&e.to_json()).unwrap(), e);
        }
    }

    #[test]
    fn conversation_payload_carries_the_assignee() {
        let now = crate::model::now();
        let mut conv = Conversation {
            id: ConversationId::new_v7(),
            project_id: ProjectId::new_v7(),
            subject: None,
            status: ConversationStatus::Open,
            members: vec![],
            metadata: serde_json::json!({}),
            created_at: now,
            updated_at: now,
            last_message_id: None,
            assignee: Some("agent-7".into()),
        };
        let e = DomainEvent::conversation_changed(ConversationStatus::Open, &conv);
        let mut v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(v["event"], "conversation.updated");
        assert_eq!(v["data"]["assignee"], "agent-7");
        conv.assignee = None;
        let e = DomainEvent::conversation_changed(ConversationStatus::Open, &conv);
        let cleared: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(
            cleared["data"]["assignee"],
            serde_json::Value::Null,
            "present, null"
        );
        // An event logged before conversations had assignees still decodes: unassigned.
        v["data"].as_object_mut().unwrap().remove("assignee");
        let old = DomainEvent::from_json(&serde_json::to_vec(&v).unwrap()).unwrap();
        match old.data {
            EventData::ConversationUpdated(d) => assert_eq!(d.assignee, None),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn derived_message_ids_are_stable_distinct_v7() {
        let m = message();
        let a = DomainEvent::message_sent_derived(&m);
        let b = DomainEvent::message_sent_derived(&m);
        assert_eq!(a, b);
        assert_ne!(a.id.as_uuid(), m.id.as_uuid());
        assert_eq!(a.id.as_uuid().get_version_num(), 7);
        assert_eq!(
            a.id.as_uuid().get_variant(),
            uuid::Variant::RFC4122,
            "still an RFC 9562 UUID"
        );
        let other = Message {
            id: MessageId::following(Some(m.id)),
            ..m
        };
        assert_ne!(DomainEvent::message_sent_derived(&other).id, a.id);
    }

    #[test]
    fn each_event_gets_its_own_id() {
        let m = message();
        assert_ne!(
            DomainEvent::message_sent(&m).id,
            DomainEvent::message_sent(&m).id
        );
    }

    #[test]
    fn consumer_names_are_restricted() {
        assert!(ConsumerName::new("webhooks").is_ok());
        assert!(ConsumerName::new("usage-1_a").is_ok());
        for bad in ["", "a.b", "a*", "A", "a b", &"x".repeat(65)] {
            assert!(ConsumerName::new(bad).is_err(), "{bad:?}");
        }
    }
}
