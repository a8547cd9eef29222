//! The contract suite on `SqliteStore`, plus what only SQLite promises: data survives a
//! reopen, migrations are idempotent, newer schemas are refused, writes are group-committed.

use std::sync::Arc;

use larachat_core::id::{AdminUserId, ConversationId, ProjectId};
use larachat_core::model::{
    self, Actor, ActorKind, AdminUser, Conversation, ConversationStatus, NewMessage, PlanId,
    Project, ProjectStatus,
};
use larachat_core::plan::Period;
use larachat_store::contract::{self, TestStore};
use larachat_store::sqlite::SCHEMA_VERSION;
use larachat_store::{
    BackfillReport, ManualClock, MessageRange, NewEndUser, SqliteConfig, SqliteStore, Store,
    StoreClock, StoreError,
};
use serde_json::json;
use tempfile::TempDir;

/// A store in a fresh temporary directory (WAL files included); keep the dir alive.
fn open_store() -> (TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(config(&dir)).expect("open store");
    (dir, store)
}

fn config(dir: &TempDir) -> SqliteConfig {
    // A nested path checks that the parent directory is created.
    SqliteConfig::new(dir.path().join("data").join("larachat.db"))
}

macro_rules! contract_tests {
    ($($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let (_dir, store) = open_store();
                let store: TestStore = Arc::new(store);
                contract::$check(&store).await;
            }
        )*
    };
}

larachat_store::for_each_store_check!(contract_tests);

macro_rules! two_store_tests {
    ($($check:ident),* $(,)?) => {
        $(
            /// Two handles on one database file: two processes of a single node sharing it.
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let dir = tempfile::tempdir().expect("tempdir");
                let a: TestStore = Arc::new(SqliteStore::open(config(&dir)).expect("open a"));
                let b: TestStore = Arc::new(SqliteStore::open(config(&dir)).expect("open b"));
                contract::$check(&a, &b).await;
            }
        )*
    };
}

larachat_store::for_each_two_store_check!(two_store_tests);

macro_rules! clocked_tests {
    ($($check:ident),* $(,)?) => {
        $(
            /// A store on a clock of the check's own.
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let dir = tempfile::tempdir().expect("tempdir");
                let clock = ManualClock::starting_at(model::now());
                let config = SqliteConfig {
                    clock: StoreClock::new(clock.clone()),
                    ..config(&dir)
                };
                let store: TestStore = Arc::new(SqliteStore::open(config).expect("open"));
                contract::$check(&store, &clock).await;
            }
        )*
    };
}

larachat_store::for_each_clocked_store_check!(clocked_tests);

/// All checks on one shared store, as a shared Cassandra keyspace would run them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_all_on_one_store() {
    let (_dir, store) = open_store();
    let store: TestStore = Arc::new(store);
    contract::run_all(&store).await;
}

struct Seeded {
    admin: AdminUser,
    project: Project,
    conversation: Conversation,
    messages: Vec<larachat_core::model::Message>,
}

