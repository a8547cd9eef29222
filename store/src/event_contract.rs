//! The contract suite of the durable event log: every backend that stores changes and logs
//! their events ([`Store`] + [`EventLog`] over the same data) must pass it.
//!
//! Each check takes the store and the log under test, works in a fresh project, and reads the
//! log through a consumer of its own (a fresh name), keeping only its project's events, so the
//! checks can share one log with others. They synchronise on events (a marker change whose
//! event must come after the ones under test), never on sleeps.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use larachat_core::event::{
    ConsumerName, ConsumerOptions, Delivery, DomainEvent, EventConsumer, EventData, EventKind,
    EventLog,
};
use larachat_core::id::{AdminUserId, ConversationId, EndUserId, EventId, MessageId, ProjectId};
use larachat_core::model::{
    self, Actor, ActorKind, AdminUser, Conversation, ConversationPatch, ConversationStatus,
    EndUserPatch, NewMessage, PlanId, Project, ProjectStatus,
};

use crate::{CreationKey, NewEndUser, Store, StoreError};

/// The store under test.
pub type TestStore = Arc<dyn Store>;
/// The event log under test (over the same data as the store).
pub type TestLog = Arc<dyn EventLog>;

/// Calls the macro `$m` with the name of every event-log check (see `contract`).
#[macro_export]
macro_rules! for_each_event_check {
    ($m:ident) => {
        $m!(
            every_change_logs_exactly_its_events,
            unacked_events_are_redelivered_with_the_same_id,
            workers_of_one_consumer_share_the_events,
            consumers_are_independent,
            usage_warnings_are_logged_once_at_80_and_100_percent,
            a_conversation_key_logs_one_creation,
        );
    };
}

/// Longest wait for an event that must come: generous, a correctness bound.
const PATIENCE: Duration = Duration::from_secs(20);

/// A consumer name no other check uses.
pub fn fresh_consumer() -> ConsumerName {
    ConsumerName::new(&format!("test-{}", Uuid::new_v4().simple())).expect("valid name")
}

/// A fresh admin and project.
pub async fn new_project(store: &TestStore) -> ProjectId {
    let t = model::now();
    let admin = AdminUser {
        id: AdminUserId::new_v7(),
        email: format!("events-{}@example.com", Uuid::new_v4().simple()),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        created_at: t,
    };
    store.create_admin_user(&admin).await.expect("admin");
    let project = Project {
        id: ProjectId::new_v7(),
        name: "events".into(),
        owner_id: admin.id,
        plan: PlanId::parse("starter").unwrap(),
        status: ProjectStatus::Active,
        settings: json!({}),
        created_at: t,
        updated_at: t,
    };
    store.create_project(&project).await.expect("project");
    project.id
}

/// A change whose event marks "everything before it has been logged": an anonymous user.
pub async fn marker(store: &TestStore, project: ProjectId) -> EndUserId {
    let (user, created) = store
        .upsert_end_user(project, &anonymous())
        .await
        .expect("marker user");
    assert!(created);
    user.id
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

fn is_marker(e: &DomainEvent, marker: EndUserId) -> bool {
    matches!(&e.data, EventData::UserCreated(u) if u.user_id == marker)
}

/// An event as received, once acknowledged.
#[derive(Debug, Clone)]
pub struct Got {
    pub event: DomainEvent,
    pub attempt: u64,
}

/// Fetches `project`'s events until the marker's `user.created` arrives (included in the
/// result, unacknowledged); other projects' events are acknowledged and skipped.
pub async fn until_marker(
    consumer: &mut dyn EventConsumer,
    project: ProjectId,
    marker: EndUserId,
) -> Vec<Delivery> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(!left.is_zero(), "the marker event never arrived");
        let batch = consumer.fetch(64, left).await.expect("fetch");
        let mut done = false;
        for d in batch {
            if d.event.project_id != project {
                d.ack().await.expect("ack");
                continue;
            }
            done |= is_marker(&d.event, marker);
            out.push(d);
        }
        if done {
            return out;
        }
    }
}

/// Acknowledges every delivery.
pub async fn ack_all(deliveries: Vec<Delivery>) -> Vec<Got> {
    let mut out = Vec::with_capacity(deliveries.len());
    for d in deliveries {
        let got = Got {
            event: d.event.clone(),
            attempt: d.attempt,
        };
        d.ack().await.expect("ack");
        out.push(got);
    }
    out
}

