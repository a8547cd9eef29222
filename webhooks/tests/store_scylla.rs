//! The webhook store contract on a real Cassandra node (`deploy/cassandra.sh start` prints
//! `LARACHAT_TEST_CASSANDRA=host:port`; without it the test fails, never passes silently).
//! One fresh keyspace per test.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use scylla::client::session::Session;
use scylla::value::CqlTimestamp;

use larachat_core::id::{EventId, ProjectId};
use larachat_webhooks::model::{DeliveryQuery, DeliveryStatus, EndpointId};
use larachat_webhooks::store::{ScyllaWebhookStore, WebhookStore, contract};

/// A session on the test node and a fresh, empty keyspace on it.
async fn fresh_keyspace() -> (String, String, Session) {
    let node = std::env::var("LARACHAT_TEST_CASSANDRA")
        .expect("LARACHAT_TEST_CASSANDRA is not set: eval \"$(deploy/cassandra.sh start)\"");
    let keyspace = format!("lc_wh_{}", uuid::Uuid::new_v4().simple());
    // The keyspace is `larachat-store`'s to create in production; here a bare one.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let session = loop {
        match scylla::client::session_builder::SessionBuilder::new()
            .known_node(&node)
            .build()
            .await
        {
            Ok(s) => break s,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("cassandra not reachable yet: {e}");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => panic!("cassandra unreachable: {e}"),
        }
    };
    session
        .query_unpaged(
            format!(
                "CREATE KEYSPACE {keyspace} WITH replication = \
                 {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
            ),
            (),
        )
        .await
        .unwrap();
    (node, keyspace, session)
}

#[tokio::test]
async fn cassandra_passes_the_contract() {
    let (node, keyspace, _session) = fresh_keyspace().await;
    let store = ScyllaWebhookStore::connect(&[node], &keyspace, 30)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store.migrate().await.unwrap(); // idempotent
    contract::run_all(Arc::new(store)).await;
}

/// A keyspace with deliveries written by a schema-1 build (one partition per endpoint and
/// day, the due row in the endpoint's shard): after `migrate` they are read, listed and
/// claimed from their sub-buckets.
#[tokio::test]
async fn schema_1_deliveries_stay_readable_and_claimable() {
    let (node, keyspace, session) = fresh_keyspace().await;
    let store = ScyllaWebhookStore::connect(&[node], &keyspace, 30)
        .await
        .unwrap();
    store.migrate_to(1).await.unwrap();

    let (p, e) = (ProjectId::new_v7(), EndpointId::new_v7());
    let now = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
    let due = now - chrono::Duration::seconds(10);
    let evs: Vec<EventId> = (0..20).map(|_| EventId::new_v7()).collect();
    for (i, ev) in evs.iter().enumerate() {
        let pending = i % 2 == 0;
        let day = larachat_webhooks::model::event_time(ev)
            .timestamp_millis()
            .div_euclid(86_400_000);
        session
            .query_unpaged(
                format!(
                    "INSERT INTO {keyspace}.webhook_deliveries (project_id, endpoint_id, day, \
                     event_id, event, payload, status, attempts, series_attempts, \
                     series_started_at, next_attempt_at, last_response_code, lease_until, \
                     created_at, updated_at) VALUES (?, ?, ?, ?, 'message.sent', ?, ?, ?, ?, \
                     ?, ?, ?, ?, ?, ?) USING TTL 3600"
                ),
                (
                    p.as_uuid(),
                    e.as_uuid(),
                    day,
                    ev.as_uuid(),
                    format!("{{\"id\":\"{ev}\"}}"),
                    if pending { "pending" } else { "succeeded" },
                    i32::from(!pending),
                    i32::from(!pending),
                    CqlTimestamp(due.timestamp_millis()),
                    pending.then_some(CqlTimestamp(due.timestamp_millis())),
                    (!pending).then_some(204i32),
                    CqlTimestamp(0),
                    CqlTimestamp(due.timestamp_millis()),
                    CqlTimestamp(due.timestamp_millis()),
                ),
            )
            .await
            .unwrap();
        if pending {
            session
                .query_unpaged(
                    format!(
                        "INSERT INTO {keyspace}.webhook_due (shard, due_at, project_id, \
                         endpoint_id, event_id) VALUES (?, ?, ?, ?, ?)"
                    ),
                    (
                        i32::from(e.as_uuid().as_bytes()[15]) % 16,
                        CqlTimestamp(due.timestamp_millis()),
                        p.as_uuid(),
                        e.as_uuid(),
                        ev.as_uuid(),
                    ),
                )
                .await
                .unwrap();
        }
    }

    store.migrate().await.unwrap();
    store.migrate().await.unwrap(); // the copy runs once, and would add nothing again

    let first = store.get_delivery(p, e, evs[0]).await.unwrap().unwrap();
    assert_eq!(first.status, DeliveryStatus::Pending);
    assert_eq!(first.next_attempt_at, Some(due));
    assert_eq!(first.payload, format!("{{\"id\":\"{}\"}}", evs[0]));
    let second = store.get_delivery(p, e, evs[1]).await.unwrap().unwrap();
    assert_eq!(
        (second.status, second.last_response_code),
        (DeliveryStatus::Succeeded, Some(204))
    );
    let all = DeliveryQuery {
        limit: 100,
        ..Default::default()
    };
    let listed: Vec<EventId> = store
        .list_deliveries(p, e, &all)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.event_id)
        .collect();
    assert_eq!(
        listed, evs,
        "every row, in event-id order across sub-buckets"
    );

    let mut claimed = Vec::new();
    loop {
        let got = store
            .claim_due(now, now + chrono::Duration::seconds(60), 1000)
            .await
            .unwrap();
        if got.is_empty() {
            break;
        }
        claimed.extend(got.into_iter().map(|d| d.event_id));
    }
    claimed.sort();
    let pending: Vec<EventId> = evs.iter().step_by(2).copied().collect();
    assert_eq!(
        claimed, pending,
        "the pending ones, through their schema-1 due rows"
    );
}
