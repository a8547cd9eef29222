//! The contract every [`WebhookStore`] passes: `tests/store_sqlite.rs` runs it on SQLite,
//! `tests/store_scylla.rs` on Cassandra. Each check takes fresh project ids, so backends may
//! share a database between checks.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

use larachat_core::event::EventKind;
use larachat_core::id::{EventId, ProjectId};

use super::{MAX_ENDPOINTS_PER_PROJECT, WebhookStore, WebhookStoreError};
use crate::model::{
    Attempt, Delivery, DeliveryQuery, DeliveryStatus, Endpoint, EndpointId, EventFilter,
};
use crate::signing::Secret;

/// Runs every check against `store`.
pub async fn run_all(store: Arc<dyn WebhookStore>) {
    endpoints_crud_and_tenancy(&*store).await;
    endpoint_cap(&*store).await;
    enqueue_is_once_per_endpoint_and_event(&*store).await;
    claim_leases_to_one_caller(&*store).await;
    concurrent_claims_never_share_a_delivery(&*store).await;
    attempts_are_logged_and_redeliver_restarts(&*store).await;
    listing_filters_and_pages(&*store).await;
}

/// A time the store keeps to the millisecond.
fn t(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(larachat_core::model::now().timestamp_millis() + secs * 1000)
        .unwrap_or_default()
}

pub fn endpoint(project: ProjectId) -> Endpoint {
    let now = t(0);
    Endpoint {
        id: EndpointId::new_v7(),
        project_id: project,
        url: "https://hooks.example.com/in".into(),
        description: "orders".into(),
        filter: EventFilter::Only(vec![EventKind::MessageSent, EventKind::ConversationClosed]),
        enabled: true,
        disabled_reason: None,
        secret: Secret::generate(),
        previous_secret: None,
        created_at: now,
        updated_at: now,
    }
}

async fn endpoints_crud_and_tenancy(s: &dyn WebhookStore) {
    let (p, other) = (ProjectId::new_v7(), ProjectId::new_v7());
    let mut e = endpoint(p);
    s.create_endpoint(&e).await.unwrap();
    assert_eq!(s.get_endpoint(p, e.id).await.unwrap(), Some(e.clone()));
    assert_eq!(s.get_endpoint(other, e.id).await.unwrap(), None, "tenancy");
    assert!(s.list_endpoints(other).await.unwrap().is_empty());

    let old = e.secret.clone();
    e.secret = Secret::generate();
    e.previous_secret = Some((old, t(86_400)));
    e.filter = EventFilter::All;
    e.enabled = false;
    e.disabled_reason = Some("gone".into());
    e.url = "https://hooks.example.com/v2".into();
    e.updated_at = t(1);
    assert!(s.update_endpoint(&e).await.unwrap());
    assert_eq!(s.get_endpoint(p, e.id).await.unwrap(), Some(e.clone()));
    let mut foreign = e.clone();
    foreign.project_id = other;
    assert!(!s.update_endpoint(&foreign).await.unwrap(), "tenancy");

    let second = endpoint(p);
    s.create_endpoint(&second).await.unwrap();
    let ids: Vec<_> = s
        .list_endpoints(p)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, vec![e.id, second.id]);

    assert!(!s.delete_endpoint(other, e.id).await.unwrap(), "tenancy");
    assert!(s.delete_endpoint(p, e.id).await.unwrap());
    assert!(!s.delete_endpoint(p, e.id).await.unwrap());
    assert_eq!(s.get_endpoint(p, e.id).await.unwrap(), None);
}

async fn endpoint_cap(s: &dyn WebhookStore) {
    let p = ProjectId::new_v7();
    for _ in 0..MAX_ENDPOINTS_PER_PROJECT {
        s.create_endpoint(&endpoint(p)).await.unwrap();
    }
    let r = s.create_endpoint(&endpoint(p)).await;
    assert!(
        matches!(r, Err(WebhookStoreError::TooManyEndpoints)),
        "{r:?}"
    );
}

fn delivery(p: ProjectId, e: EndpointId, ev: EventId, now: DateTime<Utc>) -> Delivery {
    Delivery::new(
        p,
        e,
        ev,
        "message.sent",
        format!("{{\"id\":\"{ev}\"}}"),
        now,
    )
}

