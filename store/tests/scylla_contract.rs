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

use larachat_core::event::{DomainEvent, EventData};
use larachat_core::id::{AdminUserId, ConversationId, EndUserId, EventId, ProjectId};
use larachat_core::model::{
    self, Actor, AdminUser, Conversation, ConversationPatch, ConversationStatus, NewMessage,
    PlanId, Project, ProjectStatus,
};
use larachat_core::plan::{Period, Plan, PlanLimits, QuotaMetric, ThresholdCrossing};
use larachat_store::contract::{self, TestStore};
use larachat_store::{
    AssigneeFilter, BackfillReport, ConversationQuery, MessageRange, NewEndUser, ScyllaConfig,
    ScyllaStore, Store, StoreError,
};
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

macro_rules! two_store_tests {
    ($($check:ident),* $(,)?) => {
        $(
            /// Two stores with their own sessions (and in-process locks and caches) on one
            /// keyspace: two gateway processes.
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let a = open_store().await;
                let b = open_store().await;
                contract::$check(&a, &b).await;
            }
        )*
    };
}

larachat_store::for_each_two_store_check!(two_store_tests);

macro_rules! clocked_tests {
    ($($check:ident),* $(,)?) => {
        $(
            /// A store (its own session) on a clock of the check's own.
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let clock = larachat_store::ManualClock::starting_at(model::now());
                let mut config = config();
                config.clock = larachat_store::StoreClock::new(clock.clone());
                let store: TestStore = Arc::new(connect_with(config).await);
                contract::$check(&store, &clock).await;
            }
        )*
    };
}

larachat_store::for_each_clocked_store_check!(clocked_tests);

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
        plan: PlanId::free(),
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
        assignee: None,
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

/// Appends through `store` after telling it to stop right after its claim, as a writer that
/// dies between its claim and its message row would.
async fn crash(store: &ScyllaStore, p: ProjectId, c: ConversationId, text: &str, cmid: &str) {
    store.crash_after_next_claims(1);
    let e = store.append_message(&msg(p, c, text, Some(cmid))).await;
    assert!(matches!(e, Err(StoreError::Unavailable(_))), "{e:?}");
}

/// A project and an empty conversation, for the sequencer tests.
async fn fixture(store: &ScyllaStore) -> (ProjectId, ConversationId) {
    fixture_on(store, PlanId::free()).await
}

/// A project on `plan` and an empty conversation.
async fn fixture_on(store: &ScyllaStore, plan: PlanId) -> (ProjectId, ConversationId) {
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
        name: "sequencer".into(),
        owner_id: admin.id,
        plan,
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
        assignee: None,
    };
    store
        .create_conversation(&conv)
        .await
        .expect("conversation");
    (project.id, conv.id)
}

fn msg(p: ProjectId, c: ConversationId, text: &str, cmid: Option<&str>) -> NewMessage {
    NewMessage {
        project_id: p,
        conversation_id: c,
        sender: Actor {
            kind: larachat_core::model::ActorKind::Agent,
            id: "writer".into(),
            name: Some("W".into()),
        },
        text: text.into(),
        metadata: json!({"text": text}),
        client_msg_id: cmid.map(str::to_owned),
    }
}

async fn seqs_and_texts(
    store: &ScyllaStore,
    p: ProjectId,
    c: ConversationId,
    range: MessageRange,
) -> Vec<(u64, String)> {
    store
        .list_messages(p, c, range, 100)
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|m| (m.seq, m.text))
        .collect()
}

