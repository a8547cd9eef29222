//! Interest counting and local fan-out on top of any [`Bus`].
//!
//! A gateway holds one [`Hub`]. Each WebSocket connection owns one bounded outbound queue: it
//! keeps the receiving end ([`Outbox`]) and registers the sending end ([`LocalSink`]) for every
//! subject it follows, keeping the returned [`Interest`]. Per subject the hub keeps **one** bus
//! subscription, opened by the first local subscriber and dropped with the last, and **one**
//! task that decodes every bus message once and hands the same `Arc<T>` to every local sink.
//!
//! A sink whose queue is full is marked overflowed (the connection then closes with "slow
//! consumer, reconnect"); a sink whose receiver is gone is removed. Nothing ever waits on a
//! connection.
//!
//! The queue is hand-written rather than a `tokio::sync::mpsc` channel because of what the
//! fan-out hot path measured (issue 10): a connection drains **everything** queued with one
//! lock at each wake-up (and writes it with one syscall), the hub wakes a connection only when
//! its queue goes from empty to non-empty (not once per event), the overflow flag is a plain
//! bool under the same lock (a `CancellationToken` check locks a mutex of its own), and an idle
//! connection's queue holds no allocation (an mpsc channel allocates a block of 32 slots up
//! front).
//!
//! Race freedom: registering a sink and removing the last one both happen under the hub's map
//! lock, so a subject is in the map exactly while it has local subscribers. The bus
//! subscription of a subject is opened through a per-subject `OnceCell`, which every
//! subscriber awaits before `subscribe` returns: concurrent first subscribers open one bus
//! subscription between them, and a subscriber that races the last unsubscribe either joins
//! the old subject (which then stays) or creates a fresh one with its own bus subscription.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{Bus, BusError, BusMessage, BusSubscription, Subject};

type DecodeFn<T> = dyn Fn(&BusMessage) -> Option<T> + Send + Sync;

/// The sending end of a connection's bounded outbound queue, as the hub sees it. One
/// connection uses the same queue (clones of its sink) for all its subjects. Cheap to clone.
pub struct LocalSink<T> {
    queue: Arc<Queue<T>>,
}

/// The receiving end of a connection's outbound queue: the connection drains everything queued
/// at each wake-up ([`Outbox::poll_drain`]). Dropping it closes the queue; the hub then removes
/// the sinks at their next message.
pub struct Outbox<T> {
    queue: Arc<Queue<T>>,
}

/// The queue shared by a connection's sinks and its outbox.
struct Queue<T> {
    capacity: usize,
    state: Mutex<QueueState<T>>,
}

struct QueueState<T> {
    items: VecDeque<Arc<T>>,
    /// The hub could not deliver everything (queue full, or the bus subscription ended): the
    /// connection must close with a "reconnect" code; the client resumes from the store.
    overflowed: bool,
    /// The outbox was dropped.
    closed: bool,
    /// The connection waiting for its queue to become non-empty or overflowed.
    waker: Option<Waker>,
}

/// What happened to one offered value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offer {
    Queued,
    /// The queue is full: the value is dropped and the connection told to go.
    Full,
    /// The queue had overflowed before (its connection is closing).
    Overflowed,
    /// The connection is gone: remove the sink.
    Closed,
}

/// The queue overflowed: the hub dropped events for this connection, which must close with a
/// "reconnect and resume" code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflowed;