/// [`until_marker`], then [`ack_all`].
pub async fn acked_until_marker(
    consumer: &mut dyn EventConsumer,
    project: ProjectId,
    marker: EndUserId,
) -> Vec<Got> {
    ack_all(until_marker(consumer, project, marker).await).await
}

fn agent() -> Actor {
    Actor {
        kind: ActorKind::Agent,
        id: "agent-1".into(),
        name: Some("Ada".into()),
    }
}

/// Every operation logs exactly its event(s), in commit order, with the stored values; a change
/// that failed or changed nothing logs none.
pub async fn every_change_logs_exactly_its_events(store: &TestStore, log: &TestLog) {
    let project = new_project(store).await;
    let mut consumer = log
        .consumer(&fresh_consumer(), ConsumerOptions::default())
        .await
        .expect("consumer");

    let identifier = format!("u-{}", Uuid::new_v4().simple());
    let new_user = NewEndUser {
        user_identifier: Some(identifier.clone()),
        name: Some("Ada".into()),
        email: Some("ada@example.com".into()),
        avatar: None,
        metadata: json!({"plan": "gold"}),
    };
    let (user, created) = store.upsert_end_user(project, &new_user).await.unwrap();
    assert!(created);
    // Identified again with the same profile: nothing changed, no event.
    store.upsert_end_user(project, &new_user).await.unwrap();
    // Identified with a new name: user.updated.
    let renamed = NewEndUser {
        name: Some("Ada L".into()),
        ..new_user.clone()
    };
    store.upsert_end_user(project, &renamed).await.unwrap();
    // A heartbeat is not a profile change.
    store
        .update_end_user(
            project,
            user.id,
            &EndUserPatch {
                last_seen_at: Some(model::now()),
                ..EndUserPatch::default()
            },
        )
        .await
        .unwrap()
        .expect("user");
    let updated_user = store
        .update_end_user(
            project,
            user.id,
            &EndUserPatch {
                email: Some(Some("ada@example.org".into())),
                ..EndUserPatch::default()
            },
        )
        .await
        .unwrap()
        .expect("user");

    let t = model::now();
    let conv = Conversation {
        id: ConversationId::new_v7(),
        project_id: project,
        subject: Some("Billing".into()),
        status: ConversationStatus::Open,
        members: vec![user.id],
        metadata: json!({}),
        created_at: t,
        updated_at: t,
        last_message_id: None,
        assignee: None,
    };
    store.create_conversation(&conv).await.unwrap();
    // Failed: an unknown member; nothing created, nothing logged.
    let bad = Conversation {
        id: ConversationId::new_v7(),
        members: vec![EndUserId::new_v7()],
        ..conv.clone()
    };
    assert!(matches!(
        store.create_conversation(&bad).await,
        Err(StoreError::NotFound(_))
    ));
    let sent = store
        .append_message(&NewMessage {
            project_id: project,
            conversation_id: conv.id,
            sender: agent(),
            text: "hello".into(),
            metadata: json!({"k": 1}),
            client_msg_id: Some("c-1".into()),
        })
        .await
        .unwrap();
    assert!(sent.created);
    // An idempotent repeat: no second event.
    let repeat = store
        .append_message(&NewMessage {
            project_id: project,
            conversation_id: conv.id,
            sender: agent(),
            text: "hello".into(),
            metadata: json!({"k": 1}),
            client_msg_id: Some("c-1".into()),
        })
        .await
        .unwrap();
    assert!(!repeat.created);
    // Failed: a missing conversation.
    assert!(
        store
            .append_message(&NewMessage {
                project_id: project,
                conversation_id: ConversationId::new_v7(),
                sender: agent(),
                text: "lost".into(),
                metadata: json!({}),
                client_msg_id: None,
            })
            .await
            .is_err()
    );
    let reader = Actor::end_user(user.id, None);
    let read = store
        .mark_read(project, conv.id, &reader, sent.message.id, model::now())
        .await
        .unwrap();
    // Backwards: the marker stays, no event.
    store
        .mark_read(project, conv.id, &reader, MessageId::MIN, model::now())
        .await
        .unwrap();
    let renamed_conv = store
        .update_conversation(
            project,
            conv.id,
            &ConversationPatch {
                subject: Some(Some("Billing 2".into())),
                assignee: Some(Some("ana@acme".into())),
                ..ConversationPatch::default()
            },
        )
        .await
        .unwrap()
        .expect("conversation");
    let closed = store
        .update_conversation(
            project,
            conv.id,
            &ConversationPatch {
                status: Some(ConversationStatus::Closed),
                ..ConversationPatch::default()
            },
        )
        .await
        .unwrap()
        .expect("conversation");
    // A missing conversation: no event.
    assert!(
        store
            .update_conversation(
                project,
                ConversationId::new_v7(),
                &ConversationPatch::default()
            )
            .await
            .unwrap()
            .is_none()
    );
    let mark = marker(store, project).await;

    let got = acked_until_marker(consumer.as_mut(), project, mark).await;
    let kinds: Vec<EventKind> = got.iter().map(|d| d.event.kind()).collect();
    assert_eq!(
        kinds,
        [
            EventKind::UserCreated,
            EventKind::UserUpdated,
            EventKind::UserUpdated,
            EventKind::ConversationCreated,
            EventKind::MessageSent,
            EventKind::MessageRead,
            EventKind::ConversationUpdated,
            EventKind::ConversationClosed,
            EventKind::UserCreated,
        ],
        "events of the changes, in commit order"
    );
    let ids: HashSet<EventId> = got.iter().map(|d| d.event.id).collect();
    assert_eq!(ids.len(), got.len(), "every event has its own id");
    for d in &got {
        assert_eq!(d.attempt, 1);
        assert_eq!(d.event.project_id, project);
        assert_eq!(d.event.id.as_uuid().get_version_num(), 7);
    }
    match &got[0].event.data {
        EventData::UserCreated(u) => {
            assert_eq!(u.user_id, user.id);
            assert_eq!(u.user_identifier.as_deref(), Some(identifier.as_str()));
            assert_eq!(u.name.as_deref(), Some("Ada"));
        }
        other => panic!("{other:?}"),
    }
    match &got[1].event.data {
        EventData::UserUpdated(u) => assert_eq!(u.name.as_deref(), Some("Ada L")),
        other => panic!("{other:?}"),
    }
    match &got[2].event.data {
        EventData::UserUpdated(u) => {
            assert_eq!(u.email, updated_user.email);
            assert_eq!(u.updated_at, updated_user.updated_at);
        }
        other => panic!("{other:?}"),
    }
    match &got[3].event.data {
        EventData::ConversationCreated(c) => {
            assert_eq!(c.conversation_id, conv.id);
            assert_eq!(c.members, vec![user.id]);
            assert_eq!(c.status, ConversationStatus::Open);
        }
        other => panic!("{other:?}"),
    }
    match &got[4].event.data {
        EventData::MessageSent(m) => {
            assert_eq!(m.message_id, sent.message.id);
            assert_eq!(m.seq, sent.message.seq);
            assert_eq!(m.text, "hello");
            assert_eq!(m.sender, agent());
            assert_eq!(m.client_msg_id.as_deref(), Some("c-1"));
            assert_eq!(m.created_at, sent.message.created_at);
            assert_eq!(got[4].event.occurred_at, sent.message.created_at);
        }
        other => panic!("{other:?}"),
    }
    match &got[5].event.data {
        EventData::MessageRead(r) => {
            assert_eq!(r.message_id, sent.message.id);
            assert_eq!(r.reader, reader);
            assert_eq!(r.read_at, read.updated_at);
        }
        other => panic!("{other:?}"),
    }
    match &got[6].event.data {
        EventData::ConversationUpdated(c) => {
            assert_eq!(c.subject.as_deref(), Some("Billing 2"));
            assert_eq!(c.assignee.as_deref(), Some("ana@acme"), "the assignment");
            assert_eq!(c.updated_at, renamed_conv.updated_at);
        }
        other => panic!("{other:?}"),
    }
    match &got[7].event.data {
        EventData::ConversationClosed(c) => {
            assert_eq!(c.status, ConversationStatus::Closed);
            assert_eq!(c.updated_at, closed.updated_at);
            assert_eq!(c.assignee.as_deref(), Some("ana@acme"), "kept on close");
        }
        other => panic!("{other:?}"),
    }
}