/// A writer that dies after claiming its seq (before writing the message row) leaves a hole;
/// the next reader repairs it, in order and with the content that was sent — in the middle of
/// a page, right after a resume cursor, and through a retry of the same `client_msg_id` on
/// another process. A hole at the tail is left alone until a newer message exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holes_left_by_crashed_writers_are_repaired() {
    let a = connect_with(config()).await;
    let b = connect_with(config()).await;
    let (p, c) = fixture(&b).await;
    let one = b
        .append_message(&msg(p, c, "one", Some("c1")))
        .await
        .unwrap();
    crash(&a, p, c, "two", "c2").await;
    let three = b
        .append_message(&msg(p, c, "three", Some("c3")))
        .await
        .unwrap();
    assert_eq!(
        (one.message.seq, three.message.seq),
        (1, 3),
        "seq 2 is claimed"
    );
    // Repaired in the middle of a page, with what was sent.
    assert_eq!(
        seqs_and_texts(&b, p, c, MessageRange::Latest).await,
        vec![(1, "one".into()), (2, "two".into()), (3, "three".into())]
    );
    let two = b
        .list_messages(p, c, MessageRange::After(one.message.id), 1)
        .await
        .unwrap()
        .items
        .remove(0);
    assert_eq!(two.seq, 2);
    assert_eq!(two.client_msg_id.as_deref(), Some("c2"));
    assert_eq!(two.metadata, json!({"text": "two"}));
    assert!(one.message.id < two.id && two.id < three.message.id);
    assert_eq!(
        b.message(p, c, two.id).await.unwrap(),
        Some(two.clone()),
        "now stored"
    );

    // A hole right after the resume cursor.
    crash(&a, p, c, "four", "c4").await;
    let five = a.append_message(&msg(p, c, "five", None)).await.unwrap();
    assert_eq!(five.message.seq, 5);
    assert_eq!(
        seqs_and_texts(&b, p, c, MessageRange::After(three.message.id)).await,
        vec![(4, "four".into()), (5, "five".into())]
    );

    // A retry of the crashed send, on the other process, returns the claimed message.
    crash(&a, p, c, "six", "c6").await;
    let retry = b
        .append_message(&msg(p, c, "six (retried)", Some("c6")))
        .await
        .unwrap();
    assert!(!retry.created);
    assert_eq!((retry.message.seq, retry.message.text.as_str()), (6, "six"));

    // A tail hole: nothing newer is visible, nothing to repair yet.
    crash(&a, p, c, "seven", "c7").await;
    let listed = seqs_and_texts(&b, p, c, MessageRange::Latest).await;
    assert_eq!(listed.last().map(|x| x.0), Some(6), "{listed:?}");
    let eight = b.append_message(&msg(p, c, "eight", None)).await.unwrap();
    assert_eq!(eight.message.seq, 8);
    let listed = seqs_and_texts(&a, p, c, MessageRange::Latest).await;
    assert_eq!(
        listed.iter().map(|x| x.0).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>(),
        "gapless once repaired: {listed:?}"
    );
    assert_eq!(listed[6].1, "seven");
    let c7 = b
        .append_message(&msg(p, c, "seven", Some("c7")))
        .await
        .unwrap();
    assert!(
        !c7.created,
        "the repaired message is the original of its client_msg_id"
    );
    // Metered once each, whoever wrote them (writer, repairer, retry): the bytes are the
    // stored messages' content, not the retried text.
    let stored = b
        .list_messages(p, c, MessageRange::Latest, 100)
        .await
        .unwrap();
    let bytes: u64 = stored
        .items
        .iter()
        .map(|m| larachat_core::plan::content_bytes(&m.text, &m.metadata))
        .sum();
    let used = a
        .usage(p, larachat_core::plan::Period::of(model::now()))
        .await
        .unwrap();
    assert_eq!((used.messages, used.storage_bytes), (8, bytes));
}

