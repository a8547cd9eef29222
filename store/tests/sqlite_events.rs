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

/// A consumer that fetches batch after batch writes its checkpoint about once a second, not
/// once per fetch: rounds of "one event, fetched and acknowledged" add one write each for the
/// events and, for the checkpoint, at most one per second elapsed (plus one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_consumer_writes_its_checkpoint_about_once_a_second() {
    const ROUNDS: u64 = 50;
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = SqliteStore::open(config(&dir)).expect("open");
    let store: TestStore = Arc::new(sqlite.clone());
    let log: TestLog = Arc::new(sqlite.clone());
    let project = new_project(&store).await;
    let before = sqlite.stats().writes;
    let m = marker(&store, project).await;
    let per_event = sqlite.stats().writes - before;
    let mut consumer = log
        .consumer(&fresh_consumer(), ConsumerOptions::default())
        .await
        .unwrap();
    acked_until_marker(consumer.as_mut(), project, m).await;

    let before = sqlite.stats().writes;
    let started = std::time::Instant::now();
    for _ in 0..ROUNDS {
        let m = marker(&store, project).await;
        acked_until_marker(consumer.as_mut(), project, m).await;
    }
    let elapsed = started.elapsed();
    let checkpoint_writes = sqlite.stats().writes - before - ROUNDS * per_event;
    println!(
        "{ROUNDS} fetched batches in {:.2} s: {checkpoint_writes} checkpoint writes",
        elapsed.as_secs_f64()
    );
    assert!(
        checkpoint_writes <= elapsed.as_secs() + 1,
        "{checkpoint_writes} checkpoint writes for {ROUNDS} batches in {elapsed:?}"
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

/// Migration 0004 rebuilds the outbox without the `UNIQUE` index on `id`: events, their
/// positions and the consumers' checkpoints are kept, and positions of trimmed events are never
/// handed out again (checkpoints refer to them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_4_keeps_positions_and_drops_the_id_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = fresh_consumer();
    let (project, handled) = {
        let (store, log) = open(&dir);
        let project = new_project(&store).await;
        let mut consumer = log
            .consumer(&name, ConsumerOptions::default())
            .await
            .unwrap();
        let m1 = marker(&store, project).await;
        let handled = acked_until_marker(consumer.as_mut(), project, m1).await;
        // The next fetch writes the checkpoint.
        assert!(consumer.fetch(1, Duration::ZERO).await.unwrap().is_empty());
        marker(&store, project).await;
        (project, handled)
    };
    // Back to the version-3 shape: the UNIQUE id index, no tables or columns of migrations 5
    // to 13 (applied again after 4), and the newest event trimmed (its position stays used in
    // `sqlite_sequence`).
    let (max_before, seq_before) = {
        let conn = rusqlite::Connection::open(config(&dir).path).expect("open raw");
        conn.execute_batch(
            "BEGIN;
             CREATE TABLE events_v3 (
                 position INTEGER PRIMARY KEY AUTOINCREMENT, id BLOB NOT NULL UNIQUE,
                 project_id BLOB NOT NULL, kind TEXT NOT NULL, occurred_at INTEGER NOT NULL,
                 body BLOB NOT NULL);
             INSERT INTO events_v3 SELECT position, id, project_id, kind, occurred_at, body FROM events;
             UPDATE sqlite_sequence SET seq = (SELECT seq FROM sqlite_sequence WHERE name = 'events')
                 WHERE name = 'events_v3';
             DROP TABLE events;
             ALTER TABLE events_v3 RENAME TO events;
             DELETE FROM events WHERE position = (SELECT max(position) FROM events);
             DROP TABLE plans;
             DROP TABLE usage;
             DROP TABLE usage_active_users;
             DROP TABLE analytics_hours;
             DROP TABLE analytics_active;
             DROP TABLE analytics_conversations;
             DROP TABLE usage_edge;
             DROP TABLE project_members;
             DROP TABLE project_invites;
             DROP TABLE conversation_keys;
             DROP TABLE search_terms;
             DROP TABLE backfills;
             DROP INDEX conversations_by_assignee;
             ALTER TABLE conversations DROP COLUMN assignee;
             PRAGMA user_version = 3;
             COMMIT;",
        )
        .expect("v3 shape");
        let indexes: i64 = conn
            .query_row(
                "SELECT count(*) FROM pragma_index_list('events')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 1, "the v3 shape has its UNIQUE index");
        let max: i64 = conn
            .query_row("SELECT max(position) FROM events", [], |r| r.get(0))
            .unwrap();
        let seq: i64 = conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'events'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(seq > max, "the trimmed position is above the rest");
        (max, seq)
    };
    let (store, log) = open(&dir);
    {
        let conn = rusqlite::Connection::open(config(&dir).path).expect("open raw");
        let indexes: i64 = conn
            .query_row(
                "SELECT count(*) FROM pragma_index_list('events')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 0, "no index on events after migration 4");
        let max: i64 = conn
            .query_row("SELECT max(position) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(max, max_before, "every event kept");
    }
    let m3 = marker(&store, project).await;
    let mut consumer = log
        .consumer(&name, ConsumerOptions::default())
        .await
        .unwrap();
    let got = acked_until_marker(consumer.as_mut(), project, m3).await;
    assert_eq!(users(&got), vec![m3], "resumed after the checkpoint");
    assert!(handled.iter().all(|h| h.event.id != got[0].event.id));
    let conn = rusqlite::Connection::open(config(&dir).path).expect("open raw");
    let newest: i64 = conn
        .query_row("SELECT max(position) FROM events", [], |r| r.get(0))
        .unwrap();
    assert!(
        newest > seq_before,
        "position {newest} reuses a trimmed one (≤ {seq_before})"
    );
}