async fn seed(store: &SqliteStore) -> Seeded {
    let admin = AdminUser {
        id: AdminUserId::new_v7(),
        email: "Owner@Example.com".into(),
        password_hash: "hash".into(),
        created_at: model::now(),
    };
    store.create_admin_user(&admin).await.expect("admin");
    let t = model::now();
    let project = Project {
        id: ProjectId::new_v7(),
        name: "Acme".into(),
        owner_id: admin.id,
        plan: PlanId::parse("pro").unwrap(),
        status: ProjectStatus::Active,
        settings: json!({"color": "blue"}),
        created_at: t,
        updated_at: t,
    };
    store.create_project(&project).await.expect("project");
    let (user, _) = store
        .upsert_end_user(
            project.id,
            &NewEndUser {
                user_identifier: Some("u-1".into()),
                name: Some("Ada".into()),
                email: None,
                avatar: None,
                metadata: json!({}),
            },
        )
        .await
        .expect("user");
    let conversation = Conversation {
        id: ConversationId::new_v7(),
        project_id: project.id,
        subject: None,
        status: ConversationStatus::Open,
        members: vec![user.id],
        metadata: json!({}),
        created_at: t,
        updated_at: t,
        last_message_id: None,
        assignee: Some("ana@acme".into()),
    };
    store
        .create_conversation(&conversation)
        .await
        .expect("conversation");
    let mut messages = Vec::new();
    for i in 0..3 {
        let m = NewMessage {
            project_id: project.id,
            conversation_id: conversation.id,
            sender: Actor::end_user(user.id, Some("Ada".into())),
            text: format!("hello {i}"),
            metadata: json!({}),
            client_msg_id: Some(format!("c{i}")),
        };
        messages.push(store.append_message(&m).await.expect("append").message);
    }
    Seeded {
        admin,
        project,
        conversation,
        messages,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_close_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(config(&dir)).expect("open");
    let seeded = seed(&store).await;
    drop(store);

    let store = SqliteStore::open(config(&dir)).expect("reopen");
    assert_eq!(
        store
            .admin_user_by_email("owner@example.com")
            .await
            .expect("admin"),
        Some(seeded.admin.clone()),
        "admin user survives, original email spelling kept"
    );
    assert_eq!(
        store.project(seeded.project.id).await.expect("project"),
        Some(seeded.project.clone())
    );
    let conversation = store
        .conversation(seeded.project.id, seeded.conversation.id)
        .await
        .expect("conversation")
        .expect("conversation survives");
    assert_eq!(conversation.members, seeded.conversation.members);
    assert_eq!(
        conversation.assignee.as_deref(),
        Some("ana@acme"),
        "the assignee survives"
    );
    assert_eq!(
        conversation.last_message_id,
        seeded.messages.last().map(|m| m.id)
    );
    let page = store
        .list_messages(
            seeded.project.id,
            seeded.conversation.id,
            MessageRange::Latest,
            10,
        )
        .await
        .expect("messages");
    assert_eq!(
        page.items, seeded.messages,
        "every acknowledged message survives"
    );

    // Idempotency survives too: a retry after a restart returns the original.
    let retry = NewMessage {
        project_id: seeded.project.id,
        conversation_id: seeded.conversation.id,
        sender: Actor {
            kind: ActorKind::EndUser,
            id: "x".into(),
            name: None,
        },
        text: "retry".into(),
        metadata: json!({}),
        client_msg_id: Some("c0".into()),
    };
    let again = store.append_message(&retry).await.expect("retry");
    assert!(!again.created);
    assert_eq!(again.message, seeded.messages[0]);

    // New ids stay above the ones written before the restart.
    let fresh = store
        .append_message(&NewMessage {
            client_msg_id: None,
            ..retry
        })
        .await
        .expect("append");
    assert!(seeded.messages.iter().all(|m| m.id < fresh.message.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_on_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = config(&dir).path;
    let store = SqliteStore::open(config(&dir)).expect("open");
    let seeded = seed(&store).await;
    drop(store);
    for _ in 0..3 {
        let store = SqliteStore::open(config(&dir)).expect("reopen runs no migration twice");
        assert!(
            store
                .project(seeded.project.id)
                .await
                .expect("project")
                .is_some()
        );
        store.ping().await.expect("ping");
    }
    let conn = rusqlite::Connection::open(&path).expect("open raw");
    let version: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(version, SCHEMA_VERSION);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("mode");
    assert_eq!(mode, "wal");
}

/// A database written by schema 1 (messages without `seq`) is numbered by the migration to
/// schema 2: in id order, per conversation, and appends continue the numbering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_1_data_is_numbered_by_the_migration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = config(&dir).path;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let project = ProjectId::new_v7();
    let convs = [ConversationId::new_v7(), ConversationId::new_v7()];
    // Ids as schema 1 wrote them: UUIDv7, inserted out of order on purpose.
    let mut ids: Vec<uuid::Uuid> = (0..7).map(|_| uuid::Uuid::now_v7()).collect();
    ids.sort();
    {
        let conn = rusqlite::Connection::open(&path).expect("open raw");
        conn.execute_batch(include_str!("../src/sqlite/migrations/0001_initial.sql"))
            .expect("schema 1");
        conn.pragma_update(None, "user_version", 1)
            .expect("version");
        conn.execute(
            "INSERT INTO projects VALUES (?1, 'p', ?2, 'free', 'active', '{}', 0, 0)",
            (
                project.as_uuid().as_bytes(),
                uuid::Uuid::now_v7().as_bytes(),
            ),
        )
        .expect("project");
        for c in &convs {
            conn.execute(
                "INSERT INTO conversations VALUES (?1, ?2, NULL, 'open', '{}', 0, 0, NULL)",
                (project.as_uuid().as_bytes(), c.as_uuid().as_bytes()),
            )
            .expect("conversation");
        }
        for (i, id) in ids.iter().enumerate().rev() {
            conn.execute(
                "INSERT INTO messages VALUES (?1, ?2, ?3, 'agent', 'a', NULL, ?4, '{}', ?5, 0)",
                (
                    project.as_uuid().as_bytes(),
                    convs[i % 2].as_uuid().as_bytes(),
                    id.as_bytes(),
                    format!("m{i}"),
                    format!("cmid-{i}"),
                ),
            )
            .expect("message");
        }
        conn.execute(
            "UPDATE conversations SET last_message_id = (SELECT max(id) FROM messages m \
             WHERE m.conversation_id = conversations.id)",
            [],
        )
        .expect("heads");
    }
    let store = SqliteStore::open(config(&dir)).expect("open migrates");
    for (k, c) in convs.iter().enumerate() {
        let page = store
            .list_messages(project, *c, MessageRange::Latest, 100)
            .await
            .expect("list");
        let expected: Vec<uuid::Uuid> = (0..7).filter(|i| i % 2 == k).map(|i| ids[i]).collect();
        assert_eq!(
            page.items
                .iter()
                .map(|m| *m.id.as_uuid())
                .collect::<Vec<_>>(),
            expected
        );
        let seqs: Vec<u64> = page.items.iter().map(|m| m.seq).collect();
        assert_eq!(
            seqs,
            (1..=expected.len() as u64).collect::<Vec<_>>(),
            "numbered in id order"
        );
        // An old client_msg_id is still recognised; a new message continues the numbering.
        let retry = store
            .append_message(&NewMessage {
                project_id: project,
                conversation_id: *c,
                sender: Actor {
                    kind: ActorKind::Agent,
                    id: "a".into(),
                    name: None,
                },
                text: "again".into(),
                metadata: json!({}),
                client_msg_id: Some(format!("cmid-{k}")),
            })
            .await
            .expect("retry");
        assert!(!retry.created);
        assert_eq!(retry.message.seq, 1);
        let next = store
            .append_message(&NewMessage {
                project_id: project,
                conversation_id: *c,
                sender: Actor {
                    kind: ActorKind::Agent,
                    id: "a".into(),
                    name: None,
                },
                text: "new".into(),
                metadata: json!({}),
                client_msg_id: None,
            })
            .await
            .expect("append");
        assert_eq!(next.message.seq, expected.len() as u64 + 1);
        assert!(next.message.id > page.items.last().unwrap().id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(SqliteStore::open(config(&dir)).expect("open"));
    let conn = rusqlite::Connection::open(config(&dir).path).expect("open raw");
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .expect("bump");
    drop(conn);
    let err = SqliteStore::open(config(&dir)).expect_err("a newer schema must be refused");
    assert!(
        matches!(&err, StoreError::Internal(m) if m.contains("newer")),
        "error explains the version: {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_are_group_committed() {
    let (_dir, store) = open_store();
    let seeded = seed(&store).await;
    let before = store.stats();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..500 {
        let store = store.clone();
        let m = NewMessage {
            project_id: seeded.project.id,
            conversation_id: seeded.conversation.id,
            sender: Actor {
                kind: ActorKind::Agent,
                id: "a".into(),
                name: None,
            },
            text: format!("burst {i}"),
            metadata: json!({}),
            client_msg_id: Some(format!("burst-{i}")),
        };
        tasks.spawn(async move { store.append_message(&m).await });
    }
    while let Some(r) = tasks.join_next().await {
        assert!(r.expect("task").expect("append").created);
    }
    let after = store.stats();
    let batches = after.batches - before.batches;
    let writes = after.writes - before.writes;
    println!(
        "500 concurrent appends: {batches} commits, largest batch {}",
        after.largest_batch
    );
    assert_eq!(writes, 500, "every append went through the writer");
    assert!(
        batches < 500,
        "concurrent writes share commits ({batches} commits for 500 writes)"
    );
    assert!(after.largest_batch > 1);
    assert_eq!(after.failed_batches, 0);
    let page = store
        .list_messages(
            seeded.project.id,
            seeded.conversation.id,
            MessageRange::Latest,
            1000,
        )
        .await
        .expect("list");
    assert_eq!(page.items.len(), 503, "all 500 stored (plus the 3 seeded)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_write_does_not_sink_its_batch() {
    let (_dir, store) = open_store();
    let seeded = seed(&store).await;
    let mut tasks = tokio::task::JoinSet::new();
    // Interleave valid appends with appends to an unknown conversation and duplicate admins.
    for i in 0..100 {
        let store = store.clone();
        let seeded_project = seeded.project.id;
        let conversation = if i % 2 == 0 {
            seeded.conversation.id
        } else {
            ConversationId::new_v7()
        };
        let dup_admin = AdminUser {
            id: AdminUserId::new_v7(),
            ..seeded.admin.clone()
        };
        tasks.spawn(async move {
            if i % 10 == 1 {
                return (i, store.create_admin_user(&dup_admin).await.map(|_| ()));
            }
            let m = NewMessage {
                project_id: seeded_project,
                conversation_id: conversation,
                sender: Actor {
                    kind: ActorKind::Bot,
                    id: "b".into(),
                    name: None,
                },
                text: format!("{i}"),
                metadata: json!({}),
                client_msg_id: None,
            };
            (i, store.append_message(&m).await.map(|_| ()))
        });
    }
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        let (i, result) = r.expect("task");
        match (i % 2, i % 10, result) {
            (_, 1, Err(StoreError::Conflict(m))) => assert!(m.contains("email"), "{m}"),
            (0, _, Ok(())) => ok += 1,
            (1, _, Err(StoreError::NotFound("conversation"))) => {}
            (_, _, other) => panic!("write {i}: unexpected {other:?}"),
        }
    }
    assert_eq!(ok, 50);
    let page = store
        .list_messages(
            seeded.project.id,
            seeded.conversation.id,
            MessageRange::Latest,
            1000,
        )
        .await
        .expect("list");
    assert_eq!(
        page.items.len(),
        53,
        "every valid write of mixed batches is stored"
    );
    assert_eq!(
        store.count_admin_users().await.expect("count"),
        1,
        "no duplicate admin slipped in"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_rows_are_errors_not_panics() {
    let (dir, store) = open_store();
    let seeded = seed(&store).await;
    drop(store);
    let conn = rusqlite::Connection::open(config(&dir).path).expect("open raw");
    conn.execute(
        "UPDATE projects SET settings = 'not json', plan = 'platinum'",
        [],
    )
    .expect("corrupt");
    conn.execute("UPDATE admin_users SET id = x'0102'", [])
        .expect("corrupt");
    drop(conn);
    let store = SqliteStore::open(config(&dir)).expect("reopen");
    assert!(matches!(
        store.project(seeded.project.id).await,
        Err(StoreError::Internal(_))
    ));
    assert!(matches!(
        store.admin_user_by_email("owner@example.com").await,
        Err(StoreError::Internal(_))
    ));
    store
        .ping()
        .await
        .expect("the store keeps serving after a corrupt row");
}

/// The migration to the members schema makes every existing project's owner its `owner`
/// member (the migration and those after it undone on a database that has a project, then
/// re-applied).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_members_migration_backfills_owners() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seeded = {
        let store = SqliteStore::open(config(&dir)).expect("open");
        seed(&store).await
    };
    {
        let conn = rusqlite::Connection::open(config(&dir).path).expect("open raw");
        // Undo the members migration (10) and the ones after it (11, conversation keys;
        // 12, search; 13, backfills).
        conn.execute_batch(
            "DROP TABLE project_members; DROP TABLE project_invites; \
             DROP TABLE conversation_keys; DROP TABLE search_terms; DROP TABLE backfills;",
        )
        .expect("undo the members migration and those after it");
        conn.pragma_update(None, "user_version", 9)
            .expect("version");
    }
    let store = SqliteStore::open(config(&dir)).expect("reopen migrates");
    let owner = store
        .member(seeded.project.id, seeded.admin.id)
        .await
        .expect("read")
        .expect("the owner is a member");
    assert_eq!(owner.role, larachat_core::team::ProjectRole::Owner);
    assert_eq!(owner.email, "owner@example.com");
    assert_eq!(owner.created_at, seeded.project.created_at);
    let mine = store
        .member_projects(seeded.admin.id, None, 10)
        .await
        .expect("list");
    assert_eq!(mine.items.len(), 1);
    assert_eq!(mine.items[0].0.id, seeded.project.id);
}

fn search_rows(dir: &TempDir) -> i64 {
    let conn = rusqlite::Connection::open(config(dir).path).expect("open raw");
    conn.query_row("SELECT count(*) FROM search_terms", [], |r| r.get(0))
        .expect("count")
}

/// An upgrade from before the search index (migrations 12 and 13 undone on a database with
/// conversations and messages, then re-applied): the backfill writes exactly the index rows
/// the live writes had written, so the old conversations are found; it is done once, resumes
/// from its cursor, and rerunning it changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_search_backfill_indexes_what_was_stored_before_the_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = {
        let store = SqliteStore::open(config(&dir)).expect("open");
        // A new database: nothing to backfill.
        let report = store.backfill_search().await.expect("backfill");
        assert_eq!((report.conversations, report.messages), (0, 0));
        let store: TestStore = Arc::new(store);
        contract::search_backfill_data(&store).await
    };
    let live_rows = search_rows(&dir);
    assert!(live_rows > 0);
    {
        let conn = rusqlite::Connection::open(config(&dir).path).expect("open raw");
        conn.execute_batch("DROP TABLE search_terms; DROP TABLE backfills;")
            .expect("undo migrations 12 and 13");
        conn.pragma_update(None, "user_version", 11)
            .expect("version");
    }
    let sqlite = SqliteStore::open(config(&dir)).expect("reopen migrates");
    let store: TestStore = Arc::new(sqlite.clone());
    assert!(contract::search_backfill_missing(&store, &data).await);

    let started = std::time::Instant::now();
    let report = sqlite.backfill_search().await.expect("backfill");
    let messages = 2 + contract::SEARCH_BACKFILL_MESSAGES as u64 + 1;
    println!("backfill: {report:?} in {:?}", started.elapsed());
    assert_eq!(
        report,
        BackfillReport {
            conversations: 3,
            messages,
            // One batch of conversations, then messages in batches of 300.
            batches: 1 + messages.div_ceil(300),
            already_done: false,
        }
    );
    contract::search_backfill_check(&store, &data).await;
    assert_eq!(
        search_rows(&dir),
        live_rows,
        "the rows the live writes had written"
    );

    // Done once: another run (or start) writes nothing.
    let again = sqlite.backfill_search().await.expect("again");
    assert_eq!(
        again,
        BackfillReport {
            already_done: true,
            ..BackfillReport::default()
        }
    );

    // Resumes from its cursor: as if killed after the 300th message, only the rest is done.
    {
        let conn = rusqlite::Connection::open(config(&dir).path).expect("open raw");
        let key: Vec<u8> = conn
            .query_row(
                "SELECT project_id, conversation_id, id FROM messages \
                 ORDER BY project_id, conversation_id, id LIMIT 1 OFFSET 299",
                [],
                |r| {
                    let parts: [Vec<u8>; 3] = [r.get(0)?, r.get(1)?, r.get(2)?];
                    Ok(parts.concat())
                },
            )
            .expect("the 300th message");
        conn.execute(
            "UPDATE backfills SET phase = 1, done_at = NULL, after = ?1 WHERE name = 'search'",
            [key],
        )
        .expect("move the cursor");
    }
    let rest = sqlite.backfill_search().await.expect("resume");
    assert_eq!((rest.conversations, rest.messages), (0, messages - 300));
    // Rerun from the start: the same rows (set-like), nothing more.
    {
        let conn = rusqlite::Connection::open(config(&dir).path).expect("open raw");
        conn.execute(
            "UPDATE backfills SET phase = 0, after = NULL, done_at = NULL",
            [],
        )
        .expect("reset");
    }
    let rerun = sqlite.backfill_search().await.expect("rerun");
    assert_eq!(rerun.messages, messages);
    assert_eq!(search_rows(&dir), live_rows);
    contract::search_backfill_check(&store, &data).await;

    // In the background after open (what `serve` does), beside live writes: both are found.
    {
        let conn = rusqlite::Connection::open(config(&dir).path).expect("open raw");
        conn.execute_batch(
            "DELETE FROM search_terms; \
             UPDATE backfills SET phase = 0, after = NULL, done_at = NULL;",
        )
        .expect("reset");
    }
    let background = sqlite.spawn_search_backfill();
    let writer = {
        let store = store.clone();
        let (project, conversation) = (data.project, data.first);
        tokio::spawn(async move {
            for i in 0..50 {
                let m = NewMessage {
                    project_id: project,
                    conversation_id: conversation,
                    sender: Actor {
                        kind: ActorKind::Agent,
                        id: "agent-1".into(),
                        name: None,
                    },
                    text: format!("live{i} meanwhile"),
                    metadata: json!({}),
                    client_msg_id: None,
                };
                store.append_message(&m).await.expect("live append");
            }
        })
    };
    background.await.expect("background backfill");
    writer.await.expect("live writes");
    contract::search_backfill_check(&store, &data).await;
    for q in ["live0 meanwhile", "live49"] {
        let page = store
            .search_conversations(
                data.project,
                &larachat_core::search::SearchQuery::parse(q).expect("query"),
                &larachat_store::ConversationQuery::default(),
            )
            .await
            .expect("search");
        let ids: Vec<ConversationId> = page.items.iter().map(|c| c.id).collect();
        assert_eq!(ids, vec![data.first], "{q}");
    }
    assert!(search_rows(&dir) > live_rows);
}

/// Checkpoints run beside the writer (`sqlite/checkpoint.rs`), not inside its commits: the
/// WAL must still be copied into the database and restarted, so it stays bounded, and every
/// write survives a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_checkpointed_and_stays_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("data").join("larachat.db");
    let wal = dir.path().join("data").join("larachat.db-wal");
    let store = SqliteStore::open(config(&dir)).expect("open");
    let seeded = seed(&store).await;
    let sender = seeded.messages[0].sender.clone();
    let db_before = std::fs::metadata(&db).expect("db file").len();
    // About 13 WAL frames per message: without checkpoints the WAL would pass 100 MiB.
    const MESSAGES: usize = 2_000;
    let mut largest_wal = 0;
    let mut last = None;
    for i in 0..MESSAGES {
        let appended = store
            .append_message(&NewMessage {
                project_id: seeded.project.id,
                conversation_id: seeded.conversation.id,
                sender: sender.clone(),
                text: format!("message number {i} with a few words to index"),
                metadata: json!({}),
                client_msg_id: Some(format!("wal-{i}")),
            })
            .await
            .expect("append");
        largest_wal = largest_wal.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
        last = Some(appended.message);
    }
    let db_after = std::fs::metadata(&db).expect("db file").len();
    let stats = store.stats();
    println!("WAL at most {largest_wal} B; database file {db_before} B -> {db_after} B; {stats:?}");
    // A checkpoint that copies pages fsyncs the WAL and the database: one per COPY_AFTER (256)
    // frames added, not one per commit (which would be about MESSAGES of them).
    assert!(
        stats.checkpoints > 0 && stats.checkpoints < MESSAGES as u64 / 5,
        "{} checkpoints for {MESSAGES} appends",
        stats.checkpoints
    );
    assert!(
        largest_wal < 16 << 20,
        "the WAL reached {largest_wal} bytes: it is not being restarted"
    );
    assert!(
        db_after > db_before,
        "nothing was copied into the database file while the store was open"
    );
    drop(store);

    let store = SqliteStore::open(config(&dir)).expect("reopen");
    let page = store
        .list_messages(
            seeded.project.id,
            seeded.conversation.id,
            MessageRange::Latest,
            1,
        )
        .await
        .expect("messages");
    assert_eq!(page.items.last(), last.as_ref(), "the last write survives");

    // Every message was counted once (summing both months if the run crossed midnight of a
    // month's last day).
    let mut periods = vec![Period::of(seeded.messages[0].created_at)];
    let last_period = Period::of(last.expect("appended").created_at);
    if !periods.contains(&last_period) {
        periods.push(last_period);
    }
    let mut counted = 0;
    for period in periods {
        counted += store
            .usage(seeded.project.id, period)
            .await
            .expect("usage")
            .messages;
    }
    assert_eq!(counted, (MESSAGES + seeded.messages.len()) as u64);
}