/// A keyspace written by schema 1 (messages without `seq`, `client_msg_id`s in
/// `message_client_ids`) is numbered by `migrate`: in id order, per conversation; old
/// `client_msg_id`s are still recognised; appends continue the numbering. A conversation a
/// schema-1 process writes after the migration is numbered by its first append.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schema_1_keyspace_is_numbered_by_migrate() {
    let (cfg, store, raw) = old_keyspace("lc_upgrade", 1).await;
    let listing = |id: &uuid::Uuid| bucket(id, cfg.listing_bucket);
    let messages = |id: &uuid::Uuid| bucket(id, cfg.message_bucket);

    // What schema-1 code wrote for a project with two conversations.
    let project = uuid::Uuid::now_v7();
    let t = scylla::value::CqlTimestamp(model::now().timestamp_millis());
    raw.query_unpaged(
        "INSERT INTO projects (id, name, owner_id, plan, status, settings, created_at, updated_at) \
         VALUES (?, 'old', ?, 'free', 'active', '{}', ?, ?)",
        (project, uuid::Uuid::now_v7(), t, t),
    )
    .await
    .unwrap();
    raw.query_unpaged(
        "INSERT INTO project_buckets (scope, bucket) VALUES (0, ?)",
        (listing(&project),),
    )
    .await
    .unwrap();
    raw.query_unpaged(
        "INSERT INTO projects_by_bucket (bucket, id) VALUES (?, ?)",
        (listing(&project), project),
    )
    .await
    .unwrap();
    let write_conversation = |conv: uuid::Uuid, n: usize| {
        let raw = &raw;
        async move {
            for cql in [
                "INSERT INTO conversations (project_id, id, status, members, metadata, created_at, \
                 updated_at) VALUES (?, ?, 'open', {}, '{}', ?, ?)",
            ] {
                raw.query_unpaged(cql, (project, conv, t, t)).await.unwrap();
            }
            raw.query_unpaged(
                "INSERT INTO conversation_buckets (project_id, bucket) VALUES (?, ?)",
                (project, listing(&conv)),
            )
            .await
            .unwrap();
            raw.query_unpaged(
                "INSERT INTO conversations_by_project (project_id, bucket, id) VALUES (?, ?, ?)",
                (project, listing(&conv), conv),
            )
            .await
            .unwrap();
            let mut ids = Vec::new();
            for i in 0..n {
                let id = uuid::Uuid::now_v7();
                std::thread::sleep(Duration::from_millis(2));
                raw.query_unpaged(
                    "INSERT INTO messages (project_id, conversation_id, bucket, id, sender_kind, \
                     sender_id, text, metadata, client_msg_id, created_at) \
                     VALUES (?, ?, ?, ?, 'agent', 'writer', ?, '{}', ?, ?)",
                    (
                        project,
                        conv,
                        messages(&id),
                        id,
                        format!("old {i}"),
                        format!("old-{i}"),
                        t,
                    ),
                )
                .await
                .unwrap();
                raw.query_unpaged(
                    "INSERT INTO message_buckets (project_id, conversation_id, bucket) \
                     VALUES (?, ?, ?)",
                    (project, conv, messages(&id)),
                )
                .await
                .unwrap();
                raw.query_unpaged(
                    "INSERT INTO message_client_ids (project_id, conversation_id, client_msg_id, \
                     message_id) VALUES (?, ?, ?, ?)",
                    (project, conv, format!("old-{i}"), id),
                )
                .await
                .unwrap();
                ids.push(id);
            }
            ids
        }
    };
    let c1 = uuid::Uuid::now_v7();
    let c2 = uuid::Uuid::now_v7();
    let ids1 = write_conversation(c1, 5).await;
    let ids2 = write_conversation(c2, 3).await;

    {
        let _one_at_a_time = MIGRATE.lock().await;
        store
            .migrate()
            .await
            .expect("migrate to the current schema");
        store.migrate().await.expect("again: nothing to do");
    }
    let p = ProjectId::from_uuid(project);
    for (c, ids) in [(c1, &ids1), (c2, &ids2)] {
        let c = ConversationId::from_uuid(c);
        let page = store
            .list_messages(p, c, MessageRange::Latest, 100)
            .await
            .expect("list");
        assert_eq!(
            page.items
                .iter()
                .map(|m| (*m.id.as_uuid(), m.seq))
                .collect::<Vec<_>>(),
            ids.iter().copied().zip(1..).collect::<Vec<_>>(),
            "numbered in id order"
        );
        let retry = store
            .append_message(&msg(p, c, "old 1 again", Some("old-1")))
            .await
            .expect("retry");
        assert!(
            !retry.created,
            "a schema-1 client_msg_id is still recognised"
        );
        assert_eq!(
            (*retry.message.id.as_uuid(), retry.message.seq),
            (ids[1], 2)
        );
        let next = store
            .append_message(&msg(p, c, "new", Some("new-1")))
            .await
            .expect("append");
        assert_eq!(next.message.seq, ids.len() as u64 + 1);
        assert!(*next.message.id.as_uuid() > *ids.last().unwrap());
    }

    // Schema 4 listed the old conversations as unassigned (its data step): the filter finds
    // them, and assigning one moves it.
    let unassigned = |status: Option<ConversationStatus>| ConversationQuery {
        assignee: Some(AssigneeFilter::Unassigned),
        status,
        limit: 100,
        ..Default::default()
    };
    let listed = |page: larachat_store::Page<Conversation>| {
        page.items
            .iter()
            .map(|c| *c.id.as_uuid())
            .collect::<Vec<_>>()
    };
    for status in [None, Some(ConversationStatus::Open)] {
        let page = store
            .list_conversations(p, &unassigned(status))
            .await
            .expect("list");
        assert_eq!(
            listed(page),
            vec![c2, c1],
            "old conversations are unassigned"
        );
    }
    let assigned = store
        .update_conversation(
            p,
            ConversationId::from_uuid(c1),
            &ConversationPatch {
                assignee: Some(Some("ana".into())),
                ..Default::default()
            },
        )
        .await
        .expect("assign")
        .expect("exists");
    assert_eq!(assigned.assignee.as_deref(), Some("ana"));
    let page = store
        .list_conversations(p, &unassigned(None))
        .await
        .expect("list");
    assert_eq!(listed(page), vec![c2]);

    // A schema-1 process wrote one more conversation after the migration.
    let c3 = uuid::Uuid::now_v7();
    let ids3 = write_conversation(c3, 4).await;
    let c3 = ConversationId::from_uuid(c3);
    let next = store
        .append_message(&msg(p, c3, "first of schema 2", None))
        .await
        .expect("append");
    assert_eq!(next.message.seq, 5);
    let seqs: Vec<(uuid::Uuid, u64)> = store
        .list_messages(p, c3, MessageRange::Latest, 100)
        .await
        .expect("list")
        .items
        .iter()
        .map(|m| (*m.id.as_uuid(), m.seq))
        .collect();
    let mut expected: Vec<(uuid::Uuid, u64)> = ids3.iter().copied().zip(1..).collect();
    expected.push((*next.message.id.as_uuid(), 5));
    assert_eq!(seqs, expected);
}

