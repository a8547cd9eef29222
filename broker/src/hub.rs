//! Interest counting and local fan-out on top of any [`Bus`].
//!
//! A gateway holds one [`Hub`]. Each WebSocket connection registers a [`LocalSink`] (its
//! bounded outbound queue) for every subject it follows and keeps the returned [`Interest`].
//! Per subject the hub keeps **one** bus subscription, opened by the first local subscriber
//! and dropped with the last, and **one** task that decodes every bus message once and hands
//! the same `Arc<T>` to every local sink.
//!
//! A sink whose queue is full has its `overflow` token cancelled (the connection then closes
//! with "slow consumer, reconnect"); a sink whose receiver is gone is removed. Nothing ever
//! waits on a connection.
//!
//! Race freedom: registering a sink and removing the last one both happen under the hub's map
//! lock, so a subject is in the map exactly while it has local subscribers. The bus
//! subscription of a subject is opened through a per-subject `OnceCell`, which every
//! subscriber awaits before `subscribe` returns: concurrent first subscribers open one bus
//! subscription between them, and a subscriber that races the last unsubscribe either joins
//! the old subject (which then stays) or creates a fresh one with its own bus subscription.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::OnceCell;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{Bus, BusError, BusMessage, BusSubscription, Subject};

type DecodeFn<T> = dyn Fn(&BusMessage) -> Option<T> + Send + Sync;

/// A connection's outbound queue as the hub sees it. One connection uses the same sink (clones
/// of it) for all its subjects.
pub struct LocalSink<T> {
    /// The connection's bounded outbound queue.
    pub tx: mpsc::Sender<Arc<T>>,
    /// Cancelled by the hub when it can no longer deliver everything to this sink: the queue
    /// was full (slow consumer) or the bus subscription ended under it. The connection must
    /// then close with a "reconnect" code; the client resumes from the store.
    pub overflow: CancellationToken,
}

/// Fan-out of one bus into local subscribers. Cheap to clone; clones share all state.
pub struct Hub<T> {
    inner: Arc<HubInner<T>>,
}

struct HubInner<T> {
    bus: Arc<dyn Bus>,
    decode: Arc<DecodeFn<T>>,
    /// Subjects with at least one registered local subscriber. Lock order: this map, then a
    /// subject's `sinks`.
    subjects: Mutex<HashMap<Subject, Arc<SubjectState<T>>>>,
    next_sink_id: AtomicU64,
    tasks: TaskTracker,
}

/// One subject's local subscribers and its bus subscription.
struct SubjectState<T> {
    subject: Subject,
    hub: Weak<HubInner<T>>,
    sinks: Mutex<Vec<(u64, LocalSink<T>)>>,
    /// Set once the bus subscription is open and its fan-out task runs.
    opened: OnceCell<()>,
    /// Ends the fan-out task, which drops the bus subscription.
    stop: CancellationToken,
}

/// A registration of one sink on one subject. Dropping it unregisters the sink; dropping the
/// last one of a subject unsubscribes the hub from the bus.
#[must_use = "dropping an Interest unsubscribes at once"]
pub struct Interest {
    state: Arc<dyn Release>,
    id: u64,
}

/// What an [`Interest`] needs from its subject, without the hub's type parameter.
trait Release: Send + Sync {
    fn release(&self, sink_id: u64);
    fn subject(&self) -> &Subject;
}

impl<T> LocalSink<T> {
    /// A sink with a fresh `overflow` token and a queue of `capacity` (at least 1), and the
    /// receiving end of that queue.
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<Arc<T>>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let sink = Self {
            tx,
            overflow: CancellationToken::new(),
        };
        (sink, rx)
    }
}

