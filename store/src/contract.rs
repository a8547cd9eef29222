//! The contract suite every [`Store`] backend must pass.
//!
//! Each check is a public async function taking the store under test; [`run_all`] runs them
//! all. A backend's integration tests instantiate them, one test per check for readable
//! reports:
//!
//! ```text
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn messages_paging() {
//!     larachat_store::contract::messages_paging(&my_store().await).await;
//! }
//! ```
//!
//! Checks use fresh projects, users and identifiers each time, so they can share one store (one
//! SQLite file, one Cassandra keyspace) and run concurrently. They panic (`assert!`) with a
//! message naming the broken rule. The concurrent checks spawn tasks, so they need a tokio
//! runtime (multi-threaded to be meaningful).

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use chrono::{Duration, Utc};
use serde_json::json;
use tokio::task::JoinSet;
use uuid::Uuid;

use larachat_core::id::{
    AdminUserId, ApiKeyId, ConversationId, EndUserId, InviteId, MessageId, ProjectId,
};
use larachat_core::model::{
    self, Actor, ActorKind, AdminUser, ApiKeyRecord, Conversation, ConversationPatch,
    ConversationStatus, EndUser, EndUserPatch, KeyKind, NewMessage, PlanId, Project, ProjectPatch,
    ProjectStatus, Scope,
};
use larachat_core::team::{self, Invite, Member, ProjectRole};

use larachat_core::analytics::{
    AnalyticsData, AnalyticsRange, CountBucket, DurationStats, Granularity, MessageBucket,
    ProjectAnalytics,
};
use larachat_core::plan::{
    EdgeUsage, Period, Plan, PlanLimits, QuotaMetric, UsageCounts, content_bytes,
};

use larachat_core::search::SearchQuery;

use crate::clock::{Clock, ManualClock};
use crate::{
    AssigneeFilter, ConversationQuery, CreationKey, MessageRange, NewEndUser, Store, StoreError,
};

/// The store under test.
pub type TestStore = Arc<dyn Store>;

/// Runs every check, one after the other, on one store.
pub async fn run_all(store: &TestStore) {
    macro_rules! run {
        ($($check:ident),* $(,)?) => { $( $check(store).await; )* };
    }
    crate::for_each_store_check!(run);
}

/// Calls the macro `$m` with the name of every store check: the one list of checks, used by
/// [`run_all`] and by each backend's test file (which turns every name into a `#[tokio::test]`),
/// so a new check runs on every backend.
#[macro_export]
macro_rules! for_each_store_check {
    ($m:ident) => {
        $m!(
            admin_users,
            projects,
            project_delete_cascades,
            api_keys,
            end_users,
            end_users_concurrent_identify,
            end_user_delete_keeps_messages,
            conversations,
            conversations_listing,
            conversations_assignee,
            conversations_idempotency_key,
            conversations_search,
            messages_append,
            messages_idempotency,
            messages_concurrent_idempotency,
            messages_paging,
            messages_concurrent_appends,
            messages_seq,
            read_state,
            tenant_isolation,
            plans_seeded_and_editable,
            quota_messages_exact,
            quota_messages_exact_under_concurrency,
            quota_active_users_exact,
            quota_projects_per_owner,
            usage_matches_the_store,
            usage_storage_bytes,
            usage_edge_metering,
            analytics_match_the_store,
            team_members,
            team_last_owner_concurrent,
            team_invites,
            team_invites_concurrent_claim,
        );
    };
}

/// Like [`for_each_store_check!`], for the checks that take a store AND the [`ManualClock`] it
/// was configured with (`SqliteConfig::clock` / `ScyllaConfig::clock`): they move the clock
/// to write a history over past days. Each backend's test file opens such a store per check.
#[macro_export]
macro_rules! for_each_clocked_store_check {
    ($m:ident) => {
        $m!(analytics_match_the_store_over_days,);
    };
}

/// Like [`for_each_store_check!`], for the checks that take TWO stores on the same data (two
/// processes: two SQLite handles on one file, two CQL sessions on one keyspace). Each backend's
/// test file opens both and calls every check.
#[macro_export]
macro_rules! for_each_two_store_check {
    ($m:ident) => {
        $m!(
            two_processes_race_one_client_msg_id,
            two_processes_race_one_conversation_key,
            two_processes_append_concurrently,
        );
    };
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", Uuid::new_v4().simple())
}

fn admin_user_value(email: &str) -> AdminUser {
    AdminUser {
        id: AdminUserId::new_v7(),
        email: email.to_owned(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        created_at: model::now(),
    }
}

fn project_value(owner: AdminUserId, name: &str) -> Project {
    let t = model::now();
    Project {
        id: ProjectId::new_v7(),
        name: name.to_owned(),
        owner_id: owner,
        // Unlimited: only the quota checks below are about plan limits.
        plan: PlanId::parse("enterprise").unwrap(),
        status: ProjectStatus::Active,
        settings: json!({"theme": {"color": "#123456"}, "allowed_origins": ["https://a.example"]}),
        created_at: t,
        updated_at: t,
    }
}

/// A fresh admin user and a project it owns.
async fn new_project(store: &TestStore) -> Project {
    let admin = admin_user_value(&format!("{}@example.com", unique("owner")));
    store
        .create_admin_user(&admin)
        .await
        .expect("create admin user");
    let project = project_value(admin.id, &unique("project"));
    store
        .create_project(&project)
        .await
        .expect("create project");
    project
}

fn identified(identifier: &str) -> NewEndUser {
    NewEndUser {
        user_identifier: Some(identifier.to_owned()),
        name: Some("Ada".into()),
        email: Some("ada@example.com".into()),
        avatar: None,
        metadata: json!({"plan": "gold"}),
    }
}

fn anonymous() -> NewEndUser {
    NewEndUser {
        user_identifier: None,
        name: None,
        email: None,
        avatar: None,
        metadata: model::empty_object(),
    }
}

async fn new_end_user(store: &TestStore, project: ProjectId) -> EndUser {
    let (user, created) = store
        .upsert_end_user(project, &identified(&unique("user")))
        .await
        .expect("create end user");
    assert!(created);
    user
}

fn conversation_value(project: ProjectId, members: &[EndUserId]) -> Conversation {
    let t = model::now();
    let mut members = members.to_vec();
    members.sort();
    members.dedup();
    Conversation {
        id: ConversationId::new_v7(),
        project_id: project,
        subject: Some("Help with billing".into()),
        status: ConversationStatus::Open,
        members,
        metadata: json!({"source": "widget"}),
        created_at: t,
        updated_at: t,
        last_message_id: None,
        assignee: None,
    }
}

pub(crate) async fn new_conversation(
    store: &TestStore,
    project: ProjectId,
    members: &[EndUserId],
) -> Conversation {
    let c = conversation_value(project, members);
    store
        .create_conversation(&c)
        .await
        .expect("create conversation");
    c
}

fn agent(id: &str) -> Actor {
    Actor {
        kind: ActorKind::Agent,
        id: id.to_owned(),
        name: Some("Agent Smith".into()),
    }
}

fn new_message(c: &Conversation, text: &str, client_msg_id: Option<&str>) -> NewMessage {
    NewMessage {
        project_id: c.project_id,
        conversation_id: c.id,
        sender: agent("agent-1"),
        text: text.to_owned(),
        metadata: json!({"n": text}),
        client_msg_id: client_msg_id.map(str::to_owned),
    }
}

fn api_key_value(
    project: ProjectId,
    name: &str,
    created_at: chrono::DateTime<chrono::Utc>,
) -> ApiKeyRecord {
    let mut secret_hash = [0u8; 32];
    secret_hash.copy_from_slice(&Uuid::new_v4().as_bytes().repeat(2));
    ApiKeyRecord {
        id: ApiKeyId::new_v7(),
        project_id: project,
        name: name.to_owned(),
        kind: KeyKind::Secret,
        prefix: "sk_live_AbC1".into(),
        scopes: [Scope::Read, Scope::Write].into(),
        secret_hash,
        last_used_at: None,
        expires_at: Some(created_at + Duration::days(30)),
        revoked_at: None,
        created_at,
    }
}

fn ids<T, I: Copy>(items: &[T], id: impl Fn(&T) -> I) -> Vec<I> {
    items.iter().map(id).collect()
}

// ---------------------------------------------------------------------------------------------
// Admin users
// ---------------------------------------------------------------------------------------------

/// Create, look up (email case-insensitively), count, and reject duplicate emails.
pub async fn admin_users(store: &TestStore) {
    let before = store.count_admin_users().await.expect("count");
    let local = unique("Admin");
    let email = format!("{local}@Example.COM");
    let admin = admin_user_value(&email);
    store.create_admin_user(&admin).await.expect("create admin");

    let by_id = store.admin_user(admin.id).await.expect("by id");
    assert_eq!(
        by_id.as_ref(),
        Some(&admin),
        "admin user reads back as created"
    );
    let by_email = store
        .admin_user_by_email(&email.to_lowercase())
        .await
        .expect("by email");
    assert_eq!(
        by_email.map(|a| a.id),
        Some(admin.id),
        "email lookup ignores case"
    );
    let by_upper = store
        .admin_user_by_email(&email.to_uppercase())
        .await
        .expect("by email");
    assert_eq!(
        by_upper.map(|a| a.id),
        Some(admin.id),
        "email lookup ignores case"
    );

    let dup = admin_user_value(&email.to_lowercase());
    let err = store.create_admin_user(&dup).await;
    assert!(
        matches!(err, Err(StoreError::Conflict(_))),
        "same email in another case must conflict, got {err:?}"
    );
    assert_eq!(
        store.admin_user(dup.id).await.expect("by id"),
        None,
        "rejected admin not stored"
    );

    let other = admin_user_value(&format!("{}@example.com", unique("admin")));
    store.create_admin_user(&other).await.expect("second admin");
    let after = store.count_admin_users().await.expect("count");
    assert!(
        after >= before + 2,
        "count grows with each admin: {before} -> {after}"
    );

    assert_eq!(
        store
            .admin_user(AdminUserId::new_v7())
            .await
            .expect("lookup"),
        None
    );
    assert_eq!(
        store
            .admin_user_by_email(&format!("{}@example.com", unique("nobody")))
            .await
            .expect("lookup"),
        None
    );
}

// ---------------------------------------------------------------------------------------------
// Projects
// ---------------------------------------------------------------------------------------------

/// Create, get, list by owner with paging, update, and duplicate ids.
pub async fn projects(store: &TestStore) {
    let owner = admin_user_value(&format!("{}@example.com", unique("owner")));
    store.create_admin_user(&owner).await.expect("admin");
    let mut created = Vec::new();
    for i in 0..5 {
        let p = project_value(owner.id, &format!("project {i}"));
        store.create_project(&p).await.expect("create project");
        created.push(p);
    }
    let got = store.project(created[0].id).await.expect("get");
    assert_eq!(
        got.as_ref(),
        Some(&created[0]),
        "project reads back as created"
    );
    assert!(
        matches!(
            store.create_project(&created[0]).await,
            Err(StoreError::Conflict(_))
        ),
        "a duplicate project id conflicts"
    );

    // Newest first, two per page: 2, 2, 1.
    let mut expected: Vec<ProjectId> = ids(&created, |p| p.id);
    expected.sort_by(|a, b| b.cmp(a));
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = store
            .list_projects(Some(owner.id), cursor, 2)
            .await
            .expect("list");
        pages += 1;
        assert!(page.items.len() <= 2, "page larger than limit");
        assert!(
            page.items.iter().all(|p| p.owner_id == owner.id),
            "only the owner's projects"
        );
        seen.extend(ids(&page.items, |p| p.id));
        cursor = page.items.last().map(|p| p.id);
        if !page.has_more {
            break;
        }
        assert!(pages < 10, "paging does not terminate");
    }
    assert_eq!(pages, 3, "5 projects at 2 per page is 3 pages");
    assert_eq!(seen, expected, "projects listed newest first, each once");

    // Listing every project includes this owner's.
    let mut all = HashSet::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_projects(None, cursor, 1000)
            .await
            .expect("list all");
        all.extend(ids(&page.items, |p| p.id));
        cursor = page.items.last().map(|p| p.id);
        if !page.has_more {
            break;
        }
    }
    assert!(
        expected.iter().all(|id| all.contains(id)),
        "unfiltered listing has every project"
    );

    let before = created[1].clone();
    let patch = ProjectPatch {
        name: Some("Renamed".into()),
        plan: Some(PlanId::parse("pro").unwrap()),
        status: None,
        settings: Some(json!({"theme": "dark"})),
    };
    let updated = store
        .update_project(before.id, &patch)
        .await
        .expect("update")
        .expect("project exists");
    assert_eq!(updated.name, "Renamed");
    assert_eq!(updated.plan, PlanId::parse("pro").unwrap());
    assert_eq!(updated.status, before.status, "unpatched field unchanged");
    assert_eq!(updated.settings, json!({"theme": "dark"}));
    assert_eq!(updated.created_at, before.created_at);
    assert!(
        updated.updated_at >= before.updated_at,
        "updated_at moves forward"
    );
    assert_eq!(
        store.project(before.id).await.expect("get"),
        Some(updated),
        "update is persisted"
    );
    assert_eq!(
        store
            .update_project(ProjectId::new_v7(), &patch)
            .await
            .expect("update unknown"),
        None
    );
}