async fn enqueue_is_once_per_endpoint_and_event(s: &dyn WebhookStore) {
    let p = ProjectId::new_v7();
    let (e1, e2) = (EndpointId::new_v7(), EndpointId::new_v7());
    let ev = EventId::new_v7();
    let now = t(0);
    assert!(s.enqueue(&delivery(p, e1, ev, now)).await.unwrap());
    assert!(
        !s.enqueue(&delivery(p, e1, ev, t(5))).await.unwrap(),
        "same pair once"
    );
    assert!(
        s.enqueue(&delivery(p, e2, ev, now)).await.unwrap(),
        "another endpoint"
    );
    let got = s.get_delivery(p, e1, ev).await.unwrap().unwrap();
    assert_eq!(got, delivery(p, e1, ev, now), "the first enqueue wins");
    assert_eq!(
        s.get_delivery(ProjectId::new_v7(), e1, ev).await.unwrap(),
        None
    );
}

async fn claim_leases_to_one_caller(s: &dyn WebhookStore) {
    // Claims see every project's due rows: move "now" far into the future past anything
    // other checks left pending, then count only this check's rows.
    let p = ProjectId::new_v7();
    let e = EndpointId::new_v7();
    let base = t(1_000_000);
    let evs: Vec<EventId> = (0..5).map(|_| EventId::new_v7()).collect();
    for ev in &evs {
        s.enqueue(&delivery(p, e, *ev, base)).await.unwrap();
    }
    let later = EventId::new_v7();
    s.enqueue(&delivery(p, e, later, base + Duration::hours(1)))
        .await
        .unwrap();

    let mine = |v: Vec<Delivery>| -> Vec<EventId> {
        v.into_iter()
            .filter(|d| d.project_id == p)
            .map(|d| d.event_id)
            .collect()
    };
    let lease = base + Duration::seconds(60);
    let mut first = Vec::new();
    loop {
        let got = s.claim_due(base, lease, 1000).await.unwrap();
        if got.is_empty() {
            break;
        }
        first.extend(mine(got));
    }
    first.sort();
    assert_eq!(first, evs, "every due row once, the later one not yet");
    assert!(
        mine(
            s.claim_due(base + Duration::seconds(30), lease, 1000)
                .await
                .unwrap()
        )
        .is_empty(),
        "leased"
    );

    // The lease runs out (its worker died): claimable again, with the later one now due.
    let after = base + Duration::hours(2);
    let mut again = Vec::new();
    loop {
        let got = s
            .claim_due(after, after + Duration::seconds(60), 1000)
            .await
            .unwrap();
        if got.is_empty() {
            break;
        }
        again.extend(mine(got));
    }
    assert_eq!(again.len(), 6);
}

/// Two workers claiming one endpoint's deliveries at the same time (on Cassandra: from the
/// same sub-bucket partitions, their LWTs racing) never both get one delivery, and between
/// them they get all of it; the deliveries log lists them in event-id order across the
/// sub-buckets, a page at a time as well as at once.
async fn concurrent_claims_never_share_a_delivery(s: &dyn WebhookStore) {
    let p = ProjectId::new_v7();
    let e = EndpointId::new_v7();
    // Later than anything the other checks leave due (see claim_leases_to_one_caller).
    let base = t(2_000_000);
    let evs: Vec<EventId> = (0..48).map(|_| EventId::new_v7()).collect();
    let batch: Vec<Delivery> = evs.iter().map(|ev| delivery(p, e, *ev, base)).collect();
    assert_eq!(s.enqueue_many(&batch).await.unwrap(), evs.len());
    assert_eq!(s.enqueue_many(&batch).await.unwrap(), 0, "once per pair");

    let lease = base + Duration::seconds(60);
    let worker = || async {
        let mut got = Vec::new();
        loop {
            let claimed = s.claim_due(base, lease, 8).await.unwrap();
            if claimed.is_empty() {
                return got;
            }
            assert!(claimed.len() <= 8, "a claim takes at most its limit");
            got.extend(
                claimed
                    .into_iter()
                    .filter(|d| d.project_id == p)
                    .map(|d| d.event_id),
            );
        }
    };
    let (a, b) = futures::join!(worker(), worker());
    for ev in &a {
        assert!(!b.contains(ev), "{ev} claimed by both workers");
    }
    let mut all: Vec<EventId> = a.into_iter().chain(b).collect();
    all.sort();
    assert_eq!(all, evs, "every delivery claimed once");

    let ids = |v: Vec<Delivery>| v.into_iter().map(|d| d.event_id).collect::<Vec<_>>();
    let everything = DeliveryQuery {
        limit: 100,
        ..Default::default()
    };
    assert_eq!(
        ids(s.list_deliveries(p, e, &everything).await.unwrap()),
        evs
    );
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let q = DeliveryQuery {
            limit: 7,
            after,
            ..Default::default()
        };
        let page = ids(s.list_deliveries(p, e, &q).await.unwrap());
        let Some(last) = page.last() else { break };
        after = Some(*last);
        paged.extend(page);
    }
    assert_eq!(paged, evs, "pages of 7 in order");
}

