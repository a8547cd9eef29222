//! The contract suite on `ScyllaStore` against a real Cassandra (or ScyllaDB) node, plus what
//! only the CQL backend has: idempotent migrations and messages spread over time buckets.
//!
//! Needs `LARACHAT_TEST_CASSANDRA=host:port`: `eval "$(deploy/cassandra.sh start)"`. Without it
//! every test fails (never passes silently). One fresh keyspace per test run, shared by all
//! tests (the checks use fresh projects and identifiers); it is left behind for inspection and
//! removed with the node by `deploy/cassandra.sh stop`.
#![cfg(feature = "scylla")]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use larachat_core::id::{AdminUserId, ConversationId, ProjectId};
use larachat_core::model::{
    self, Actor, AdminUser, Conversation, ConversationStatus, NewMessage, Plan, Project,
    ProjectStatus,
};
use larachat_store::contract::{self, TestStore};
use larachat_store::{MessageRange, ScyllaConfig, ScyllaStore, Store};
use serde_json::json;

/// The keyspace of this test run.
fn keyspace() -> &'static str {
    static KS: OnceLock<String> = OnceLock::new();
    KS.get_or_init(|| format!("lc_test_{}", uuid::Uuid::new_v4().simple()))
}

fn contact_point() -> String {
    match std::env::var("LARACHAT_TEST_CASSANDRA") {
        Ok(v) if !v.trim().is_empty() => v,
        _ => panic!(
            "LARACHAT_TEST_CASSANDRA is not set: start a node with \
             `eval \"$(deploy/cassandra.sh start)\"` (it prints LARACHAT_TEST_CASSANDRA=host:port)"
        ),
    }
}

/// Serialises the first migration of the run: concurrent DDL on one node is wasteful.
static MIGRATE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Connects (retrying for up to 60 s while the node finishes starting) and migrates once.
async fn connect_with(config: ScyllaConfig) -> ScyllaStore {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let store = loop {
        match ScyllaStore::connect(config.clone()).await {
            Ok(s) => break s,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("cassandra not reachable yet: {e}");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => panic!("cannot connect to {:?}: {e}", config.contact_points),
        }
    };
    let _one_at_a_time = MIGRATE.lock().await;
    store.migrate().await.expect("migrate");
    store
}

fn config() -> ScyllaConfig {
    let mut c = ScyllaConfig::new(vec![contact_point()], keyspace());
    // Small message buckets so that the contract's conversations span several partitions.
    c.message_bucket = Duration::from_millis(5);
    c
}

async fn open_store() -> TestStore {
    Arc::new(connect_with(config()).await)
}

macro_rules! contract_tests {
    ($($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let store = open_store().await;
                contract::$check(&store).await;
            }
        )*
    };
}

larachat_store::for_each_store_check!(contract_tests);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrate_twice_is_idempotent() {
    let store = connect_with(config()).await;
    store.migrate().await.expect("second migrate");
    store.migrate().await.expect("third migrate");
    store.ping().await.expect("ping");
    // Data written before a re-migration is still there.
    let admin = AdminUser {
        id: AdminUserId::new_v7(),
        email: format!("{}@example.com", uuid::Uuid::new_v4().simple()),
        password_hash: "h".into(),
        created_at: model::now(),
    };
    store.create_admin_user(&admin).await.expect("admin");
    store.migrate().await.expect("migrate again");
    assert_eq!(store.admin_user(admin.id).await.expect("get"), Some(admin));
}

/// Messages written across several time buckets (1 ms wide, with pauses) page exactly as in
/// one partition, in both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_span_buckets() {
    let mut c = config();
    c.message_bucket = Duration::from_millis(1);
    let store = connect_with(c).await;
    let admin = AdminUser {
        id: AdminUserId::new_v7(),
        email: format!("{}@example.com", uuid::Uuid::new_v4().simple()),
        password_hash: "h".into(),
        created_at: model::now(),
    };
    store.create_admin_user(&admin).await.expect("admin");
    let t = model::now();
    let project = Project {
        id: ProjectId::new_v7(),
        name: "buckets".into(),
        owner_id: admin.id,
        plan: Plan::Free,
        status: ProjectStatus::Active,
        settings: json!({}),
        created_at: t,
        updated_at: t,
    };
    store.create_project(&project).await.expect("project");
    let conv = Conversation {
        id: ConversationId::new_v7(),
        project_id: project.id,
        subject: None,
        status: ConversationStatus::Open,
        members: vec![],
        metadata: json!({}),
        created_at: t,
        updated_at: t,
        last_message_id: None,
    };
    store
        .create_conversation(&conv)
        .await
        .expect("conversation");
    let mut ids = Vec::new();
    for i in 0..12 {
        if i % 3 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let m = NewMessage {
            project_id: project.id,
            conversation_id: conv.id,
            sender: Actor::end_user(larachat_core::id::EndUserId::new_v7(), None),
            text: format!("{i}"),
            metadata: json!({}),
            client_msg_id: None,
        };
        ids.push(store.append_message(&m).await.expect("append").message.id);
    }
    let millis: std::collections::BTreeSet<u64> = ids.iter().map(|m| m.timestamp_ms()).collect();
    assert!(millis.len() >= 4, "messages spread over several buckets");

    let page = |range, limit| {
        let store = &store;
        async move {
            let p = store
                .list_messages(project.id, conv.id, range, limit)
                .await
                .expect("list");
            (p.items.iter().map(|m| m.id).collect::<Vec<_>>(), p.has_more)
        }
    };
    assert_eq!(
        page(MessageRange::Latest, 5).await,
        (ids[7..].to_vec(), true)
    );
    assert_eq!(
        page(MessageRange::Before(ids[7]), 5).await,
        (ids[2..7].to_vec(), true)
    );
    assert_eq!(
        page(MessageRange::Before(ids[2]), 5).await,
        (ids[..2].to_vec(), false)
    );
    assert_eq!(
        page(MessageRange::After(ids[1]), 4).await,
        (ids[2..6].to_vec(), true)
    );
    assert_eq!(
        page(MessageRange::After(ids[5]), 100).await,
        (ids[6..].to_vec(), false)
    );
    assert_eq!(page(MessageRange::Latest, 1000).await, (ids.clone(), false));
    for id in &ids {
        assert!(
            store
                .message(project.id, conv.id, *id)
                .await
                .expect("get")
                .is_some(),
            "each message is found in its bucket"
        );
    }
}

/// All checks on one store, one after the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_all_on_one_store() {
    let store = open_store().await;
    contract::run_all(&store).await;
}