/// An event fetched and not acknowledged comes back after the ack wait, with the same id and
/// the next attempt number; once acknowledged it does not come back.
pub async fn unacked_events_are_redelivered_with_the_same_id(store: &TestStore, log: &TestLog) {
    let project = new_project(store).await;
    let options = ConsumerOptions {
        ack_wait: Duration::from_millis(300),
    };
    let mut consumer = log
        .consumer(&fresh_consumer(), options)
        .await
        .expect("consumer");
    let mark = marker(store, project).await;
    let first = until_marker(consumer.as_mut(), project, mark).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].attempt, 1);
    let id = first[0].event.id;
    drop(first);
    let again = until_marker(consumer.as_mut(), project, mark).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].event.id, id, "the redelivery carries the same id");
    assert_eq!(again[0].attempt, 2);
    ack_all(again).await;
    // Acknowledged: a later marker arrives, the first one does not come back.
    let mark2 = marker(store, project).await;
    let after = acked_until_marker(consumer.as_mut(), project, mark2).await;
    let ids: Vec<EventId> = after.iter().map(|d| d.event.id).collect();
    assert_eq!(ids.len(), 1, "only the new marker: {ids:?}");
    assert_ne!(ids[0], id);
}

/// Two workers of one consumer: each event goes to one of them (while acknowledged in time),
/// together they get all.
pub async fn workers_of_one_consumer_share_the_events(store: &TestStore, log: &TestLog) {
    let project = new_project(store).await;
    let name = fresh_consumer();
    let options = ConsumerOptions {
        ack_wait: Duration::from_secs(60),
    };
    let a = log.consumer(&name, options).await.expect("worker a");
    let b = log.consumer(&name, options).await.expect("worker b");
    const N: usize = 40;
    let mut expected = BTreeSet::new();
    for _ in 0..N {
        expected.insert(marker(store, project).await);
    }
    let seen = Arc::new(parking_lot::Mutex::new(Vec::<(char, EndUserId)>::new()));
    let run = |mut worker: Box<dyn EventConsumer>, tag: char| {
        let seen = seen.clone();
        let expected = expected.len();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + PATIENCE;
            while seen.lock().len() < expected && tokio::time::Instant::now() < deadline {
                let batch = worker
                    .fetch(3, Duration::from_millis(200))
                    .await
                    .expect("fetch");
                for d in batch {
                    if d.event.project_id == project {
                        if let EventData::UserCreated(u) = &d.event.data {
                            seen.lock().push((tag, u.user_id));
                        }
                    }
                    d.ack().await.expect("ack");
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let (ra, rb) = tokio::join!(run(a, 'a'), run(b, 'b'));
    ra.expect("worker a");
    rb.expect("worker b");
    let seen = seen.lock().clone();
    let ids: Vec<EndUserId> = seen.iter().map(|(_, id)| *id).collect();
    let distinct: BTreeSet<EndUserId> = ids.iter().copied().collect();
    assert_eq!(distinct, expected, "together the workers got every event");
    assert_eq!(ids.len(), N, "no event went to both workers");
}

/// Two consumers (two names) each get every event.
pub async fn consumers_are_independent(store: &TestStore, log: &TestLog) {
    let project = new_project(store).await;
    let mut one = log
        .consumer(&fresh_consumer(), ConsumerOptions::default())
        .await
        .expect("one");
    let mut two = log
        .consumer(&fresh_consumer(), ConsumerOptions::default())
        .await
        .expect("two");
    let first = marker(store, project).await;
    let mark = marker(store, project).await;
    for consumer in [one.as_mut(), two.as_mut()] {
        let got = acked_until_marker(consumer, project, mark).await;
        let users: Vec<EndUserId> = got
            .iter()
            .filter_map(|d| match &d.event.data {
                EventData::UserCreated(u) => Some(u.user_id),
                _ => None,
            })
            .collect();
        assert_eq!(users, vec![first, mark]);
    }
}

/// A change that makes a monthly count reach 80 % or 100 % of its plan limit logs
/// `usage.threshold_reached` once per threshold (after the change's own event); the refused
/// change after the limit and the changes below a threshold log none.
pub async fn usage_warnings_are_logged_once_at_80_and_100_percent(
    store: &TestStore,
    log: &TestLog,
) {
    use larachat_core::plan::{PlanLimits, QuotaMetric};
    // A plan of its own: other checks share the store and its seeded plans.
    let plan = crate::contract::custom_plan(
        store,
        PlanLimits {
            monthly_active_users: Some(10),
            messages_per_month: Some(5),
            projects_per_owner: None,
        },
    )
    .await;
    let project = crate::contract::project_on(store, &plan).await.id;
    let mut consumer = log
        .consumer(&fresh_consumer(), ConsumerOptions::default())
        .await
        .expect("consumer");

    // 8 end users: 80 % of 10 monthly active users.
    for _ in 0..8 {
        store
            .upsert_end_user(project, &anonymous())
            .await
            .expect("user");
    }
    let conv = crate::contract::new_conversation(store, project, &[]).await;
    let send = |i: usize| NewMessage {
        project_id: project,
        conversation_id: conv.id,
        sender: agent(),
        text: format!("m{i}"),
        metadata: json!({}),
        client_msg_id: Some(format!("w-{i}")),
    };
    // 5 messages: 80 % at the 4th, 100 % at the 5th; a retry of the 5th and the refused 6th
    // log nothing.
    for i in 1..=5 {
        assert!(store.append_message(&send(i)).await.expect("send").created);
    }
    assert!(!store.append_message(&send(5)).await.expect("retry").created);
    assert!(matches!(
        store.append_message(&send(6)).await,
        Err(StoreError::QuotaExceeded(_))
    ));
    // The marker is the 9th active user: below 100 %.
    let m = marker(store, project).await;
    let got = acked_until_marker(consumer.as_mut(), project, m).await;
    let warnings: Vec<(QuotaMetric, u8, u64, u64)> = got
        .iter()
        .filter_map(|g| match &g.event.data {
            EventData::UsageThresholdReached(w) => {
                assert_eq!(w.plan, plan.id);
                assert_eq!(w.resets_at, w.period.resets_at());
                Some((w.metric, w.threshold_percent, w.used, w.limit))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        warnings,
        [
            (QuotaMetric::MonthlyActiveUsers, 80, 8, 10),
            (QuotaMetric::MessagesPerMonth, 80, 4, 5),
            (QuotaMetric::MessagesPerMonth, 100, 5, 5),
        ],
        "{got:?}"
    );
    // Each after the change that reached it: the 4th message's event comes before the first
    // messages warning.
    let position =
        |f: &dyn Fn(&EventData) -> bool| got.iter().position(|g| f(&g.event.data)).expect("event");
    let fourth = position(&|d| matches!(d, EventData::MessageSent(m) if m.text == "m4"));
    let warned = position(
        &|d| matches!(d, EventData::UsageThresholdReached(w) if w.metric == QuotaMetric::MessagesPerMonth),
    );
    assert!(fourth < warned, "{got:?}");
}

/// A conversation created three times with one idempotency key (the answer lost, the request
/// sent again) logs one `conversation.created`, with the id derived from the conversation's;
/// the same key from another caller is another conversation with its own event.
pub async fn a_conversation_key_logs_one_creation(store: &TestStore, log: &TestLog) {
    let project = new_project(store).await;
    let mut consumer = log
        .consumer(&fresh_consumer(), ConsumerOptions::default())
        .await
        .expect("consumer");
    let key = |caller: &str| CreationKey {
        caller: caller.into(),
        key: "retry-1".into(),
    };
    let fresh = || {
        let t = model::now();
        Conversation {
            id: ConversationId::new_v7(),
            project_id: project,
            subject: Some("once".into()),
            status: ConversationStatus::Open,
            members: vec![],
            metadata: json!({}),
            created_at: t,
            updated_at: t,
            last_message_id: None,
            assignee: None,
        }
    };
    let mut answers = Vec::new();
    for _ in 0..3 {
        let (c, created) = store
            .create_conversation_keyed(&fresh(), &key("key:a"))
            .await
            .expect("create");
        answers.push((c.id, created));
    }
    let first = answers[0].0;
    assert_eq!(answers, [(first, true), (first, false), (first, false)]);
    let (other, created) = store
        .create_conversation_keyed(&fresh(), &key("key:b"))
        .await
        .expect("other caller");
    assert!(
        created && other.id != first,
        "another caller's key is its own"
    );
    let mark = marker(store, project).await;
    let got = acked_until_marker(consumer.as_mut(), project, mark).await;
    let created: Vec<(EventId, ConversationId)> = got
        .iter()
        .filter_map(|g| match &g.event.data {
            EventData::ConversationCreated(c) => Some((g.event.id, c.conversation_id)),
            _ => None,
        })
        .collect();
    assert_eq!(
        created,
        [
            (EventId::of_conversation_created(first), first),
            (EventId::of_conversation_created(other.id), other.id)
        ],
        "one conversation.created per key and caller"
    );
}