/// The bucket of an id, as `ScyllaStore` computes it (ms of the UUIDv7 / width).
fn bucket(id: &uuid::Uuid, width: Duration) -> i64 {
    let b = id.as_bytes();
    let ms = u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]]);
    (ms / width.as_millis() as u64) as i64
}

/// Schema 10 lists in `analytics_active_days` every active conversation that schema-9 code
/// wrote to `analytics_active`: ranges of whole days (read from the day partitions), of
/// edge hours only, and of both count the same distinct conversations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_9_active_conversations_are_listed_by_day() {
    use chrono::{DurationRound, TimeDelta, Utc};
    use larachat_core::analytics::{AnalyticsRange, Granularity};

    let (_, store, raw) = old_keyspace("lc_upgrade", 9).await;
    let project = uuid::Uuid::now_v7();
    let day0 = (Utc::now() - TimeDelta::days(3))
        .duration_trunc(TimeDelta::days(1))
        .unwrap();
    let (c1, c2, c3) = (
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
    );
    let at = |day: i64, hour: i64| day0 + TimeDelta::days(day) + TimeDelta::hours(hour);
    for (conversation, when) in [
        (c1, at(0, 1)),
        (c1, at(0, 5)),
        (c2, at(0, 23)),
        (c3, at(1, 2)),
        (c1, at(1, 7)),
    ] {
        raw.query_unpaged(
            "INSERT INTO analytics_active (project_id, hour, conversation_id) VALUES (?, ?, ?)",
            (project, when.timestamp_millis(), conversation),
        )
        .await
        .unwrap();
    }
    {
        let _one_at_a_time = MIGRATE.lock().await;
        store
            .migrate()
            .await
            .expect("migrate to the current schema");
    }
    let active = |from, to| {
        let store = &store;
        async move {
            let range = AnalyticsRange::new(from, to, Granularity::Hour).unwrap();
            store
                .analytics(ProjectId::from_uuid(project), &range)
                .await
                .expect("analytics")
                .active_conversations
        }
    };
    assert_eq!(active(at(0, 0), at(2, 0)).await, 3, "two whole days");
    assert_eq!(active(at(1, 0), at(2, 0)).await, 2, "day 1: c3 and c1");
    assert_eq!(active(at(0, 5), at(1, 3)).await, 3, "edge hours only");
    assert_eq!(
        active(at(0, 2), at(2, 0)).await,
        3,
        "edge hours and a whole day"
    );
    assert_eq!(active(at(0, 6), at(0, 23)).await, 0, "between messages");
}

// --- usage warnings (`usage_alerts`) across processes ----------------------------------------