/// Deleting a project removes everything in it, and nothing of other projects.
pub async fn project_delete_cascades(store: &TestStore) {
    let doomed = new_project(store).await;
    let survivor = new_project(store).await;
    let mut rows = Vec::new();
    for p in [&doomed, &survivor] {
        let user = new_end_user(store, p.id).await;
        let conv = new_conversation(store, p.id, &[user.id]).await;
        let msg = store
            .append_message(&new_message(&conv, "hello", Some(&unique("c"))))
            .await
            .expect("append")
            .message;
        store
            .mark_read(
                p.id,
                conv.id,
                &Actor::end_user(user.id, None),
                msg.id,
                model::now(),
            )
            .await
            .expect("mark read");
        let key = api_key_value(p.id, "k", model::now());
        store.create_api_key(&key).await.expect("key");
        rows.push((p.id, user, conv, msg, key));
    }

    assert!(
        store.delete_project(doomed.id).await.expect("delete"),
        "existing project deleted"
    );
    assert!(
        !store.delete_project(doomed.id).await.expect("delete again"),
        "second delete is false"
    );

    let (pid, user, conv, msg, key) = &rows[0];
    assert_eq!(
        store.project(*pid).await.expect("get"),
        None,
        "project gone"
    );
    assert_eq!(
        store.end_user(*pid, user.id).await.expect("user"),
        None,
        "end users gone"
    );
    assert_eq!(
        store.conversation(*pid, conv.id).await.expect("conv"),
        None,
        "conversations gone"
    );
    assert_eq!(
        store.message(*pid, conv.id, msg.id).await.expect("msg"),
        None,
        "messages gone"
    );
    let page = store
        .list_messages(*pid, conv.id, MessageRange::Latest, 100)
        .await
        .expect("list");
    assert!(page.items.is_empty() && !page.has_more, "messages gone");
    assert_eq!(store.api_key(key.id).await.expect("key"), None, "keys gone");
    assert!(
        store.list_api_keys(*pid).await.expect("keys").is_empty(),
        "keys gone"
    );
    assert!(
        store
            .read_states(*pid, conv.id)
            .await
            .expect("reads")
            .is_empty(),
        "read states gone"
    );
    let convs = store
        .list_conversations(
            *pid,
            &ConversationQuery {
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .expect("list");
    assert!(convs.items.is_empty(), "conversation listing empty");
    // The other project kept everything.
    let (pid, user, conv, msg, key) = &rows[1];
    assert!(
        store.project(*pid).await.expect("get").is_some(),
        "other project kept"
    );
    assert!(
        store.end_user(*pid, user.id).await.expect("user").is_some(),
        "other users kept"
    );
    assert!(
        store
            .conversation(*pid, conv.id)
            .await
            .expect("conv")
            .is_some()
    );
    assert!(
        store
            .message(*pid, conv.id, msg.id)
            .await
            .expect("msg")
            .is_some()
    );
    assert!(store.api_key(key.id).await.expect("key").is_some());
    assert_eq!(
        store.read_states(*pid, conv.id).await.expect("reads").len(),
        1
    );
}

// ---------------------------------------------------------------------------------------------
// API keys
// ---------------------------------------------------------------------------------------------

/// Create, get, list newest first, revoke (idempotent), touch.
pub async fn api_keys(store: &TestStore) {
    let project = new_project(store).await;
    let t0 = model::now();
    let older = api_key_value(project.id, "older", t0 - Duration::seconds(10));
    let newer = api_key_value(project.id, "newer", t0);
    store.create_api_key(&older).await.expect("create");
    store.create_api_key(&newer).await.expect("create");
    assert!(
        matches!(
            store.create_api_key(&older).await,
            Err(StoreError::Conflict(_))
        ),
        "a duplicate key id conflicts"
    );

    assert_eq!(
        store.api_key(older.id).await.expect("get"),
        Some(older.clone()),
        "key reads back"
    );
    let listed = store.list_api_keys(project.id).await.expect("list");
    assert_eq!(
        ids(&listed, |k| k.id),
        vec![newer.id, older.id],
        "keys newest first"
    );

    let revoked_at = t0 + Duration::seconds(1);
    let revoked = store
        .revoke_api_key(older.id, revoked_at)
        .await
        .expect("revoke")
        .expect("key exists");
    assert_eq!(revoked.revoked_at, Some(revoked_at));
    assert!(!revoked.is_usable_at(revoked_at));
    let again = store
        .revoke_api_key(older.id, revoked_at + Duration::seconds(60))
        .await
        .expect("revoke again")
        .expect("key exists");
    assert_eq!(
        again.revoked_at,
        Some(revoked_at),
        "revocation keeps the first time"
    );
    let listed = store.list_api_keys(project.id).await.expect("list");
    assert_eq!(listed.len(), 2, "revoked keys are still listed");
    assert_eq!(
        store
            .revoke_api_key(ApiKeyId::new_v7(), revoked_at)
            .await
            .expect("revoke unknown"),
        None
    );

    let used_at = t0 + Duration::seconds(5);
    store.touch_api_key(newer.id, used_at).await.expect("touch");
    let touched = store.api_key(newer.id).await.expect("get").expect("exists");
    assert_eq!(
        touched.last_used_at,
        Some(used_at),
        "touch records last use"
    );
    assert_eq!(touched.revoked_at, None, "touch changes nothing else");
    store
        .touch_api_key(ApiKeyId::new_v7(), used_at)
        .await
        .expect("touching an unknown key is not an error");
}

// ---------------------------------------------------------------------------------------------
// End users
// ---------------------------------------------------------------------------------------------

/// Identify-or-create, profile update on identify, anonymous users, update.
pub async fn end_users(store: &TestStore) {
    let project = new_project(store).await;
    let identifier = unique("ext");
    let (first, created) = store
        .upsert_end_user(project.id, &identified(&identifier))
        .await
        .expect("identify");
    assert!(created, "first identify creates");
    assert_eq!(first.user_identifier.as_deref(), Some(identifier.as_str()));
    assert!(!first.is_anonymous);
    assert_eq!(first.name.as_deref(), Some("Ada"));
    assert_eq!(first.metadata, json!({"plan": "gold"}));
    assert_eq!(
        store.end_user(project.id, first.id).await.expect("get"),
        Some(first.clone())
    );

    let (same, created) = store
        .upsert_end_user(project.id, &identified(&identifier))
        .await
        .expect("identify again");
    assert!(!created, "second identify finds");
    assert_eq!(same.id, first.id, "same identifier, same user");

    // Identify with a changed profile: given fields change, missing ones stay.
    let change = NewEndUser {
        user_identifier: Some(identifier.clone()),
        name: Some("Ada Lovelace".into()),
        email: None,
        avatar: Some("https://cdn.example/ada.png".into()),
        metadata: model::empty_object(),
    };
    let (changed, created) = store
        .upsert_end_user(project.id, &change)
        .await
        .expect("identify");
    assert!(!created);
    assert_eq!(changed.id, first.id);
    assert_eq!(
        changed.name.as_deref(),
        Some("Ada Lovelace"),
        "name updated on identify"
    );
    assert_eq!(
        changed.avatar.as_deref(),
        Some("https://cdn.example/ada.png")
    );
    assert_eq!(
        changed.email.as_deref(),
        Some("ada@example.com"),
        "absent email kept"
    );
    assert_eq!(
        changed.metadata,
        json!({"plan": "gold"}),
        "empty metadata keeps the old one"
    );
    assert_eq!(
        store.end_user(project.id, first.id).await.expect("get"),
        Some(changed.clone()),
        "identify update persisted"
    );
    let with_meta = NewEndUser {
        metadata: json!({"plan": "platinum"}),
        ..change.clone()
    };
    let (meta, _) = store
        .upsert_end_user(project.id, &with_meta)
        .await
        .expect("identify");
    assert_eq!(
        meta.metadata,
        json!({"plan": "platinum"}),
        "metadata replaced on identify"
    );

    // Anonymous users are always new.
    let (a1, c1) = store
        .upsert_end_user(project.id, &anonymous())
        .await
        .expect("anon");
    let (a2, c2) = store
        .upsert_end_user(project.id, &anonymous())
        .await
        .expect("anon");
    assert!(c1 && c2, "anonymous users are always created");
    assert_ne!(a1.id, a2.id, "two anonymous users are two users");
    assert!(a1.is_anonymous && a1.user_identifier.is_none());
    assert_eq!(a1.metadata, json!({}));

    // Update.
    let seen = model::now();
    let patch = EndUserPatch {
        name: Some(Some("Visitor 42".into())),
        email: Some(None),
        avatar: None,
        metadata: Some(json!({"vip": true})),
        last_seen_at: Some(seen),
    };
    let updated = store
        .update_end_user(project.id, meta.id, &patch)
        .await
        .expect("update")
        .expect("exists");
    assert_eq!(updated.name.as_deref(), Some("Visitor 42"));
    assert_eq!(updated.email, None, "Some(None) clears a field");
    assert_eq!(updated.avatar, meta.avatar, "None leaves a field");
    assert_eq!(updated.metadata, json!({"vip": true}));
    assert_eq!(updated.last_seen_at, Some(seen));
    assert_eq!(updated.user_identifier, meta.user_identifier);
    assert!(updated.updated_at >= meta.updated_at);
    assert_eq!(
        store.end_user(project.id, meta.id).await.expect("get"),
        Some(updated)
    );
    assert_eq!(
        store
            .update_end_user(project.id, EndUserId::new_v7(), &patch)
            .await
            .expect("update"),
        None
    );
    assert!(
        !store
            .delete_end_user(project.id, EndUserId::new_v7())
            .await
            .expect("delete unknown")
    );
}

/// Twenty concurrent identifications with one identifier yield exactly one user.
pub async fn end_users_concurrent_identify(store: &TestStore) {
    let project = new_project(store).await;
    let identifier = unique("race");
    let mut tasks = JoinSet::new();
    for _ in 0..20 {
        let store = store.clone();
        let user = identified(&identifier);
        let pid = project.id;
        tasks.spawn(async move { store.upsert_end_user(pid, &user).await });
    }
    let mut users = HashSet::new();
    let mut creations = 0;
    while let Some(joined) = tasks.join_next().await {
        let (user, created) = joined.expect("task").expect("identify");
        users.insert(user.id);
        creations += usize::from(created);
    }
    assert_eq!(users.len(), 1, "one identifier, one user: {users:?}");
    assert_eq!(creations, 1, "exactly one call created the user");
}

/// Deleting an end user removes it, its memberships and read markers; its messages stay.
pub async fn end_user_delete_keeps_messages(store: &TestStore) {
    let project = new_project(store).await;
    let leaving = new_end_user(store, project.id).await;
    let staying = new_end_user(store, project.id).await;
    let conv = new_conversation(store, project.id, &[leaving.id, staying.id]).await;
    let mut m = new_message(&conv, "bye", None);
    m.sender = Actor::end_user(leaving.id, leaving.name.clone());
    let sent = store.append_message(&m).await.expect("append").message;
    let leaving_actor = Actor::end_user(leaving.id, None);
    store
        .mark_read(project.id, conv.id, &leaving_actor, sent.id, model::now())
        .await
        .expect("read");
    store
        .mark_read(
            project.id,
            conv.id,
            &agent("agent-1"),
            sent.id,
            model::now(),
        )
        .await
        .expect("read");

    assert!(
        store
            .delete_end_user(project.id, leaving.id)
            .await
            .expect("delete")
    );
    assert!(
        !store
            .delete_end_user(project.id, leaving.id)
            .await
            .expect("delete again")
    );
    assert_eq!(
        store.end_user(project.id, leaving.id).await.expect("get"),
        None,
        "user gone"
    );
    let c = store
        .conversation(project.id, conv.id)
        .await
        .expect("get")
        .expect("conversation stays");
    assert_eq!(
        c.members,
        vec![staying.id],
        "membership removed, other members kept"
    );
    let listed = store
        .list_conversations(
            project.id,
            &ConversationQuery {
                member: Some(leaving.id),
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .expect("list");
    assert!(
        listed.items.is_empty(),
        "deleted user is a member of nothing"
    );
    let reads = store.read_states(project.id, conv.id).await.expect("reads");
    assert_eq!(
        reads
            .iter()
            .map(|r| r.reader.member_key())
            .collect::<Vec<_>>(),
        vec![agent("agent-1").member_key()],
        "the user's read marker is removed, others kept"
    );
    assert_eq!(
        store
            .message(project.id, conv.id, sent.id)
            .await
            .expect("get"),
        Some(sent),
        "messages of a deleted user stay"
    );
}

// ---------------------------------------------------------------------------------------------
// Conversations
// ---------------------------------------------------------------------------------------------

/// Create with members, reject foreign members, get, update.
pub async fn conversations(store: &TestStore) {
    let project = new_project(store).await;
    let other = new_project(store).await;
    let u1 = new_end_user(store, project.id).await;
    let u2 = new_end_user(store, project.id).await;
    let outsider = new_end_user(store, other.id).await;

    let conv = new_conversation(store, project.id, &[u2.id, u1.id]).await;
    assert_eq!(
        store.conversation(project.id, conv.id).await.expect("get"),
        Some(conv.clone()),
        "conversation reads back with its members in id order"
    );
    assert!(
        matches!(
            store.create_conversation(&conv).await,
            Err(StoreError::Conflict(_))
        ),
        "a duplicate conversation id conflicts"
    );

    let foreign = conversation_value(project.id, &[u1.id, outsider.id]);
    let err = store.create_conversation(&foreign).await;
    assert!(
        matches!(err, Err(StoreError::NotFound("end user"))),
        "a member from another project is not found, got {err:?}"
    );
    assert_eq!(
        store
            .conversation(project.id, foreign.id)
            .await
            .expect("get"),
        None,
        "a rejected conversation is not half-created"
    );
    let ghost = conversation_value(project.id, &[EndUserId::new_v7()]);
    assert!(matches!(
        store.create_conversation(&ghost).await,
        Err(StoreError::NotFound("end user"))
    ));

    let u3 = new_end_user(store, project.id).await;
    let patch = ConversationPatch {
        subject: Some(Some("Refund".into())),
        status: Some(ConversationStatus::Closed),
        metadata: None,
        assignee: None,
        add_members: vec![u3.id, u1.id],
    };
    let updated = store
        .update_conversation(project.id, conv.id, &patch)
        .await
        .expect("update")
        .expect("exists");
    let mut members = vec![u1.id, u2.id, u3.id];
    members.sort();
    assert_eq!(updated.subject.as_deref(), Some("Refund"));
    assert_eq!(updated.status, ConversationStatus::Closed);
    assert_eq!(updated.metadata, conv.metadata, "unpatched field unchanged");
    assert_eq!(
        updated.members, members,
        "new member added, existing one not duplicated"
    );
    assert!(updated.updated_at >= conv.updated_at);
    assert_eq!(
        store.conversation(project.id, conv.id).await.expect("get"),
        Some(updated.clone())
    );
    // An added member finds the conversation by membership (the widget's carry-over of a
    // visitor's conversation to the user it identified as relies on it).
    let of_u3 = store
        .list_conversations(
            project.id,
            &ConversationQuery {
                member: Some(u3.id),
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .expect("list by the added member");
    assert_eq!(
        of_u3.items.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![conv.id],
        "listed for the member it gained"
    );

    let clear = ConversationPatch {
        subject: Some(None),
        ..Default::default()
    };
    let cleared = store
        .update_conversation(project.id, conv.id, &clear)
        .await
        .expect("update")
        .expect("exists");
    assert_eq!(cleared.subject, None, "subject cleared");
    assert_eq!(cleared.status, ConversationStatus::Closed, "status kept");

    let bad = ConversationPatch {
        add_members: vec![outsider.id],
        ..Default::default()
    };
    assert!(
        matches!(
            store.update_conversation(project.id, conv.id, &bad).await,
            Err(StoreError::NotFound("end user"))
        ),
        "adding a member of another project is rejected"
    );
    let after = store
        .conversation(project.id, conv.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(after.members, members, "a rejected update changes nothing");
    assert_eq!(
        store
            .update_conversation(project.id, ConversationId::new_v7(), &patch)
            .await
            .expect("update unknown"),
        None
    );
}

/// Newest-first listing with cursor paging, status and member filters.
/// Assigning a conversation to an agent: set, change, clear; read back; the assignee filter
/// (alone, with status, with member, paged) follows every change; other projects see nothing.
pub async fn conversations_assignee(store: &TestStore) {
    let project = new_project(store).await;
    let alice = new_end_user(store, project.id).await;
    let mut convs = Vec::new();
    for i in 0..6 {
        let members = if i % 2 == 0 { vec![alice.id] } else { vec![] };
        convs.push(new_conversation(store, project.id, &members).await);
    }
    assert_eq!(convs[0].assignee, None, "a new conversation is unassigned");
    let assign = |a: Option<&str>| ConversationPatch {
        assignee: Some(a.map(str::to_owned)),
        ..Default::default()
    };
    let list = |query: ConversationQuery| {
        let store = store.clone();
        async move {
            let mut out = Vec::new();
            let mut query = ConversationQuery { limit: 2, ..query };
            loop {
                let page = store
                    .list_conversations(project.id, &query)
                    .await
                    .expect("list");
                out.extend(page.items.iter().map(|c| (c.id, c.assignee.clone())));
                query.cursor = page.items.last().map(|c| c.id);
                if !page.has_more || out.len() > 20 {
                    return out;
                }
            }
        }
    };
    let by = |a: &str| ConversationQuery {
        assignee: Some(AssigneeFilter::Agent(a.into())),
        ..Default::default()
    };
    let unassigned = || ConversationQuery {
        assignee: Some(AssigneeFilter::Unassigned),
        ..Default::default()
    };
    let newest_first = |idx: &[usize], a: Option<&str>| {
        let mut v: Vec<(ConversationId, Option<String>)> = idx
            .iter()
            .map(|i| (convs[*i].id, a.map(str::to_owned)))
            .collect();
        v.sort_by_key(|x| std::cmp::Reverse(x.0));
        v
    };

    // Set.
    let set = store
        .update_conversation(project.id, convs[0].id, &assign(Some("ana@acme")))
        .await
        .expect("assign")
        .expect("exists");
    assert_eq!(set.assignee.as_deref(), Some("ana@acme"));
    assert_eq!(set.subject, convs[0].subject, "other fields unchanged");
    assert_eq!(
        store
            .conversation(project.id, convs[0].id)
            .await
            .expect("get"),
        Some(set.clone()),
        "read back"
    );
    for i in [1, 2, 3] {
        store
            .update_conversation(project.id, convs[i].id, &assign(Some("ana@acme")))
            .await
            .expect("assign")
            .expect("exists");
    }
    store
        .update_conversation(project.id, convs[4].id, &assign(Some("bo")))
        .await
        .expect("assign")
        .expect("exists");
    assert_eq!(
        list(by("ana@acme")).await,
        newest_first(&[0, 1, 2, 3], Some("ana@acme")),
        "assignee filter, newest first, paged by 2"
    );
    assert_eq!(list(by("bo")).await, newest_first(&[4], Some("bo")));
    assert_eq!(list(unassigned()).await, newest_first(&[5], None));
    assert_eq!(list(by("nobody")).await, vec![]);

    // A patch without the assignee leaves it; a status change keeps the filter right.
    let closed = store
        .update_conversation(
            project.id,
            convs[2].id,
            &ConversationPatch {
                status: Some(ConversationStatus::Closed),
                ..Default::default()
            },
        )
        .await
        .expect("close")
        .expect("exists");
    assert_eq!(closed.assignee.as_deref(), Some("ana@acme"), "unchanged");
    let ana_with = |status| ConversationQuery {
        status: Some(status),
        ..by("ana@acme")
    };
    assert_eq!(
        list(ana_with(ConversationStatus::Closed)).await,
        newest_first(&[2], Some("ana@acme")),
        "assignee and status"
    );
    assert_eq!(
        list(ana_with(ConversationStatus::Open)).await,
        newest_first(&[0, 1, 3], Some("ana@acme"))
    );

    // Change and clear.
    let changed = store
        .update_conversation(project.id, convs[1].id, &assign(Some("bo")))
        .await
        .expect("reassign")
        .expect("exists");
    assert_eq!(changed.assignee.as_deref(), Some("bo"));
    let cleared = store
        .update_conversation(project.id, convs[2].id, &assign(None))
        .await
        .expect("unassign")
        .expect("exists");
    assert_eq!(cleared.assignee, None);
    assert_eq!(cleared.status, ConversationStatus::Closed, "status kept");
    assert_eq!(
        store
            .conversation(project.id, convs[2].id)
            .await
            .expect("get")
            .expect("exists")
            .assignee,
        None,
        "cleared for good"
    );
    assert_eq!(
        list(by("ana@acme")).await,
        newest_first(&[0, 3], Some("ana@acme")),
        "moved away from the old assignee"
    );
    assert_eq!(list(by("bo")).await, newest_first(&[1, 4], Some("bo")));
    assert_eq!(list(unassigned()).await, newest_first(&[2, 5], None));
    assert_eq!(
        list(ConversationQuery {
            status: Some(ConversationStatus::Closed),
            ..unassigned()
        })
        .await,
        newest_first(&[2], None),
        "unassigned and closed"
    );

    // With a member: Alice is in 0, 2, 4.
    let alices = |a: ConversationQuery| ConversationQuery {
        member: Some(alice.id),
        ..a
    };
    assert_eq!(
        list(alices(by("ana@acme"))).await,
        newest_first(&[0], Some("ana@acme"))
    );
    assert_eq!(list(alices(by("bo"))).await, newest_first(&[4], Some("bo")));
    assert_eq!(list(alices(unassigned())).await, newest_first(&[2], None));

    // The whole listing shows every assignee.
    let all = list(ConversationQuery::default()).await;
    assert_eq!(all.len(), 6);
    assert!(all.contains(&(convs[4].id, Some("bo".into()))));

    // Tenant isolation: another project can neither assign nor find these.
    let other = new_project(store).await;
    assert_eq!(
        store
            .update_conversation(other.id, convs[5].id, &assign(Some("mallory")))
            .await
            .expect("update"),
        None,
        "another project's conversation is unknown"
    );
    assert_eq!(
        store
            .conversation(project.id, convs[5].id)
            .await
            .expect("get")
            .expect("exists")
            .assignee,
        None,
        "untouched"
    );
    for q in [by("ana@acme"), by("mallory"), unassigned()] {
        let page = store
            .list_conversations(other.id, &ConversationQuery { limit: 100, ..q })
            .await
            .expect("list");
        assert!(page.items.is_empty(), "another project lists none of them");
    }
}

fn creation_key(caller: &str, key: &str) -> CreationKey {
    CreationKey {
        caller: caller.to_owned(),
        key: key.to_owned(),
    }
}

/// Conversations created with an idempotency key: the same key from the same caller in the
/// same project returns the first conversation (`false`), however often and whatever the
/// request asks for, and counts once; another caller, or another project, with the same key
/// creates its own; a refused creation (unknown member) leaves the key unused.
pub async fn conversations_idempotency_key(store: &TestStore) {
    let project = new_project(store).await;
    let other = new_project(store).await;
    let u1 = new_end_user(store, project.id).await;
    let stranger = new_end_user(store, other.id).await;

    let key = creation_key("key:A", "create-1");
    let first = conversation_value(project.id, &[u1.id]);
    let (stored, created) = store
        .create_conversation_keyed(&first, &key)
        .await
        .expect("create");
    assert!(created);
    assert_eq!(stored, first);
    assert_eq!(
        store.conversation(project.id, first.id).await.expect("get"),
        Some(first.clone())
    );
    for _ in 0..2 {
        let again = Conversation {
            subject: Some("a different request".into()),
            ..conversation_value(project.id, &[])
        };
        let (got, created) = store
            .create_conversation_keyed(&again, &key)
            .await
            .expect("again");
        assert_eq!((got, created), (first.clone(), false), "the original");
        assert_eq!(
            store.conversation(project.id, again.id).await.expect("get"),
            None,
            "the repeat created nothing"
        );
    }
    // Another caller with the same key: its own conversation.
    let theirs = conversation_value(project.id, &[]);
    let (got, created) = store
        .create_conversation_keyed(&theirs, &creation_key("user:B", "create-1"))
        .await
        .expect("other caller");
    assert!(created);
    assert_eq!(got.id, theirs.id);
    // Another project with the same caller name and key: its own conversation.
    let elsewhere = conversation_value(other.id, &[stranger.id]);
    let (got, created) = store
        .create_conversation_keyed(&elsewhere, &key)
        .await
        .expect("other project");
    assert!(created);
    assert_eq!(got.id, elsewhere.id);
    // Refused (a member of another project): nothing created, the key stays free.
    let refused_key = creation_key("key:A", "create-2");
    let bad = conversation_value(project.id, &[stranger.id]);
    let err = store.create_conversation_keyed(&bad, &refused_key).await;
    assert!(
        matches!(err, Err(StoreError::NotFound("end user"))),
        "{err:?}"
    );
    let good = conversation_value(project.id, &[u1.id]);
    let (got, created) = store
        .create_conversation_keyed(&good, &refused_key)
        .await
        .expect("after the refusal");
    assert!(created);
    assert_eq!(got.id, good.id);

    let listed = store
        .list_conversations(
            project.id,
            &ConversationQuery {
                limit: 100,
                ..ConversationQuery::default()
            },
        )
        .await
        .expect("list");
    assert_eq!(
        ids(&listed.items, |c| c.id),
        vec![good.id, theirs.id, first.id],
        "three conversations, newest first"
    );
    let used = store.usage(project.id, this_month()).await.expect("usage");
    assert_eq!(used.conversations, 3, "each counted once");
    let used = store.usage(other.id, this_month()).await.expect("usage");
    assert_eq!(used.conversations, 1);
}

/// Data for the search backfill tests of both backends: what [`search_backfill_data`]
/// stored, to find again with [`search_backfill_check`] once the backfill has run.
pub struct SearchBackfillData {
    pub project: ProjectId,
    pub other: ProjectId,
    /// Subject "Invoice question", a member "Zoë Ann" (`Z.Ann@Example.com`, `crm-4711`), two
    /// messages ("Where is my parcel?", "tracking number 55").
    pub first: ConversationId,
    /// No subject, a member "Bob Stone", [`SEARCH_BACKFILL_MESSAGES`] messages "note <i>"
    /// (more than one backfill batch of messages).
    pub second: ConversationId,
    /// Conversations of `other` (a tenant that must never show up in `project`'s results).
    pub theirs: ConversationId,
}

/// Messages of [`SearchBackfillData::second`].
pub const SEARCH_BACKFILL_MESSAGES: usize = 320;

/// An identified end user with a name and an email: what the search tests look people up by.
fn profile(name: &str, email: &str, id: &str) -> NewEndUser {
    NewEndUser {
        user_identifier: Some(id.to_owned()),
        name: Some(name.to_owned()),
        email: Some(email.to_owned()),
        avatar: None,
        metadata: model::empty_object(),
    }
}

/// Stores the backfill tests' data (see [`SearchBackfillData`]). The caller then removes its
/// index rows, as a store from before the search index would have none.
pub async fn search_backfill_data(store: &TestStore) -> SearchBackfillData {
    let project = new_project(store).await;
    let other = new_project(store).await;
    let (zoe, _) = store
        .upsert_end_user(
            project.id,
            &profile("Zoë Ann", "Z.Ann@Example.com", "crm-4711"),
        )
        .await
        .expect("zoe");
    let (bob, _) = store
        .upsert_end_user(
            project.id,
            &profile("Bob Stone", "bob@example.org", "crm-9"),
        )
        .await
        .expect("bob");
    let (twin, _) = store
        .upsert_end_user(
            other.id,
            &profile("Zoë Ann", "zoe@other.example", "crm-4711"),
        )
        .await
        .expect("twin");
    let first = Conversation {
        subject: Some("Invoice question".into()),
        ..conversation_value(project.id, &[zoe.id])
    };
    store.create_conversation(&first).await.expect("first");
    for text in ["Where is my parcel?", "tracking number 55"] {
        store
            .append_message(&new_message(&first, text, None))
            .await
            .expect("append");
    }
    let second = conversation_value(project.id, &[bob.id]);
    store.create_conversation(&second).await.expect("second");
    for i in 0..SEARCH_BACKFILL_MESSAGES {
        store
            .append_message(&new_message(&second, &format!("note {i}"), None))
            .await
            .expect("append");
    }
    let theirs = Conversation {
        subject: Some("Invoice question".into()),
        ..conversation_value(other.id, &[twin.id])
    };
    store.create_conversation(&theirs).await.expect("theirs");
    store
        .append_message(&new_message(&theirs, "Where is my parcel?", None))
        .await
        .expect("append");
    SearchBackfillData {
        project: project.id,
        other: other.id,
        first: first.id,
        second: second.id,
        theirs: theirs.id,
    }
}

/// `true` when `q` finds nothing in the data's project (what the tests check before the
/// backfill, to know the index rows are really gone).
pub async fn search_backfill_missing(store: &TestStore, data: &SearchBackfillData) -> bool {
    let mut none = true;
    for q in ["parcel", "invoice", "zoë", "stone", "note 7"] {
        none &= search_all(store, data.project, q, ConversationQuery::default())
            .await
            .is_empty();
    }
    none
}

/// After the backfill: the old conversations are found by their messages' words (the first
/// and the last message of a long conversation), subject, and members' name, email and
/// external id (whole words and prefixes), each tenant only in its own project.
pub async fn search_backfill_check(store: &TestStore, data: &SearchBackfillData) {
    let all = |q: &'static str, p: ProjectId| search_all(store, p, q, ConversationQuery::default());
    let last = format!("note {}", SEARCH_BACKFILL_MESSAGES - 1);
    let cases: Vec<(String, Vec<ConversationId>)> = vec![
        ("parcel".into(), vec![data.first]),
        ("tracking 55".into(), vec![data.first]),
        ("invoice quest".into(), vec![data.first]),
        ("Zoë".into(), vec![data.first]),
        ("z.ann@example.com".into(), vec![data.first]),
        // Accents folded (the name is the only field with the word).
        ("zoe".into(), vec![data.first]),
        ("ZOË ann".into(), vec![data.first]),
        ("crm 4711".into(), vec![data.first]),
        ("crm 471".into(), vec![data.first]),
        ("stone".into(), vec![data.second]),
        ("bo".into(), vec![data.second]),
        ("note 0".into(), vec![data.second]),
        (last, vec![data.second]),
        ("crm".into(), vec![data.second, data.first]),
    ];
    for (q, want) in cases {
        let got = search_all(store, data.project, &q, ConversationQuery::default()).await;
        assert_eq!(got, want, "{q:?}");
    }
    assert_eq!(all("parcel", data.other).await, vec![data.theirs]);
    assert_eq!(all("stone", data.other).await, Vec::<ConversationId>::new());
}

/// Every conversation of `project` matching `q` with `filter`, walking pages of 2 (and checking
/// that `has_more` is exact and no page repeats a conversation).
async fn search_all(
    store: &TestStore,
    project: ProjectId,
    q: &str,
    filter: ConversationQuery,
) -> Vec<ConversationId> {
    let search = SearchQuery::parse(q).expect("valid query");
    let mut query = ConversationQuery { limit: 2, ..filter };
    let mut out: Vec<ConversationId> = Vec::new();
    loop {
        let page = store
            .search_conversations(project, &search, &query)
            .await
            .expect("search");
        assert!(page.items.len() <= 2, "{q}: page size");
        for c in &page.items {
            assert_eq!(
                c.project_id, project,
                "{q}: only the project's conversations"
            );
            assert!(!out.contains(&c.id), "{q}: no conversation twice");
            out.push(c.id);
        }
        if !page.has_more {
            return out;
        }
        assert_eq!(page.items.len(), 2, "{q}: has_more on a full page only");
        query.cursor = page.items.last().map(|c| c.id);
        assert!(out.len() < 100, "{q}: paging ends");
    }
}

pub async fn conversations_search(store: &TestStore) {
    let project = new_project(store).await;
    let other = new_project(store).await;
    let (zoe, _) = store
        .upsert_end_user(
            project.id,
            &profile("Zoë Lopez", "Zoe.Lopez@ACME.com", "cust-4821"),
        )
        .await
        .expect("zoe");
    let (bob, _) = store
        .upsert_end_user(
            project.id,
            &profile("Bob Stone", "bob@example.org", "cust-9"),
        )
        .await
        .expect("bob");
    let (twin, _) = store
        .upsert_end_user(
            other.id,
            &profile("Zoë Lopez", "zoe@other.example", "cust-4821"),
        )
        .await
        .expect("other tenant's user");
    let with_subject = |members: &[EndUserId], subject: Option<&str>, p: ProjectId| Conversation {
        subject: subject.map(str::to_owned),
        ..conversation_value(p, members)
    };
    let create = |c: Conversation| {
        let store = store.clone();
        async move {
            store.create_conversation(&c).await.expect("create");
            c
        }
    };
    let say = |c: &Conversation, text: &str| {
        let store = store.clone();
        let m = new_message(c, text, Some(&unique("c")));
        async move {
            store.append_message(&m).await.expect("append");
        }
    };
    let c1 = create(with_subject(
        &[zoe.id],
        Some("Invoice question"),
        project.id,
    ))
    .await;
    say(&c1, "My refund has not arrived").await;
    let c2 = create(with_subject(&[bob.id], None, project.id)).await;
    say(&c2, "Where is my PARCEL? Straße 5").await;
    let c3 = create(with_subject(&[], Some("Shipping delay"), project.id)).await;
    say(&c3, "refund requested for order 77").await;
    let mut fillers = Vec::new();
    for _ in 0..3 {
        let c = create(with_subject(&[], None, project.id)).await;
        say(&c, "Refund, please!").await;
        fillers.push(c.id);
    }
    let theirs = create(with_subject(&[twin.id], Some("Invoice question"), other.id)).await;
    say(&theirs, "my refund has not arrived").await;

    let all = |q: &'static str| search_all(store, project.id, q, ConversationQuery::default());
    // By the end user's name, email and external id (words, any case, Unicode).
    assert_eq!(all("zoë").await, [c1.id]);
    assert_eq!(all("LOPEZ").await, [c1.id]);
    assert_eq!(all("zoe.lopez@acme.com").await, [c1.id]);
    assert_eq!(all("4821").await, [c1.id]);
    assert_eq!(all("cust").await, [c2.id, c1.id], "newest first");
    // By subject, and the last word as a prefix of subject and profile words.
    assert_eq!(all("invoice").await, [c1.id]);
    assert_eq!(all("invo").await, [c1.id]);
    assert_eq!(all("refund lop").await, [c1.id]);
    assert_eq!(all("ship").await, [c3.id]);
    // By words of messages, and every word must be found.
    assert_eq!(all("parcel").await, [c2.id]);
    assert_eq!(
        all("STRASSE").await,
        Vec::<ConversationId>::new(),
        "no folding beyond case"
    );
    assert_eq!(all("straße").await, [c2.id]);
    // Accents folded the same way in texts and queries.
    say(&c2, "Gracias, José Núñez").await;
    assert_eq!(all("jose nunez").await, [c2.id]);
    assert_eq!(all("JOSÉ Núñez").await, [c2.id]);
    assert_eq!(all("zoe").await, [c1.id]);
    let mut refunds: Vec<ConversationId> = fillers.clone();
    refunds.extend([c3.id, c1.id]);
    refunds.sort_by(|a, b| b.cmp(a));
    assert_eq!(all("refund").await, refunds, "paged, newest first");
    assert_eq!(all("refund order").await, [c3.id]);
    assert_eq!(all("refund parcel").await, Vec::<ConversationId>::new());
    assert_eq!(all("nothingmatches").await, Vec::<ConversationId>::new());

    // With the listing's filters.
    store
        .update_conversation(
            project.id,
            c3.id,
            &ConversationPatch {
                status: Some(ConversationStatus::Closed),
                ..Default::default()
            },
        )
        .await
        .expect("close")
        .expect("exists");
    store
        .update_conversation(
            project.id,
            c1.id,
            &ConversationPatch {
                assignee: Some(Some("ana".into())),
                ..Default::default()
            },
        )
        .await
        .expect("assign")
        .expect("exists");
    let filtered = |q: &'static str, f: ConversationQuery| search_all(store, project.id, q, f);
    assert_eq!(
        filtered(
            "refund",
            ConversationQuery {
                status: Some(ConversationStatus::Closed),
                ..Default::default()
            }
        )
        .await,
        [c3.id]
    );
    assert_eq!(
        filtered(
            "refund",
            ConversationQuery {
                assignee: Some(AssigneeFilter::Agent("ana".into())),
                ..Default::default()
            }
        )
        .await,
        [c1.id]
    );
    assert_eq!(
        filtered(
            "cust",
            ConversationQuery {
                member: Some(bob.id),
                ..Default::default()
            }
        )
        .await,
        [c2.id]
    );
    // A cursor continues below it.
    let below = search_all(
        store,
        project.id,
        "refund",
        ConversationQuery {
            cursor: Some(refunds[1]),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(below, refunds[2..]);

    // A new subject and an added member are searchable; earlier words stay.
    store
        .update_conversation(
            project.id,
            c2.id,
            &ConversationPatch {
                subject: Some(Some("Lost package".into())),
                ..Default::default()
            },
        )
        .await
        .expect("rename")
        .expect("exists");
    assert_eq!(all("package").await, [c2.id]);
    assert_eq!(all("parcel").await, [c2.id]);
    store
        .update_conversation(
            project.id,
            c3.id,
            &ConversationPatch {
                add_members: vec![zoe.id],
                ..Default::default()
            },
        )
        .await
        .expect("add member")
        .expect("exists");
    assert_eq!(all("zoë lopez").await, [c3.id, c1.id]);

    // Another tenant's data never appears, and its own search sees only its own.
    assert_eq!(
        search_all(store, other.id, "refund", ConversationQuery::default()).await,
        [theirs.id]
    );
    assert_eq!(
        search_all(store, other.id, "shipping", ConversationQuery::default()).await,
        Vec::<ConversationId>::new()
    );
    // Deleting a project deletes its index with it.
    assert!(store.delete_project(other.id).await.expect("delete"));
    assert_eq!(
        search_all(store, other.id, "refund", ConversationQuery::default()).await,
        Vec::<ConversationId>::new()
    );
    assert_eq!(
        all("refund").await.len(),
        refunds.len(),
        "the survivor keeps its own"
    );
}

pub async fn conversations_listing(store: &TestStore) {
    let project = new_project(store).await;
    let alice = new_end_user(store, project.id).await;
    let bob = new_end_user(store, project.id).await;
    let mut convs = Vec::new();
    for i in 0..7 {
        // Alice is in every other conversation; Bob in all.
        let members = if i % 2 == 0 {
            vec![alice.id, bob.id]
        } else {
            vec![bob.id]
        };
        let mut c = conversation_value(project.id, &members);
        if i % 3 == 0 {
            c.status = ConversationStatus::Closed;
        }
        store.create_conversation(&c).await.expect("create");
        convs.push(c);
    }
    let newest_first = |filter: &dyn Fn(&Conversation) -> bool| {
        let mut v: Vec<ConversationId> = convs.iter().filter(|c| filter(c)).map(|c| c.id).collect();
        v.sort_by(|a, b| b.cmp(a));
        v
    };

    // Three pages: 3, 3, 1.
    let mut seen = Vec::new();
    let mut query = ConversationQuery {
        limit: 3,
        ..Default::default()
    };
    let mut has_more = Vec::new();
    loop {
        let page = store
            .list_conversations(project.id, &query)
            .await
            .expect("list");
        has_more.push(page.has_more);
        seen.extend(page.items.iter().map(|c| c.id));
        if let Some(first) = page.items.first() {
            let expected = convs
                .iter()
                .find(|c| c.id == first.id)
                .expect("listed one of ours");
            assert_eq!(
                first, expected,
                "listed conversations are complete, members included"
            );
        }
        query.cursor = page.items.last().map(|c| c.id);
        if !page.has_more || has_more.len() > 5 {
            break;
        }
    }
    assert_eq!(
        has_more,
        vec![true, true, false],
        "7 conversations at 3 per page"
    );
    assert_eq!(seen, newest_first(&|_| true), "newest first, each once");

    let exact = store
        .list_conversations(
            project.id,
            &ConversationQuery {
                limit: 7,
                ..Default::default()
            },
        )
        .await
        .expect("list");
    assert_eq!(exact.items.len(), 7);
    assert!(
        !exact.has_more,
        "has_more is exact when the page holds the rest"
    );

    let closed = store
        .list_conversations(
            project.id,
            &ConversationQuery {
                status: Some(ConversationStatus::Closed),
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .expect("list");
    assert_eq!(
        ids(&closed.items, |c| c.id),
        newest_first(&|c| c.status == ConversationStatus::Closed),
        "status filter"
    );

    let alices = store
        .list_conversations(
            project.id,
            &ConversationQuery {
                member: Some(alice.id),
                limit: 2,
                ..Default::default()
            },
        )
        .await
        .expect("list");
    let expected_alice = newest_first(&|c| c.members.contains(&alice.id));
    assert_eq!(
        ids(&alices.items, |c| c.id),
        expected_alice[..2].to_vec(),
        "member filter"
    );
    assert!(alices.has_more);
    let rest = store
        .list_conversations(
            project.id,
            &ConversationQuery {
                member: Some(alice.id),
                cursor: alices.items.last().map(|c| c.id),
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .expect("list");
    assert_eq!(
        ids(&rest.items, |c| c.id),
        expected_alice[2..].to_vec(),
        "member filter paging"
    );
    assert!(!rest.has_more);

    let both = store
        .list_conversations(
            project.id,
            &ConversationQuery {
                member: Some(alice.id),
                status: Some(ConversationStatus::Open),
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .expect("list");
    assert_eq!(
        ids(&both.items, |c| c.id),
        newest_first(&|c| c.members.contains(&alice.id) && c.status == ConversationStatus::Open),
        "member and status filters combine"
    );
}

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

/// Appends get increasing ids and update the conversation; unknown conversations fail.
pub async fn messages_append(store: &TestStore) {
    let project = new_project(store).await;
    let conv = new_conversation(store, project.id, &[]).await;
    let before = model::now();
    let mut prev: Option<MessageId> = None;
    let mut sent = Vec::new();
    for i in 0..5 {
        let a = store
            .append_message(&new_message(&conv, &format!("m{i}"), None))
            .await
            .expect("append");
        assert!(a.created);
        let m = a.message;
        assert_eq!(m.project_id, project.id);
        assert_eq!(m.conversation_id, conv.id);
        assert_eq!(m.text, format!("m{i}"));
        assert_eq!(m.sender, agent("agent-1"));
        assert_eq!(m.metadata, json!({"n": format!("m{i}")}));
        assert_eq!(
            m.id.as_uuid().get_version_num(),
            7,
            "message ids are UUIDv7"
        );
        assert!(m.created_at >= before, "created_at assigned by the store");
        if let Some(p) = prev {
            assert!(m.id > p, "ids increase with each append");
        }
        prev = Some(m.id);
        assert_eq!(
            store.message(project.id, conv.id, m.id).await.expect("get"),
            Some(m.clone()),
            "message reads back as returned"
        );
        let c = store
            .conversation(project.id, conv.id)
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(
            c.last_message_id,
            Some(m.id),
            "conversation points at the newest message"
        );
        sent.push(m);
    }
    let page = store
        .list_messages(project.id, conv.id, MessageRange::Latest, 100)
        .await
        .expect("list");
    assert_eq!(page.items, sent, "all messages, ascending");

    let mut lost = new_message(&conv, "nowhere", None);
    lost.conversation_id = ConversationId::new_v7();
    let err = store.append_message(&lost).await;
    assert!(
        matches!(err, Err(StoreError::NotFound("conversation"))),
        "append to an unknown conversation: {err:?}"
    );
    assert_eq!(
        store
            .message(project.id, conv.id, MessageId::MIN)
            .await
            .expect("get"),
        None
    );
}

/// `client_msg_id` makes appends idempotent per conversation.
pub async fn messages_idempotency(store: &TestStore) {
    let project = new_project(store).await;
    let conv = new_conversation(store, project.id, &[]).await;
    let other = new_conversation(store, project.id, &[]).await;
    let cid = unique("client");

    let first = store
        .append_message(&new_message(&conv, "once", Some(&cid)))
        .await
        .expect("append");
    assert!(first.created);
    let retry = store
        .append_message(&new_message(
            &conv,
            "once (retry, different text)",
            Some(&cid),
        ))
        .await
        .expect("retry");
    assert!(!retry.created, "a retry is not a new message");
    assert_eq!(
        retry.message, first.message,
        "a retry returns the original message"
    );
    let page = store
        .list_messages(project.id, conv.id, MessageRange::Latest, 100)
        .await
        .expect("list");
    assert_eq!(page.items.len(), 1, "one row for one client_msg_id");

    let elsewhere = store
        .append_message(&new_message(&other, "once", Some(&cid)))
        .await
        .expect("append");
    assert!(
        elsewhere.created,
        "the same client_msg_id in another conversation is another message"
    );
    assert_ne!(elsewhere.message.id, first.message.id);

    let later = store
        .append_message(&new_message(&conv, "later", None))
        .await
        .expect("append");
    let retry_after = store
        .append_message(&new_message(&conv, "once", Some(&cid)))
        .await
        .expect("retry");
    assert_eq!(
        retry_after.message.id, first.message.id,
        "idempotent even after newer messages"
    );
    let c = store
        .conversation(project.id, conv.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        c.last_message_id,
        Some(later.message.id),
        "a retry does not move last_message_id"
    );
}

/// Twenty concurrent appends with one `client_msg_id` store one message.
pub async fn messages_concurrent_idempotency(store: &TestStore) {
    let project = new_project(store).await;
    let conv = new_conversation(store, project.id, &[]).await;
    let cid = unique("client");
    let mut tasks = JoinSet::new();
    for i in 0..20 {
        let store = store.clone();
        let m = new_message(&conv, &format!("attempt {i}"), Some(&cid));
        tasks.spawn(async move { store.append_message(&m).await });
    }
    let mut ids = HashSet::new();
    let mut creations = 0;
    while let Some(joined) = tasks.join_next().await {
        let a = joined.expect("task").expect("append");
        ids.insert(a.message.id);
        creations += usize::from(a.created);
    }
    assert_eq!(
        ids.len(),
        1,
        "every concurrent retry returns the same message"
    );
    assert_eq!(creations, 1, "exactly one append created it");
    let page = store
        .list_messages(project.id, conv.id, MessageRange::Latest, 100)
        .await
        .expect("list");
    assert_eq!(page.items.len(), 1, "one stored row");
}

/// Latest / Before / After windows over 25 messages, with exact `has_more` and clamping.
pub async fn messages_paging(store: &TestStore) {
    let project = new_project(store).await;
    let conv = new_conversation(store, project.id, &[]).await;
    let mut m = Vec::new();
    for i in 0..25 {
        m.push(
            store
                .append_message(&new_message(&conv, &format!("{i}"), None))
                .await
                .expect("append")
                .message
                .id,
        );
    }
    let list = |range: MessageRange, limit: u32| {
        let store = store.clone();
        async move {
            let page = store
                .list_messages(project.id, conv.id, range, limit)
                .await
                .expect("list messages");
            (ids(&page.items, |x| x.id), page.has_more)
        }
    };

    assert_eq!(
        list(MessageRange::Latest, 10).await,
        (m[15..25].to_vec(), true),
        "latest 10"
    );
    assert_eq!(
        list(MessageRange::Before(m[15]), 10).await,
        (m[5..15].to_vec(), true),
        "older 10"
    );
    assert_eq!(
        list(MessageRange::Before(m[5]), 10).await,
        (m[0..5].to_vec(), false),
        "oldest 5"
    );
    assert_eq!(
        list(MessageRange::Before(m[0]), 10).await,
        (vec![], false),
        "nothing before the first"
    );
    assert_eq!(
        list(MessageRange::After(MessageId::MIN), 10).await,
        (m[0..10].to_vec(), true),
        "from start"
    );
    assert_eq!(
        list(MessageRange::After(m[4]), 10).await,
        (m[5..15].to_vec(), true),
        "resume"
    );
    assert_eq!(
        list(MessageRange::After(m[14]), 10).await,
        (m[15..25].to_vec(), false),
        "resume to end"
    );
    assert_eq!(
        list(MessageRange::After(m[24]), 10).await,
        (vec![], false),
        "nothing after the last"
    );
    assert_eq!(
        list(MessageRange::Latest, 25).await,
        (m.clone(), false),
        "exact fit has no more"
    );
    assert_eq!(
        list(MessageRange::Latest, 24).await,
        (m[1..].to_vec(), true)
    );
    assert_eq!(
        list(MessageRange::After(m[13]), 11).await,
        (m[14..25].to_vec(), false)
    );
    assert_eq!(
        list(MessageRange::Latest, 0).await,
        (m[24..].to_vec(), true),
        "limit 0 means 1"
    );
    assert_eq!(
        list(MessageRange::Latest, 5000).await,
        (m.clone(), false),
        "large limits are clamped"
    );

    let empty = new_conversation(store, project.id, &[]).await;
    let page = store
        .list_messages(project.id, empty.id, MessageRange::Latest, 10)
        .await
        .expect("list");
    assert!(
        page.items.is_empty() && !page.has_more,
        "an empty conversation lists nothing"
    );
}

/// Two hundred concurrent appends are all stored, with unique ids in one order.
pub async fn messages_concurrent_appends(store: &TestStore) {
    let project = new_project(store).await;
    let conv = new_conversation(store, project.id, &[]).await;
    let mut tasks = JoinSet::new();
    for t in 0..20 {
        let store = store.clone();
        let conv = conv.clone();
        tasks.spawn(async move {
            let mut mine = Vec::new();
            for i in 0..10 {
                let m = new_message(&conv, &format!("{t}/{i}"), Some(&format!("{t}-{i}")));
                let a = store.append_message(&m).await.expect("append");
                assert!(a.created);
                mine.push(a.message.id);
            }
            mine
        });
    }
    let mut all = BTreeSet::new();
    while let Some(joined) = tasks.join_next().await {
        let mine = joined.expect("task");
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "a sender's messages are in its order"
        );
        all.extend(mine);
    }
    assert_eq!(all.len(), 200, "200 appends, 200 distinct ids");
    let page = store
        .list_messages(project.id, conv.id, MessageRange::Latest, 1000)
        .await
        .expect("list");
    assert_eq!(
        ids(&page.items, |x| x.seq),
        (1..=200).collect::<Vec<u64>>(),
        "seq is 1..=200 in id order, without gaps"
    );
    let stored: Vec<MessageId> = ids(&page.items, |x| x.id);
    assert_eq!(
        stored,
        all.iter().copied().collect::<Vec<_>>(),
        "all stored, ascending"
    );
    let c = store
        .conversation(project.id, conv.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        c.last_message_id,
        all.last().copied(),
        "last_message_id is the newest"
    );
}

/// Every conversation numbers its messages 1, 2, 3, … in id order; a retry takes no number;
/// the number reads back everywhere a message does.
pub async fn messages_seq(store: &TestStore) {
    let project = new_project(store).await;
    let a = new_conversation(store, project.id, &[]).await;
    let b = new_conversation(store, project.id, &[]).await;
    let mut sent = Vec::new();
    for i in 0..6u64 {
        let conv = if i % 2 == 0 { &a } else { &b };
        let cid = unique("seq");
        let first = store
            .append_message(&new_message(conv, &format!("{i}"), Some(&cid)))
            .await
            .expect("append");
        assert_eq!(
            first.message.seq,
            i / 2 + 1,
            "each conversation counts on its own"
        );
        let retry = store
            .append_message(&new_message(conv, &format!("{i}"), Some(&cid)))
            .await
            .expect("retry");
        assert_eq!(retry.message.seq, first.message.seq, "a retry takes no seq");
        sent.push(first.message);
    }
    for conv in [&a, &b] {
        let page = store
            .list_messages(project.id, conv.id, MessageRange::Latest, 100)
            .await
            .expect("list");
        assert_eq!(ids(&page.items, |m| m.seq), vec![1, 2, 3]);
        assert!(
            page.items.windows(2).all(|w| w[0].id < w[1].id),
            "seq order is id order"
        );
        let after = store
            .list_messages(
                project.id,
                conv.id,
                MessageRange::After(page.items[0].id),
                100,
            )
            .await
            .expect("list after");
        assert_eq!(ids(&after.items, |m| m.seq), vec![2, 3]);
    }
    for m in &sent {
        let back = store
            .message(project.id, m.conversation_id, m.id)
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(back.seq, m.seq);
    }
}

/// Two processes append the same `client_msg_id` at the same moment, round after round: each
/// is stored once, both answers name it, and the conversation's numbering has no gap.
/// Two processes creating conversations with one idempotency key at once (4 calls per key,
/// alternating processes): each key creates exactly one conversation, every answer is it, and
/// the month counts one per key.
pub async fn two_processes_race_one_conversation_key(a: &TestStore, b: &TestStore) {
    const ROUNDS: usize = 20;
    let project = new_project(a).await;
    for round in 0..ROUNDS {
        let key = creation_key("key:racer", &format!("race-{round}"));
        let mut tasks = JoinSet::new();
        for store in [a, b, a, b] {
            let (store, key) = (store.clone(), key.clone());
            let c = conversation_value(project.id, &[]);
            tasks.spawn(async move { store.create_conversation_keyed(&c, &key).await });
        }
        let mut answers = HashSet::new();
        let mut creations = 0;
        while let Some(joined) = tasks.join_next().await {
            let (c, created) = joined.expect("task").expect("create");
            creations += usize::from(created);
            answers.insert(c.id);
        }
        assert_eq!(creations, 1, "round {round}: created once");
        assert_eq!(
            answers.len(),
            1,
            "round {round}: every answer is the original"
        );
    }
    let listed = a
        .list_conversations(
            project.id,
            &ConversationQuery {
                limit: 1000,
                ..ConversationQuery::default()
            },
        )
        .await
        .expect("list");
    assert_eq!(listed.items.len(), ROUNDS, "one conversation per key");
    let used = b.usage(project.id, this_month()).await.expect("usage");
    assert_eq!(used.conversations, ROUNDS as u64, "counted once per key");
}

pub async fn two_processes_race_one_client_msg_id(a: &TestStore, b: &TestStore) {
    const ROUNDS: usize = 40;
    let project = new_project(a).await;
    let conv = new_conversation(a, project.id, &[]).await;
    for round in 0..ROUNDS {
        let cid = format!("race-{round}");
        let mut tasks = JoinSet::new();
        for (i, store) in [a, b, a, b].into_iter().enumerate() {
            let store = store.clone();
            let m = new_message(&conv, &format!("{round} from {i}"), Some(&cid));
            tasks.spawn(async move { store.append_message(&m).await });
        }
        let mut answers = HashSet::new();
        let mut creations = 0;
        while let Some(joined) = tasks.join_next().await {
            let appended = joined.expect("task").expect("append");
            creations += usize::from(appended.created);
            answers.insert((appended.message.id, appended.message.seq));
        }
        assert_eq!(creations, 1, "round {round}: created once");
        assert_eq!(
            answers.len(),
            1,
            "round {round}: every answer is the original"
        );
    }
    let page = a
        .list_messages(project.id, conv.id, MessageRange::Latest, 1000)
        .await
        .expect("list");
    assert_eq!(
        page.items.len(),
        ROUNDS,
        "one stored message per client_msg_id"
    );
    assert_eq!(
        ids(&page.items, |m| m.seq),
        (1..=ROUNDS as u64).collect::<Vec<_>>(),
        "gapless"
    );
    let cids: HashSet<Option<String>> =
        page.items.iter().map(|m| m.client_msg_id.clone()).collect();
    assert_eq!(cids.len(), ROUNDS);
}

/// Two processes, ten senders each, append into one conversation: every append is stored with
/// a distinct id, seq is gapless in id order, each sender's messages keep its order.
pub async fn two_processes_append_concurrently(a: &TestStore, b: &TestStore) {
    let project = new_project(a).await;
    let conv = new_conversation(a, project.id, &[]).await;
    let mut tasks = JoinSet::new();
    for t in 0..20 {
        let store = if t % 2 == 0 { a.clone() } else { b.clone() };
        let conv = conv.clone();
        tasks.spawn(async move {
            let mut mine = Vec::new();
            for i in 0..10 {
                let m = new_message(&conv, &format!("{t}/{i}"), Some(&format!("{t}-{i}")));
                let appended = store.append_message(&m).await.expect("append");
                assert!(appended.created);
                mine.push(appended.message);
            }
            mine
        });
    }
    let mut acked = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let mine = joined.expect("task");
        assert!(
            mine.windows(2).all(|w| w[0].id < w[1].id),
            "a sender's messages are in its order"
        );
        acked.extend(mine);
    }
    acked.sort_by_key(|m| m.id);
    let page = b
        .list_messages(project.id, conv.id, MessageRange::Latest, 1000)
        .await
        .expect("list");
    assert_eq!(
        page.items, acked,
        "every acknowledged message stored as returned"
    );
    assert_eq!(
        ids(&page.items, |m| m.seq),
        (1..=200).collect::<Vec<u64>>(),
        "gapless in id order"
    );
}

// ---------------------------------------------------------------------------------------------
// Read state
// ---------------------------------------------------------------------------------------------

/// Read markers move forward only, per reader.
pub async fn read_state(store: &TestStore) {
    let project = new_project(store).await;
    let user = new_end_user(store, project.id).await;
    let conv = new_conversation(store, project.id, &[user.id]).await;
    let mut m = Vec::new();
    for i in 0..10 {
        m.push(
            store
                .append_message(&new_message(&conv, &format!("{i}"), None))
                .await
                .expect("append")
                .message
                .id,
        );
    }
    let reader = Actor::end_user(user.id, Some("Ada".into()));
    let t0 = model::now();
    let s = store
        .mark_read(project.id, conv.id, &reader, m[5], t0)
        .await
        .expect("read");
    assert_eq!(s.last_read_message_id, m[5]);
    assert_eq!(s.reader, reader);
    assert_eq!(s.conversation_id, conv.id);
    assert_eq!(s.updated_at, t0);

    let back = store
        .mark_read(
            project.id,
            conv.id,
            &reader,
            m[3],
            t0 + Duration::seconds(1),
        )
        .await
        .expect("read older");
    assert_eq!(
        back.last_read_message_id, m[5],
        "a marker never moves backwards"
    );
    assert_eq!(
        back.updated_at, t0,
        "an ignored older marker keeps the stored state"
    );

    let t2 = t0 + Duration::seconds(2);
    let fwd = store
        .mark_read(project.id, conv.id, &reader, m[8], t2)
        .await
        .expect("read newer");
    assert_eq!(fwd.last_read_message_id, m[8]);
    assert_eq!(fwd.updated_at, t2);

    let agent = agent("agent-9");
    let agent_state = store
        .mark_read(project.id, conv.id, &agent, m[2], t2)
        .await
        .expect("agent read");
    assert_eq!(
        agent_state.last_read_message_id, m[2],
        "each reader has its own marker"
    );
    let mut states = store
        .read_states(project.id, conv.id)
        .await
        .expect("states");
    states.sort_by_key(|s| s.reader.member_key());
    let mut expected = vec![fwd, agent_state];
    expected.sort_by_key(|s| s.reader.member_key());
    assert_eq!(
        states, expected,
        "one marker per reader, each at its own position"
    );

    let err = store
        .mark_read(project.id, ConversationId::new_v7(), &reader, m[1], t2)
        .await;
    assert!(
        matches!(err, Err(StoreError::NotFound("conversation"))),
        "marking an unknown conversation read: {err:?}"
    );
    assert!(
        store
            .read_states(project.id, ConversationId::new_v7())
            .await
            .expect("states")
            .is_empty()
    );
}

// ---------------------------------------------------------------------------------------------
// Tenant isolation
// ---------------------------------------------------------------------------------------------

/// Every project-scoped method, called with project B on project A's rows, sees nothing and
/// changes nothing.
pub async fn tenant_isolation(store: &TestStore) {
    let a = new_project(store).await;
    let b = new_project(store).await;
    let identifier = unique("shared-ident");
    let (user_a, _) = store
        .upsert_end_user(a.id, &identified(&identifier))
        .await
        .expect("user");
    let conv_a = new_conversation(store, a.id, &[user_a.id]).await;
    let msg_a = store
        .append_message(&new_message(&conv_a, "secret of A", Some("cid-1")))
        .await
        .expect("append")
        .message;
    let reader = Actor::end_user(user_a.id, None);
    store
        .mark_read(a.id, conv_a.id, &reader, msg_a.id, model::now())
        .await
        .expect("read");
    let key_a = api_key_value(a.id, "a", model::now());
    store.create_api_key(&key_a).await.expect("key");

    // Reads.
    assert_eq!(
        store.end_user(b.id, user_a.id).await.expect("end_user"),
        None,
        "end_user"
    );
    assert_eq!(
        store
            .conversation(b.id, conv_a.id)
            .await
            .expect("conversation"),
        None,
        "conversation"
    );
    let q = ConversationQuery {
        limit: 100,
        ..Default::default()
    };
    assert!(
        store
            .list_conversations(b.id, &q)
            .await
            .expect("list")
            .items
            .is_empty(),
        "list_conversations"
    );
    let q = ConversationQuery {
        member: Some(user_a.id),
        limit: 100,
        ..Default::default()
    };
    assert!(
        store
            .list_conversations(b.id, &q)
            .await
            .expect("list")
            .items
            .is_empty(),
        "member filter"
    );
    for range in [
        MessageRange::Latest,
        MessageRange::After(MessageId::MIN),
        MessageRange::Before(msg_a.id),
    ] {
        let page = store
            .list_messages(b.id, conv_a.id, range, 100)
            .await
            .expect("list");
        assert!(
            page.items.is_empty() && !page.has_more,
            "list_messages {range:?}"
        );
    }
    assert_eq!(
        store
            .message(b.id, conv_a.id, msg_a.id)
            .await
            .expect("message"),
        None,
        "message"
    );
    assert!(
        store
            .read_states(b.id, conv_a.id)
            .await
            .expect("reads")
            .is_empty(),
        "read_states"
    );
    assert!(
        store.list_api_keys(b.id).await.expect("keys").is_empty(),
        "list_api_keys"
    );
    let owned_by_b = store
        .list_projects(Some(b.owner_id), None, 100)
        .await
        .expect("projects");
    assert_eq!(
        ids(&owned_by_b.items, |p| p.id),
        vec![b.id],
        "list_projects by owner"
    );

    // Writes.
    let patch = EndUserPatch {
        name: Some(Some("hijacked".into())),
        ..Default::default()
    };
    assert_eq!(
        store
            .update_end_user(b.id, user_a.id, &patch)
            .await
            .expect("update"),
        None,
        "update_end_user"
    );
    assert!(
        !store
            .delete_end_user(b.id, user_a.id)
            .await
            .expect("delete"),
        "delete_end_user"
    );
    let (user_b, created) = store
        .upsert_end_user(b.id, &identified(&identifier))
        .await
        .expect("identify");
    assert!(
        created,
        "the same identifier in another project is another user"
    );
    assert_ne!(user_b.id, user_a.id);
    assert_eq!(user_b.project_id, b.id);

    let cpatch = ConversationPatch {
        subject: Some(Some("hijacked".into())),
        add_members: vec![user_b.id],
        ..Default::default()
    };
    assert_eq!(
        store
            .update_conversation(b.id, conv_a.id, &cpatch)
            .await
            .expect("update"),
        None,
        "update_conversation"
    );
    let cross = conversation_value(b.id, &[user_a.id]);
    assert!(
        matches!(
            store.create_conversation(&cross).await,
            Err(StoreError::NotFound("end user"))
        ),
        "create_conversation with a member of A"
    );
    let mut inject = new_message(&conv_a, "injected", Some("cid-1"));
    inject.project_id = b.id;
    assert!(
        matches!(
            store.append_message(&inject).await,
            Err(StoreError::NotFound("conversation"))
        ),
        "append_message into A's conversation"
    );
    assert!(
        matches!(
            store
                .mark_read(b.id, conv_a.id, &reader, msg_a.id, model::now())
                .await,
            Err(StoreError::NotFound("conversation"))
        ),
        "mark_read"
    );
    assert!(
        !store
            .delete_project(ProjectId::new_v7())
            .await
            .expect("delete unknown")
    );

    // A is untouched.
    assert_eq!(
        store.end_user(a.id, user_a.id).await.expect("get"),
        Some(user_a.clone()),
        "A's user unchanged"
    );
    let c = store
        .conversation(a.id, conv_a.id)
        .await
        .expect("get")
        .expect("A's conversation exists");
    assert_eq!(
        c.subject, conv_a.subject,
        "A's conversation subject unchanged"
    );
    assert_eq!(
        c.members,
        vec![user_a.id],
        "A's conversation members unchanged"
    );
    assert_eq!(
        c.last_message_id,
        Some(msg_a.id),
        "A's last message unchanged"
    );
    let page = store
        .list_messages(a.id, conv_a.id, MessageRange::Latest, 100)
        .await
        .expect("list");
    assert_eq!(page.items, vec![msg_a.clone()], "A's messages unchanged");
    assert_eq!(
        store
            .read_states(a.id, conv_a.id)
            .await
            .expect("reads")
            .len(),
        1
    );
    assert_eq!(store.list_api_keys(a.id).await.expect("keys"), vec![key_a]);
    assert!(store.project(a.id).await.expect("get").is_some());
}

// ---------------------------------------------------------------------------------------------
// Plans, usage and quotas
// ---------------------------------------------------------------------------------------------

/// A fresh plan with these limits (its own id, so checks never share a plan).
pub(crate) async fn custom_plan(store: &TestStore, limits: PlanLimits) -> Plan {
    let plan = Plan {
        id: PlanId::parse(&unique("t").to_lowercase()[..20]).expect("plan id"),
        name: "Test plan".into(),
        limits,
        features: BTreeSet::new(),
        updated_at: model::now(),
    };
    store.put_plan(&plan).await.expect("put plan");
    plan
}

/// A fresh admin and a project it owns on `plan`.
pub(crate) async fn project_on(store: &TestStore, plan: &Plan) -> Project {
    let admin = admin_user_value(&format!("{}@example.com", unique("owner")));
    store.create_admin_user(&admin).await.expect("admin");
    let mut project = project_value(admin.id, &unique("project"));
    project.plan = plan.id.clone();
    store.create_project(&project).await.expect("project");
    project
}

fn quota_of(e: StoreError) -> larachat_core::plan::QuotaExceeded {
    match e {
        StoreError::QuotaExceeded(q) => q,
        other => panic!("expected quota_exceeded, got {other:?}"),
    }
}

fn this_month() -> Period {
    Period::of(model::now())
}

/// The seed's four plans exist; a plan can be written and read back, and changed.
pub async fn plans_seeded_and_editable(store: &TestStore) {
    let plans = store.list_plans().await.expect("plans");
    let seeded = |id: &str| {
        plans
            .iter()
            .find(|p| p.id.as_str() == id)
            .unwrap_or_else(|| panic!("seeded plan {id} missing"))
            .clone()
    };
    let free = seeded("free");
    assert_eq!(free.limits.monthly_active_users, Some(100));
    assert_eq!(free.limits.messages_per_month, Some(1_000));
    assert_eq!(free.limits.projects_per_owner, Some(1));
    assert_eq!(seeded("starter").limits.projects_per_owner, Some(3));
    assert!(seeded("pro").has_feature("custom_branding"));
    assert_eq!(seeded("enterprise").limits, PlanLimits::default());
    assert!(plans.windows(2).all(|w| w[0].id < w[1].id), "listed by id");

    let mut plan = custom_plan(
        store,
        PlanLimits {
            monthly_active_users: Some(7),
            messages_per_month: None,
            projects_per_owner: Some(2),
        },
    )
    .await;
    assert_eq!(store.plan(&plan.id).await.expect("get"), Some(plan.clone()));
    plan.limits.messages_per_month = Some(10);
    plan.features = ["custom_branding".to_owned()].into();
    plan.name = "Renamed".into();
    store.put_plan(&plan).await.expect("update");
    assert_eq!(store.plan(&plan.id).await.expect("get"), Some(plan.clone()));
    assert_eq!(
        store
            .plan(&PlanId::parse("no-such-plan").unwrap())
            .await
            .expect("get"),
        None
    );
}

/// The message limit is exact: the last allowed message passes, the next is refused with the
/// limit and its reset time and stores nothing; a retry of a stored message still gets its
/// original and counts nothing.
pub async fn quota_messages_exact(store: &TestStore) {
    const LIMIT: u64 = 5;
    let plan = custom_plan(
        store,
        PlanLimits {
            messages_per_month: Some(LIMIT),
            ..PlanLimits::default()
        },
    )
    .await;
    let project = project_on(store, &plan).await;
    let conv = new_conversation(store, project.id, &[]).await;
    let first_cid = unique("cid");
    for i in 0..LIMIT {
        let cid = if i == 0 {
            first_cid.clone()
        } else {
            unique("cid")
        };
        let a = store
            .append_message(&new_message(&conv, &format!("m{i}"), Some(&cid)))
            .await
            .unwrap_or_else(|e| panic!("message {} of {LIMIT}: {e}", i + 1));
        assert!(a.created);
    }
    let refused = store
        .append_message(&new_message(&conv, "one too many", Some(&unique("cid"))))
        .await
        .expect_err("the message after the limit is refused");
    let q = quota_of(refused);
    assert_eq!(q.metric, QuotaMetric::MessagesPerMonth);
    assert_eq!(q.limit, LIMIT);
    assert_eq!(q.plan, plan.id);
    assert_eq!(q.resets_at, Some(this_month().resets_at()));

    let retry = store
        .append_message(&new_message(&conv, "m0 again", Some(&first_cid)))
        .await
        .expect("a retry of a stored message is answered at the limit too");
    assert!(!retry.created, "the retry returns the original");
    assert_eq!(retry.message.text, "m0");

    let stored = store
        .list_messages(project.id, conv.id, MessageRange::Latest, 100)
        .await
        .expect("list");
    assert_eq!(
        stored.items.len() as u64,
        LIMIT,
        "nothing stored past the limit"
    );
    let used = store.usage(project.id, this_month()).await.expect("usage");
    assert_eq!(used.messages, LIMIT, "the retry counted nothing");
    assert_eq!(used.conversations, 1);

    // Raising the limit lets the project go on.
    let mut raised = plan.clone();
    raised.limits.messages_per_month = Some(LIMIT + 1);
    store.put_plan(&raised).await.expect("raise");
    store.plans_changed();
    store
        .append_message(&new_message(&conv, "after the raise", None))
        .await
        .expect("allowed after the limit is raised");
}

/// Concurrent sends at the edge of the limit: exactly the limit passes, in one process.
pub async fn quota_messages_exact_under_concurrency(store: &TestStore) {
    const LIMIT: u64 = 10;
    const SENDS: u64 = 24;
    let plan = custom_plan(
        store,
        PlanLimits {
            messages_per_month: Some(LIMIT),
            ..PlanLimits::default()
        },
    )
    .await;
    let project = project_on(store, &plan).await;
    let mut convs = Vec::new();
    for _ in 0..4 {
        convs.push(new_conversation(store, project.id, &[]).await);
    }
    let mut tasks = JoinSet::new();
    for i in 0..SENDS {
        let store = store.clone();
        let m = new_message(
            &convs[(i % 4) as usize],
            &format!("m{i}"),
            Some(&unique("c")),
        );
        tasks.spawn(async move { store.append_message(&m).await });
    }
    let (mut passed, mut refused) = (0u64, 0u64);
    while let Some(r) = tasks.join_next().await {
        match r.expect("task") {
            Ok(a) => {
                assert!(a.created);
                passed += 1;
            }
            Err(e) => {
                assert_eq!(quota_of(e).metric, QuotaMetric::MessagesPerMonth);
                refused += 1;
            }
        }
    }
    assert_eq!(passed, LIMIT, "exactly the limit passes");
    assert_eq!(refused, SENDS - LIMIT);
    let used = store.usage(project.id, this_month()).await.expect("usage");
    assert_eq!(used.messages, LIMIT);
}

/// The monthly-active-user limit is exact, and a user counts once per month however often
/// it is active.
pub async fn quota_active_users_exact(store: &TestStore) {
    const LIMIT: u64 = 3;
    let plan = custom_plan(
        store,
        PlanLimits {
            monthly_active_users: Some(LIMIT),
            ..PlanLimits::default()
        },
    )
    .await;
    let project = project_on(store, &plan).await;
    let ident = unique("ada");
    let (ada, created) = store
        .upsert_end_user(project.id, &identified(&ident))
        .await
        .expect("user 1");
    assert!(created);
    let bob = store
        .upsert_end_user(project.id, &anonymous())
        .await
        .expect("user 2")
        .0;
    let carol = store
        .upsert_end_user(project.id, &anonymous())
        .await
        .expect("user 3")
        .0;
    let refused = store
        .upsert_end_user(project.id, &anonymous())
        .await
        .expect_err("the 4th active user is refused");
    let q = quota_of(refused);
    assert_eq!(q.metric, QuotaMetric::MonthlyActiveUsers);
    assert_eq!(q.limit, LIMIT);
    assert_eq!(q.resets_at, Some(this_month().resets_at()));

    // Users already counted this month stay active: identify, converse, send.
    let (again, created) = store
        .upsert_end_user(project.id, &identified(&ident))
        .await
        .expect("identifying a counted user");
    assert!(!created);
    assert_eq!(again.id, ada.id);
    let conv = new_conversation(store, project.id, &[ada.id, bob.id, carol.id]).await;
    let mut m = new_message(&conv, "hello", None);
    m.sender = Actor {
        kind: ActorKind::EndUser,
        id: bob.id.to_string(),
        name: None,
    };
    store
        .append_message(&m)
        .await
        .expect("a counted user sends");

    let used = store.usage(project.id, this_month()).await.expect("usage");
    assert_eq!(used.active_users, LIMIT);
    assert_eq!(used.messages, 1);
    // No user was created by the refused call.
    assert_eq!(used.conversations, 1);
}

/// An owner may have as many projects as the plan of the new project allows; unlimited plans
/// have no such limit.
pub async fn quota_projects_per_owner(store: &TestStore) {
    let plan = custom_plan(
        store,
        PlanLimits {
            projects_per_owner: Some(2),
            ..PlanLimits::default()
        },
    )
    .await;
    let owner = admin_user_value(&format!("{}@example.com", unique("owner")));
    store.create_admin_user(&owner).await.expect("admin");
    for i in 0..2 {
        let mut p = project_value(owner.id, &format!("p{i}"));
        p.plan = plan.id.clone();
        store.create_project(&p).await.expect("within the limit");
    }
    let mut third = project_value(owner.id, "p2");
    third.plan = plan.id.clone();
    let q = quota_of(
        store
            .create_project(&third)
            .await
            .expect_err("the third project is refused"),
    );
    assert_eq!(q.metric, QuotaMetric::ProjectsPerOwner);
    assert_eq!(q.limit, 2);
    assert_eq!(q.resets_at, None, "a project count does not reset");
    assert!(store.project(third.id).await.expect("get").is_none());
    // Enterprise is unlimited.
    let unlimited = project_value(owner.id, "p3");
    store
        .create_project(&unlimited)
        .await
        .expect("an enterprise project");
}

/// Usage equals what the store holds, and appears in the history.
pub async fn usage_matches_the_store(store: &TestStore) {
    let project = new_project(store).await;
    assert_eq!(
        store.usage(project.id, this_month()).await.expect("usage"),
        UsageCounts::default(),
        "a new project used nothing"
    );
    let users = [
        new_end_user(store, project.id).await,
        new_end_user(store, project.id).await,
    ];
    let _silent = store
        .upsert_end_user(project.id, &anonymous())
        .await
        .expect("user");
    let conv = new_conversation(store, project.id, &[users[0].id]).await;
    let conv2 = new_conversation(store, project.id, &[users[0].id, users[1].id]).await;
    for (i, c) in [&conv, &conv2, &conv].into_iter().enumerate() {
        let mut m = new_message(c, &format!("m{i}"), Some(&format!("cid-{i}")));
        m.sender = Actor {
            kind: ActorKind::EndUser,
            id: users[0].id.to_string(),
            name: None,
        };
        store.append_message(&m).await.expect("send");
        // Retried: the same client_msg_id is no new message and no new count.
        store.append_message(&m).await.expect("retry");
    }
    let mut stored = 0;
    for c in [&conv, &conv2] {
        stored += store
            .list_messages(project.id, c.id, MessageRange::Latest, 100)
            .await
            .expect("list")
            .items
            .len() as u64;
    }
    let used = store.usage(project.id, this_month()).await.expect("usage");
    assert_eq!(
        used,
        UsageCounts {
            messages: stored,
            conversations: 2,
            active_users: 3,
            storage_bytes: used.storage_bytes,
            ..UsageCounts::default()
        }
    );
    assert_eq!(stored, 3);
    let history = store.usage_history(project.id, 12).await.expect("history");
    assert_eq!(history, vec![(this_month(), used)]);
    let last = Period::parse("2000-01").unwrap();
    assert_eq!(
        store.usage(project.id, last).await.expect("usage"),
        UsageCounts::default()
    );
}

/// Edge metering (API requests, peak connections) from several gateway processes: requests
/// are summed, peaks summed per hour and the busiest hour taken; a process's newer values
/// replace its older ones, and writing a row again changes nothing; the month shows in the
/// history; rows of a deleted project are gone.
pub async fn usage_edge_metering(store: &TestStore) {
    let project = new_project(store).await;
    let (gw1, gw2) = (Uuid::new_v4(), Uuid::new_v4());
    let now = Utc::now();
    // Two hours of this month (the current hour and the one before, unless that is last
    // month: then the next hour is used, which is this month too).
    let this_hour = EdgeUsage::hour_of(now);
    let other_hour = if Period::of(this_hour - Duration::hours(1)) == this_month() {
        this_hour - Duration::hours(1)
    } else {
        this_hour + Duration::hours(1)
    };
    let row = |hour, requests, peak| EdgeUsage {
        project: project.id,
        hour,
        requests,
        peak_connections: peak,
    };
    store
        .record_edge_usage(gw1, &[row(this_hour, 5, 2)])
        .await
        .expect("flush");
    store
        .record_edge_usage(gw1, &[row(this_hour, 12, 3), row(other_hour, 40, 6)])
        .await
        .expect("flush");
    // Retried: the same rows again.
    store
        .record_edge_usage(gw1, &[row(this_hour, 12, 3), row(other_hour, 40, 6)])
        .await
        .expect("retry");
    store
        .record_edge_usage(gw2, &[row(this_hour, 7, 4)])
        .await
        .expect("flush");
    let used = store.usage(project.id, this_month()).await.expect("usage");
    // 12 + 40 + 7 requests; peaks: this hour 3 + 4 = 7, the other hour 6.
    assert_eq!((used.api_requests, used.peak_connections), (59, 7));
    assert_eq!(used.messages, 0);
    let history = store.usage_history(project.id, 12).await.expect("history");
    assert_eq!(
        history,
        vec![(this_month(), used)],
        "the month is in the history"
    );

    // Another project's usage is its own.
    let other = new_project(store).await;
    let theirs = store.usage(other.id, this_month()).await.expect("usage");
    assert_eq!((theirs.api_requests, theirs.peak_connections), (0, 0));

    store.delete_project(project.id).await.expect("delete");
    let gone = store.usage(project.id, this_month()).await.expect("usage");
    assert_eq!((gone.api_requests, gone.peak_connections), (0, 0));
}

/// Storage is the bytes of the content of the month's messages (UTF-8 text plus serialized
/// metadata), exactly once per message: a retried send adds nothing, even with other content.
pub async fn usage_storage_bytes(store: &TestStore) {
    let project = new_project(store).await;
    let conv = new_conversation(store, project.id, &[]).await;
    let mut sent = Vec::new();
    for (i, text) in ["hello", "héllo wörld ✓", "", "日本語のテキスト"]
        .iter()
        .enumerate()
    {
        let mut m = new_message(&conv, text, Some(&format!("cid-{i}")));
        if i == 2 {
            m.metadata = serde_json::Value::Null;
        }
        sent.push(store.append_message(&m).await.expect("send").message);
        // A retry (other text, same client_msg_id) is the original: no bytes added.
        m.text = "x".repeat(1000);
        let retry = store.append_message(&m).await.expect("retry");
        assert!(!retry.created);
    }
    let expected: u64 = sent
        .iter()
        .map(|m| content_bytes(&m.text, &m.metadata))
        .sum();
    // "héllo wörld ✓" is 17 bytes (é, ö: 2; ✓: 3), not 13 characters.
    assert_eq!(content_bytes("héllo wörld ✓", &json!({})), 17 + 2);
    let stored: u64 = store
        .list_messages(project.id, conv.id, MessageRange::Latest, 100)
        .await
        .expect("list")
        .items
        .iter()
        .map(|m| content_bytes(&m.text, &m.metadata))
        .sum();
    assert_eq!(stored, expected, "what is stored is what was metered");
    let used = store.usage(project.id, this_month()).await.expect("usage");
    assert_eq!(used.storage_bytes, expected);
    assert_eq!(used.messages, 4);
    // Creating a conversation adds no storage.
    new_conversation(store, project.id, &[]).await;
    let used = store.usage(project.id, this_month()).await.expect("usage");
    assert_eq!(used.storage_bytes, expected);
    assert_eq!(
        store.usage_history(project.id, 1).await.expect("history"),
        vec![(this_month(), used)]
    );
}

// ---------------------------------------------------------------------------------------------
// Analytics
// ---------------------------------------------------------------------------------------------

/// A conversation created at `at` (its id made at that time too, as the service does).
fn conversation_at(
    project: ProjectId,
    members: &[EndUserId],
    at: chrono::DateTime<chrono::Utc>,
) -> Conversation {
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        at.timestamp() as u64,
        at.timestamp_subsec_nanos(),
    );
    Conversation {
        id: ConversationId::from_uuid(Uuid::new_v7(ts)),
        created_at: at,
        updated_at: at,
        ..conversation_value(project, members)
    }
}

/// The analytics of `range` computed from the store's ordinary reads: every message of every
/// conversation, every conversation, and the close times the test recorded.
async fn brute_force_analytics(
    store: &TestStore,
    project: ProjectId,
    range: AnalyticsRange,
    closed_at: &std::collections::HashMap<ConversationId, chrono::DateTime<chrono::Utc>>,
) -> ProjectAnalytics {
    let conversations = store
        .list_conversations(
            project,
            &ConversationQuery {
                limit: 1000,
                ..ConversationQuery::default()
            },
        )
        .await
        .expect("list conversations")
        .items;
    let mut messages: Vec<MessageBucket> = range
        .bucket_starts()
        .map(|start| MessageBucket {
            start,
            count: 0,
            end_user: 0,
            agent: 0,
            bot: 0,
            system: 0,
        })
        .collect();
    let mut created: Vec<CountBucket> = range
        .bucket_starts()
        .map(|start| CountBucket { start, count: 0 })
        .collect();
    let (mut active, mut open, mut closed) = (0, 0, 0);
    let (mut responses, mut resolutions) = (Vec::new(), Vec::new());
    for c in &conversations {
        match c.status {
            ConversationStatus::Open => open += 1,
            ConversationStatus::Closed => closed += 1,
        }
        let list = store
            .list_messages(project, c.id, MessageRange::Latest, 1000)
            .await
            .expect("list messages")
            .items;
        let mut was_active = false;
        for m in &list {
            let Some(i) = range.bucket_of(m.created_at) else {
                continue;
            };
            was_active = true;
            let b = &mut messages[i];
            b.count += 1;
            match m.sender.kind {
                ActorKind::EndUser => b.end_user += 1,
                ActorKind::Agent => b.agent += 1,
                ActorKind::Bot => b.bot += 1,
                ActorKind::System => b.system += 1,
            }
        }
        active += u64::from(was_active);
        let Some(i) = range.bucket_of(c.created_at) else {
            continue;
        };
        created[i].count += 1;
        // Messages are listed in seq order.
        if let Some(asked) = list
            .iter()
            .position(|m| m.sender.kind == ActorKind::EndUser)
        {
            if let Some(answer) = list[asked..]
                .iter()
                .find(|m| matches!(m.sender.kind, ActorKind::Agent | ActorKind::Bot))
            {
                responses.push(
                    answer
                        .created_at
                        .signed_duration_since(list[asked].created_at)
                        .num_milliseconds(),
                );
            }
        }
        if c.status == ConversationStatus::Closed {
            let at = closed_at[&c.id];
            resolutions.push(at.signed_duration_since(c.created_at).num_milliseconds());
        }
    }
    ProjectAnalytics {
        range,
        messages,
        conversations_created: created,
        open,
        closed,
        active_conversations: active,
        first_response: DurationStats::of_millis(responses),
        resolution: DurationStats::of_millis(resolutions),
    }
}

/// Analytics equal a brute-force computation over the store, for a generated project:
/// conversations created over several days, messages of every sender kind (an agent greeting
/// before the end user, unanswered questions, bot answers, a retried send), conversations
/// closed, one closed and reopened; by the hour and by the day, over ranges that cut some of
/// it off; another project's traffic never counts; a deleted project has none.
pub async fn analytics_match_the_store(store: &TestStore) {
    let project = new_project(store).await;
    let other = new_project(store).await;
    let users = [
        new_end_user(store, project.id).await,
        new_end_user(store, project.id).await,
    ];
    let now = model::now();
    let hour = chrono::TimeDelta::hours(1);
    let day = chrono::TimeDelta::days(1);
    // Created 3 days, 2 days + 5 h, 1 day, 2 h ago and now.
    let times = [
        now - day * 3,
        now - day * 2 - hour * 5,
        now - day,
        now - hour * 2,
        now,
        now - hour * 30,
    ];
    let user = |i: usize| Actor {
        kind: ActorKind::EndUser,
        id: users[i % 2].id.to_string(),
        name: None,
    };
    let staff = |kind: ActorKind| Actor {
        kind,
        id: "agent-7".into(),
        name: None,
    };
    // Who speaks, in order, in each conversation.
    let scripts: [&[Actor]; 6] = [
        &[
            staff(ActorKind::Agent),
            user(0),
            user(0),
            staff(ActorKind::Agent),
            staff(ActorKind::Bot),
        ],
        &[user(1), staff(ActorKind::Bot), staff(ActorKind::Agent)],
        &[user(0), user(1)],
        &[staff(ActorKind::Agent)],
        &[],
        &[
            user(1),
            staff(ActorKind::System),
            staff(ActorKind::Agent),
            user(1),
        ],
    ];
    let mut convs = Vec::new();
    for (at, script) in times.iter().zip(scripts) {
        let c = conversation_at(project.id, &[users[0].id], *at);
        store.create_conversation(&c).await.expect("create");
        for (i, sender) in script.iter().enumerate() {
            let mut m = new_message(&c, &format!("m{i}"), Some(&format!("a-{i}")));
            m.sender = sender.clone();
            assert!(store.append_message(&m).await.expect("send").created);
            if i == 0 {
                // A retry counts nothing.
                assert!(!store.append_message(&m).await.expect("retry").created);
            }
        }
        convs.push(c);
    }
    // Another project's traffic.
    let foreign = new_conversation(store, other.id, &[]).await;
    store
        .append_message(&new_message(&foreign, "elsewhere", None))
        .await
        .expect("send");

    let mut closed_at = std::collections::HashMap::new();
    let close = |status| ConversationPatch {
        status: Some(status),
        ..ConversationPatch::default()
    };
    for i in [0, 1, 4] {
        let c = store
            .update_conversation(project.id, convs[i].id, &close(ConversationStatus::Closed))
            .await
            .expect("close")
            .expect("exists");
        closed_at.insert(c.id, c.updated_at);
    }
    store
        .update_conversation(project.id, convs[1].id, &close(ConversationStatus::Open))
        .await
        .expect("reopen")
        .expect("exists");
    closed_at.remove(&convs[1].id);

    let ranges = [
        AnalyticsRange::new(now - day * 4, now + hour, Granularity::Hour).unwrap(),
        AnalyticsRange::new(now - day * 4, now + hour, Granularity::Day).unwrap(),
        // Cuts off the two oldest conversations, keeps today's messages.
        AnalyticsRange::new(now - day - hour * 2, now + hour, Granularity::Hour).unwrap(),
        // By the day, ending earlier.
        AnalyticsRange::new(now - day * 3, now - hour * 10, Granularity::Day).unwrap(),
    ];
    for range in ranges {
        let expected = brute_force_analytics(store, project.id, range, &closed_at).await;
        let data = store
            .analytics(project.id, &range)
            .await
            .expect("analytics");
        let got = ProjectAnalytics::compute(range, data);
        assert_eq!(got, expected, "analytics over {range:?}");
    }
    let all = ProjectAnalytics::compute(
        ranges[0],
        store
            .analytics(project.id, &ranges[0])
            .await
            .expect("analytics"),
    );
    // The script's figures, so that the brute force is not trivially empty.
    let sent: u64 = all.messages.iter().map(|b| b.count).sum();
    assert_eq!(sent, 15, "every message once, retries not counted");
    assert_eq!((all.open, all.closed), (4, 2));
    assert_eq!(all.active_conversations, 5);
    assert_eq!(
        all.first_response.count, 3,
        "conversations 0, 1 and 5 were answered"
    );
    assert_eq!(all.resolution.count, 2);

    assert!(store.delete_project(project.id).await.expect("delete"));
    let gone = store
        .analytics(project.id, &ranges[0])
        .await
        .expect("analytics");
    assert_eq!(
        gone,
        AnalyticsData::default(),
        "a deleted project has no analytics"
    );
}

/// Analytics equal a brute-force computation over the store for a project whose history the
/// store itself wrote over a week (its clock moved; ids, `created_at`, closing times, usage and
/// analytics rows all come from it): 16 conversations started minutes to hours apart from
/// 21:40 UTC six days ago, so hours and days are crossed, each with up to 6 messages of random
/// senders minutes apart, some closed (one closed and reopened). Compared by the hour and by
/// the day, over the whole week and over ranges starting and ending mid-day; each range read
/// twice, the second time from what the first sealed. The generator is seeded (printed).
pub async fn analytics_match_the_store_over_days(store: &TestStore, clock: &ManualClock) {
    use chrono::TimeDelta;
    let wall = model::now();
    let start = (wall - TimeDelta::days(6))
        .date_naive()
        .and_hms_opt(21, 40, 0)
        .expect("a time")
        .and_utc();
    clock.set(start);
    let project = new_project(store).await;
    let users = [
        new_end_user(store, project.id).await,
        new_end_user(store, project.id).await,
        new_end_user(store, project.id).await,
    ];
    let seed = wall.timestamp_millis() as u64 | 1;
    println!("analytics over days: seed {seed}, history from {start}");
    let mut state = seed;
    let mut next = move |n: u64| {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let minutes = |m: u64| TimeDelta::minutes(m as i64);
    let mut closed_at = std::collections::HashMap::new();
    let mut reopened = false;
    for i in 0..16usize {
        clock.advance(minutes(1 + next(240)) + TimeDelta::seconds(next(60) as i64));
        let c = conversation_at(project.id, &[users[i % 3].id], clock.now());
        store.create_conversation(&c).await.expect("create");
        for j in 0..next(7) {
            clock.advance(minutes(next(45)) + TimeDelta::milliseconds(1 + next(60_000) as i64));
            let sender = match next(6) {
                0..=2 => Actor {
                    kind: ActorKind::EndUser,
                    id: users[i % 3].id.to_string(),
                    name: None,
                },
                3 | 4 => agent("agent-7"),
                _ => Actor {
                    kind: if next(2) == 0 {
                        ActorKind::Bot
                    } else {
                        ActorKind::System
                    },
                    id: "helper".into(),
                    name: None,
                },
            };
            let mut m = new_message(&c, &format!("c{i} m{j}"), Some(&format!("c{i}-{j}")));
            m.sender = sender;
            let sent = store.append_message(&m).await.expect("send");
            assert!(sent.created);
            assert_eq!(sent.message.created_at, clock.now(), "the store's clock");
        }
        let close = |status| ConversationPatch {
            status: Some(status),
            ..ConversationPatch::default()
        };
        if next(3) > 0 {
            clock.advance(minutes(1 + next(180)));
            let closed = store
                .update_conversation(project.id, c.id, &close(ConversationStatus::Closed))
                .await
                .expect("close")
                .expect("exists");
            assert_eq!(closed.updated_at, clock.now());
            closed_at.insert(c.id, closed.updated_at);
            if !reopened && next(2) == 0 {
                reopened = true;
                clock.advance(minutes(1 + next(30)));
                store
                    .update_conversation(project.id, c.id, &close(ConversationStatus::Open))
                    .await
                    .expect("reopen")
                    .expect("exists");
                closed_at.remove(&c.id);
            }
        }
    }
    let end = clock.now();
    let hour = TimeDelta::hours(1);
    let day = TimeDelta::days(1);
    let range = |from, to, g| AnalyticsRange::new(from, to, g).expect("range");
    let ranges = [
        range(start - hour, end + hour, Granularity::Hour),
        range(start - hour, end + hour, Granularity::Day),
        // Starting and ending mid-day.
        range(
            start + hour * 5 + minutes(17),
            start + day * 2 + hour * 13 + minutes(29),
            Granularity::Hour,
        ),
        range(
            start + hour * 5 + minutes(17),
            start + day * 2 + hour * 13 + minutes(29),
            Granularity::Day,
        ),
        // Within one day.
        range(
            start + day + hour * 3,
            start + day + hour * 20,
            Granularity::Hour,
        ),
        range(start + hour * 30, end - hour * 7, Granularity::Day),
    ];
    // Read "an hour after" the last write: every hour of the history is over.
    clock.advance(hour * 2);
    for round in ["first read", "second read (sealed hours)"] {
        for range in ranges {
            let expected = brute_force_analytics(store, project.id, range, &closed_at).await;
            let data = store
                .analytics(project.id, &range)
                .await
                .expect("analytics");
            let got = ProjectAnalytics::compute(range, data);
            assert_eq!(got, expected, "{round}: analytics over {range:?}");
        }
    }
    let all = brute_force_analytics(store, project.id, ranges[1], &closed_at).await;
    let sent: u64 = all.messages.iter().map(|b| b.count).sum();
    let days_with_messages = all.messages.iter().filter(|b| b.count > 0).count();
    println!(
        "{sent} messages over {days_with_messages} days, {} answered, {} resolved, open {} \
         closed {}",
        all.first_response.count, all.resolution.count, all.open, all.closed
    );
    // Not trivially empty: the history spans days, has answers and resolutions.
    assert!(days_with_messages >= 2, "{all:?}");
    assert!(all.resolution.count > 0, "{all:?}");
    assert!(all.open + all.closed == 16, "{all:?}");
}

// ---------------------------------------------------------------------------------------------
// Team members and invites
// ---------------------------------------------------------------------------------------------

/// A fresh admin (stored) and its membership value for `project` with `role`.
async fn new_member(store: &TestStore, project: ProjectId, role: ProjectRole) -> Member {
    let admin = admin_user_value(&format!("{}@example.com", unique("member")));
    store.create_admin_user(&admin).await.expect("create admin");
    Member {
        project_id: project,
        admin_id: admin.id,
        email: admin.email.clone(),
        name: unique("name"),
        role,
        created_at: model::now(),
    }
}

fn is_conflict<T: std::fmt::Debug>(r: Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::Conflict(_)))
}

/// A new project's owner is its `owner` member; members are added once, listed oldest first,
/// change role and leave; the last owner can be neither demoted nor removed; "my projects"
/// pages newest first with the role; deleting the project removes its team.
pub async fn team_members(store: &TestStore) {
    let project = new_project(store).await;
    let owner = store
        .member(project.id, project.owner_id)
        .await
        .unwrap()
        .expect("the creator is a member");
    assert_eq!(owner.role, ProjectRole::Owner);
    assert_eq!(owner.created_at, project.created_at);
    assert!(owner.email.ends_with("@example.com"));

    let agent = new_member(store, project.id, ProjectRole::Agent).await;
    store.add_member(&agent).await.expect("add agent");
    assert!(
        is_conflict(
            store
                .add_member(&Member {
                    role: ProjectRole::Owner,
                    ..agent.clone()
                })
                .await
        ),
        "a member is added once"
    );
    assert_eq!(
        store.member(project.id, agent.admin_id).await.unwrap(),
        Some(agent.clone()),
        "the second add changed nothing"
    );
    let list = store.list_members(project.id).await.unwrap();
    assert_eq!(
        list.iter().map(|m| m.admin_id).collect::<Vec<_>>(),
        vec![project.owner_id, agent.admin_id],
        "oldest first"
    );

    // The only owner: neither demoted nor removed.
    assert!(is_conflict(
        store
            .set_member_role(project.id, project.owner_id, ProjectRole::Admin)
            .await
    ));
    assert!(is_conflict(
        store.remove_member(project.id, project.owner_id).await
    ));
    assert_eq!(
        store
            .member(project.id, project.owner_id)
            .await
            .unwrap()
            .map(|m| m.role),
        Some(ProjectRole::Owner)
    );

    // With a second owner, the first may step down.
    let promoted = store
        .set_member_role(project.id, agent.admin_id, ProjectRole::Owner)
        .await
        .unwrap()
        .expect("member");
    assert_eq!(promoted.role, ProjectRole::Owner);
    let demoted = store
        .set_member_role(project.id, project.owner_id, ProjectRole::Admin)
        .await
        .unwrap()
        .expect("member");
    assert_eq!(demoted.role, ProjectRole::Admin);
    assert!(is_conflict(
        store.remove_member(project.id, agent.admin_id).await
    ));
    assert!(
        store
            .remove_member(project.id, project.owner_id)
            .await
            .unwrap()
    );
    assert!(
        !store
            .remove_member(project.id, project.owner_id)
            .await
            .unwrap()
    );
    assert_eq!(
        store.member(project.id, project.owner_id).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .set_member_role(project.id, project.owner_id, ProjectRole::Agent)
            .await
            .unwrap(),
        None,
        "not a member"
    );
    // Another project's member is not this one's.
    let other = new_project(store).await;
    assert_eq!(store.member(other.id, agent.admin_id).await.unwrap(), None);
    assert_eq!(
        store.member(project.id, other.owner_id).await.unwrap(),
        None
    );

    // "My projects": the agent (now owner of `project`) joins three more, newest first.
    let mut joined = vec![project.id];
    for role in [ProjectRole::Agent, ProjectRole::Admin, ProjectRole::Agent] {
        let p = new_project(store).await;
        store
            .add_member(&Member {
                project_id: p.id,
                role,
                ..agent.clone()
            })
            .await
            .unwrap();
        joined.push(p.id);
    }
    joined.reverse();
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .member_projects(agent.admin_id, cursor, 3)
            .await
            .unwrap();
        seen.extend(page.items.iter().map(|(p, r)| (p.id, *r)));
        if !page.has_more {
            break;
        }
        cursor = page.items.last().map(|(p, _)| p.id);
    }
    assert_eq!(seen.iter().map(|(p, _)| *p).collect::<Vec<_>>(), joined);
    assert_eq!(seen.last().map(|(_, r)| *r), Some(ProjectRole::Owner));
    assert_eq!(seen[0].1, ProjectRole::Agent);
    assert_eq!(seen[1].1, ProjectRole::Admin);

    // Deleting a project removes its team and its place in "my projects".
    assert!(store.delete_project(joined[0]).await.unwrap());
    assert_eq!(store.member(joined[0], agent.admin_id).await.unwrap(), None);
    let page = store
        .member_projects(agent.admin_id, None, 10)
        .await
        .unwrap();
    assert_eq!(page.items.len(), 3);
    assert!(page.items.iter().all(|(p, _)| p.id != joined[0]));
    assert!(store.list_members(joined[0]).await.unwrap().is_empty());
}

/// Two owners demoting (or removing) each other at once: exactly one wins, and the project
/// keeps an owner.
pub async fn team_last_owner_concurrent(store: &TestStore) {
    for round in 0..6 {
        let project = new_project(store).await;
        let second = new_member(store, project.id, ProjectRole::Owner).await;
        store.add_member(&second).await.unwrap();
        let a = project.owner_id;
        let b = second.admin_id;
        let (sa, sb) = (store.clone(), store.clone());
        let pid = project.id;
        let remove = round % 2 == 1;
        let ta = tokio::spawn(async move {
            if remove {
                sa.remove_member(pid, b).await.map(|_| ())
            } else {
                sa.set_member_role(pid, b, ProjectRole::Agent)
                    .await
                    .map(|_| ())
            }
        });
        let tb = tokio::spawn(async move {
            sb.set_member_role(pid, a, ProjectRole::Admin)
                .await
                .map(|_| ())
        });
        let (ra, rb) = (ta.await.unwrap(), tb.await.unwrap());
        let ok = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 1, "exactly one of two owners steps down: {ra:?} {rb:?}");
        assert!(
            [&ra, &rb]
                .iter()
                .any(|r| matches!(r, Err(StoreError::Conflict(_))))
        );
        let owners = store
            .list_members(pid)
            .await
            .unwrap()
            .into_iter()
            .filter(|m| m.role == ProjectRole::Owner)
            .count();
        assert_eq!(owners, 1, "the project keeps exactly one owner");
    }
}

fn invite_value(project: &Project, role: ProjectRole, expires_in: Duration) -> (Invite, String) {
    let id = InviteId::new_v7();
    let token = team::generate_invite_token(project.id, id);
    let t = model::now();
    (
        Invite {
            id,
            project_id: project.id,
            email: format!("{}@example.com", unique("invitee")),
            role,
            invited_by: project.owner_id,
            token_hash: token.hash,
            created_at: t,
            expires_at: t + expires_in,
            accepted_at: None,
        },
        token.plaintext,
    )
}

/// Invites are stored, listed newest first, used once with the right token before they
/// expire, and deleted; another project never sees them.
pub async fn team_invites(store: &TestStore) {
    let project = new_project(store).await;
    let (first, _) = invite_value(&project, ProjectRole::Agent, Duration::days(7));
    let (second, token) = invite_value(&project, ProjectRole::Admin, Duration::days(7));
    store.create_invite(&first).await.unwrap();
    store.create_invite(&second).await.unwrap();
    assert!(is_conflict(store.create_invite(&second).await));
    assert_eq!(
        store.invite(project.id, second.id).await.unwrap(),
        Some(second.clone())
    );
    let listed = store.list_invites(project.id).await.unwrap();
    assert_eq!(
        listed.iter().map(|i| i.id).collect::<Vec<_>>(),
        vec![second.id, first.id],
        "newest first"
    );
    let other = new_project(store).await;
    assert_eq!(store.invite(other.id, second.id).await.unwrap(), None);
    assert!(store.list_invites(other.id).await.unwrap().is_empty());
    assert!(!store.delete_invite(other.id, second.id).await.unwrap());

    let at = model::now();
    // The wrong token, the wrong project: nothing.
    let parsed = team::ParsedInviteToken::parse(&token).unwrap();
    assert!(
        store
            .claim_invite(project.id, second.id, &first.token_hash, at)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .claim_invite(other.id, second.id, &parsed.hash(), at)
            .await
            .unwrap()
            .is_none()
    );
    // After its expiry: nothing.
    assert!(
        store
            .claim_invite(project.id, second.id, &parsed.hash(), second.expires_at)
            .await
            .unwrap()
            .is_none()
    );
    let used = store
        .claim_invite(project.id, second.id, &parsed.hash(), at)
        .await
        .unwrap()
        .expect("claimed");
    assert_eq!(used.accepted_at, Some(at));
    assert_eq!(used.role, ProjectRole::Admin);
    assert!(
        store
            .claim_invite(project.id, second.id, &parsed.hash(), at)
            .await
            .unwrap()
            .is_none(),
        "single use"
    );
    assert!(
        !store
            .invite(project.id, second.id)
            .await
            .unwrap()
            .unwrap()
            .is_pending_at(at)
    );

    assert!(store.delete_invite(project.id, first.id).await.unwrap());
    assert!(!store.delete_invite(project.id, first.id).await.unwrap());
    assert_eq!(store.invite(project.id, first.id).await.unwrap(), None);

    // An invite stored already expired is never claimed.
    let (expired, _) = invite_value(&project, ProjectRole::Agent, Duration::seconds(-1));
    store.create_invite(&expired).await.unwrap();
    assert!(
        store
            .claim_invite(project.id, expired.id, &expired.token_hash, model::now())
            .await
            .unwrap()
            .is_none()
    );

    assert!(store.delete_project(project.id).await.unwrap());
    assert_eq!(store.invite(project.id, expired.id).await.unwrap(), None);
}

/// Concurrent claims of one invite: exactly one succeeds.
pub async fn team_invites_concurrent_claim(store: &TestStore) {
    let project = new_project(store).await;
    let (invite, _) = invite_value(&project, ProjectRole::Agent, Duration::days(7));
    store.create_invite(&invite).await.unwrap();
    let mut tasks = JoinSet::new();
    for _ in 0..8 {
        let store = store.clone();
        let invite = invite.clone();
        tasks.spawn(async move {
            store
                .claim_invite(
                    invite.project_id,
                    invite.id,
                    &invite.token_hash,
                    model::now(),
                )
                .await
        });
    }
    let mut won = 0;
    while let Some(r) = tasks.join_next().await {
        if r.unwrap().expect("claim").is_some() {
            won += 1;
        }
    }
    assert_eq!(won, 1, "one invite, one use");
}
