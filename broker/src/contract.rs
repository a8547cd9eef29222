//! The bus contract suite: what every [`Bus`] backend must do, checked the same way for each.
//!
//! Each check is a public async function taking the backend as `Arc<dyn Bus>`; a backend's
//! integration test calls every one of them (see `tests/local_contract.rs`), or [`run_all`].
//! Checks panic with a message saying what a user would notice; every wait is bounded by a
//! timeout, so a broken backend fails instead of hanging. Run them on a multi-threaded runtime.
//!
//! The `hub_*` checks run a [`Hub`] over the backend, wrapped in a [`CountingBus`] that counts
//! bus subscriptions, so interest counting is verified against every backend too.
//!
//! What the suite pins down (the [`Bus`] contract):
//! - a subscriber receives every message published after `subscribe` returned, in publish
//!   order, with the payload bytes unchanged, as long as it keeps up;
//! - every subscriber of a subject receives; subjects are isolated (also across projects);
//! - no retention: nothing published before subscribing is delivered;
//! - dropping a subscription affects no one else; publishing never fails for lack of
//!   subscribers and never waits for a slow one (that one loses messages: at most once).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use larachat_core::id::{ConversationId, ProjectId};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::{Bus, BusError, BusMessage, BusSubscription, Hub, LocalSink, Outbox, Subject};

/// Bound on any single wait (a receive, a subscribe, a publish).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on publishing the 100 000 messages of the slow-subscriber check.
pub const FLOOD_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs every check against `bus`, one after the other.
pub async fn run_all(bus: Arc<dyn Bus>) {
    macro_rules! run {
        ($($check:ident),* $(,)?) => { $( $check(bus.clone()).await; )* };
    }
    crate::for_each_bus_check!(run);
}

/// Calls the macro `$m` with the name of every bus check: the one list of checks, used by
/// [`run_all`] and by each backend's test file, so a new check runs on every backend.
#[macro_export]
macro_rules! for_each_bus_check {
    ($m:ident) => {
        $m!(
            ping_answers,
            delivers_in_publish_order,
            every_subscriber_receives,
            subjects_are_isolated,
            dropping_a_subscription_affects_no_one_else,
            publishing_without_subscribers_succeeds_and_is_not_retained,
            slow_subscriber_does_not_block_publish,
            payloads_arrive_unchanged,
            hub_opens_one_bus_subscription_per_subject,
            hub_decodes_once_and_shares_one_arc,
            hub_cancels_overflow_of_the_full_sink_only,
            hub_last_drop_unsubscribes,
            hub_prunes_closed_sinks,
            hub_concurrent_first_subscribers_share_one_subscription,
            hub_unsubscribe_racing_subscribe_keeps_delivery,
            hub_churn_leaves_nothing,
        );
    };
}

// ---------------------------------------------------------------------------------------------
// Bus checks
// ---------------------------------------------------------------------------------------------

/// `ping` answers on a healthy bus.
pub async fn ping_answers(bus: Arc<dyn Bus>) {
    let answer = timeout(STEP_TIMEOUT, bus.ping()).await;
    assert!(matches!(answer, Ok(Ok(()))), "ping: {answer:?}");
}

/// 1000 numbered messages published after `subscribe` arrive, all of them, in order, carrying
/// their subject.
pub async fn delivers_in_publish_order(bus: Arc<dyn Bus>) {
    const N: u32 = 1000;
    let s = conversation();
    let sub = subscribe(&*bus, &s).await;
    let reader = spawn_reader(sub, N as usize, s.clone());
    for i in 0..N {
        publish(&*bus, &s, numbered(i)).await;
    }
    let got = join(reader).await;
    assert_eq!(
        got,
        (0..N).collect::<Vec<_>>(),
        "lost or reordered messages"
    );
}