async fn attempts_are_logged_and_redeliver_restarts(s: &dyn WebhookStore) {
    let p = ProjectId::new_v7();
    let e = EndpointId::new_v7();
    let ev = EventId::new_v7();
    let now = t(0);
    let mut d = delivery(p, e, ev, now);
    s.enqueue(&d).await.unwrap();
    let fail = Attempt {
        project_id: p,
        endpoint_id: e,
        event_id: ev,
        attempt: 1,
        at: now,
        succeeded: false,
        response_code: Some(503),
        response_body: "busy".into(),
        duration_ms: 12,
        error: None,
        next_attempt_at: Some(now + Duration::seconds(16)),
    };
    d.attempts = 1;
    d.series_attempts = 1;
    d.next_attempt_at = fail.next_attempt_at;
    d.last_response_code = Some(503);
    d.updated_at = now;
    s.record_attempt(&fail, &d).await.unwrap();
    let ok = Attempt {
        attempt: 2,
        at: now + Duration::seconds(16),
        succeeded: true,
        response_code: Some(204),
        response_body: String::new(),
        next_attempt_at: None,
        ..fail.clone()
    };
    d.attempts = 2;
    d.series_attempts = 2;
    d.status = DeliveryStatus::Succeeded;
    d.next_attempt_at = None;
    d.last_response_code = Some(204);
    d.updated_at = ok.at;
    s.record_attempt(&ok, &d).await.unwrap();
    assert_eq!(s.get_delivery(p, e, ev).await.unwrap(), Some(d.clone()));
    assert_eq!(s.list_attempts(p, e, ev).await.unwrap(), vec![fail, ok]);
    assert!(
        s.list_attempts(ProjectId::new_v7(), e, ev)
            .await
            .unwrap()
            .is_empty()
    );

    let again = now + Duration::seconds(100);
    assert!(s.redeliver(p, e, ev, again).await.unwrap());
    assert!(
        !s.redeliver(ProjectId::new_v7(), e, ev, again)
            .await
            .unwrap()
    );
    let r = s.get_delivery(p, e, ev).await.unwrap().unwrap();
    assert_eq!(r.status, DeliveryStatus::Pending);
    assert_eq!(
        (r.attempts, r.series_attempts),
        (2, 0),
        "attempt numbers continue"
    );
    assert_eq!(r.series_started_at, again);
    assert_eq!(r.next_attempt_at, Some(again));
}

async fn listing_filters_and_pages(s: &dyn WebhookStore) {
    let p = ProjectId::new_v7();
    let e = EndpointId::new_v7();
    let now = t(0);
    let mut evs = Vec::new();
    for i in 0..6 {
        let ev = EventId::new_v7();
        let mut d = delivery(p, e, ev, now);
        s.enqueue(&d).await.unwrap();
        if i % 2 == 0 {
            d.status = DeliveryStatus::Failed;
            d.next_attempt_at = None;
            d.attempts = 1;
            let a = Attempt {
                project_id: p,
                endpoint_id: e,
                event_id: ev,
                attempt: 1,
                at: now,
                succeeded: false,
                response_code: None,
                response_body: String::new(),
                duration_ms: 0,
                error: Some("timeout".into()),
                next_attempt_at: None,
            };
            s.record_attempt(&a, &d).await.unwrap();
        }
        evs.push(ev);
    }
    let ids = |v: Vec<Delivery>| v.into_iter().map(|d| d.event_id).collect::<Vec<_>>();
    let all = DeliveryQuery {
        limit: 100,
        ..Default::default()
    };
    assert_eq!(ids(s.list_deliveries(p, e, &all).await.unwrap()), evs);
    let page = DeliveryQuery {
        limit: 2,
        after: Some(evs[1]),
        ..Default::default()
    };
    assert_eq!(
        ids(s.list_deliveries(p, e, &page).await.unwrap()),
        evs[2..4]
    );
    let failed = DeliveryQuery {
        status: Some(DeliveryStatus::Failed),
        ..all.clone()
    };
    assert_eq!(
        ids(s.list_deliveries(p, e, &failed).await.unwrap()),
        vec![evs[0], evs[2], evs[4]]
    );
    let range = DeliveryQuery {
        since: Some(now - Duration::minutes(1)),
        until: Some(now + Duration::minutes(1)),
        ..all.clone()
    };
    assert_eq!(ids(s.list_deliveries(p, e, &range).await.unwrap()).len(), 6);
    let past = DeliveryQuery {
        until: Some(now - Duration::minutes(1)),
        ..all.clone()
    };
    assert!(s.list_deliveries(p, e, &past).await.unwrap().is_empty());
    assert!(
        s.list_deliveries(ProjectId::new_v7(), e, &all)
            .await
            .unwrap()
            .is_empty()
    );
}
