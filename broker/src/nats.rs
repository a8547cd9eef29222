//! The NATS bus: the distributed backend (cargo feature `nats`).
//!
//! [`NatsBus`] holds one NATS connection (async-nats). Live events use **core NATS**; durable
//! events use the **JetStream** stream [`EVENTS_STREAM`].
//!
//! # Delivery
//!
//! - **At most once, in publish order per publisher and subject** — the [`Bus`] contract.
//!   `publish` returns once the message is handed to the connection, not once the server has
//!   it. Each `subscribe` is one NATS subscription whose messages wait in a bounded queue of
//!   [`NatsOptions::subscription_capacity`]; when it is full, the client drops further messages
//!   for that subscriber (NATS "slow consumer", counted in [`NatsBus::dropped`]). Publishing never
//!   waits for a subscriber, and memory stays bounded.
//! - `subscribe` returns only after a round trip to the server, so the subscription is
//!   registered there: messages published afterwards by *any* connection reach it. A gateway
//!   that subscribes and then reads the store misses nothing in between.
//! - Durable events ([`NatsBus::publish_durable`]) are stored in JetStream and acknowledged;
//!   the webhook dispatcher and usage metering consume them.
//!
//! # While NATS is away
//!
//! The client reconnects by itself, forever, with back-off capped at
//! [`NatsOptions::max_reconnect_delay`]. Meanwhile `publish`, `publish_durable`, `subscribe`
//! and `ping` fail fast with [`BusError::Unavailable`] (and, should the connection stall
//! without dropping, after [`NatsOptions::timeout`] at the latest): nothing queues up without
//! bound. Existing subscriptions are **not** ended: after the reconnect the client subscribes
//! them again and they resume. Messages published in between are lost, as at-most-once allows;
//! clients catch up by resuming from the store. Because a subscription's stream does not show
//! the gap, [`NatsBus::outages`] reports each connection loss, so that a gateway can tell its
//! connections to reconnect (and resume) instead of silently missing those messages.
//!
//! Connection events are logged with `tracing` (target `larachat_broker::nats`); async-nats also
//! logs every client event itself at `info` (target `async_nats`), including one line per
//! message dropped for a slow consumer, so production filters usually set `async_nats=warn`.
//!
//! Dropping a subscription unsubscribes (async-nats sends `UNSUB` from a spawned task, so the
//! stream must be dropped inside a Tokio runtime — as every bus user does).

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::client::{RequestErrorKind, Statistics};
use async_nats::connection::State;
use async_nats::jetstream::{self, stream};
use async_nats::{Client, ConnectOptions, Event, Request, ServerAddr, Subscriber};
use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use tokio::sync::watch;
use tokio::time::timeout;

use crate::events::DurableSubject;
use crate::{Bus, BusError, BusMessage, BusSubscription, Subject};

/// Name of the JetStream stream of durable events.
pub const EVENTS_STREAM: &str = "LARACHAT_EVENTS";
/// Subjects captured by [`EVENTS_STREAM`]: every [`DurableSubject`].
pub const EVENTS_SUBJECTS: &str = "lc.v1.events.>";

/// How to connect and what to create. `Default` suits development and tests.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Connection name shown by the server (`/connz`), e.g. `larachat-gateway`.
    pub name: String,
    /// Messages buffered per subscription before the client drops (slow consumer).
    pub subscription_capacity: usize,
    /// Bound on `publish`, `subscribe` and `ping` when the connection is up but stalls.
    pub timeout: Duration,
    /// Bound on `publish_durable`, JetStream acknowledgement included.
    pub durable_timeout: Duration,
    /// Bound on establishing the first connection (and each reconnect attempt).
    pub connect_timeout: Duration,
    /// How often the client pings the server to notice a dead connection that stayed open.
    pub ping_interval: Duration,
    /// Longest wait between two reconnect attempts.
    pub max_reconnect_delay: Duration,
    /// Durable events older than this are removed from the stream.
    pub events_max_age: Duration,
    /// Size limit of the stream; the oldest events are removed beyond it.
    pub events_max_bytes: i64,
    /// Replicas of the stream (1 for a single server, 3 for a typical cluster).
    pub events_replicas: usize,
}

/// The NATS bus. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct NatsBus {
    client: Client,
    pub(crate) jetstream: jetstream::Context,
    shared: Arc<Shared>,
    timeout: Duration,
    pub(crate) durable_timeout: Duration,
}