impl<T> LocalSink<T> {
    /// A queue of `capacity` (at least 1) values: its sending end and its receiving end.
    pub fn channel(capacity: usize) -> (Self, Outbox<T>) {
        let queue = Arc::new(Queue {
            capacity: capacity.max(1),
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                overflowed: false,
                closed: false,
                waker: None,
            }),
        });
        (
            Self {
                queue: queue.clone(),
            },
            Outbox { queue },
        )
    }

    /// Whether the hub marked this queue overflowed.
    pub fn is_overflowed(&self) -> bool {
        self.queue.state.lock().overflowed
    }

    /// Queues `value` without waiting. Wakes the connection only when its queue goes from
    /// empty to non-empty: it drains everything at each wake-up.
    fn offer(&self, value: &Arc<T>) -> Offer {
        let mut st = self.queue.state.lock();
        if st.closed {
            return Offer::Closed;
        }
        if st.overflowed {
            // Its connection is closing; anything more would arrive after a gap anyway.
            return Offer::Overflowed;
        }
        if st.items.len() >= self.queue.capacity {
            st.overflowed = true;
            st.items = VecDeque::new();
            let waker = st.waker.take();
            drop(st);
            if let Some(w) = waker {
                w.wake();
            }
            return Offer::Full;
        }
        let was_empty = st.items.is_empty();
        st.items.push_back(value.clone());
        let waker = if was_empty { st.waker.take() } else { None };
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
        Offer::Queued
    }

    /// Marks the queue overflowed and wakes its connection.
    fn overflow(&self) {
        let mut st = self.queue.state.lock();
        st.overflowed = true;
        st.items = VecDeque::new();
        let waker = st.waker.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Outbox<T> {
    /// Moves everything queued to the back of `into` (which the caller keeps between calls, so
    /// two buffers swap roles and neither is reallocated). `Ready(Ok)` when at least one value
    /// was moved; `Ready(Err(Overflowed))` once the queue has overflowed (the connection must
    /// close); `Pending` (and a wake-up registered) when the queue is empty.
    pub fn poll_drain(
        &mut self,
        cx: &mut Context<'_>,
        into: &mut VecDeque<Arc<T>>,
    ) -> Poll<Result<(), Overflowed>> {
        let mut st = self.queue.state.lock();
        if st.overflowed {
            return Poll::Ready(Err(Overflowed));
        }
        if st.items.is_empty() {
            match &mut st.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        if into.is_empty() {
            std::mem::swap(&mut st.items, into);
        } else {
            into.append(&mut st.items);
        }
        Poll::Ready(Ok(()))
    }

    /// `Ready` once the queue has overflowed; else registers a wake-up for when it does (or
    /// when something is queued). For a connection that is not draining its queue right now
    /// (its socket is not taking what it wrote) but must notice the overflow.
    pub fn poll_overflow(&mut self, cx: &mut Context<'_>) -> Poll<Overflowed> {
        let mut st = self.queue.state.lock();
        if st.overflowed {
            return Poll::Ready(Overflowed);
        }
        match &mut st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// The next value, waiting for one; `None` once the queue has overflowed. (Connections
    /// drain in batches with [`Outbox::poll_drain`]; this is for simple consumers and tests.)
    pub async fn recv(&mut self) -> Option<Arc<T>> {
        poll_fn(|cx| {
            let mut st = self.queue.state.lock();
            if st.overflowed {
                return Poll::Ready(None);
            }
            match st.items.pop_front() {
                Some(v) => Poll::Ready(Some(v)),
                None => {
                    st.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Whether the hub marked this queue overflowed.
    pub fn is_overflowed(&self) -> bool {
        self.queue.state.lock().overflowed
    }

    /// Values queued and not yet drained.
    pub fn len(&self) -> usize {
        self.queue.state.lock().items.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Drop for Outbox<T> {
    fn drop(&mut self) {
        let mut st = self.queue.state.lock();
        st.closed = true;
        st.waker = None;
        // Free queued events now rather than when the last subject drops its sink.
        st.items = VecDeque::new();
    }
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
        sinks.retain(|(_, sink)| match sink.offer(value) {
            Offer::Queued | Offer::Overflowed => true,
            Offer::Full => {
                tracing::debug!(subject = %self.subject, "local sink full; slow consumer");
                true
            }
            Offer::Closed => false,
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
            sink.overflow();
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
            queue: self.queue.clone(),
        }
    }
}

impl<T> fmt::Debug for LocalSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.queue.state.lock();
        f.debug_struct("LocalSink")
            .field("capacity", &self.queue.capacity)
            .field("queued", &st.items.len())
            .field("overflowed", &st.overflowed)
            .finish()
    }
}

impl<T> fmt::Debug for Outbox<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.queue.state.lock();
        f.debug_struct("Outbox")
            .field("capacity", &self.queue.capacity)
            .field("queued", &st.items.len())
            .field("overflowed", &st.overflowed)
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

    /// A waker that counts its wake-ups.
    struct CountingWaker(AtomicU64);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_queue_wakes_its_connection_once_per_batch_and_drains_everything() {
        let (sink, mut outbox) = LocalSink::<u32>::channel(8);
        let counter = Arc::new(CountingWaker(AtomicU64::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let mut batch = VecDeque::new();
        assert!(outbox.poll_drain(&mut cx, &mut batch).is_pending());
        for i in 0..5 {
            assert_eq!(sink.offer(&Arc::new(i)), Offer::Queued);
        }
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            1,
            "woken once: when the queue stopped being empty"
        );
        assert_eq!(outbox.poll_drain(&mut cx, &mut batch), Poll::Ready(Ok(())));
        let got: Vec<u32> = batch.drain(..).map(|v| *v).collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4], "everything, in order, at once");
        assert!(outbox.poll_drain(&mut cx, &mut batch).is_pending());
        assert_eq!(sink.offer(&Arc::new(5)), Offer::Queued);
        assert_eq!(counter.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_full_queue_overflows_once_and_frees_what_it_held() {
        let (sink, mut outbox) = LocalSink::<u32>::channel(2);
        let counter = Arc::new(CountingWaker(AtomicU64::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let mut batch = VecDeque::new();
        assert_eq!(sink.offer(&Arc::new(1)), Offer::Queued);
        assert_eq!(sink.offer(&Arc::new(2)), Offer::Queued);
        assert_eq!(sink.offer(&Arc::new(3)), Offer::Full);
        assert_eq!(sink.offer(&Arc::new(4)), Offer::Overflowed);
        assert!(sink.is_overflowed() && outbox.is_overflowed());
        assert_eq!(outbox.len(), 0, "queued events are dropped at once");
        assert_eq!(
            outbox.poll_drain(&mut cx, &mut batch),
            Poll::Ready(Err(Overflowed))
        );
        assert!(batch.is_empty());
        assert_eq!(outbox.poll_overflow(&mut cx), Poll::Ready(Overflowed));
    }

    #[test]
    fn a_connection_that_is_not_draining_is_woken_by_the_overflow() {
        let (sink, mut outbox) = LocalSink::<u32>::channel(1);
        let counter = Arc::new(CountingWaker(AtomicU64::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        assert_eq!(sink.offer(&Arc::new(1)), Offer::Queued);
        // The connection's socket is full: it watches for the overflow without draining.
        assert!(outbox.poll_overflow(&mut cx).is_pending());
        assert_eq!(sink.offer(&Arc::new(2)), Offer::Full);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1, "woken by the overflow");
        assert_eq!(outbox.poll_overflow(&mut cx), Poll::Ready(Overflowed));
    }

    #[test]
    fn a_dropped_outbox_closes_its_sinks() {
        let (sink, outbox) = LocalSink::<u32>::channel(2);
        assert_eq!(sink.offer(&Arc::new(1)), Offer::Queued);
        drop(outbox);
        assert_eq!(sink.offer(&Arc::new(2)), Offer::Closed);
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
        let (sink, rx) = LocalSink::channel(4);
        let old = hub.subscribe(s.clone(), sink).await.unwrap();
        bus.end_streams.cancel();
        eventually("subject forgotten", || hub.local_subjects() == 0).await;
        assert!(
            rx.is_overflowed(),
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
