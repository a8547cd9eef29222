//! The webhook store contract on a real Cassandra node (`deploy/cassandra.sh start` prints
//! `LARACHAT_TEST_CASSANDRA=host:port`; without it the test fails, never passes silently).
//! One fresh keyspace per run.

use std::sync::Arc;
use std::time::Duration;

use larachat_webhooks::store::{ScyllaWebhookStore, contract};

#[tokio::test]
async fn cassandra_passes_the_contract() {
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
    let store = ScyllaWebhookStore::connect(&[node], &keyspace, 30)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store.migrate().await.unwrap(); // idempotent
    contract::run_all(Arc::new(store)).await;
}