/// A plan of its own allowing `messages` messages a month (80 % = ⌈0.8 × messages⌉).
async fn messages_plan(store: &ScyllaStore, messages: u64) -> Plan {
    let plan = Plan {
        id: PlanId::parse(&format!(
            "w{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ))
        .expect("plan id"),
        name: "warnings".into(),
        limits: PlanLimits {
            monthly_active_users: None,
            messages_per_month: Some(messages),
            projects_per_owner: None,
        },
        features: Default::default(),
        updated_at: model::now(),
    };
    store.put_plan(&plan).await.expect("plan");
    plan
}

/// The `usage.threshold_reached` events of `project` a process handed to its publisher queue
/// (what it emitted: an emitted warning is written to the outbox, then queued).
fn warnings(
    queue: &mut tokio::sync::mpsc::Receiver<larachat_store::scylla::outbox::OutboxEntry>,
    project: ProjectId,
) -> Vec<DomainEvent> {
    let mut out = Vec::new();
    while let Ok(e) = queue.try_recv() {
        if e.event.project_id == project
            && matches!(e.event.data, EventData::UsageThresholdReached(_))
        {
            out.push(e.event);
        }
    }
    out
}

/// A session of its own in `keyspace`, to write rows as other (older, killed) code left them.
async fn raw_session_in(keyspace: &str) -> scylla::client::session::Session {
    let raw = scylla::client::session_builder::SessionBuilder::new()
        .known_node(contact_point())
        .build()
        .await
        .expect("raw session");
    raw.use_keyspace(keyspace, false).await.expect("keyspace");
    raw
}

async fn raw_session() -> scylla::client::session::Session {
    raw_session_in(keyspace()).await
}

/// A fresh keyspace `<prefix>_<random>` migrated only up to `version` (an older schema): its
/// configuration, a store on it and a raw session in it.
async fn old_keyspace(
    prefix: &str,
    version: i32,
) -> (ScyllaConfig, ScyllaStore, scylla::client::session::Session) {
    let mut cfg = config();
    cfg.keyspace = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    let store = ScyllaStore::connect(cfg.clone()).await.expect("connect");
    {
        let _one_at_a_time = MIGRATE.lock().await;
        store
            .migrate_to(version)
            .await
            .unwrap_or_else(|e| panic!("schema {version}: {e}"));
    }
    let raw = raw_session_in(&cfg.keyspace).await;
    (cfg, store, raw)
}

/// `emitted` of a warning's `usage_alerts` row (`None`: no row, `Some(None)`: claimed only).
async fn alert_row(
    raw: &scylla::client::session::Session,
    project: ProjectId,
    alert: &str,
) -> Option<Option<bool>> {
    raw.query_unpaged(
        "SELECT emitted FROM usage_alerts WHERE project_id = ? AND period = ? AND alert = ?",
        (
            *project.as_uuid(),
            Period::of(model::now()).to_string(),
            alert,
        ),
    )
    .await
    .expect("read usage_alerts")
    .into_rows_result()
    .expect("rows")
    .maybe_first_row::<(Option<bool>,)>()
    .expect("row")
    .map(|(e,)| e)
}

/// Two processes whose estimates both go from 7 to 8 messages of 10 at the same moment both
/// see the 80 % threshold crossed: exactly one of them emits `usage.threshold_reached`, and
/// the warning is marked emitted. Several rounds, each with two fresh processes (empty caches).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_crossing_a_threshold_at_once_emit_one_warning() {
    let seed = connect_with(config()).await;
    let raw = raw_session().await;
    let plan = messages_plan(&seed, 10).await;
    let alert = ThresholdCrossing {
        metric: QuotaMetric::MessagesPerMonth,
        percent: 80,
        limit: 10,
        used: 8,
    }
    .key();
    for round in 0..5 {
        let (p, c) = fixture_on(&seed, plan.id.clone()).await;
        for i in 0..7 {
            let m = msg(p, c, &format!("seed {i}"), Some(&format!("s{i}")));
            assert!(seed.append_message(&m).await.expect("seed").created);
        }
        let a = connect_with(config()).await;
        let b = connect_with(config()).await;
        let (mut qa, mut qb) = (a.outbox_queue(1000), b.outbox_queue(1000));
        let (ma, mb) = (msg(p, c, "a", Some("a")), msg(p, c, "b", Some("b")));
        let (ra, rb) = tokio::join!(a.append_message(&ma), b.append_message(&mb));
        assert!(ra.expect("a").created && rb.expect("b").created);
        let (wa, wb) = (warnings(&mut qa, p), warnings(&mut qb, p));
        println!(
            "round {round}: warnings emitted by a {}, by b {}",
            wa.len(),
            wb.len()
        );
        let all: Vec<&DomainEvent> = wa.iter().chain(&wb).collect();
        assert_eq!(all.len(), 1, "one warning, not {all:?}");
        match &all[0].data {
            EventData::UsageThresholdReached(w) => {
                assert_eq!(
                    (w.metric, w.threshold_percent, w.limit),
                    (QuotaMetric::MessagesPerMonth, 80, 10)
                );
                assert!(w.used >= 8, "{w:?}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(alert_row(&raw, p, &alert).await, Some(Some(true)));
    }
}

/// A warning claimed by a process that died before writing its event (a `usage_alerts` row
/// left unmarked, planted here with the claim's time 31 s in the past: the time is in the row,
/// nothing sleeps) is emitted by the next process that crosses the threshold, with the dead
/// claimer's event (same id), and marked. A claim 5 s old is left to its claimer: nothing is
/// emitted for it and it stays unmarked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_warning_claimed_by_a_dead_process_is_taken_over_after_30_s() {
    let store = connect_with(config()).await;
    let raw = raw_session().await;
    let plan = messages_plan(&store, 10).await;
    let (p, c) = fixture_on(&store, plan.id.clone()).await;
    let now = model::now();
    let period = Period::of(now);
    let claim = |percent: u8, used: u64, age_secs: i64| {
        let crossing = ThresholdCrossing {
            metric: QuotaMetric::MessagesPerMonth,
            percent,
            limit: 10,
            used,
        };
        let event = DomainEvent::usage_threshold_reached(
            p,
            now - chrono::TimeDelta::seconds(age_secs),
            &crossing,
            plan.id.clone(),
            period,
        );
        (crossing.key(), event)
    };
    let (dead_key, dead) = claim(80, 8, 31);
    let (alive_key, alive) = claim(100, 10, 5);
    for (key, event) in [(&dead_key, &dead), (&alive_key, &alive)] {
        raw.query_unpaged(
            "INSERT INTO usage_alerts (project_id, period, alert, event, emitted) \
             VALUES (?, ?, ?, ?, false) IF NOT EXISTS",
            (
                *p.as_uuid(),
                period.to_string(),
                key.as_str(),
                String::from_utf8(event.to_json()).unwrap(),
            ),
        )
        .await
        .expect("plant a claim");
    }

    let next = connect_with(config()).await;
    let mut queue = next.outbox_queue(1000);
    for i in 0..10 {
        let m = msg(p, c, &format!("m{i}"), Some(&format!("m{i}")));
        assert!(next.append_message(&m).await.expect("send").created);
    }
    let emitted = warnings(&mut queue, p);
    assert_eq!(
        emitted.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![dead.id],
        "the dead claimer's warning, once, with its id: {emitted:?}"
    );
    assert_eq!(
        emitted[0],
        DomainEvent::from_json(&dead.to_json()).expect("event"),
        "the planted event as it was stored"
    );
    assert_eq!(alert_row(&raw, p, &dead_key).await, Some(Some(true)));
    assert_eq!(
        alert_row(&raw, p, &alive_key).await,
        Some(Some(false)),
        "a claim younger than 30 s is left to its claimer"
    );
}

/// A keyspace of schema 8 (before members) with a project: `migrate` makes the project's owner
/// its `owner` member, listed in the owner's projects; running it again changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_members_migration_backfills_owners() {
    let (cfg, store, raw) = old_keyspace("lc_members", 8).await;
    let (project, admin) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let t = scylla::value::CqlTimestamp(model::now().timestamp_millis());
    let bucket = bucket(&project, cfg.listing_bucket);
    for (cql, values) in [
        (
            "INSERT INTO admin_users (id, email, password_hash, created_at) \
             VALUES (?, 'Old.Owner@Example.com', 'h', ?)",
            vec![
                scylla::value::CqlValue::Uuid(admin),
                scylla::value::CqlValue::Timestamp(t),
            ],
        ),
        (
            "INSERT INTO projects (id, name, owner_id, plan, status, settings, created_at, \
             updated_at) VALUES (?, 'old', ?, 'free', 'active', '{}', ?, ?)",
            vec![
                scylla::value::CqlValue::Uuid(project),
                scylla::value::CqlValue::Uuid(admin),
                scylla::value::CqlValue::Timestamp(t),
                scylla::value::CqlValue::Timestamp(t),
            ],
        ),
        (
            "INSERT INTO project_buckets (scope, bucket) VALUES (0, ?)",
            vec![scylla::value::CqlValue::BigInt(bucket)],
        ),
        (
            "INSERT INTO projects_by_bucket (bucket, id) VALUES (?, ?)",
            vec![
                scylla::value::CqlValue::BigInt(bucket),
                scylla::value::CqlValue::Uuid(project),
            ],
        ),
    ] {
        raw.query_unpaged(cql, values).await.expect(cql);
    }
    for _ in 0..2 {
        let _one_at_a_time = MIGRATE.lock().await;
        store
            .migrate()
            .await
            .expect("migrate to the members schema");
    }
    let (project, admin) = (ProjectId::from_uuid(project), AdminUserId::from_uuid(admin));
    let owner = store
        .member(project, admin)
        .await
        .expect("read")
        .expect("the owner is a member");
    assert_eq!(owner.role, larachat_core::team::ProjectRole::Owner);
    assert_eq!(owner.email, "old.owner@example.com");
    assert_eq!(store.list_members(project).await.unwrap().len(), 1);
    let mine = store.member_projects(admin, None, 10).await.expect("list");
    assert_eq!(mine.items.len(), 1);
    assert_eq!(mine.items[0].0.id, project);
}

// --- identification killed after its claim -------------------------------------------------

/// The state an identification killed between its identifier claim and its user batch leaves
/// (the claim row only, planted here) is repaired by the next identification of the
/// identifier, in another process: the user is written with the claimed id, once, counted
/// once in the month's active users, with one `user.created` event whose id is derived from
/// the user's; later identifications (both processes) find it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_identification_killed_after_its_claim_is_repaired_by_the_next() {
    let a = connect_with(config()).await;
    let b = connect_with(config()).await;
    let raw = raw_session().await;
    let (p, _) = fixture(&a).await;
    let claimed = EndUserId::new_v7();
    raw.query_unpaged(
        "INSERT INTO end_users_by_identifier (project_id, user_identifier, id) VALUES (?, ?, ?)",
        (*p.as_uuid(), "killed-after-claim", *claimed.as_uuid()),
    )
    .await
    .expect("plant the claim");
    let period = Period::of(model::now());
    assert_eq!(a.usage(p, period).await.expect("usage").active_users, 0);
    assert!(a.end_user(p, claimed).await.expect("read").is_none());

    let mut queue = b.outbox_queue(1000);
    let who = NewEndUser {
        user_identifier: Some("killed-after-claim".into()),
        name: Some("Repaired".into()),
        email: None,
        avatar: None,
        metadata: json!({}),
    };
    let (user, created) = b.upsert_end_user(p, &who).await.expect("repair");
    assert_eq!(user.id, claimed, "the claimed id, not a fresh one");
    assert!(!created, "created for the identification that claimed it");
    assert_eq!(user.name.as_deref(), Some("Repaired"));
    for (store, name) in [(&a, "a"), (&b, "b")] {
        let (again, created) = store.upsert_end_user(p, &who).await.expect("again");
        assert_eq!((again.id, created), (claimed, false), "process {name}");
    }
    assert_eq!(
        a.end_user(p, claimed).await.expect("read").map(|u| u.id),
        Some(claimed)
    );
    assert_eq!(
        a.usage(p, period).await.expect("usage").active_users,
        1,
        "counted once"
    );
    let mut created_events = Vec::new();
    while let Ok(e) = queue.try_recv() {
        if let EventData::UserCreated(u) = &e.event.data {
            if e.event.project_id == p {
                created_events.push((e.event.id, u.user_id));
            }
        }
    }
    assert_eq!(
        created_events,
        vec![(EventId::of_user_created(claimed), claimed)],
        "one user.created, with the derived id"
    );
}

/// The state a conversation creation killed between its key claim and its conversation batch
/// leaves (the claim row only, with the conversation to write, planted here) is finished by
/// the next creation with the key, in another process: the claimed conversation is written
/// (not the new request), counted once, announced once; later calls return it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_conversation_creation_killed_after_its_claim_is_finished_by_the_next() {
    let a = connect_with(config()).await;
    let b = connect_with(config()).await;
    let raw = raw_session().await;
    let (p, _) = fixture(&a).await;
    let period = Period::of(model::now());
    let before = a.usage(p, period).await.expect("usage").conversations;
    let conversation = |subject: &str| {
        let t = model::now();
        Conversation {
            id: ConversationId::new_v7(),
            project_id: p,
            subject: Some(subject.into()),
            status: ConversationStatus::Open,
            members: vec![],
            metadata: json!({"n": 1}),
            created_at: t,
            updated_at: t,
            last_message_id: None,
            assignee: None,
        }
    };
    let claimed = conversation("claimed by the killed creator");
    raw.query_unpaged(
        "INSERT INTO conversation_keys (project_id, caller, key, conversation_id, conversation) \
         VALUES (?, ?, ?, ?, ?)",
        (
            *p.as_uuid(),
            "key:k",
            "killed",
            *claimed.id.as_uuid(),
            serde_json::to_string(&claimed).unwrap(),
        ),
    )
    .await
    .expect("plant the claim");
    assert!(a.conversation(p, claimed.id).await.expect("read").is_none());

    let key = larachat_store::CreationKey {
        caller: "key:k".into(),
        key: "killed".into(),
    };
    let mut queue = b.outbox_queue(1000);
    let retry = conversation("the retry");
    let (got, created) = b
        .create_conversation_keyed(&retry, &key)
        .await
        .expect("finish");
    assert_eq!(got, claimed, "the claimed conversation, not the retry's");
    assert!(!created, "created for the call that claimed the key");
    for (store, name) in [(&a, "a"), (&b, "b")] {
        let (again, created) = store
            .create_conversation_keyed(&conversation("later"), &key)
            .await
            .expect("again");
        assert_eq!((again.id, created), (claimed.id, false), "process {name}");
    }
    assert_eq!(
        a.conversation(p, claimed.id).await.expect("read"),
        Some(claimed.clone())
    );
    assert!(a.conversation(p, retry.id).await.expect("read").is_none());
    assert_eq!(
        a.usage(p, period).await.expect("usage").conversations,
        before + 1,
        "counted once"
    );
    let mut events = Vec::new();
    while let Ok(e) = queue.try_recv() {
        if let EventData::ConversationCreated(c) = &e.event.data {
            if e.event.project_id == p {
                events.push((e.event.id, c.conversation_id));
            }
        }
    }
    assert_eq!(
        events,
        vec![(EventId::of_conversation_created(claimed.id), claimed.id)],
        "one conversation.created, with the derived id"
    );
}

