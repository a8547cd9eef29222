//! The distributed event log end to end, on real processes: `larachat gateway`,
//! `larachat control-plane` and `larachat worker` over a real nats-server and Cassandra, and a
//! real webhook receiver that verifies every delivery with the `standardwebhooks` PyPI package
//! (`webhooks/tests/receiver.py`, `LARACHAT_WEBHOOKS_PYTHON`).
//!
//! Each test migrates a keyspace of its own (so its workers only see its own deliveries) and
//! prints its counts: `cargo test --test dist_events -- --nocapture`. Needs
//! `LARACHAT_TEST_NATS_URL`, `LARACHAT_TEST_CASSANDRA` and `LARACHAT_WEBHOOKS_PYTHON`
//! (scripts/test.sh sets all three).

mod common;
mod harness;

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use harness::{Backends, Cluster, Proc, Tenant, required_env};

/// The Python receiver in `bodies` mode: one line per verified delivery.
struct Receiver {
    _child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    port: u16,
}

impl Receiver {
    async fn start(secret: &str) -> Self {
        let python = required_env("LARACHAT_WEBHOOKS_PYTHON");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/webhooks/tests/receiver.py");
        let mut child = Command::new(python)
            .args([script, "0", secret, "bodies"])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the python receiver");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next_line().await.unwrap().expect("receiver started");
        let port = first["listening ".len()..].parse().expect("port");
        Self {
            _child: child,
            lines,
            port,
        }
    }
}

/// What the receiver got: per `message_id` of a `message.sent`, how many deliveries, and the
/// lag from the message's commit (`created_at`) to its receipt.
#[derive(Default)]
struct Received {
    by_message: HashMap<String, u32>,
    lag: HashMap<String, Duration>,
    bad: u32,
}

impl Received {
    fn on_line(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("ok ") else {
            self.bad += 1;
            eprintln!("receiver: {line}");
            return;
        };
        let Some((_, body)) = rest.split_once(' ') else {
            return;
        };
        let v: Value = serde_json::from_str(body).expect("body is JSON");
        if v["event"] != "message.sent" {
            return;
        }
        let id = v["data"]["message_id"].as_str().unwrap().to_owned();
        let created: DateTime<Utc> = v["data"]["created_at"].as_str().unwrap().parse().unwrap();
        let lag = (Utc::now() - created).to_std().unwrap_or_default();
        *self.by_message.entry(id.clone()).or_default() += 1;
        self.lag.entry(id).or_insert(lag);
    }

    fn dups(&self) -> u32 {
        self.by_message.values().map(|n| n - 1).sum()
    }
}

/// Reads receiver lines into `received` until every id of `want` arrived or `patience` ran out.
async fn collect(
    rx: &mut Receiver,
    received: &mut Received,
    want: &HashSet<String>,
    patience: Duration,
) {
    let deadline = tokio::time::Instant::now() + patience;
    while !want.iter().all(|id| received.by_message.contains_key(id)) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left, rx.lines.next_line()).await {
            Ok(Ok(Some(line))) => received.on_line(&line),
            _ => break,
        }
    }
}

/// Reads whatever else arrives within `quiet` (to count late duplicates).
async fn drain(rx: &mut Receiver, received: &mut Received, quiet: Duration) {
    while let Ok(Ok(Some(line))) = tokio::time::timeout(quiet, rx.lines.next_line()).await {
        received.on_line(&line);
    }
}

fn insecure() -> (String, String) {
    (
        "LARACHAT_WEBHOOKS__ALLOW_INSECURE_TARGETS".to_owned(),
        "true".to_owned(),
    )
}

