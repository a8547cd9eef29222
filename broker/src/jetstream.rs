//! [`JetStreamLog`]: the distributed [`EventLog`] — durable pull consumers on the
//! [`EVENTS_STREAM`](crate::nats::EVENTS_STREAM) stream (cargo feature `nats`).
//!
//! Producers publish with [`NatsBus::publish_event`] (subject
//! [`DurableSubject`](crate::DurableSubject), header `Nats-Msg-Id` = event id, so JetStream's
//! de-duplication window drops a republish of the same event). Each [`ConsumerName`] is one
//! durable JetStream pull consumer (`AckPolicy::Explicit`, `ack_wait` from
//! [`ConsumerOptions`], `DeliverPolicy::All`: a new consumer starts at the beginning of the
//! retained stream — or at [`JetStreamLog::since`]). Several workers of one name pull from the same durable consumer, so the
//! server hands each message to one of them and redelivers it after `ack_wait` without an ack:
//! a work queue, across processes. `attempt` is JetStream's delivery count. Acks are
//! double acks (confirmed by the server), so an acknowledged event does not come back.
//!
//! The consumer's options are fixed when it is created (by its first worker); a later worker
//! with another `ack_wait` uses the existing consumer's.

use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::{self, message::PublishMessage};
use async_trait::async_trait;
use futures::StreamExt;
use tokio::time::timeout;

use larachat_core::event::{
    Acker, ConsumerName, ConsumerOptions, Delivery, DomainEvent, EventConsumer, EventLog,
    EventLogError,
};

use crate::nats::{EVENTS_STREAM, EVENTS_SUBJECTS, NatsBus};
use crate::{BusError, DurableSubject};

/// The JetStream event log. Cheap to clone.
#[derive(Clone)]
pub struct JetStreamLog {
    jetstream: jetstream::Context,
    inactive_threshold: Option<Duration>,
    scope: Option<String>,
    since: Option<std::time::SystemTime>,
}

impl JetStreamLog {
    /// The log over `bus`'s connection (the stream exists: [`NatsBus::connect`] created it).
    pub fn new(bus: &NatsBus) -> Self {
        Self {
            jetstream: bus.jetstream.clone(),
            inactive_threshold: None,
            scope: None,
            since: None,
        }
    }

    /// A new consumer starts at the first event stored at or after `t` instead of the
    /// beginning of the stream: the product passes the time its keyspace got its outbox, so a
    /// deployment's first worker does not walk through events of other deployments that share
    /// the NATS account and were stored before it existed (none of them can be its own).
    pub fn since(mut self, t: std::time::SystemTime) -> Self {
        self.since = Some(t);
        self
    }

    /// Names the durable consumers `<scope>_<name>`: deployments that share one NATS account
    /// (the product passes its keyspace) each keep their own consumer position, instead of
    /// taking each other's events off one shared consumer. `scope` is `[a-z0-9_]`.
    pub fn scoped(mut self, scope: &str) -> Self {
        let ok = !scope.is_empty()
            && scope
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            self.scope = Some(scope.to_owned());
        } else {
            tracing::warn!(scope, "invalid consumer scope ignored");
        }
        self
    }

    /// Consumers created through this log are deleted by the server after `idle` without a
    /// worker. For tests, which create a fresh consumer per check; the product's consumers
    /// are kept forever (deleting one would replay the whole stream to its next worker).
    pub fn with_inactive_threshold(mut self, idle: Duration) -> Self {
        self.inactive_threshold = Some(idle);
        self
    }
}

impl NatsBus {
    /// Publishes a domain event to [`EVENTS_STREAM`] on `lc.v1.events.<project>.<kind>` with
    /// `Nats-Msg-Id` = the event id, and waits for JetStream's acknowledgement. A republish of
    /// the same event within the stream's duplicate window is acknowledged and dropped by the
    /// server. Fails with [`BusError::Unavailable`] when NATS is away or does not acknowledge
    /// within the durable timeout (the event may still have been stored).
    pub async fn publish_event(&self, event: &DomainEvent) -> Result<u64, BusError> {
        let ack = self.send_event(event).await?;
        match timeout(self.durable_timeout, ack).await {
            Ok(Ok(ack)) => Ok(ack.sequence),
            Ok(Err(e)) => Err(BusError::Unavailable(format!("event publish: {e}"))),
            Err(_) => Err(BusError::Unavailable(
                "event publish not acknowledged in time".into(),
            )),
        }
    }