/// State updated from the client's event callback.
struct Shared {
    /// Messages dropped because a subscription's queue was full (as reported by the client).
    dropped: larachat_core::throttle::PowersOfTwo,
    /// Connection losses so far.
    outages: watch::Sender<u64>,
    /// The client's counters, set right after the first connect. Its `connects` count is kept
    /// by the client itself, so it catches a loss whose `Disconnected` event was dropped (the
    /// client's event queue is bounded and drops when full, e.g. during slow-consumer storms).
    stats: OnceLock<Arc<Statistics>>,
}

/// The stream handed out by [`NatsBus::subscribe`]. Dropping it drops the [`Subscriber`],
/// which unsubscribes.
struct NatsSubscription {
    inner: Subscriber,
    subject: Subject,
}

impl Default for NatsOptions {
    fn default() -> Self {
        Self {
            name: "larachat".to_owned(),
            subscription_capacity: crate::local::DEFAULT_CAPACITY,
            timeout: Duration::from_secs(2),
            durable_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(10),
            max_reconnect_delay: Duration::from_secs(2),
            events_max_age: Duration::from_secs(7 * 24 * 3600),
            events_max_bytes: 1 << 30,
            events_replicas: 1,
        }
    }
}

impl NatsBus {
    /// Connects to `url` (`nats://host:port`, comma-separated for several servers; credentials
    /// may be in the URL) and creates the durable event stream unless it exists. If the stream
    /// exists with other limits, its limits are updated to `options`.
    ///
    /// Fails with [`BusError::Unavailable`] if no server answers within
    /// [`NatsOptions::connect_timeout`] or JetStream is not enabled; once connected, the bus
    /// reconnects by itself forever.
    pub async fn connect(url: &str, options: NatsOptions) -> Result<Self, BusError> {
        let server = redact(url);
        let shared = Arc::new(Shared {
            dropped: Default::default(),
            outages: watch::Sender::new(0),
            stats: OnceLock::new(),
        });
        let max_delay = options.max_reconnect_delay;
        let events = shared.clone();
        let callback_server = server.clone();
        let connect = ConnectOptions::new()
            .name(&options.name)
            .subscription_capacity(options.subscription_capacity.max(1))
            .connection_timeout(options.connect_timeout)
            .ping_interval(options.ping_interval)
            .request_timeout(Some(options.timeout))
            .max_reconnects(None)
            .reconnect_delay_callback(move |attempts| reconnect_delay(attempts, max_delay))
            .event_callback(move |event| {
                let (shared, server) = (events.clone(), callback_server.clone());
                async move { shared.on_event(&server, event) }
            });
        // A comma-separated list names several servers of one cluster; the client picks one and
        // fails over to the others.
        let servers = url
            .split(',')
            .map(|u| u.trim().parse::<ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BusError::Unavailable(format!("invalid NATS URL {server}: {e}")))?;
        let client = connect.connect(servers).await.map_err(|e| {
            BusError::Unavailable(format!("cannot connect to NATS at {server}: {e}"))
        })?;
        tracing::info!(server = %server, name = %options.name, "connected to NATS");
        let _ = shared.stats.set(client.statistics());

        let mut js = jetstream::new(client.clone());
        js.set_timeout(options.durable_timeout);
        let bus = Self {
            client,
            jetstream: js,
            shared,
            timeout: options.timeout,
            durable_timeout: options.durable_timeout,
        };
        bus.ensure_events_stream(&options).await?;
        Ok(bus)
    }

    /// Publishes a durable event and waits for JetStream to acknowledge it (stored, and
    /// replicated per the stream's replicas). Returns its sequence number in the stream.
    ///
    /// Consumed by the webhook dispatcher and usage metering. Fails with
    /// [`BusError::Unavailable`] if NATS is away or the acknowledgement does not come within
    /// [`NatsOptions::durable_timeout`]; the event may then still have been stored, so a retry
    /// can store it twice (consumers de-duplicate by the event's own id).
    pub async fn publish_durable(
        &self,
        subject: &DurableSubject,
        payload: Bytes,
    ) -> Result<u64, BusError> {
        self.ensure_connected()?;
        let publish = async {
            let ack = self
                .jetstream
                .publish(subject.as_str().to_owned(), payload)
                .await?;
            ack.await
        };
        match timeout(self.durable_timeout, publish).await {
            Ok(Ok(ack)) => Ok(ack.sequence),
            Ok(Err(e)) => Err(BusError::Unavailable(format!(
                "durable publish to {subject} failed: {e}"
            ))),
            Err(_) => Err(BusError::Unavailable(format!(
                "durable publish to {subject} not acknowledged within {:?}",
                self.durable_timeout
            ))),
        }
    }

