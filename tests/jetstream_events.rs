//! The event-log contract (`store/src/event_contract.rs`) on the distributed log: changes
//! written to a real Cassandra by `ScyllaStore` (outbox row in the change's batch), published
//! by the outbox publisher or the sweeper (`src/outbox.rs`) to a real nats-server's JetStream,
//! and read through `JetStreamLog` consumers.
//!
//! Needs `LARACHAT_TEST_NATS_URL` and `LARACHAT_TEST_CASSANDRA` (`deploy/nats.sh start`,
//! `deploy/cassandra.sh start`; `scripts/test.sh` exports both). Without them every test fails,
//! never passes silently. One keyspace per test run.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use larachat::outbox::{self, SweeperConfig};
use larachat_broker::{JetStreamLog, NatsBus, NatsOptions};
use larachat_core::event::{ConsumerOptions, EventData};
use larachat_core::id::EndUserId;
use larachat_store::event_contract::{
    self, TestLog, TestStore, acked_until_marker, fresh_consumer, marker, new_project,
};
use larachat_store::{ScyllaConfig, ScyllaStore};
use tokio_util::sync::CancellationToken;

fn env(name: &str, how: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => panic!("{name} is not set: {how}"),
    }
}

fn keyspace() -> &'static str {
    static KS: OnceLock<String> = OnceLock::new();
    KS.get_or_init(|| format!("lc_events_{}", uuid::Uuid::new_v4().simple()))
}

static MIGRATE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn scylla() -> Arc<ScyllaStore> {
    let cassandra = env(
        "LARACHAT_TEST_CASSANDRA",
        "eval \"$(deploy/cassandra.sh start)\"",
    );
    let config = ScyllaConfig::new(vec![cassandra], keyspace());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let store = loop {
        match ScyllaStore::connect(config.clone()).await {
            Ok(s) => break s,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("cassandra not reachable yet: {e}");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => panic!("cannot connect to cassandra: {e}"),
        }
    };
    let _one = MIGRATE.lock().await;
    store.migrate().await.expect("migrate");
    Arc::new(store)
}

async fn nats() -> NatsBus {
    let url = env(
        "LARACHAT_TEST_NATS_URL",
        "eval \"$(deploy/nats.sh start)\" and export LARACHAT_TEST_NATS_URL=$NATS_URL",
    );
    NatsBus::connect(&url, NatsOptions::default())
        .await
        .expect("connect to NATS")
}

/// A store whose writes are published by a running publisher (a gateway), and the log.
struct Setup {
    store: Arc<ScyllaStore>,
    bus: NatsBus,
    log: TestLog,
    _stop: tokio_util::sync::DropGuard,
}

async fn setup(publish: bool) -> Setup {
    let store = scylla().await;
    let bus = nats().await;
    let stop = CancellationToken::new();
    if publish {
        tokio::spawn(outbox::run_publisher(
            store.clone(),
            bus.clone(),
            outbox::queue(&store),
            stop.clone(),
        ));
    }
    // Fresh consumers start a minute back, not at the beginning of a stream other test
    // binaries have filled.
    let since = std::time::SystemTime::now() - Duration::from_secs(60);
    let log: TestLog = Arc::new(
        JetStreamLog::new(&bus)
            .with_inactive_threshold(Duration::from_secs(120))
            .since(since),
    );
    Setup {
        store,
        bus,
        log,
        _stop: stop.drop_guard(),
    }
}

macro_rules! event_tests {
    ($($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let s = setup(true).await;
                let store: TestStore = s.store.clone();
                event_contract::$check(&store, &s.log).await;
            }
        )*
    };
}

larachat_store::for_each_event_check!(event_tests);

fn users(got: &[event_contract::Got]) -> Vec<EndUserId> {
    got.iter()
        .filter_map(|g| match &g.event.data {
            EventData::UserCreated(u) => Some(u.user_id),
            _ => None,
        })
        .collect()
}

/// Nothing publishes (the writing process died right after its writes): the sweeper finds the
/// rows in the outbox once they are `delay` old and publishes them. Time is injected: the
/// sweep runs "10 s later" instead of waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sweeper_publishes_what_no_publisher_did() {
    let s = setup(false).await;
    let store: TestStore = s.store.clone();
    let project = new_project(&store).await;
    let mut consumer = s
        .log
        .consumer(&fresh_consumer(), ConsumerOptions::default())
        .await
        .expect("consumer");
    let first = marker(&store, project).await;
    let mark = marker(&store, project).await;
    let config = SweeperConfig::default();
    // Not due yet at the time of the write: nothing published.
    let now = larachat_core::model::now();
    outbox::sweep_once(&s.store, &s.bus, &config, now)
        .await
        .expect("sweep");
    let later = now + chrono::Duration::seconds(10);
    let published = outbox::sweep_once(&s.store, &s.bus, &config, later)
        .await
        .expect("sweep");
    assert!(
        published >= 2,
        "the sweep published the two events: {published}"
    );
    let got = acked_until_marker(consumer.as_mut(), project, mark).await;
    assert_eq!(users(&got), vec![first, mark]);
    // Marked published: the next sweep does not publish them again.
    let again = outbox::sweep_once(&s.store, &s.bus, &config, later)
        .await
        .expect("sweep");
    let mark2 = marker(&store, project).await;
    outbox::sweep_once(
        &s.store,
        &s.bus,
        &config,
        larachat_core::model::now() + chrono::Duration::seconds(10),
    )
    .await
    .expect("sweep");
    let got = acked_until_marker(consumer.as_mut(), project, mark2).await;
    assert_eq!(
        users(&got),
        vec![mark2],
        "no event twice (republished: {again})"
    );
}

/// A republish of an event already published (the sweeper racing a slow publisher, or a
/// publisher whose mark failed) is dropped by JetStream's de-duplication on `Nats-Msg-Id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_republished_event_is_delivered_once() {
    let s = setup(true).await;
    let store: TestStore = s.store.clone();
    let project = new_project(&store).await;
    let mut consumer = s
        .log
        .consumer(&fresh_consumer(), ConsumerOptions::default())
        .await
        .expect("consumer");
    let first = marker(&store, project).await;
    let got = acked_until_marker(consumer.as_mut(), project, first).await;
    assert_eq!(got.len(), 1);
    for _ in 0..3 {
        s.bus.publish_event(&got[0].event).await.expect("republish");
    }
    let mark = marker(&store, project).await;
    let after = acked_until_marker(consumer.as_mut(), project, mark).await;
    assert_eq!(
        users(&after),
        vec![mark],
        "the republished event did not come back"
    );
}

/// A worker that dies (its consumer dropped with events fetched and not acknowledged): another
/// worker of the same name gets them after the ack wait, with the same ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_worker_takes_over_unacknowledged_events() {
    let s = setup(true).await;
    let store: TestStore = s.store.clone();
    let project = new_project(&store).await;
    let name = fresh_consumer();
    let options = ConsumerOptions {
        ack_wait: Duration::from_millis(1500),
    };
    let mut a = s.log.consumer(&name, options).await.expect("worker a");
    let mark = marker(&store, project).await;
    let held = event_contract::until_marker(a.as_mut(), project, mark).await;
    let id = held[0].event.id;
    drop(held);
    drop(a);
    let mut b = s.log.consumer(&name, options).await.expect("worker b");
    let got = event_contract::until_marker(b.as_mut(), project, mark).await;
    assert_eq!(got[0].event.id, id);
    assert!(
        got[0].attempt >= 2,
        "a redelivery: attempt {}",
        got[0].attempt
    );
    event_contract::ack_all(got).await;
}
