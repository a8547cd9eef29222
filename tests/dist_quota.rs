//! Quotas in distributed mode: a real `larachat control-plane` and a real `larachat gateway`
//! over the shared nats-server and Cassandra node (`LARACHAT_TEST_NATS_URL`,
//! `LARACHAT_TEST_CASSANDRA`; without them the test fails, never passes silently). One keyspace
//! for this test binary, migrated by `larachat migrate`.
//!
//! One gateway: the limit is exact there. Three gateways: the overshoot is measured and
//! checked against the bound of docs/usage.md ("Overshoot"), computed from the rates measured
//! in the same run (`cargo test --test dist_quota -- --nocapture` prints the numbers). Two
//! gateways: their edge metering (API requests, peak connections) adds up.

mod common;
mod harness;

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use harness::*;

/// The gateway refuses the message after the plan's limit with `quota_exceeded`, usage equals
/// the store, and a plan change made on the control plane reaches the running gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_enforces_the_plan_and_follows_its_changes() {
    const LIMIT: u64 = 5;
    let c = Cluster::start(1).await;
    let limits = |messages: u64| {
        json!({"limits": {"monthly_active_users": null, "messages_per_month": messages,
                          "projects_per_owner": null}})
    };
    let (s, plan) = c
        .admin(
            Method::PATCH,
            "/api/admin/plans/starter",
            Some(limits(LIMIT)),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    let (s, p) = c
        .admin(
            Method::POST,
            "/api/admin/projects",
            Some(json!({"name": "metered", "plan": "starter"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    let project = p["id"].as_str().unwrap().to_owned();
    let (_, key) = c.key(&project, json!({"name": "k"})).await;
    let (user, _) = c.user(0, &key, "ada").await;
    let conv = c.conversation(0, &key, &[&user]).await;
    let path = format!("/api/v1/conversations/{conv}/messages");

    for i in 0..LIMIT {
        let (s, m) = c
            .client(
                0,
                Method::POST,
                &path,
                &key,
                Some(json!({"text": format!("m{i}"), "client_msg_id": format!("c{i}")})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "message {} of {LIMIT}: {m}", i + 1);
    }
    let over = json!({"text": "one too many", "client_msg_id": "over"});
    let (s, refused) = c
        .client(0, Method::POST, &path, &key, Some(over.clone()))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{refused}");
    assert_eq!(refused["error"]["code"], "quota_exceeded", "{refused}");
    // A retry of a stored message still gets its original.
    let (s, retry) = c
        .client(
            0,
            Method::POST,
            &path,
            &key,
            Some(json!({"text": "again", "client_msg_id": "c1"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{retry}");
    assert_eq!(retry["duplicate"], true);

    // Raise the limit on the control plane: the gateway hears `plan_changed` and lets the
    // same send through (retried until it does; the time is printed, not asserted).
    let raised = Instant::now();
    let (s, _) = c
        .admin(
            Method::PATCH,
            "/api/admin/plans/starter",
            Some(limits(LIMIT + 1)),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let mut status = StatusCode::FORBIDDEN;
    while raised.elapsed() < common::WAIT {
        let (s, body) = c
            .client(0, Method::POST, &path, &key, Some(over.clone()))
            .await;
        status = s;
        if s != StatusCode::FORBIDDEN {
            break;
        }
        assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
    }
    assert_eq!(
        status,
        StatusCode::CREATED,
        "the raised limit never applied"
    );
    println!(
        "plan change applied on the gateway after {:?}",
        raised.elapsed()
    );

    let stored = c.stored(0, &key, &conv).await;
    assert_eq!(stored.len() as u64, LIMIT + 1);
    let (s, usage) = c
        .admin(
            Method::GET,
            &format!("/api/admin/projects/{project}/usage"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{usage}");
    assert_eq!(
        usage["messages"],
        json!({"used": stored.len(), "limit": LIMIT + 1})
    );
    assert_eq!(usage["monthly_active_users"]["used"], 1);
    assert_eq!(usage["conversations"]["used"], 1);
}

/// API requests and realtime connections metered by two gateways add up in the usage API:
/// requests summed, peaks summed within the hour. Each gateway writes its running totals
/// every few seconds; the test waits for them (polling the API, no fixed sleep).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_meter_requests_and_connections() {
    let c = Cluster::start(2).await;
    let (s, p) = c
        .admin(
            Method::POST,
            "/api/admin/projects",
            Some(json!({"name": "edge-metered"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    let project = p["id"].as_str().unwrap().to_owned();
    let (_, key) = c.key(&project, json!({"name": "k"})).await;
    let (user, token) = c.user(0, &key, "ada").await; // gateway 0: 1
    let conv = c.conversation(1, &key, &[&user]).await; // gateway 1: 1
    let path = format!("/api/v1/conversations/{conv}");
    for (gw, n) in [(0, 3), (1, 4)] {
        for _ in 0..n {
            let (s, body) = c.client(gw, Method::GET, &path, &key, None).await;
            assert_eq!(s, StatusCode::OK, "{body}");
        }
    }
    let mut sockets = Vec::new();
    for (gw, n) in [(0, 2), (1, 3)] {
        for _ in 0..n {
            let ws = connect(&c.gateways[gw].ws_url(), &token, None)
                .await
                .unwrap_or_else(|e| panic!("connect to gateway {gw}: {}", e.message));
            sockets.push(ws);
        }
    }
    // 1 + 3 requests on gateway 0, 1 + 4 on gateway 1; 2 + 3 connections at once.
    let expected = (9, 5);
    let started = Instant::now();
    let mut seen = (0, 0);
    while started.elapsed() < larachat_gateway::meter::FLUSH_EVERY * 4 {
        let (s, usage) = c
            .admin(
                Method::GET,
                &format!("/api/admin/projects/{project}/usage"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{usage}");
        seen = (
            usage["api_requests"]["used"].as_u64().unwrap(),
            usage["peak_connections"]["used"].as_u64().unwrap(),
        );
        if seen == expected {
            break;
        }
        assert!(
            seen.0 <= expected.0 && seen.1 <= expected.1,
            "never more than was done: {usage}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(seen, expected, "(api_requests, peak_connections)");
    println!(
        "edge usage of two gateways visible after {:?}",
        started.elapsed()
    );
    drop(sockets);
}

/// How long a process trusts its usage estimate (`CACHE_TTL` of store/src/scylla/usage.rs).
const ESTIMATE_TTL: Duration = Duration::from_secs(1);
const GATEWAYS: usize = 3;
/// Concurrent senders per gateway.
const SENDERS: usize = 2;

/// What one run of concurrent senders saw: per gateway, the instants of its accepted changes.
struct Run {
    accepted: Vec<Vec<Instant>>,
    elapsed: Duration,
}

impl Run {
    /// The most changes a gateway accepted within any window of `ESTIMATE_TTL`.
    fn max_rate(&self) -> Vec<usize> {
        self.accepted
            .iter()
            .map(|at| {
                let mut at = at.clone();
                at.sort();
                let mut best = 0;
                let mut lo = 0;
                for hi in 0..at.len() {
                    while at[hi] - at[lo] >= ESTIMATE_TTL {
                        lo += 1;
                    }
                    best = best.max(hi - lo + 1);
                }
                best
            })
            .collect()
    }

    fn total(&self) -> usize {
        self.accepted.iter().map(Vec::len).sum()
    }

    /// The bound of docs/usage.md for this run: another gateway's changes are unseen for the
    /// estimate's TTL plus the time its count took to read (`count`, measured: the usage API
    /// runs the same 96 partition reads), plus the changes it had reserved but not yet written
    /// when the count was read (at most one per sender). Summed over the N − 1 other gateways,
    /// each at the highest one-second rate measured.
    fn bound(&self, count: Duration) -> u64 {
        let r_max = *self.max_rate().iter().max().unwrap_or(&0) as f64;
        let window = (ESTIMATE_TTL + count).as_secs_f64();
        ((GATEWAYS - 1) as f64 * (r_max * window + SENDERS as f64)).ceil() as u64
    }

    fn describe(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        let mean: Vec<String> = self
            .accepted
            .iter()
            .map(|a| format!("{:.0}/s", a.len() as f64 / secs))
            .collect();
        format!(
            "accepted per gateway {:?} in {secs:.2} s (mean {}), max per 1 s window {:?}",
            self.accepted.iter().map(Vec::len).collect::<Vec<_>>(),
            mean.join(", "),
            self.max_rate()
        )
    }
}

/// A request that may meet a dead or refusing gateway: `None` when it could not be answered.
async fn try_call(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> Option<(StatusCode, Value)> {
    let mut req = http.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.ok()?;
    let status = resp.status();
    let text = resp.text().await.ok()?;
    Some((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// Repeats `request(attempt)` on gateway `gw` until it is accepted (`Some(body)`) or refused
/// with `quota_exceeded` (`None`); retryable errors are retried as they are.
async fn until_decided(
    c: &Cluster,
    gw: usize,
    method: Method,
    path: &str,
    token: &str,
    body: Value,
) -> Option<(StatusCode, Value)> {
    let url = format!("{}{path}", c.gw(gw));
    for _ in 0..100 {
        let Some((s, v)) = try_call(&c.http, method.clone(), &url, token, Some(body.clone())).await
        else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        if s.is_success() {
            return Some((s, v));
        }
        if v["error"]["code"] == "quota_exceeded" {
            assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
            return None;
        }
        assert_eq!(v["error"]["retryable"], true, "{path}: {s} {v}");
    }
    panic!("{path}: still failing after 100 attempts");
}

/// Runs `SENDERS` tasks per gateway, all released at once; each repeats its change (`change`
/// of gateway, sender, attempt number → method, path, token, body) until refused with
/// `quota_exceeded`.
async fn race<F>(c: &Arc<Cluster>, change: F) -> Run
where
    F: Fn(usize, usize, usize) -> (Method, String, String, Value) + Send + Sync + 'static,
{
    let change = Arc::new(change);
    let start = Arc::new(tokio::sync::Barrier::new(GATEWAYS * SENDERS + 1));
    let mut tasks = Vec::new();
    for g in 0..GATEWAYS {
        for s in 0..SENDERS {
            let (c, change, start) = (c.clone(), change.clone(), start.clone());
            tasks.push(tokio::spawn(async move {
                let mut accepted = Vec::new();
                start.wait().await;
                for i in 0.. {
                    let (method, path, token, body) = change(g, s, i);
                    match until_decided(&c, g, method, &path, &token, body).await {
                        Some((StatusCode::CREATED, _)) => accepted.push(Instant::now()),
                        Some((s, v)) => panic!("a new change answered {s} {v}"),
                        None => break,
                    }
                }
                (g, accepted)
            }));
        }
    }
    start.wait().await;
    let started = Instant::now();
    let mut accepted = vec![Vec::new(); GATEWAYS];
    for t in tasks {
        let (g, a) = t.await.expect("sender");
        accepted[g].extend(a);
    }
    Run {
        accepted,
        elapsed: started.elapsed(),
    }
}

/// The project's usage, and how long the control plane took to count it (slowest of three).
async fn usage(c: &Cluster, project: &str) -> (Value, Duration) {
    let mut slowest = Duration::ZERO;
    let mut last = Value::Null;
    for _ in 0..3 {
        let t = Instant::now();
        let (s, u) = c
            .admin(
                Method::GET,
                &format!("/api/admin/projects/{project}/usage"),
                None,
            )
            .await;
        slowest = slowest.max(t.elapsed());
        assert_eq!(s, StatusCode::OK, "{u}");
        last = u;
    }
    (last, slowest)
}

/// Three gateways, six senders sending as fast as they are answered until each is refused:
/// the stored messages equal the usage, and the overshoot past the limit stays within the
/// documented bound computed from the measured rates. Then the same for monthly active users
/// (new end users identified concurrently on the three gateways).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_overshoot_a_limit_by_at_most_the_documented_bound() {
    const MESSAGES: u64 = 300;
    const USERS: u64 = 100;
    let c = Arc::new(Cluster::start(GATEWAYS).await);
    // `pro` and `free` are this test's (the other test of this binary changes `starter`).
    for (plan, limits) in [
        (
            "pro",
            json!({"monthly_active_users": null, "messages_per_month": MESSAGES,
                   "projects_per_owner": null}),
        ),
        (
            "free",
            json!({"monthly_active_users": USERS, "messages_per_month": null,
                   "projects_per_owner": null}),
        ),
    ] {
        let (s, body) = c
            .admin(
                Method::PATCH,
                &format!("/api/admin/plans/{plan}"),
                Some(json!({ "limits": limits })),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{body}");
    }
    let project = |plan: &'static str| {
        let c = c.clone();
        async move {
            let (s, p) = c
                .admin(
                    Method::POST,
                    "/api/admin/projects",
                    Some(json!({"name": format!("overshoot-{plan}"), "plan": plan})),
                )
                .await;
            assert_eq!(s, StatusCode::CREATED, "{p}");
            let id = p["id"].as_str().unwrap().to_owned();
            let (_, key) = c.key(&id, json!({"name": "k"})).await;
            (id, key)
        }
    };

    // Messages: one end user and conversation per sender, on its gateway.
    let (msg_project, msg_key) = project("pro").await;
    let mut senders = Vec::new();
    for g in 0..GATEWAYS {
        for s in 0..SENDERS {
            let (user, token) = c.user(g, &msg_key, &format!("sender-{g}-{s}")).await;
            let conv = c.conversation(g, &msg_key, &[&user]).await;
            senders.push((conv, token));
        }
    }
    let senders = Arc::new(senders);
    let run = {
        let senders = senders.clone();
        race(&c, move |g, s, i| {
            let (conv, token) = &senders[g * SENDERS + s];
            (
                Method::POST,
                format!("/api/v1/conversations/{conv}/messages"),
                token.clone(),
                json!({"text": format!("m {g} {s} {i}"), "client_msg_id": format!("{g}-{s}-{i}")}),
            )
        })
        .await
    };
    let mut stored = 0;
    for (conv, _) in senders.iter() {
        stored += c.stored(0, &msg_key, conv).await.len() as u64;
    }
    let (u, count) = usage(&c, &msg_project).await;
    let used = u["messages"]["used"].as_u64().expect("messages.used");
    assert_eq!(used, stored, "usage equals the stored messages");
    assert_eq!(
        run.total() as u64,
        stored,
        "every accepted message is stored"
    );
    assert!(used >= MESSAGES, "refused before the limit: {used}");
    let bound = run.bound(count);
    println!(
        "overshoot: {} over L={MESSAGES} messages; {}; count read in {count:?}; bound {bound}",
        used - MESSAGES,
        run.describe()
    );
    assert!(
        used - MESSAGES <= bound,
        "overshoot {} past the bound {bound}",
        used - MESSAGES
    );

    // Monthly active users: each sender identifies new end users until refused.
    let (mau_project, mau_key) = project("free").await;
    let run = {
        let key = mau_key.clone();
        race(&c, move |g, s, i| {
            (
                Method::POST,
                "/api/v1/users".to_owned(),
                key.clone(),
                json!({"user_identifier": format!("u-{g}-{s}-{i}")}),
            )
        })
        .await
    };
    let (u, count) = usage(&c, &mau_project).await;
    let used = u["monthly_active_users"]["used"]
        .as_u64()
        .expect("monthly_active_users.used");
    assert_eq!(
        used,
        run.total() as u64,
        "usage equals the end users created"
    );
    assert!(used >= USERS, "refused before the limit: {used}");
    let bound = run.bound(count);
    println!(
        "overshoot: {} over M={USERS} monthly active users; {}; count read in {count:?}; bound {bound}",
        used - USERS,
        run.describe()
    );
    assert!(
        used - USERS <= bound,
        "overshoot {} past the bound {bound}",
        used - USERS
    );
}