/// Registers a `message.sent` endpoint pointing at a new receiver.
async fn endpoint(cluster: &Cluster, t: &Tenant) -> Receiver {
    let (s, created) = cluster
        .client(
            0,
            Method::POST,
            "/api/v1/webhooks",
            &t.key,
            Some(json!({"url": "https://hooks.example.com/", "events": ["message.sent"]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let id = created["webhook"]["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    let rx = Receiver::start(&secret).await;
    let url = format!("http://127.0.0.1:{}/hook", rx.port);
    let (s, body) = cluster
        .client(
            0,
            Method::PATCH,
            &format!("/api/v1/webhooks/{id}"),
            &t.key,
            Some(json!({"url": url})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    rx
}

/// Sends `n` messages through gateway `gw`, `parallel` at a time; returns the acked ids.
async fn send(
    cluster: &Arc<Cluster>,
    gw: usize,
    key: &str,
    conv: &str,
    tag: &str,
    n: usize,
    parallel: usize,
) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let chunk = (i..n.min(i + parallel)).map(|k| {
            let cluster = cluster.clone();
            let (key, conv, cmid) = (key.to_owned(), conv.to_owned(), format!("{tag}-{k}"));
            tokio::spawn(async move {
                let (s, body) = cluster
                    .client(
                        gw,
                        Method::POST,
                        &format!("/api/v1/conversations/{conv}/messages"),
                        &key,
                        Some(json!({"text": cmid, "client_msg_id": cmid})),
                    )
                    .await;
                assert_eq!(s, StatusCode::CREATED, "{body}");
                body["message"]["id"].as_str().unwrap().to_owned()
            })
        });
        for h in futures::future::join_all(chunk).await {
            out.push(h.expect("sender"));
        }
        i += parallel;
    }
    out
}

fn percentiles(lags: impl Iterator<Item = Duration>) -> String {
    let mut v: Vec<Duration> = lags.collect();
    v.sort();
    if v.is_empty() {
        return "n/a".into();
    }
    format!(
        "p50 {:?} p99 {:?} max {:?} (n = {})",
        harness::percentile(&v, 0.50),
        harness::percentile(&v, 0.99),
        v[v.len() - 1],
        v.len()
    )
}

/// Messages sent through two gateways reach the receiver through the control plane: from
/// gateway A by its publisher, from gateway B — which never publishes (the test-only
/// `LARACHAT_TEST_SKIP_PUBLISH=1`, as if it died after every write) and is SIGKILLed right after
/// its last ack — by the sweeper. Every acknowledged message's event arrives, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acked_event_arrives_even_from_a_gateway_killed_after_its_acks() {
    let backends = Backends::fresh(
        &required_env("LARACHAT_TEST_NATS_URL"),
        &required_env("LARACHAT_TEST_CASSANDRA"),
        "lc_events",
    );
    let mut cluster = Cluster::start_with(
        &backends,
        vec![
            vec![insecure()],
            vec![
                insecure(),
                ("LARACHAT_TEST_SKIP_PUBLISH".into(), "1".into()),
            ],
        ],
    )
    .await;
    // The control plane delivers: it needs the insecure flag too.
    cluster.control.kill();
    cluster.control.env.push(insecure());
    cluster.control.restart();
    let cluster = Arc::new(cluster);
    let t = cluster.tenant("events").await;
    let mut rx = endpoint(&cluster, &t).await;
    let conv = cluster.conversation(0, &t.key, &[]).await;

    const N: usize = 60;
    let (a, b) = tokio::join!(
        send(&cluster, 0, &t.key, &conv, "a", N, 4),
        send(&cluster, 1, &t.key, &conv, "b", N, 4)
    );
    // B dies right after its acks: nothing of it publishes.
    let mut cluster = Arc::into_inner(cluster).expect("senders done");
    cluster.gateways[1].kill();

    let want: HashSet<String> = a.iter().chain(&b).cloned().collect();
    let mut got = Received::default();
    collect(&mut rx, &mut got, &want, Duration::from_secs(90)).await;
    drain(&mut rx, &mut got, Duration::from_secs(2)).await;
    let missing = want
        .iter()
        .filter(|id| !got.by_message.contains_key(*id))
        .count();
    println!(
        "sent {} (A {}, B {}), received {} distinct, missing {missing}, dups {}, bad {}",
        want.len(),
        a.len(),
        b.len(),
        got.by_message.len(),
        got.dups(),
        got.bad
    );
    println!(
        "lag commit -> webhook, A (publisher): {}",
        percentiles(a.iter().filter_map(|id| got.lag.get(id).copied()))
    );
    println!(
        "lag commit -> webhook, B (killed; sweeper): {}",
        percentiles(b.iter().filter_map(|id| got.lag.get(id).copied()))
    );
    assert_eq!(missing, 0, "every acknowledged message's event arrived");
    assert_eq!(got.bad, 0, "every delivery verified");
    assert_eq!(
        got.dups(),
        0,
        "each event delivered once (no endpoint failed)"
    );
}

/// Two `larachat worker`s and the control plane deliver together: each event once. Then one
/// worker is SIGKILLed mid-delivery under load; the others finish: 0 events lost, duplicates
/// only from the killed worker's attempts in flight (retries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_the_events_and_a_killed_worker_loses_none() {
    let backends = Backends::fresh(
        &required_env("LARACHAT_TEST_NATS_URL"),
        &required_env("LARACHAT_TEST_CASSANDRA"),
        "lc_workers",
    );
    let mut cluster = Cluster::start_with(&backends, vec![vec![insecure()]]).await;
    cluster.control.kill();
    cluster.control.env.push(insecure());
    cluster.control.restart();
    let mut env = backends.env();
    env.push(insecure());
    let mut w1 = Proc::start("worker", env.clone());
    let _w2 = Proc::start("worker", env);
    // A worker answers health probes.
    let (s, _) = common::call(
        &cluster.http,
        Method::GET,
        &format!("{}/live", w1.base()),
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);

    let cluster = Arc::new(cluster);
    let t = cluster.tenant("workers").await;
    let mut rx = endpoint(&cluster, &t).await;
    let conv = cluster.conversation(0, &t.key, &[]).await;

    // Phase 1: three delivering processes, no failure: each event exactly once.
    let first = send(&cluster, 0, &t.key, &conv, "p1", 80, 8).await;
    let want1: HashSet<String> = first.iter().cloned().collect();
    let mut got = Received::default();
    collect(&mut rx, &mut got, &want1, Duration::from_secs(60)).await;
    drain(&mut rx, &mut got, Duration::from_secs(1)).await;
    let missing1 = want1
        .iter()
        .filter(|id| !got.by_message.contains_key(*id))
        .count();
    println!(
        "phase 1 (2 workers + control plane): sent {}, received {}, missing {missing1}, dups {}",
        want1.len(),
        got.by_message.len(),
        got.dups()
    );
    println!(
        "lag commit -> webhook: {}",
        percentiles(first.iter().filter_map(|id| got.lag.get(id).copied()))
    );
    assert_eq!(missing1, 0);
    assert_eq!(got.dups(), 0, "no event delivered twice without a retry");

    // Phase 2: kill worker 1 while events flow.
    let sender = {
        let cluster = cluster.clone();
        let (key, conv) = (t.key.clone(), conv.clone());
        tokio::spawn(async move { send(&cluster, 0, &key, &conv, "p2", 200, 8).await })
    };
    // Once deliveries of phase 2 are arriving, the worker dies.
    let mut seen = Received::default();
    while seen.by_message.len() < 30 {
        let line = tokio::time::timeout(Duration::from_secs(60), rx.lines.next_line())
            .await
            .expect("phase 2 deliveries")
            .unwrap()
            .expect("receiver alive");
        got.on_line(&line);
        seen.on_line(&line);
    }
    w1.kill();
    let second = sender.await.expect("sender");
    let want2: HashSet<String> = second.iter().cloned().collect();
    // The killed worker's unacknowledged events come back after the ack wait (30 s).
    collect(&mut rx, &mut got, &want2, Duration::from_secs(120)).await;
    drain(&mut rx, &mut got, Duration::from_secs(2)).await;
    let missing2 = want2
        .iter()
        .filter(|id| !got.by_message.contains_key(*id))
        .count();
    let dups2: u32 = want2
        .iter()
        .filter_map(|id| got.by_message.get(id))
        .map(|n| n - 1)
        .sum();
    println!(
        "phase 2 (worker 1 SIGKILLed after {} deliveries): sent {}, received {}, missing {missing2}, dups {dups2}",
        seen.by_message.len(),
        want2.len(),
        want2
            .iter()
            .filter(|id| got.by_message.contains_key(*id))
            .count()
    );
    assert_eq!(missing2, 0, "0 events lost");
    assert_eq!(got.bad, 0);
}

/// A request that may meet a dead gateway: `None` when it was not answered.
async fn try_call(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    token: &str,
    body: &Value,
) -> Option<(StatusCode, Value)> {
    let resp = http
        .request(method, url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .ok()?;
    let status = resp.status();
    let text = resp.text().await.ok()?;
    Some((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// A client of the two gateways that moves to gateway 1 for good when gateway 0 stops
/// answering, and retries the request it had in flight there *as it was* (same
/// `client_msg_id`, same `user_identifier`, same `idempotency_key`).
struct Failover {
    cluster: Arc<Cluster>,
    gw: usize,
    /// Paths of the requests gateway 0 did not answer.
    moved: Vec<String>,
}

impl Failover {
    async fn call(&mut self, method: Method, path: &str, token: &str, body: Value) -> Value {
        for _ in 0..200 {
            let url = format!("{}{path}", self.cluster.gw(self.gw));
            match try_call(&self.cluster.http, method.clone(), &url, token, &body).await {
                Some((s, v)) if s.is_success() => return v,
                Some((s, v)) => {
                    assert_eq!(v["error"]["retryable"], true, "{path}: {s} {v}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                None => {
                    self.gw = 1;
                    self.moved.push(path.to_owned());
                }
            }
        }
        panic!("{path}: no answer after 200 attempts");
    }
}

/// The project's usage on the control plane.
async fn usage_now(cluster: &Cluster, project: &str) -> Value {
    let (s, u) = cluster
        .admin(
            Method::GET,
            &format!("/api/admin/projects/{project}/usage"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{u}");
    json!({
        "messages": u["messages"]["used"],
        "conversations": u["conversations"]["used"],
        "monthly_active_users": u["monthly_active_users"]["used"],
        "storage_bytes": u["storage_bytes"]["used"],
    })
}

/// Usage equals what the store holds after a gateway is SIGKILLed mid-load, and stays so when
/// the killed gateway's events are republished: senders on two gateways identify end users,
/// create conversations and send messages; gateway 0 is killed while they do, its senders
/// retry their in-flight request on gateway 1 unchanged. The store is then counted through
/// the API (conversations listed, their messages read, the end users the identifications
/// returned, the senders and members found). Gateway 0 restarts, the sweeper republishes
/// what it had not, every stored message's event reaches the webhook receiver, and the usage
/// has not moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_equals_the_store_after_a_gateway_sigkill_and_republishing() {
    const SENDERS: usize = 3; // per gateway
    const ROUNDS: usize = 3; // end users (and conversations) per sender
    const MESSAGES: usize = 15; // per conversation
    let backends = Backends::fresh(
        &required_env("LARACHAT_TEST_NATS_URL"),
        &required_env("LARACHAT_TEST_CASSANDRA"),
        "lc_usage",
    );
    let mut cluster =
        Cluster::start_with(&backends, vec![vec![insecure()], vec![insecure()]]).await;
    cluster.control.kill();
    cluster.control.env.push(insecure());
    cluster.control.restart();
    // On a limited plan, so that every change also goes through the quota check.
    let (s, p) = cluster
        .admin(
            Method::POST,
            "/api/admin/projects",
            Some(json!({"name": "usage-kill", "plan": "pro"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    let project = p["id"].as_str().unwrap().to_owned();
    let (key_id, key) = cluster.key(&project, json!({"name": "k"})).await;
    let t = Tenant {
        project_id: project.clone(),
        key: key.clone(),
        key_id,
    };
    let mut rx = endpoint(&cluster, &t).await;
    let cluster = Arc::new(cluster);

    let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let total = 2 * SENDERS * ROUNDS * MESSAGES;
    let mut tasks = Vec::new();
    for g in 0..2 {
        for s in 0..SENDERS {
            let (cluster, key, acked) = (cluster.clone(), key.clone(), acked.clone());
            tasks.push(tokio::spawn(async move {
                let mut f = Failover {
                    cluster,
                    gw: g,
                    moved: Vec::new(),
                };
                let mut users = Vec::new();
                let mut messages = Vec::new();
                for r in 0..ROUNDS {
                    let u = f
                        .call(
                            Method::POST,
                            "/api/v1/users",
                            &key,
                            json!({"user_identifier": format!("k-{g}-{s}-{r}")}),
                        )
                        .await;
                    let user = u["user"]["id"].as_str().unwrap().to_owned();
                    let token = u["token"].as_str().unwrap().to_owned();
                    let conv = f
                        .call(
                            Method::POST,
                            "/api/v1/conversations",
                            &key,
                            json!({"subject": "kill", "members": [user],
                                   "idempotency_key": format!("c-{g}-{s}-{r}")}),
                        )
                        .await["id"]
                        .as_str()
                        .unwrap()
                        .to_owned();
                    for i in 0..MESSAGES {
                        let cmid = format!("{g}-{s}-{r}-{i}");
                        let m = f
                            .call(
                                Method::POST,
                                &format!("/api/v1/conversations/{conv}/messages"),
                                &token,
                                json!({"text": format!("message {cmid} é"), "client_msg_id": cmid}),
                            )
                            .await;
                        messages.push(m["message"]["id"].as_str().unwrap().to_owned());
                        acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    users.push(user);
                }
                (users, messages, f.moved)
            }));
        }
    }
    // SIGKILL gateway 0 once about a third of the messages are acknowledged, in the middle of
    // a round (at a round's end the senders are all identifying, and no send is in flight).
    while acked.load(std::sync::atomic::Ordering::Relaxed) < total / 3 + MESSAGES / 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cluster.gateways[0].signal(rustix::process::Signal::KILL);
    let at_kill = acked.load(std::sync::atomic::Ordering::Relaxed);
    let mut identified = HashSet::new();
    let mut acked_ids = HashSet::new();
    let mut moved = Vec::new();
    for task in tasks {
        let (u, m, r) = task.await.expect("sender");
        identified.extend(u);
        acked_ids.extend(m);
        moved.extend(r);
    }
    // The store, counted through the API of the surviving gateway.
    let mut conversations = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/conversations?limit=200&cursor={c}"),
            None => "/api/v1/conversations?limit=200".to_owned(),
        };
        let (s, page) = cluster.client(1, Method::GET, &path, &key, None).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        conversations.extend(page["data"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut users: HashSet<String> = identified.clone();
    let mut stored_ids = HashSet::new();
    let mut bytes = 0u64;
    for conv in &conversations {
        for m in conv["members"].as_array().into_iter().flatten() {
            users.insert(m.as_str().unwrap().to_owned());
        }
        let id = conv["id"].as_str().unwrap();
        for m in cluster.stored(1, &key, id).await {
            if m["sender"]["kind"] == "end_user" {
                users.insert(m["sender"]["id"].as_str().unwrap().to_owned());
            }
            bytes += common::metered_bytes(&m);
            stored_ids.insert(m["id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(
        conversations.len(),
        2 * SENDERS * ROUNDS,
        "one conversation per creation: a retried creation (same idempotency_key) made none"
    );
    let lost = acked_ids.difference(&stored_ids).count();
    assert_eq!(lost, 0, "every acknowledged message is stored");
    let truth = json!({
        "messages": stored_ids.len(),
        "conversations": conversations.len(),
        "monthly_active_users": users.len(),
        "storage_bytes": bytes,
    });
    let after_kill = usage_now(&cluster, &project).await;
    println!(
        "killed gateway 0 at {at_kill} of {total} acks; requests moved to gateway 1: {moved:?}; \
         store {truth}; usage {after_kill}"
    );
    // An identification killed between its identifier claim and its user batch counted
    // nothing; its retry wrote the user with the claimed id: every counted user is reachable.
    assert_eq!(
        after_kill["monthly_active_users"].as_u64(),
        Some(users.len() as u64),
        "active users counted = reachable users (no orphan of a killed identification)"
    );
    assert_eq!(after_kill, truth, "usage equals the store after the kill");

    // Redelivery: gateway 0 back, the sweeper republishes what it claimed but never published,
    // and every stored message's event reaches the receiver (once or more).
    let mut cluster = Arc::into_inner(cluster).expect("senders done");
    cluster.gateways[0].kill();
    cluster.gateways[0].restart();
    let mut got = Received::default();
    collect(&mut rx, &mut got, &stored_ids, Duration::from_secs(90)).await;
    drain(&mut rx, &mut got, Duration::from_secs(2)).await;
    let missing = stored_ids
        .iter()
        .filter(|id| !got.by_message.contains_key(*id))
        .count();
    let after_redelivery = usage_now(&cluster, &project).await;
    println!(
        "events: {} of {} messages delivered, {} duplicate deliveries; usage {after_redelivery}",
        got.by_message.len(),
        stored_ids.len(),
        got.dups()
    );
    assert_eq!(missing, 0, "every stored message's event arrived");
    assert_eq!(
        after_redelivery, truth,
        "usage did not move with the republished events"
    );
}