/// Two subscribers of one subject both receive every message, in order.
pub async fn every_subscriber_receives(bus: Arc<dyn Bus>) {
    const N: u32 = 100;
    let s = conversation();
    let first = spawn_reader(subscribe(&*bus, &s).await, N as usize, s.clone());
    let second = spawn_reader(subscribe(&*bus, &s).await, N as usize, s.clone());
    for i in 0..N {
        publish(&*bus, &s, numbered(i)).await;
    }
    let expected: Vec<u32> = (0..N).collect();
    assert_eq!(join(first).await, expected, "first subscriber");
    assert_eq!(join(second).await, expected, "second subscriber");
}

/// A subscriber of one subject never receives another's messages: not another conversation
/// of the same project, not the same conversation id under another project, not the
/// project's inbox.
pub async fn subjects_are_isolated(bus: Arc<dyn Bus>) {
    let (p, other_p) = (ProjectId::new_v7(), ProjectId::new_v7());
    let (c, other_c) = (ConversationId::new_v7(), ConversationId::new_v7());
    let target = Subject::conversation(p, c);
    let neighbours = [
        Subject::conversation(p, other_c),
        Subject::conversation(other_p, c),
        Subject::inbox(p),
        Subject::user(p, larachat_core::id::EndUserId::from_uuid(*c.as_uuid())),
    ];
    let mut target_sub = subscribe(&*bus, &target).await;
    let mut neighbour_subs = Vec::new();
    for n in &neighbours {
        neighbour_subs.push(subscribe(&*bus, n).await);
    }

    publish(&*bus, &target, Bytes::from_static(b"for target")).await;
    for n in &neighbours {
        publish(&*bus, n, Bytes::from(format!("for {n}"))).await;
    }
    publish(&*bus, &target, Bytes::from_static(b"target end")).await;

    let m = next(&mut target_sub, "target subscriber").await;
    assert_eq!((&m.subject, &m.payload[..]), (&target, &b"for target"[..]));
    let m = next(&mut target_sub, "target subscriber").await;
    assert_eq!(
        (&m.subject, &m.payload[..]),
        (&target, &b"target end"[..]),
        "the target subscriber received a neighbour's message"
    );
    for (n, sub) in neighbours.iter().zip(&mut neighbour_subs) {
        let m = next(sub, "neighbour subscriber").await;
        assert_eq!(&m.subject, n, "a message arrived under the wrong subject");
        assert_eq!(
            m.payload,
            Bytes::from(format!("for {n}")),
            "{n} received the target's message"
        );
    }
}

/// Dropping one subscription leaves the others receiving; publishing to a subject whose only
/// subscriber left still succeeds, and subscribing again works.
pub async fn dropping_a_subscription_affects_no_one_else(bus: Arc<dyn Bus>) {
    let s = conversation();
    let mut first = subscribe(&*bus, &s).await;
    let mut second = subscribe(&*bus, &s).await;
    publish(&*bus, &s, numbered(1)).await;
    assert_eq!(number(&next(&mut first, "first").await), 1);
    assert_eq!(number(&next(&mut second, "second").await), 1);
    drop(first);
    publish(&*bus, &s, numbered(2)).await;
    assert_eq!(number(&next(&mut second, "remaining subscriber").await), 2);

    drop(second);
    publish(&*bus, &s, numbered(3)).await;
    let mut again = subscribe(&*bus, &s).await;
    publish(&*bus, &s, numbered(4)).await;
    assert_eq!(
        number(&next(&mut again, "re-subscriber").await),
        4,
        "a new subscription must start with messages published after it"
    );
}

/// Publishing to a subject nobody follows succeeds, and is not retained for a later
/// subscriber (replay is the store's job, not the bus's).
pub async fn publishing_without_subscribers_succeeds_and_is_not_retained(bus: Arc<dyn Bus>) {
    let s = conversation();
    for i in 0..10 {
        publish(&*bus, &s, numbered(i)).await;
    }
    let mut sub = subscribe(&*bus, &s).await;
    publish(&*bus, &s, numbered(100)).await;
    assert_eq!(
        number(&next(&mut sub, "late subscriber").await),
        100,
        "messages published before subscribing were delivered"
    );
}

