//! The in-process bus: the single-node default.
//!
//! Each subscription owns a bounded `tokio::sync::mpsc` queue. `publish` offers the message to
//! every queue of the subject with `try_send` and never waits: a full queue loses that message
//! (at most once, counted in [`LocalBus::dropped`]). Dropping a subscription removes its queue
//! at once, so the subject map only holds live subscribers and does not grow with churn.
//!
//! Every `LocalBus` is independent (no global state); clones share one bus.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use parking_lot::RwLock;
use tokio::sync::mpsc::{self, error::TrySendError};

use crate::{Bus, BusError, BusMessage, BusSubscription, Subject};

/// Queue length of one subscription unless configured otherwise.
pub const DEFAULT_CAPACITY: usize = 4096;

/// The in-process bus. Cheap to clone; clones share the same subscribers.
#[derive(Clone)]
pub struct LocalBus {
    inner: Arc<Inner>,
}

struct Inner {
    capacity: usize,
    /// Read-locked by publishers (they only `try_send`), write-locked to add or remove a
    /// subscriber. Never held across an `.await`.
    subjects: RwLock<HashMap<Subject, Vec<Slot>>>,
    next_id: AtomicU64,
    dropped: larachat_core::throttle::PowersOfTwo,
}

/// One subscription's queue, identified so that its guard can remove exactly it.
struct Slot {
    id: u64,
    tx: mpsc::Sender<BusMessage>,
}

/// The stream handed out by [`LocalBus::subscribe`].
struct LocalSubscription {
    // Declared first so it is dropped first: the slot leaves the map before the queue closes,
    // so publishers never see a closed queue in the normal case.
    _guard: SlotGuard,
    rx: mpsc::Receiver<BusMessage>,
}

/// Removes a subscription's slot from its bus when the subscription is dropped.
struct SlotGuard {
    // Weak: a subscription must not keep a dropped bus alive. When the last `LocalBus` handle
    // goes, every sender goes with it and the streams end.
    bus: Weak<Inner>,
    subject: Subject,
    id: u64,
}

impl LocalBus {
    /// A bus whose subscriptions each buffer up to [`DEFAULT_CAPACITY`] messages.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// A bus whose subscriptions each buffer up to `capacity` messages (at least 1). A
    /// subscriber that falls further behind loses messages.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                capacity: capacity.max(1),
                subjects: RwLock::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                dropped: Default::default(),
            }),
        }
    }

    /// Queue length of each subscription.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// Messages lost so far because a subscriber's queue was full (one per subscriber and
    /// message).
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.total()
    }

    /// Subjects with at least one live subscription.
    pub fn subjects(&self) -> usize {
        self.inner.subjects.read().len()
    }

    /// Live subscriptions of `subject`.
    pub fn subscribers(&self, subject: &Subject) -> usize {
        self.inner.subjects.read().get(subject).map_or(0, Vec::len)
    }

    fn count_dropped(&self, subject: &Subject, n: u64) {
        if let Some(total) = self.inner.dropped.add(n) {
            tracing::warn!(
                %subject,
                dropped_total = total,
                "local bus subscriber queue full; messages dropped"
            );
        }
    }
}

impl Default for LocalBus {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for LocalBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalBus")
            .field("capacity", &self.inner.capacity)
            .field("subjects", &self.subjects())
            .field("dropped", &self.dropped())
            .finish()
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(&self, subject: &Subject, payload: Bytes) -> Result<(), BusError> {
        let mut dropped = 0u64;
        let mut saw_closed = false;
        {
            let subjects = self.inner.subjects.read();
            let Some(slots) = subjects.get(subject) else {
                return Ok(());
            };
            for slot in slots {
                let msg = BusMessage {
                    subject: subject.clone(),
                    payload: payload.clone(),
                };
                match slot.tx.try_send(msg) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => dropped += 1,
                    Err(TrySendError::Closed(_)) => saw_closed = true,
                }
            }
        }
        if dropped > 0 {
            self.count_dropped(subject, dropped);
        }
        if saw_closed {
            // Only reachable while a subscription is being dropped; its guard removes the slot
            // too, this just does not wait for it.
            let mut subjects = self.inner.subjects.write();
            if let Some(slots) = subjects.get_mut(subject) {
                slots.retain(|s| !s.tx.is_closed());
                if slots.is_empty() {
                    subjects.remove(subject);
                }
            }
        }
        Ok(())
    }

    async fn subscribe(&self, subject: &Subject) -> Result<BusSubscription, BusError> {
        let (tx, rx) = mpsc::channel(self.inner.capacity);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.inner
            .subjects
            .write()
            .entry(subject.clone())
            .or_default()
            .push(Slot { id, tx });
        Ok(Box::pin(LocalSubscription {
            _guard: SlotGuard {
                bus: Arc::downgrade(&self.inner),
                subject: subject.clone(),
                id,
            },
            rx,
        }))
    }
}