impl<T: Send + Sync + 'static> Hub<T> {
    /// A hub over `bus`. `decode` turns a bus payload into what connections consume; it runs
    /// once per received message, whatever the number of local subscribers. Messages it
    /// rejects (`None`) are skipped.
    pub fn new(
        bus: Arc<dyn Bus>,
        decode: impl Fn(&BusMessage) -> Option<T> + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner: Arc::new(HubInner {
                bus,
                decode: Arc::new(decode),
                subjects: Mutex::new(HashMap::new()),
                next_sink_id: AtomicU64::new(0),
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// The bus underneath, for publishing.
    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.inner.bus
    }

    /// Publishes straight to the bus (local subscribers get it back through the bus, like
    /// everyone else's, so all gateways see one order).
    pub async fn publish(&self, subject: &Subject, payload: Bytes) -> Result<(), BusError> {
        self.inner.bus.publish(subject, payload).await
    }

    /// Registers `sink` for `subject`. When this returns `Ok`, every message published on the
    /// bus afterwards reaches the sink (unless its queue is full). On error nothing stays
    /// registered. Cancelling the returned future also leaves nothing registered.
    ///
    /// Each call is its own registration: the same sink registered twice for a subject gets
    /// every message twice, so callers keep one `Interest` per (connection, subject).
    pub async fn subscribe(
        &self,
        subject: Subject,
        sink: LocalSink<T>,
    ) -> Result<Interest, BusError> {
        let id = self.inner.next_sink_id.fetch_add(1, Ordering::Relaxed);
        let state = {
            let mut subjects = self.inner.subjects.lock();
            if self.inner.tasks.is_closed() {
                return Err(BusError::Closed);
            }
            let state = subjects
                .entry(subject)
                .or_insert_with_key(|subject| {
                    Arc::new(SubjectState {
                        subject: subject.clone(),
                        hub: Arc::downgrade(&self.inner),
                        sinks: Mutex::new(Vec::new()),
                        opened: OnceCell::new(),
                        stop: CancellationToken::new(),
                    })
                })
                .clone();
            state.sinks.lock().push((id, sink));
            state
        };
        // From here on, dropping `interest` (early return, or this future being dropped)
        // unregisters the sink again.
        let interest = Interest {
            state: state.clone(),
            id,
        };
        state.opened.get_or_try_init(|| self.open(&state)).await?;
        if state.stop.is_cancelled() {
            // Shut down, or the bus subscription already ended (its sinks were told).
            return Err(BusError::Closed);
        }
        Ok(interest)
    }

    /// Subjects with at least one local subscriber.
    pub fn local_subjects(&self) -> usize {
        self.inner.subjects.lock().len()
    }

    /// Local subscribers (sinks) registered for `subject`.
    pub fn local_subscribers(&self, subject: &Subject) -> usize {
        let subjects = self.inner.subjects.lock();
        subjects.get(subject).map_or(0, |s| s.sinks.lock().len())
    }

    /// Fan-out tasks still running (one per subject, briefly more while one winds down).
    pub fn running_tasks(&self) -> usize {
        self.inner.tasks.len()
    }

    /// Stops every fan-out task, drops every bus subscription and waits for the tasks to end.
    /// Later `subscribe` calls fail with [`BusError::Closed`]; existing [`Interest`]s may still
    /// be dropped. For process shutdown, after connections have been told to go.
    pub async fn shutdown(&self) {
        let states: Vec<_> = {
            let mut subjects = self.inner.subjects.lock();
            self.inner.tasks.close();
            subjects.drain().map(|(_, state)| state).collect()
        };
        for state in states {
            state.stop.cancel();
        }
        self.inner.tasks.wait().await;
    }

    /// Opens the bus subscription of `state` and starts its fan-out task. Runs at most once per
    /// subject state (successfully), under its `OnceCell`.
    async fn open(&self, state: &Arc<SubjectState<T>>) -> Result<(), BusError> {
        let stream = self.inner.bus.subscribe(&state.subject).await?;
        let task = fan_out(state.clone(), stream, self.inner.decode.clone());
        self.inner.tasks.spawn(task);
        Ok(())
    }
}

impl<T> SubjectState<T> {
    /// Offers `value` to every sink without waiting.
    fn deliver(&self, value: &Arc<T>) {
        let mut sinks = self.sinks.lock();
        sinks.retain(|(_, sink)| {
            if sink.overflow.is_cancelled() {
                // Its connection is closing; anything more would arrive after a gap anyway.
                return true;
            }
            match sink.tx.try_send(value.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    tracing::debug!(subject = %self.subject, "local sink full; slow consumer");
                    sink.overflow.cancel();
                    true
                }
                Err(TrySendError::Closed(_)) => false,
            }
        });
    }

    /// The bus ended the subscription on its own (bus closed or lost). Local subscribers would
    /// silently miss messages from now on, so they are told to reconnect, and the subject is
    /// forgotten so that the next subscriber opens a fresh bus subscription.
    fn bus_ended(&self) {
        tracing::warn!(subject = %self.subject, "bus subscription ended; local subscribers must reconnect");
        let hub = self.hub.upgrade();
        let mut subjects = hub.as_ref().map(|h| h.subjects.lock());
        if let Some(subjects) = subjects.as_mut() {
            self.forget(subjects);
        }
        for (_, sink) in self.sinks.lock().iter() {
            sink.overflow.cancel();
        }
        self.stop.cancel();
    }

    /// Removes this state from the hub's map if the map still points at it (it may already
    /// hold a newer state for the same subject).
    fn forget(&self, subjects: &mut HashMap<Subject, Arc<SubjectState<T>>>) {
        if subjects
            .get(&self.subject)
            .is_some_and(|s| std::ptr::eq(Arc::as_ptr(s), self))
        {
            subjects.remove(&self.subject);
        }
    }
}

