//! The webhook store contract on SQLite (a file, as `serve` opens it).

use std::sync::Arc;

use larachat_webhooks::store::{SqliteWebhookStore, contract};

#[tokio::test]
async fn sqlite_passes_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteWebhookStore::open(&dir.path().join("webhooks.sqlite3"), 30).unwrap();
    contract::run_all(Arc::new(store)).await;
    // Reopening migrates nothing twice and keeps the rows.
    let again = SqliteWebhookStore::open(&dir.path().join("webhooks.sqlite3"), 30).unwrap();
    drop(again);
}

/// The log's TTL on SQLite: attempts and finished deliveries older than the retention go.
#[tokio::test]
async fn sqlite_trims_the_log_past_its_retention() {
    use chrono::Duration;
    use larachat_core::id::{EventId, ProjectId};
    use larachat_webhooks::WebhookStore;
    use larachat_webhooks::model::{Attempt, Delivery, DeliveryStatus, EndpointId};

    let dir = tempfile::tempdir().unwrap();
    let store = SqliteWebhookStore::open(&dir.path().join("webhooks.sqlite3"), 1).unwrap();
    let (p, e) = (ProjectId::new_v7(), EndpointId::new_v7());
    let now = larachat_core::model::now();
    let finish = |ev: EventId, at| {
        let mut d = Delivery::new(p, e, ev, "message.sent", "{}", at);
        d.status = DeliveryStatus::Succeeded;
        d.next_attempt_at = None;
        d.attempts = 1;
        let a = Attempt {
            project_id: p,
            endpoint_id: e,
            event_id: ev,
            attempt: 1,
            at,
            succeeded: true,
            response_code: Some(204),
            response_body: String::new(),
            duration_ms: 1,
            error: None,
            next_attempt_at: None,
        };
        (Delivery::new(p, e, ev, "message.sent", "{}", at), a, d)
    };
    let (old, new) = (EventId::new_v7(), EventId::new_v7());
    let (queued, a, done) = finish(old, now - Duration::days(3));
    store.enqueue(&queued).await.unwrap();
    store.record_attempt(&a, &done).await.unwrap();
    assert!(store.get_delivery(p, e, old).await.unwrap().is_some());
    let (queued, a, done) = finish(new, now);
    store.enqueue(&queued).await.unwrap();
    store.record_attempt(&a, &done).await.unwrap();
    assert_eq!(
        store.get_delivery(p, e, old).await.unwrap(),
        None,
        "trimmed"
    );
    assert!(store.list_attempts(p, e, old).await.unwrap().is_empty());
    assert!(
        store.get_delivery(p, e, new).await.unwrap().is_some(),
        "kept"
    );
    assert_eq!(store.list_attempts(p, e, new).await.unwrap().len(), 1);
}
