//! # larachat-broker
//!
//! Routing of events between gateways. This crate owns:
//! - [`Bus`]: the object-safe bus trait (publish bytes on a [`Subject`], subscribe to a subject).
//!   **Delivery guarantee: at most once, in publish order per publisher and subject.** A bus may
//!   drop messages (a slow subscriber, a reconnect); completeness is the job of resume from the
//!   store, not of the bus. A bus retains nothing: nothing published before `subscribe` was
//!   called is delivered to it. `publish` never waits for a slow subscriber.
//! - [`local::LocalBus`]: the in-process default — a bounded queue per subscription, a full
//!   queue drops (counted), independent instances, no global state.
//! - [`hub::Hub`]: interest counting on top of any bus — one bus subscription and one fan-out
//!   task per subject with at least one local subscriber, each received payload decoded once
//!   and the same `Arc` offered to the bounded queue ([`LocalSink`]) of every local subscriber;
//!   a full queue is marked overflowed instead of waiting. The connection drains its queue
//!   ([`Outbox`]) in batches.
//! - `nats::NatsBus` (cargo feature `nats`): the distributed backend — core NATS for live
//!   events (same guarantee; subscriptions resume by themselves after a reconnect, messages
//!   published meanwhile are lost) and the JetStream stream `LARACHAT_EVENTS` for durable
//!   events (`publish_durable`, acknowledged; domain events with `publish_event`).
//! - `jetstream::JetStreamLog` (cargo feature `nats`): the distributed durable event log —
//!   one JetStream pull consumer per consumer name, shared by its workers (docs/events.md).
//! - [`events`]: names of durable events ([`DurableSubject`] `lc.v1.events.<project>.<kind>`,
//!   [`EventKind`]), consumed by webhooks and usage metering; backend-neutral.
//! - [`contract`]: the contract suite every bus backend must pass (bus and hub checks, each a
//!   public async fn over `Arc<dyn Bus>`); `tests/local_contract.rs` runs it on `LocalBus`,
//!   `tests/nats_contract.rs` on `NatsBus` against a real server (`deploy/nats.sh start`).
//!
//! Must not depend on the store, gateway or control plane.

pub mod contract;
pub mod events;
pub mod hub;
#[cfg(feature = "nats")]
pub mod jetstream;
pub mod local;
#[cfg(feature = "nats")]
pub mod nats;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

pub use events::{DurableSubject, EventKind};
pub use hub::{Hub, Interest, LocalSink, Outbox, Overflowed};
#[cfg(feature = "nats")]
pub use jetstream::JetStreamLog;
pub use larachat_core::subject::Subject;
pub use local::LocalBus;
#[cfg(feature = "nats")]
pub use nats::{NatsBus, NatsOptions};

/// Failures of the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The bus is unreachable right now; the caller may retry.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// The bus has been shut down.
    #[error("bus closed")]
    Closed,
}

/// One message received from the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusMessage {
    pub subject: Subject,
    pub payload: Bytes,
}

/// A live subscription: a stream of messages for one subject. Dropping it unsubscribes.
pub type BusSubscription = BoxStream<'static, BusMessage>;

/// The bus contract. See the crate docs for delivery guarantees.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes `payload` to every current subscriber of `subject`. Returns once the bus has
    /// taken the message (not once subscribers got it). Never blocks on a slow subscriber.
    async fn publish(&self, subject: &Subject, payload: Bytes) -> Result<(), BusError>;

    /// Subscribes to exactly `subject` (no wildcards). Messages published after this returns
    /// are delivered, in publish order, until the stream is dropped. The stream ends only if
    /// the bus lost the subscription (closed, disconnected); callers treat that as "messages
    /// may have been missed".
    async fn subscribe(&self, subject: &Subject) -> Result<BusSubscription, BusError>;

    /// Cheap health check used by `/ready`. On a networked bus it is a round trip to the
    /// server, so it also orders after every subscription made before it.
    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }

    /// Counts connection losses, for buses that can lose their connection (NATS). Live
    /// messages published during a loss are gone for every subscriber, and the subscription
    /// streams do not show the gap: a gateway watches this and tells its clients to resume.
    /// `None` for a bus that cannot lose messages this way (the in-process bus).
    fn outages(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}