/// The per-subject task: bus messages in, decoded once, shared with every local sink. Ends
/// when `stop` is cancelled or the bus stream ends; the bus subscription is dropped with it.
async fn fan_out<T>(
    state: Arc<SubjectState<T>>,
    mut stream: BusSubscription,
    decode: Arc<DecodeFn<T>>,
) {
    loop {
        let msg = tokio::select! {
            biased;
            () = state.stop.cancelled() => return,
            msg = stream.next() => msg,
        };
        let Some(msg) = msg else {
            state.bus_ended();
            return;
        };
        match decode(&msg) {
            Some(value) => state.deliver(&Arc::new(value)),
            None => tracing::debug!(subject = %msg.subject, "undecodable bus message skipped"),
        }
    }
}

impl<T: Send + Sync + 'static> Release for SubjectState<T> {
    fn release(&self, sink_id: u64) {
        // Same lock order as `subscribe`: map, then sinks. Deciding "last one gone" and
        // removing the subject happen under the map lock, atomically with respect to a
        // concurrent subscribe of the same subject.
        let hub = self.hub.upgrade();
        let mut subjects = hub.as_ref().map(|h| h.subjects.lock());
        let mut sinks = self.sinks.lock();
        if let Some(i) = sinks.iter().position(|(id, _)| *id == sink_id) {
            sinks.swap_remove(i);
        }
        if sinks.is_empty() {
            if let Some(subjects) = subjects.as_mut() {
                self.forget(subjects);
            }
            self.stop.cancel();
        }
    }

    fn subject(&self) -> &Subject {
        &self.subject
    }
}

impl Interest {
    /// The subject this interest is registered for.
    pub fn subject(&self) -> &Subject {
        self.state.subject()
    }
}

impl Drop for Interest {
    fn drop(&mut self) {
        self.state.release(self.id);
    }
}

impl fmt::Debug for Interest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Interest")
            .field("subject", self.subject())
            .field("sink", &self.id)
            .finish()
    }
}

impl<T> Clone for LocalSink<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            overflow: self.overflow.clone(),
        }
    }
}

impl<T> fmt::Debug for LocalSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalSink")
            .field("capacity", &self.tx.max_capacity())
            .field("overflowed", &self.overflow.is_cancelled())
            .finish()
    }
}