    /// Whether the connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// Connection losses so far. The value changes at each loss (at the latest once the
    /// connection is back): a gateway watches it and tells its connections to reconnect and
    /// resume, because its subscriptions may have missed messages.
    pub fn outages(&self) -> watch::Receiver<u64> {
        self.shared.outages.subscribe()
    }

    /// Messages dropped so far because a subscription's queue was full. A lower bound: the
    /// client reports drops through a bounded event queue.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.total()
    }

    pub(crate) fn ensure_connected(&self) -> Result<(), BusError> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            state => Err(BusError::Unavailable(format!("NATS connection is {state}"))),
        }
    }

    /// A request to a fresh inbox nobody listens on. The server answers "no responders" after
    /// processing everything this connection sent before, so this proves the server is alive
    /// and has registered earlier subscriptions. Uses its own inbox subscription (dropped, so
    /// unsubscribed, on return) rather than the shared request multiplexer, which would keep a
    /// reply slot forever for a request that times out.
    async fn round_trip(&self) -> Result<(), BusError> {
        let request = Request::new()
            .inbox(self.client.new_inbox())
            .timeout(Some(self.timeout));
        let answer = timeout(
            self.timeout,
            self.client.send_request(self.client.new_inbox(), request),
        )
        .await;
        match answer {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders => Ok(()),
            Ok(Err(e)) => Err(BusError::Unavailable(format!("NATS round trip: {e}"))),
            Err(_) => Err(BusError::Unavailable(format!(
                "NATS did not answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// Creates [`EVENTS_STREAM`] unless it exists; brings its limits in line with `options`.
    async fn ensure_events_stream(&self, options: &NatsOptions) -> Result<(), BusError> {
        let wanted = stream::Config {
            name: EVENTS_STREAM.to_owned(),
            description: Some("Lara Chat durable events (webhooks, usage metering)".to_owned()),
            subjects: vec![EVENTS_SUBJECTS.to_owned()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_age: options.events_max_age,
            max_bytes: options.events_max_bytes,
            num_replicas: options.events_replicas.max(1),
            ..Default::default()
        };
        let unavailable = |e: &dyn fmt::Display| {
            BusError::Unavailable(format!("JetStream stream {EVENTS_STREAM}: {e}"))
        };
        let existing = self
            .jetstream
            .get_or_create_stream(wanted.clone())
            .await
            .map_err(|e| unavailable(&e))?;
        let have = &existing.cached_info().config;
        if have.subjects != wanted.subjects
            || have.max_age != wanted.max_age
            || have.max_bytes != wanted.max_bytes
            || have.discard != wanted.discard
        {
            tracing::info!(
                stream = EVENTS_STREAM,
                max_bytes = wanted.max_bytes,
                max_age_s = wanted.max_age.as_secs(),
                "updating the limits of the event stream"
            );
            let update = stream::Config {
                // Storage and replicas are fixed at creation (or changed by an operator).
                storage: have.storage,
                num_replicas: have.num_replicas,
                ..wanted
            };
            self.jetstream
                .update_stream(update)
                .await
                .map_err(|e| unavailable(&e))?;
        }
        Ok(())
    }
}

impl Shared {
    fn on_event(&self, server: &str, event: Event) {
        match event {
            Event::Connected => tracing::info!(%server, "NATS connection (re)established"),
            Event::Disconnected => {
                self.outages.send_modify(|n| *n += 1);
                tracing::warn!(
                    %server,
                    outages = *self.outages.borrow(),
                    "NATS connection lost; reconnecting (live messages are lost meanwhile)"
                );
            }
            Event::SlowConsumer(sid) => {
                if let Some(total) = self.dropped.add(1) {
                    tracing::warn!(
                        sid,
                        dropped_total = total,
                        "NATS subscription queue full; messages dropped"
                    );
                }
            }
            Event::LameDuckMode => {
                tracing::warn!(%server, "NATS server entering lame duck mode; will reconnect elsewhere");
            }
            Event::ServerError(e) => tracing::warn!(%server, error = %e, "NATS server error"),
            Event::ClientError(e) => tracing::warn!(%server, error = %e, "NATS client error"),
            Event::Draining | Event::Closed => tracing::info!(%server, %event, "NATS connection"),
        }
        if let Some(stats) = self.stats.get() {
            let reconnects = stats.connects.load(Ordering::Relaxed).saturating_sub(1);
            self.outages.send_if_modified(|n| {
                let missed = *n < reconnects;
                if missed {
                    *n = reconnects;
                }
                missed
            });
        }
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, subject: &Subject, payload: Bytes) -> Result<(), BusError> {
        self.ensure_connected()?;
        // Subjects are built from typed ids only (see `Subject`): never from raw input.
        match timeout(
            self.timeout,
            self.client.publish(subject.as_str().to_owned(), payload),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            // The only other failure is a payload over the server's max_payload (1 MiB by
            // default), which the gateway's size limits keep far away.
            Ok(Err(e)) => Err(BusError::Unavailable(format!("publish to {subject}: {e}"))),
            Err(_) => Err(BusError::Unavailable(format!(
                "publish to {subject} not taken within {:?}",
                self.timeout
            ))),
        }
    }

    async fn subscribe(&self, subject: &Subject) -> Result<BusSubscription, BusError> {
        self.ensure_connected()?;
        let inner = match timeout(
            self.timeout,
            self.client.subscribe(subject.as_str().to_owned()),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(BusError::Unavailable(format!(
                    "subscribe to {subject}: {e}"
                )));
            }
            Err(_) => {
                return Err(BusError::Unavailable(format!(
                    "subscribe to {subject} not taken within {:?}",
                    self.timeout
                )));
            }
        };
        // The contract: messages published after `subscribe` returns are delivered, also by
        // other gateways. On error `inner` is dropped, which unsubscribes.
        self.round_trip().await?;
        Ok(Box::pin(NatsSubscription {
            inner,
            subject: subject.clone(),
        }))
    }

    async fn ping(&self) -> Result<(), BusError> {
        self.ensure_connected()?;
        self.round_trip().await
    }

    fn outages(&self) -> Option<watch::Receiver<u64>> {
        Some(NatsBus::outages(self))
    }
}

impl Stream for NatsSubscription {
    type Item = BusMessage;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<BusMessage>> {
        let this = self.get_mut();
        loop {
            let Some(msg) = futures::ready!(Pin::new(&mut this.inner).poll_next(cx)) else {
                return Poll::Ready(None);
            };
            // An exact (wildcard-free) subscription only receives its own subject; anything
            // else would be a server or client bug, and is not passed on. Comparing with the
            // subject we subscribed to is cheaper and stricter than `Subject::parse`.
            if msg.subject.as_str() == this.subject.as_str() {
                return Poll::Ready(Some(BusMessage {
                    subject: this.subject.clone(),
                    payload: msg.payload,
                }));
            }
            tracing::warn!(expected = %this.subject, got = %msg.subject, "NATS message under an unexpected subject dropped");
        }
    }
}

impl fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsBus")
            .field("state", &self.client.connection_state())
            .field("outages", &*self.shared.outages.borrow())
            .field("dropped", &self.dropped())
            .finish()
    }
}

/// Wait before reconnect attempt `attempts` (1-based): at once, then 100 ms doubling up to
/// `max`.
fn reconnect_delay(attempts: usize, max: Duration) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exp = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(16);
    Duration::from_millis(100u64 << exp).min(max)
}

/// `url` without credentials (`nats://user:secret@host` → `nats://host`), for logs and errors.
fn redact(url: &str) -> String {
    url.split(',')
        .map(|server| {
            let server = server.trim();
            let (scheme, rest) = server.split_once("://").unwrap_or(("", server));
            let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            if scheme.is_empty() {
                host.to_owned()
            } else {
                format!("{scheme}://{host}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_back_off_starts_at_once_and_is_capped() {
        let max = Duration::from_secs(2);
        let delays: Vec<_> = (1..=8).map(|a| reconnect_delay(a, max)).collect();
        assert_eq!(delays[0], Duration::ZERO);
        assert_eq!(delays[1], Duration::from_millis(100));
        assert_eq!(delays[2], Duration::from_millis(200));
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(delays[7], max);
        assert_eq!(reconnect_delay(usize::MAX, max), max, "no overflow");
    }

    #[test]
    fn credentials_never_reach_logs() {
        assert_eq!(redact("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(
            redact("nats://user:s3cret@a:4222, tls://tok@b:4222"),
            "nats://a:4222,tls://b:4222"
        );
        assert_eq!(redact("token@host"), "host");
    }
}