/// A subscriber that never reads does not block publishing: 100 000 messages are published
/// within [`FLOOD_TIMEOUT`] while it sleeps. Meanwhile a reading subscriber keeps receiving,
/// in order (gaps allowed: at most once), and the sleeper, once it reads again, finds its
/// messages in order and receives new ones.
pub async fn slow_subscriber_does_not_block_publish(bus: Arc<dyn Bus>) {
    const N: u32 = 100_000;
    const MARKER: u32 = u32::MAX;
    let s = conversation();
    let mut sleeper = subscribe(&*bus, &s).await;
    let mut reader_sub = subscribe(&*bus, &s).await;
    let reader: JoinHandle<Vec<u32>> = tokio::spawn(async move {
        let mut got = Vec::new();
        loop {
            let n = number(&next(&mut reader_sub, "reading subscriber").await);
            if n == MARKER {
                return got;
            }
            got.push(n);
        }
    });

    let flood = timeout(FLOOD_TIMEOUT, async {
        for i in 0..N {
            bus.publish(&s, numbered(i))
                .await
                .expect("publish failed during the flood");
        }
    })
    .await;
    assert!(
        flood.is_ok(),
        "publishing {N} messages took longer than {FLOOD_TIMEOUT:?}: a slow subscriber blocks publish"
    );

    // The marker itself may be dropped while the reader catches up: repeat it until seen.
    let got = repeat_until_done(&*bus, &s, numbered(MARKER), reader).await;
    assert!(!got.is_empty(), "the reading subscriber received nothing");
    assert_strictly_increasing(&got, N, "reading subscriber");

    let mut buffered = Vec::new();
    while let Some(Some(m)) = sleeper.next().now_or_never() {
        buffered.push(number(&m));
    }
    assert_strictly_increasing(&buffered, N, "slow subscriber");
    let resumed = tokio::spawn(async move {
        loop {
            if number(&next(&mut sleeper, "slow subscriber after waking").await) == MARKER {
                return;
            }
        }
    });
    repeat_until_done(&*bus, &s, numbered(MARKER), resumed).await;
}