impl<T> Clone for Hub<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<T> fmt::Debug for Hub<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("local_subjects", &self.inner.subjects.lock().len())
            .field("running_tasks", &self.inner.tasks.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    //! Hub behaviour that needs a misbehaving bus. Behaviour over a working bus is in
    //! [`crate::contract`], run for every backend.

    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    use async_trait::async_trait;
    use larachat_core::id::{ConversationId, ProjectId};
    use tokio::time::timeout;

    use super::*;
    use crate::LocalBus;

    /// A [`LocalBus`] that can refuse subscriptions, hang in `subscribe`, or end every stream.
    #[derive(Default)]
    struct ScriptedBus {
        local: LocalBus,
        fail: AtomicBool,
        hang: AtomicBool,
        end_streams: CancellationToken,
    }

    #[async_trait]
    impl Bus for ScriptedBus {
        async fn publish(&self, subject: &Subject, payload: Bytes) -> Result<(), BusError> {
            self.local.publish(subject, payload).await
        }
        async fn subscribe(&self, subject: &Subject) -> Result<BusSubscription, BusError> {
            if self.hang.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            if self.fail.load(Ordering::SeqCst) {
                return Err(BusError::Unavailable("scripted".into()));
            }
            let stream = self.local.subscribe(subject).await?;
            let end = self.end_streams.clone().cancelled_owned();
            Ok(stream.take_until(end).boxed())
        }
    }

    fn subject() -> Subject {
        Subject::conversation(ProjectId::new_v7(), ConversationId::new_v7())
    }

    fn hub(bus: &Arc<ScriptedBus>) -> Hub<Bytes> {
        Hub::new(bus.clone(), |m: &BusMessage| Some(m.payload.clone()))
    }

    async fn eventually(what: &str, cond: impl Fn() -> bool) {
        let waited = timeout(Duration::from_secs(5), async {
            while !cond() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "{what}: not reached in time");
    }

    #[tokio::test]
    async fn a_failed_bus_subscribe_is_reported_and_leaves_nothing() {
        let bus = Arc::new(ScriptedBus::default());
        bus.fail.store(true, Ordering::SeqCst);
        let hub = hub(&bus);
        let s = subject();
        let (sink, _rx) = LocalSink::channel(4);
        let err = hub.subscribe(s.clone(), sink).await.unwrap_err();
        assert!(matches!(err, BusError::Unavailable(_)), "{err:?}");
        assert_eq!(hub.local_subjects(), 0);

        bus.fail.store(false, Ordering::SeqCst);
        let (sink, mut rx) = LocalSink::channel(4);
        let _interest = hub.subscribe(s.clone(), sink).await.unwrap();
        hub.publish(&s, Bytes::from_static(b"ok")).await.unwrap();
        let got = timeout(Duration::from_secs(5), rx.recv()).await.unwrap();
        assert_eq!(got.as_deref(), Some(&Bytes::from_static(b"ok")));
    }

    #[tokio::test]
    async fn a_cancelled_subscribe_leaves_nothing() {
        let bus = Arc::new(ScriptedBus::default());
        bus.hang.store(true, Ordering::SeqCst);
        let hub = hub(&bus);
        let s = subject();
        let (sink, _rx) = LocalSink::channel(4);
        let attempt = timeout(Duration::from_millis(20), hub.subscribe(s.clone(), sink)).await;
        assert!(attempt.is_err(), "the bus never answers");
        assert_eq!(
            hub.local_subjects(),
            0,
            "the abandoned registration is gone"
        );
        assert_eq!(hub.running_tasks(), 0);
    }

    #[tokio::test]
    async fn a_bus_stream_that_ends_tells_sinks_to_reconnect() {
        let bus = Arc::new(ScriptedBus::default());
        let hub = hub(&bus);
        let s = subject();
        let (sink, _rx) = LocalSink::channel(4);
        let overflow = sink.overflow.clone();
        let old = hub.subscribe(s.clone(), sink).await.unwrap();
        bus.end_streams.cancel();
        eventually("subject forgotten", || hub.local_subjects() == 0).await;
        assert!(
            overflow.is_cancelled(),
            "the connection must reconnect and resume"
        );
        eventually("task ended", || hub.running_tasks() == 0).await;
        drop(old);
        assert_eq!(hub.local_subjects(), 0);
    }

    #[tokio::test]
    async fn shutdown_stops_tasks_and_refuses_new_subscribers() {
        let bus = Arc::new(ScriptedBus::default());
        let hub = hub(&bus);
        let (sink, _rx) = LocalSink::channel(4);
        let interest = hub.subscribe(subject(), sink.clone()).await.unwrap();
        assert_eq!(hub.running_tasks(), 1);
        timeout(Duration::from_secs(5), hub.shutdown())
            .await
            .unwrap();
        assert_eq!((hub.running_tasks(), hub.local_subjects()), (0, 0));
        assert_eq!(bus.local.subjects(), 0, "bus subscription dropped");
        let again = hub.subscribe(subject(), sink).await;
        assert!(matches!(again, Err(BusError::Closed)), "{again:?}");
        drop(interest);
    }
}
