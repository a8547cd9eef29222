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