/// Payload bytes arrive unchanged: empty, single zero byte, every byte value, UTF-8, 64 KiB.
pub async fn payloads_arrive_unchanged(bus: Arc<dyn Bus>) {
    let big: Vec<u8> = (0..64 * 1024).map(|i| (i * 31 % 251) as u8).collect();
    let payloads = vec![
        Bytes::new(),
        Bytes::from_static(&[0]),
        Bytes::from((0..=255u8).collect::<Vec<_>>()),
        Bytes::from("héllo 👋 {\"type\":\"message\"}"),
        Bytes::from(big),
    ];
    let s = conversation();
    let mut sub = subscribe(&*bus, &s).await;
    for p in &payloads {
        publish(&*bus, &s, p.clone()).await;
    }
    for (i, expected) in payloads.iter().enumerate() {
        let m = next(&mut sub, "payload subscriber").await;
        assert!(
            m.payload == *expected,
            "payload {i} changed: {} bytes sent, {} received",
            expected.len(),
            m.payload.len()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Hub checks
// ---------------------------------------------------------------------------------------------

/// However many local subscribers a subject has, the hub opens one bus subscription for it,
/// and each local subscriber receives each message exactly once.
pub async fn hub_opens_one_bus_subscription_per_subject(bus: Arc<dyn Bus>) {
    let counting = CountingBus::new(bus);
    let hub = payload_hub(counting.clone());
    let (s, other) = (conversation(), conversation());
    let mut interests = Vec::new();
    let mut queues = Vec::new();
    for _ in 0..5 {
        let (sink, rx) = LocalSink::channel(16);
        interests.push(hub_subscribe(&hub, &s, sink).await);
        queues.push(rx);
    }
    assert_eq!(
        counting.subscribes(),
        1,
        "one bus subscription for 5 local subscribers"
    );
    assert_eq!(hub.local_subscribers(&s), 5);
    let (sink, mut other_rx) = LocalSink::channel(16);
    let _other = hub_subscribe(&hub, &other, sink).await;
    assert_eq!(counting.subscribes(), 2);
    assert_eq!(hub.local_subjects(), 2);

    publish(&*counting, &s, Bytes::from_static(b"x")).await;
    publish(&*counting, &other, Bytes::from_static(b"y")).await;
    publish(&*counting, &s, Bytes::from_static(b"end")).await;
    for rx in &mut queues {
        assert_eq!(&recv(rx).await[..], b"x");
        assert_eq!(
            &recv(rx).await[..],
            b"end",
            "a local subscriber got a duplicate"
        );
    }
    assert_eq!(&recv(&mut other_rx).await[..], b"y");
}

/// Each bus message is decoded once, and every local subscriber gets the same `Arc`.
pub async fn hub_decodes_once_and_shares_one_arc(bus: Arc<dyn Bus>) {
    const N: usize = 10;
    let decodes = Arc::new(AtomicUsize::new(0));
    let counter = decodes.clone();
    let hub = Hub::new(bus.clone(), move |m: &BusMessage| {
        counter.fetch_add(1, Ordering::SeqCst);
        Some(m.payload.clone())
    });
    let s = conversation();
    let mut interests = Vec::new();
    let mut queues = Vec::new();
    for _ in 0..3 {
        let (sink, rx) = LocalSink::channel(N);
        interests.push(hub_subscribe(&hub, &s, sink).await);
        queues.push(rx);
    }
    for i in 0..N {
        publish(&*bus, &s, numbered(i as u32)).await;
    }
    for i in 0..N {
        let mut received = Vec::new();
        for rx in &mut queues {
            received.push(recv(rx).await);
        }
        assert_eq!(&received[0][..], &numbered(i as u32)[..]);
        assert!(
            received.iter().all(|r| Arc::ptr_eq(r, &received[0])),
            "message {i} was not shared between subscribers"
        );
    }
    assert_eq!(
        decodes.load(Ordering::SeqCst),
        N,
        "decoded more than once per message"
    );
}

/// A local subscriber whose queue is full is marked overflowed; the others keep receiving
/// everything.
pub async fn hub_cancels_overflow_of_the_full_sink_only(bus: Arc<dyn Bus>) {
    const N: u32 = 10;
    let hub = payload_hub(bus.clone());
    let s = conversation();
    let (slow, _slow_rx) = LocalSink::channel(1);
    let (fast, mut fast_rx) = LocalSink::channel(64);
    let (slow_check, fast_check) = (slow.clone(), fast.clone());
    let _slow = hub_subscribe(&hub, &s, slow).await;
    let _fast = hub_subscribe(&hub, &s, fast).await;
    for i in 0..N {
        publish(&*bus, &s, numbered(i)).await;
    }
    for i in 0..N {
        assert_eq!(&recv(&mut fast_rx).await[..], &numbered(i)[..]);
    }
    assert!(
        slow_check.is_overflowed(),
        "the full sink was not told to close"
    );
    assert!(
        !fast_check.is_overflowed(),
        "a sink that keeps up was told to close"
    );
}

/// When the last local subscriber of a subject goes, the bus subscription is dropped and its
/// task ends; until then, the remaining subscribers keep receiving. A new subscriber then
/// opens a new bus subscription.
pub async fn hub_last_drop_unsubscribes(bus: Arc<dyn Bus>) {
    let counting = CountingBus::new(bus);
    let hub = payload_hub(counting.clone());
    let s = conversation();
    let (sink_a, _rx_a) = LocalSink::channel(8);
    let (sink_b, mut rx_b) = LocalSink::channel(8);
    let a = hub_subscribe(&hub, &s, sink_a).await;
    let b = hub_subscribe(&hub, &s, sink_b).await;
    drop(a);
    assert_eq!(hub.local_subscribers(&s), 1);
    publish(&*counting, &s, numbered(1)).await;
    assert_eq!(&recv(&mut rx_b).await[..], &numbered(1)[..]);
    assert_eq!(
        counting.active(),
        1,
        "unsubscribed while a local subscriber remains"
    );

    drop(b);
    assert_eq!(hub.local_subjects(), 0);
    eventually("bus subscription dropped", || counting.active() == 0).await;
    eventually("fan-out task ended", || hub.running_tasks() == 0).await;
    publish(&*counting, &s, numbered(2)).await;

    let (sink, mut rx) = LocalSink::channel(8);
    let _again = hub_subscribe(&hub, &s, sink).await;
    assert_eq!(counting.subscribes(), 2);
    publish(&*counting, &s, numbered(3)).await;
    assert_eq!(&recv(&mut rx).await[..], &numbered(3)[..]);
}

/// A sink whose connection is gone (receiver dropped) is removed at the next message; the
/// others keep receiving.
pub async fn hub_prunes_closed_sinks(bus: Arc<dyn Bus>) {
    let hub = payload_hub(bus.clone());
    let s = conversation();
    let (gone, gone_rx) = LocalSink::channel(8);
    let (live, mut live_rx) = LocalSink::channel(8);
    let gone_interest = hub_subscribe(&hub, &s, gone).await;
    let live_interest = hub_subscribe(&hub, &s, live).await;
    drop(gone_rx);
    publish(&*bus, &s, numbered(1)).await;
    assert_eq!(&recv(&mut live_rx).await[..], &numbered(1)[..]);
    eventually("closed sink removed", || hub.local_subscribers(&s) == 1).await;
    drop((gone_interest, live_interest));
    assert_eq!(hub.local_subjects(), 0);
}

/// Concurrent first subscribers of one subject (with a bus that is slow to subscribe, to widen
/// the race) open one bus subscription between them, and each of them, as soon as its own
/// `subscribe` returns, receives what is published next.
pub async fn hub_concurrent_first_subscribers_share_one_subscription(bus: Arc<dyn Bus>) {
    const N: u32 = 20;
    let counting = CountingBus::with_subscribe_delay(bus, Duration::from_millis(50));
    let hub = payload_hub(counting.clone());
    let s = conversation();
    let joins: Vec<_> = (0..N)
        .map(|i| {
            let (hub, s, bus) = (hub.clone(), s.clone(), counting.clone());
            tokio::spawn(async move {
                let (sink, mut rx) = LocalSink::channel(2 * N as usize);
                let interest = hub_subscribe(&hub, &s, sink).await;
                publish(&*bus, &s, numbered(i)).await;
                // Others' messages may come first; our own must come.
                while recv(&mut rx).await[..] != numbered(i)[..] {}
                (interest, rx)
            })
        })
        .collect();
    let mut subscribers = Vec::new();
    for j in joins {
        subscribers.push(join(j).await);
    }
    assert_eq!(
        counting.subscribes(),
        1,
        "concurrent first subscribers opened several"
    );
    assert_eq!(
        hub.local_subscribers(&s),
        N as usize,
        "a registration was lost"
    );
}

/// A new subscriber racing the last unsubscribe of the same subject always ends up with a
/// working bus subscription, receiving each message exactly once.
pub async fn hub_unsubscribe_racing_subscribe_keeps_delivery(bus: Arc<dyn Bus>) {
    let counting = CountingBus::with_subscribe_delay(bus, Duration::from_millis(1));
    let hub = payload_hub(counting.clone());
    let s = conversation();
    for round in 0..100u32 {
        let (sink, _rx_a) = LocalSink::channel(8);
        let a = hub_subscribe(&hub, &s, sink).await;
        let dropper = tokio::spawn(async move {
            tokio::task::yield_now().await;
            drop(a);
        });
        let (sink, mut rx_b) = LocalSink::channel(8);
        let b = hub_subscribe(&hub, &s, sink).await;
        join(dropper).await;
        publish(&*counting, &s, numbered(2 * round)).await;
        publish(&*counting, &s, numbered(2 * round + 1)).await;
        assert_eq!(
            &recv(&mut rx_b).await[..],
            &numbered(2 * round)[..],
            "round {round}"
        );
        assert_eq!(
            &recv(&mut rx_b).await[..],
            &numbered(2 * round + 1)[..],
            "round {round}: duplicate or lost message"
        );
        drop(b);
    }
    assert_eq!(hub.local_subjects(), 0);
    eventually("every bus subscription dropped", || counting.active() == 0).await;
    eventually("every task ended", || hub.running_tasks() == 0).await;
}

/// 100 concurrent subscribe/drop cycles on one subject end with no subject, no bus
/// subscription and no task left, and the hub still works.
pub async fn hub_churn_leaves_nothing(bus: Arc<dyn Bus>) {
    let counting = CountingBus::new(bus);
    let hub = payload_hub(counting.clone());
    let s = conversation();
    let joins: Vec<_> = (0..100)
        .map(|_| {
            let (hub, s) = (hub.clone(), s.clone());
            tokio::spawn(async move {
                let (sink, _rx) = LocalSink::channel(1);
                let interest = hub_subscribe(&hub, &s, sink).await;
                tokio::task::yield_now().await;
                drop(interest);
            })
        })
        .collect();
    for j in joins {
        join(j).await;
    }
    assert_eq!(hub.local_subjects(), 0);
    eventually("every bus subscription dropped", || counting.active() == 0).await;
    eventually("every task ended", || hub.running_tasks() == 0).await;

    let (sink, mut rx) = LocalSink::channel(1);
    let _interest = hub_subscribe(&hub, &s, sink).await;
    publish(&*counting, &s, numbered(7)).await;
    assert_eq!(&recv(&mut rx).await[..], &numbered(7)[..]);
}

// ---------------------------------------------------------------------------------------------
// Support
// ---------------------------------------------------------------------------------------------

/// A bus wrapper that counts subscriptions opened and still open, and can be slow to
/// subscribe. Used to observe what a [`Hub`] does to the bus underneath.
pub struct CountingBus {
    inner: Arc<dyn Bus>,
    subscribe_delay: Duration,
    subscribes: AtomicUsize,
    active: Arc<AtomicUsize>,
}

/// Decrements the active count when the subscription holding it is dropped.
struct ActiveGuard(Arc<AtomicUsize>);

impl CountingBus {
    pub fn new(inner: Arc<dyn Bus>) -> Arc<Self> {
        Self::with_subscribe_delay(inner, Duration::ZERO)
    }

    /// Waits `delay` in every `subscribe` before subscribing to the inner bus.
    pub fn with_subscribe_delay(inner: Arc<dyn Bus>, delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            inner,
            subscribe_delay: delay,
            subscribes: AtomicUsize::new(0),
            active: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Subscriptions opened so far.
    pub fn subscribes(&self) -> usize {
        self.subscribes.load(Ordering::SeqCst)
    }

    /// Subscriptions opened and not yet dropped.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Bus for CountingBus {
    async fn publish(&self, subject: &Subject, payload: Bytes) -> Result<(), BusError> {
        self.inner.publish(subject, payload).await
    }

    async fn subscribe(&self, subject: &Subject) -> Result<BusSubscription, BusError> {
        if !self.subscribe_delay.is_zero() {
            tokio::time::sleep(self.subscribe_delay).await;
        }
        let stream = self.inner.subscribe(subject).await?;
        self.subscribes.fetch_add(1, Ordering::SeqCst);
        self.active.fetch_add(1, Ordering::SeqCst);
        let guard = ActiveGuard(self.active.clone());
        Ok(stream
            .map(move |m| {
                let _held_until_the_stream_drops = &guard;
                m
            })
            .boxed())
    }

    async fn ping(&self) -> Result<(), BusError> {
        self.inner.ping().await
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn conversation() -> Subject {
    Subject::conversation(ProjectId::new_v7(), ConversationId::new_v7())
}

fn numbered(i: u32) -> Bytes {
    Bytes::copy_from_slice(&i.to_be_bytes())
}

fn number(m: &BusMessage) -> u32 {
    match <[u8; 4]>::try_from(&m.payload[..]) {
        Ok(b) => u32::from_be_bytes(b),
        Err(_) => panic!("unexpected payload of {} bytes", m.payload.len()),
    }
}

fn payload_hub(bus: Arc<dyn Bus>) -> Hub<Bytes> {
    Hub::new(bus, |m: &BusMessage| Some(m.payload.clone()))
}

async fn subscribe(bus: &dyn Bus, s: &Subject) -> BusSubscription {
    match timeout(STEP_TIMEOUT, bus.subscribe(s)).await {
        Ok(Ok(sub)) => sub,
        Ok(Err(e)) => panic!("subscribe to {s} failed: {e}"),
        Err(_) => panic!("subscribe to {s} did not return within {STEP_TIMEOUT:?}"),
    }
}

async fn publish(bus: &dyn Bus, s: &Subject, payload: Bytes) {
    match timeout(STEP_TIMEOUT, bus.publish(s, payload)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("publish to {s} failed: {e}"),
        Err(_) => panic!("publish to {s} did not return within {STEP_TIMEOUT:?}"),
    }
}

async fn next(sub: &mut BusSubscription, who: &str) -> BusMessage {
    match timeout(STEP_TIMEOUT, sub.next()).await {
        Ok(Some(m)) => m,
        Ok(None) => panic!("{who}: subscription ended"),
        Err(_) => panic!("{who}: nothing received within {STEP_TIMEOUT:?}"),
    }
}

async fn hub_subscribe(hub: &Hub<Bytes>, s: &Subject, sink: LocalSink<Bytes>) -> crate::Interest {
    match timeout(STEP_TIMEOUT, hub.subscribe(s.clone(), sink)).await {
        Ok(Ok(interest)) => interest,
        Ok(Err(e)) => panic!("hub subscribe to {s} failed: {e}"),
        Err(_) => panic!("hub subscribe to {s} did not return within {STEP_TIMEOUT:?}"),
    }
}

async fn recv(rx: &mut Outbox<Bytes>) -> Arc<Bytes> {
    match timeout(STEP_TIMEOUT, rx.recv()).await {
        Ok(Some(v)) => v,
        Ok(None) => panic!("local sink overflowed"),
        Err(_) => panic!("local sink received nothing within {STEP_TIMEOUT:?}"),
    }
}

/// Reads `n` numbered messages of subject `s` in a task.
fn spawn_reader(mut sub: BusSubscription, n: usize, s: Subject) -> JoinHandle<Vec<u32>> {
    tokio::spawn(async move {
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            let m = next(&mut sub, "reader").await;
            assert_eq!(m.subject, s, "message delivered under the wrong subject");
            got.push(number(&m));
        }
        got
    })
}

/// Awaits a task, re-raising its panic (so a failed check inside it fails the caller).
async fn join<T>(handle: JoinHandle<T>) -> T {
    match timeout(STEP_TIMEOUT, handle).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(Err(e)) => panic!("task failed: {e}"),
        Err(_) => panic!("task did not finish within {STEP_TIMEOUT:?}"),
    }
}

/// Publishes `payload` every few milliseconds until `task` finishes (for messages that may be
/// dropped while a subscriber catches up), then returns its result.
async fn repeat_until_done<T>(
    bus: &dyn Bus,
    s: &Subject,
    payload: Bytes,
    mut task: JoinHandle<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        publish(bus, s, payload.clone()).await;
        if let Ok(done) = timeout(Duration::from_millis(20), &mut task).await {
            return match done {
                Ok(v) => v,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => panic!("task failed: {e}"),
            };
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "subscriber did not catch up within {STEP_TIMEOUT:?}"
        );
    }
}

fn assert_strictly_increasing(got: &[u32], below: u32, who: &str) {
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "{who}: duplicated or reordered messages"
    );
    assert!(got.iter().all(|&n| n < below), "{who}: unexpected message");
}

/// Polls `cond` until true, for effects that happen in a background task.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let waited = timeout(STEP_TIMEOUT, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "{what}: not reached within {STEP_TIMEOUT:?}"
    );
}