impl Stream for LocalSubscription {
    type Item = BusMessage;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<BusMessage>> {
        self.get_mut().rx.poll_recv(cx)
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let Some(bus) = self.bus.upgrade() else {
            return;
        };
        let mut subjects = bus.subjects.write();
        if let Some(slots) = subjects.get_mut(&self.subject) {
            slots.retain(|s| s.id != self.id);
            if slots.is_empty() {
                subjects.remove(&self.subject);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::{FutureExt, StreamExt};
    use larachat_core::id::{ConversationId, ProjectId};
    use tokio::time::timeout;

    use super::*;

    fn subject() -> Subject {
        Subject::conversation(ProjectId::new_v7(), ConversationId::new_v7())
    }

    async fn recv(sub: &mut BusSubscription) -> Bytes {
        timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("nothing received in time")
            .expect("subscription ended")
            .payload
    }

    #[tokio::test]
    async fn dropping_subscriptions_frees_their_subjects() {
        let bus = LocalBus::new();
        let (s, t) = (subject(), subject());
        let a = bus.subscribe(&s).await.unwrap();
        let b = bus.subscribe(&s).await.unwrap();
        let c = bus.subscribe(&t).await.unwrap();
        assert_eq!((bus.subjects(), bus.subscribers(&s)), (2, 2));
        drop(a);
        assert_eq!(bus.subscribers(&s), 1);
        drop((b, c));
        assert_eq!(bus.subjects(), 0, "no entry left behind");
        for _ in 0..1000 {
            let sub = bus.subscribe(&subject()).await.unwrap();
            drop(sub);
        }
        assert_eq!(bus.subjects(), 0, "churn does not grow the map");
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_then_recovers() {
        let bus = LocalBus::with_capacity(2);
        let s = subject();
        let mut sub = bus.subscribe(&s).await.unwrap();
        for i in 0u8..5 {
            bus.publish(&s, Bytes::from(vec![i])).await.unwrap();
        }
        assert_eq!(bus.dropped(), 3);
        assert_eq!(recv(&mut sub).await, Bytes::from_static(&[0]));
        assert_eq!(recv(&mut sub).await, Bytes::from_static(&[1]));
        assert!(
            sub.next().now_or_never().is_none(),
            "messages 2..5 were dropped"
        );
        bus.publish(&s, Bytes::from_static(b"again")).await.unwrap();
        assert_eq!(recv(&mut sub).await, Bytes::from_static(b"again"));
    }

    #[tokio::test]
    async fn instances_are_independent_and_clones_are_shared() {
        let bus = LocalBus::new();
        let other = LocalBus::new();
        let s = subject();
        let mut sub = bus.subscribe(&s).await.unwrap();
        other
            .publish(&s, Bytes::from_static(b"other"))
            .await
            .unwrap();
        bus.clone()
            .publish(&s, Bytes::from_static(b"clone"))
            .await
            .unwrap();
        assert_eq!(recv(&mut sub).await, Bytes::from_static(b"clone"));
        assert_eq!(other.subjects(), 0);
    }

    #[tokio::test]
    async fn streams_end_when_the_bus_is_gone() {
        let bus = LocalBus::with_capacity(0);
        assert_eq!(bus.capacity(), 1, "zero is clamped, not a panic");
        let s = subject();
        let mut sub = bus.subscribe(&s).await.unwrap();
        bus.publish(&s, Bytes::from_static(b"last")).await.unwrap();
        drop(bus);
        assert_eq!(recv(&mut sub).await, Bytes::from_static(b"last"));
        let end = timeout(Duration::from_secs(5), sub.next()).await;
        assert!(matches!(end, Ok(None)), "stream ends instead of hanging");
    }
}