    /// Hands a domain event to JetStream without waiting for its acknowledgement (await the
    /// returned future for it): a publisher pipelines a batch this way.
    pub async fn send_event(
        &self,
        event: &DomainEvent,
    ) -> Result<jetstream::context::PublishAckFuture, BusError> {
        self.ensure_connected()?;
        let subject = DurableSubject::new(event.project_id, event.kind());
        let publish = PublishMessage::build()
            .payload(event.to_json().into())
            .message_id(event.id.to_string());
        match timeout(
            self.durable_timeout,
            self.jetstream
                .send_publish(subject.as_str().to_owned(), publish),
        )
        .await
        {
            Ok(Ok(ack)) => Ok(ack),
            Ok(Err(e)) => Err(BusError::Unavailable(format!(
                "event publish to {subject}: {e}"
            ))),
            Err(_) => Err(BusError::Unavailable(format!(
                "event publish to {subject} not taken in time"
            ))),
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> EventLogError {
    EventLogError::Unavailable(e.to_string())
}

#[async_trait]
impl EventLog for JetStreamLog {
    async fn consumer(
        &self,
        name: &ConsumerName,
        options: ConsumerOptions,
    ) -> Result<Box<dyn EventConsumer>, EventLogError> {
        let stream = self
            .jetstream
            .get_stream(EVENTS_STREAM)
            .await
            .map_err(unavailable)?;
        let durable = match &self.scope {
            Some(scope) => format!("{scope}_{name}"),
            None => name.as_str().to_owned(),
        };
        let config = consumer::pull::Config {
            durable_name: Some(durable.clone()),
            description: Some("Lara Chat event consumer".to_owned()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: options.ack_wait,
            deliver_policy: match self.since {
                Some(t) => DeliverPolicy::ByStartTime {
                    start_time: time::OffsetDateTime::from(t),
                },
                None => DeliverPolicy::All,
            },
            filter_subject: EVENTS_SUBJECTS.to_owned(),
            // Bounded work in flight per consumer; a full window makes fetches wait.
            max_ack_pending: 10_000,
            inactive_threshold: self.inactive_threshold.unwrap_or_default(),
            ..Default::default()
        };
        let consumer = stream
            .get_or_create_consumer(&durable, config)
            .await
            .map_err(unavailable)?;
        Ok(Box::new(JetStreamConsumer { consumer }))
    }
}

struct JetStreamConsumer {
    consumer: PullConsumer,
}

impl JetStreamConsumer {
    /// Up to `max` messages available now (one pull request with `no_wait`).
    async fn available(&self, max: usize) -> Result<Vec<Delivery>, EventLogError> {
        let batch = self
            .consumer
            .fetch()
            .max_messages(max)
            .messages()
            .await
            .map_err(unavailable)?;
        collect(batch).await
    }

    /// Waits up to `wait` for one message.
    async fn one(&self, wait: Duration) -> Result<Vec<Delivery>, EventLogError> {
        let batch = self
            .consumer
            .batch()
            .max_messages(1)
            .expires(wait)
            .messages()
            .await
            .map_err(unavailable)?;
        collect(batch).await
    }
}

/// Reads a pull request's messages to its end (so none is left delivered and unread).
async fn collect(mut batch: consumer::pull::Batch) -> Result<Vec<Delivery>, EventLogError> {
    let mut out = Vec::new();
    while let Some(msg) = batch.next().await {
        let msg = msg.map_err(unavailable)?;
        let attempt = msg
            .info()
            .map(|i| u64::try_from(i.delivered).unwrap_or(1))
            .unwrap_or(1);
        match DomainEvent::from_json(&msg.payload) {
            Ok(event) => out.push(Delivery::new(event, attempt, Box::new(JetStreamAck(msg)))),
            Err(e) => {
                // Only our publishers write to the stream; a body that does not parse is a
                // bug or a foreign publisher. Terminate it so it does not come back forever.
                tracing::error!(subject = %msg.subject, error = %e, "event that does not parse; terminated");
                let _ = msg.ack_with(jetstream::AckKind::Term).await;
            }
        }
    }
    Ok(out)
}

#[async_trait]
impl EventConsumer for JetStreamConsumer {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, EventLogError> {
        let max = max.max(1);
        let now = self.available(max).await?;
        if !now.is_empty() || wait.is_zero() {
            return Ok(now);
        }
        // Nothing now: wait for the first, then take what else is there.
        let mut out = self.one(wait.max(Duration::from_millis(10))).await?;
        if !out.is_empty() && max > 1 {
            out.extend(self.available(max - 1).await?);
        }
        Ok(out)
    }
}

struct JetStreamAck(jetstream::Message);

#[async_trait]
impl Acker for JetStreamAck {
    async fn ack(self: Box<Self>) -> Result<(), EventLogError> {
        self.0.double_ack().await.map_err(unavailable)
    }
}
