//! The event-log contract on the SQLite outbox, plus what only a restart shows: consumers
//! resume at their durable checkpoint, fetched-but-unacknowledged events come back, the
//! checkpoint never passes an unacknowledged event, and trimming keeps what consumers need.

use std::sync::Arc;
use std::time::Duration;

use larachat_core::event::{ConsumerOptions, EventData, EventLog};
use larachat_core::id::EndUserId;
use larachat_store::event_contract::{
    self, TestLog, TestStore, ack_all, acked_until_marker, fresh_consumer, marker, new_project,
    until_marker,
};
use larachat_store::{SqliteConfig, SqliteStore};
use tempfile::TempDir;

fn config(dir: &TempDir) -> SqliteConfig {
    SqliteConfig::new(dir.path().join("larachat.db"))
}

fn open(dir: &TempDir) -> (TestStore, TestLog) {
    let store = SqliteStore::open(config(dir)).expect("open store");
    (Arc::new(store.clone()), Arc::new(store))
}

macro_rules! event_tests {
    ($($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let dir = tempfile::tempdir().expect("tempdir");
                let (store, log) = open(&dir);
                event_contract::$check(&store, &log).await;
            }
        )*
    };
}

larachat_store::for_each_event_check!(event_tests);

fn users(got: &[larachat_store::event_contract::Got]) -> Vec<EndUserId> {
    got.iter()
        .filter_map(|g| match &g.event.data {
            EventData::UserCreated(u) => Some(u.user_id),
            _ => None,
        })
        .collect()
}

/// Reopening the database (a restarted process): the consumer resumes after its last
/// acknowledged event; what it fetched and did not acknowledge comes back, with the same ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_resumes_at_its_checkpoint_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = fresh_consumer();
    let (project, handled, unacked, later) = {
        let (store, log) = open(&dir);
        let project = new_project(&store).await;
        let mut consumer = log
            .consumer(&name, ConsumerOptions::default())
            .await
            .unwrap();
        let m1 = marker(&store, project).await;
        let m2 = marker(&store, project).await;
        let handled = acked_until_marker(consumer.as_mut(), project, m2).await;
        assert_eq!(users(&handled), vec![m1, m2]);
        let m3 = marker(&store, project).await;
        let unacked = until_marker(consumer.as_mut(), project, m3).await;
        assert_eq!(unacked.len(), 1);
        let unacked_id = unacked[0].event.id;
        drop(unacked);
        let m4 = marker(&store, project).await;
        (project, handled, (m3, unacked_id), m4)
    };
    // Everything closed: the last handles are gone.
    let (store, log) = open(&dir);
    let mut consumer = log
        .consumer(&name, ConsumerOptions::default())
        .await
        .unwrap();
    let m5 = marker(&store, project).await;
    let got = acked_until_marker(consumer.as_mut(), project, m5).await;
    assert_eq!(
        users(&got),
        vec![unacked.0, later, m5],
        "resumed after the checkpoint, the unacknowledged event first"
    );
    assert_eq!(got[0].event.id, unacked.1, "same id after the restart");
    for g in &got {
        assert!(
            handled.iter().all(|h| h.event.id != g.event.id),
            "an acknowledged event came back"
        );
    }
    println!(
        "restart: {} handled before, {} delivered after (1 redelivered)",
        handled.len(),
        got.len()
    );
}

/// The checkpoint stays below an event that was not acknowledged even when later ones were:
/// after a restart the hole and what follows are delivered again (at least once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpoint_never_passes_an_unacknowledged_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = fresh_consumer();
    let (project, m1, m2) = {
        let (store, log) = open(&dir);
        let project = new_project(&store).await;
        let mut consumer = log
            .consumer(&name, ConsumerOptions::default())
            .await
            .unwrap();
        let m1 = marker(&store, project).await;
        let m2 = marker(&store, project).await;
        let mut got = until_marker(consumer.as_mut(), project, m2).await;
        assert_eq!(got.len(), 2);
        // Acknowledge the second only.
        let second = got.pop().unwrap();
        ack_all(vec![second]).await;
        drop(got);
        (project, m1, m2)
    };
    let (store, log) = open(&dir);
    let mut consumer = log
        .consumer(&name, ConsumerOptions::default())
        .await
        .unwrap();
    let m3 = marker(&store, project).await;
    let got = acked_until_marker(consumer.as_mut(), project, m3).await;
    assert_eq!(users(&got), vec![m1, m2, m3]);
}

/// Trimming deletes old events only once every consumer has passed them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimming_keeps_what_a_consumer_has_not_handled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = SqliteStore::open(config(&dir)).expect("open");
    let store: TestStore = Arc::new(sqlite.clone());
    let project = new_project(&store).await;
    let slow = fresh_consumer();
    let fast = fresh_consumer();
    let mut slow_c = sqlite
        .consumer(&slow, ConsumerOptions::default())
        .await
        .unwrap();
    let mut fast_c = sqlite
        .consumer(&fast, ConsumerOptions::default())
        .await
        .unwrap();
    let m1 = marker(&store, project).await;
    let got = acked_until_marker(fast_c.as_mut(), project, m1).await;
    assert_eq!(users(&got), vec![m1]);
    // The slow consumer has a checkpoint of 0: nothing may go.
    let first = until_marker(slow_c.as_mut(), project, m1).await;
    // Fetched, not yet acknowledged: still needed.
    assert_eq!(sqlite.trim_events(Duration::ZERO).await.unwrap(), 0);
    ack_all(first).await;
    // Both past it now.
    assert!(sqlite.trim_events(Duration::ZERO).await.unwrap() >= 1);
    assert_eq!(sqlite.trim_events(Duration::ZERO).await.unwrap(), 0);
    // A retention longer than the events' age keeps them.
    let m2 = marker(&store, project).await;
    let got = acked_until_marker(fast_c.as_mut(), project, m2).await;
    assert_eq!(users(&got), vec![m2]);
    assert_eq!(
        sqlite.trim_events(Duration::from_secs(3600)).await.unwrap(),
        0
    );
}