/// Schema 12 (`conversation_keys`) on a keyspace at schema 11: `migrate` adds it, and keyed
/// creations work on the upgraded keyspace.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schema_11_keyspace_gets_conversation_keys() {
    let (cfg, old, _raw) = old_keyspace("lc_upgrade", 11).await;
    drop(old);
    let store = connect_with(cfg).await;
    let (p, _) = fixture(&store).await;
    let key = larachat_store::CreationKey {
        caller: "key:upgrade".into(),
        key: "k".into(),
    };
    let t = model::now();
    let c = Conversation {
        id: ConversationId::new_v7(),
        project_id: p,
        subject: None,
        status: ConversationStatus::Open,
        members: vec![],
        metadata: json!({}),
        created_at: t,
        updated_at: t,
        last_message_id: None,
        assignee: None,
    };
    let (first, created) = store
        .create_conversation_keyed(&c, &key)
        .await
        .expect("create");
    assert!(created);
    let again = Conversation {
        id: ConversationId::new_v7(),
        ..c.clone()
    };
    let (second, created) = store
        .create_conversation_keyed(&again, &key)
        .await
        .expect("again");
    assert_eq!((second.id, created), (first.id, false));
}

/// Rows of a (small, test-keyspace) table.
async fn count_rows(raw: &scylla::client::session::Session, table: &str) -> i64 {
    raw.query_unpaged(format!("SELECT count(*) FROM {table}"), ())
        .await
        .expect("count")
        .into_rows_result()
        .expect("rows")
        .first_row::<(i64,)>()
        .expect("row")
        .0
}

async fn drop_search_index(raw: &scylla::client::session::Session) {
    for table in ["search_terms", "search_conversation_terms"] {
        raw.query_unpaged(format!("TRUNCATE {table}"), ())
            .await
            .expect("truncate");
    }
}

/// Schema 14 on a keyspace at schema 13 whose conversations and messages have no index rows
/// (written, then the index tables emptied, as data stored before schema 13): `migrate` adds
/// `backfills`, and the backfill writes exactly the rows the live writes had written, so the
/// old conversations are found; it is done once, and rerunning it changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schema_13_data_without_index_rows_is_backfilled() {
    let (cfg, old, raw) = old_keyspace("lc_backfill", 13).await;
    let old: TestStore = Arc::new(old);
    let data = contract::search_backfill_data(&old).await;
    drop(old);
    let live = (
        count_rows(&raw, "search_terms").await,
        count_rows(&raw, "search_conversation_terms").await,
    );
    assert!(live.0 > 0);
    drop_search_index(&raw).await;
    let store = Arc::new(connect_with(cfg.clone()).await);
    let test_store: TestStore = store.clone();
    assert!(contract::search_backfill_missing(&test_store, &data).await);

    let started = std::time::Instant::now();
    let report = store.backfill_search().await.expect("backfill");
    println!("backfill: {report:?} in {:?}", started.elapsed());
    assert_eq!(
        (report.conversations, report.messages, report.already_done),
        (3, 2 + contract::SEARCH_BACKFILL_MESSAGES as u64 + 1, false)
    );
    contract::search_backfill_check(&test_store, &data).await;
    let rows = (
        count_rows(&raw, "search_terms").await,
        count_rows(&raw, "search_conversation_terms").await,
    );
    assert_eq!(rows, live, "the rows the live writes had written");

    // Done once: another run (or start) writes nothing.
    let again = store.backfill_search().await.expect("again");
    assert_eq!(
        again,
        BackfillReport {
            already_done: true,
            ..BackfillReport::default()
        }
    );
    // Rerun from the start: the same rows (upserts), nothing more.
    raw.query_unpaged("DELETE FROM backfills WHERE name = 'search'", ())
        .await
        .expect("reset");
    let rerun = store.backfill_search().await.expect("rerun");
    assert_eq!(rerun.messages, report.messages);
    assert_eq!(
        (
            count_rows(&raw, "search_terms").await,
            count_rows(&raw, "search_conversation_terms").await,
        ),
        live
    );

    // In the background (what `serve` does after opening the store).
    drop_search_index(&raw).await;
    raw.query_unpaged("DELETE FROM backfills WHERE name = 'search'", ())
        .await
        .expect("reset");
    store
        .spawn_search_backfill()
        .await
        .expect("background backfill");
    contract::search_backfill_check(&test_store, &data).await;
    assert_eq!(count_rows(&raw, "search_terms").await, live.0);
}
