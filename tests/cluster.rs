//! Distributed mode, end to end: real `larachat control-plane` and `larachat gateway`
//! processes over a real nats-server and a real Cassandra 5.0 node.
//!
//! Needs `LARACHAT_TEST_NATS_URL` and `LARACHAT_TEST_CASSANDRA` (printed by
//! `deploy/nats.sh start` and `deploy/cassandra.sh start`; `scripts/test.sh` exports both).
//! Without them every test fails, never passes silently. The NATS-restart test runs a
//! nats-server of its own (`LARACHAT_NATS_SERVER_BIN`). One keyspace per test run, migrated
//! once by `larachat migrate`; every test uses its own processes, admin and projects.
//!
//! The failover and NATS-restart tests check like Jepsen does: writers send unique, numbered
//! messages and record what was acknowledged; readers follow the protocol (insert by id,
//! de-duplicate, resume from the contiguous cursor after every reconnect, protocol §7);
//! afterwards everything is read back from the store and from every reader. The counts are
//! printed (`cargo test --test cluster -- --nocapture`). The harness (processes, clients, the
//! workload and its check) is `tests/harness`, shared with `tests/faults.rs`.

mod common;
mod harness;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use harness::*;

/// A client on gateway A and a client on gateway B in one conversation exchange messages,
/// read markers and typing; also measures send → receive across gateways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_two_gateways_exchange_messages_reads_and_typing() {
    let c = Cluster::start(2).await;
    let t = c.tenant("cross").await;
    let (alice, alice_token) = c.user(0, &t.key, "alice").await;
    let (bob, bob_token) = c.user(1, &t.key, "bob").await;
    let conv = c.conversation(0, &t.key, &[&alice, &bob]).await;

    let mut a = connect(&c.gateways[0].ws_url(), &alice_token, None)
        .await
        .unwrap();
    let mut b = connect(&c.gateways[1].ws_url(), &bob_token, None)
        .await
        .unwrap();
    subscribe(&mut a, &conv, None).await;
    subscribe(&mut b, &conv, None).await;

    // A → B
    send(
        &mut a,
        json!({"type": "send", "id": 10, "conversation_id": conv, "client_msg_id": "a-1", "text": "hello from A"}),
    )
    .await
    .unwrap();
    let (m, _) = expect_type(&mut b, "message").await;
    assert_eq!(m["message"]["text"], "hello from A");
    assert_eq!(m["message"]["sender"]["id"], json!(alice));
    // B → A
    send(
        &mut b,
        json!({"type": "send", "id": 11, "conversation_id": conv, "client_msg_id": "b-1", "text": "hi from B"}),
    )
    .await
    .unwrap();
    let (m, _) = loop {
        let (m, o) = expect_type(&mut a, "message").await;
        if m["message"]["text"] == "hi from B" {
            break (m, o);
        }
    };
    let last_id = m["message"]["id"].as_str().unwrap().to_owned();
    // Read marker from A reaches B.
    send(
        &mut a,
        json!({"type": "read", "id": 12, "conversation_id": conv, "message_id": last_id}),
    )
    .await
    .unwrap();
    let (r, _) = expect_type(&mut b, "read").await;
    assert_eq!(r["message_id"], json!(last_id), "{r}");
    assert_eq!(r["reader"]["id"], json!(alice), "{r}");
    // Typing from B reaches A, and a stop follows.
    send(
        &mut b,
        json!({"type": "typing", "conversation_id": conv, "state": "start"}),
    )
    .await
    .unwrap();
    let (ty, _) = expect_type(&mut a, "typing").await;
    assert_eq!(ty["state"], "start", "{ty}");
    assert_eq!(ty["actor"]["id"], json!(bob), "{ty}");
    send(
        &mut b,
        json!({"type": "typing", "conversation_id": conv, "state": "stop"}),
    )
    .await
    .unwrap();
    let (ty, _) = expect_type(&mut a, "typing").await;
    assert_eq!(ty["state"], "stop", "{ty}");

    // Latency across gateways: one message in flight, A sends, B receives.
    let mut samples = Vec::new();
    for i in 0..200 {
        let text = format!("lat-{i}");
        let start = Instant::now();
        send(
            &mut a,
            json!({"type": "send", "id": 100 + i, "conversation_id": conv, "client_msg_id": text, "text": text}),
        )
        .await
        .unwrap();
        loop {
            let (m, _) = expect_type(&mut b, "message").await;
            if m["message"]["text"] == json!(text) {
                break;
            }
        }
        samples.push(start.elapsed());
    }
    samples.sort();
    println!(
        "cross-gateway send→receive ({} messages, debug build, everything on this machine): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        samples.len(),
        percentile(&samples, 0.50).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().unwrap().as_secs_f64() * 1e3,
    );
    let stored = c.stored(1, &t.key, &conv).await;
    assert_eq!(stored.len(), 202, "every message stored once");
}

/// Project A's clients, on both gateways, never receive project B's events, and B cannot
/// reach A's conversation through either gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_stay_isolated_across_gateways() {
    let c = Cluster::start(2).await;
    let ta = c.tenant("tenant-a").await;
    let tb = c.tenant("tenant-b").await;
    let (a1, a1_token) = c.user(0, &ta.key, "same-identifier").await;
    let (a2, a2_token) = c.user(1, &ta.key, "a2").await;
    let (b1, b1_token) = c.user(1, &tb.key, "same-identifier").await;
    assert_ne!(a1, b1, "identifiers are per project");
    let conv_a = c.conversation(0, &ta.key, &[&a1, &a2]).await;
    let conv_b = c.conversation(1, &tb.key, &[&b1]).await;

    let mut wa1 = connect(&c.gateways[0].ws_url(), &a1_token, None)
        .await
        .unwrap();
    let mut wa2 = connect(&c.gateways[1].ws_url(), &a2_token, None)
        .await
        .unwrap();
    subscribe(&mut wa1, &conv_a, None).await;
    subscribe(&mut wa2, &conv_a, None).await;

    for gw in 0..2 {
        // B's end user and B's key cannot subscribe to, send to or read A's conversation.
        let mut wb = connect(&c.gateways[gw].ws_url(), &b1_token, None)
            .await
            .unwrap();
        send(
            &mut wb,
            json!({"type": "subscribe", "id": 1, "conversation_id": conv_a}),
        )
        .await
        .unwrap();
        let (e, _) = expect_type(&mut wb, "error").await;
        assert_eq!(e["code"], "not_found", "{e}");
        send(
            &mut wb,
            json!({"type": "send", "id": 2, "conversation_id": conv_a, "client_msg_id": "x", "text": "intrusion"}),
        )
        .await
        .unwrap();
        let (e, _) = expect_type(&mut wb, "error").await;
        assert_eq!(e["code"], "not_found", "{e}");
        let (s_known, body_known) = c
            .client(
                gw,
                Method::GET,
                &format!("/api/v1/conversations/{conv_a}/messages"),
                &tb.key,
                None,
            )
            .await;
        let (s_random, body_random) = c
            .client(
                gw,
                Method::GET,
                &format!("/api/v1/conversations/{}/messages", uuid::Uuid::now_v7()),
                &tb.key,
                None,
            )
            .await;
        assert_eq!(s_known, StatusCode::NOT_FOUND);
        assert_eq!(
            (s_known, body_known),
            (s_random, body_random),
            "no existence oracle"
        );
        // B's own traffic, on both gateways.
        subscribe(&mut wb, &conv_b, None).await;
        send(
            &mut wb,
            json!({"type": "send", "id": 3, "conversation_id": conv_b, "client_msg_id": format!("b-{gw}"), "text": "secret of B"}),
        )
        .await
        .unwrap();
        expect_type(&mut wb, "ack").await;
        let (s, _) = c
            .client(
                gw,
                Method::POST,
                &format!("/api/v1/conversations/{conv_b}/typing"),
                &b1_token,
                Some(json!({"state": "start"})),
            )
            .await;
        assert!(s.is_success(), "{s}");
    }
    // A marker message from A: everything A's clients received before it is A's.
    let (s, _) = c
        .client(
            0,
            Method::POST,
            &format!("/api/v1/conversations/{conv_a}/messages"),
            &a1_token,
            Some(json!({"text": "end of test"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    for ws in [&mut wa1, &mut wa2] {
        let (m, before) = loop {
            let (m, before) = expect_type(ws, "message").await;
            if m["message"]["text"] == "end of test" {
                break (m, before);
            }
            assert_eq!(m["message"]["conversation_id"], json!(conv_a), "{m}");
        };
        assert_eq!(m["message"]["project_id"], json!(ta.project_id));
        for f in before {
            assert!(
                !f.to_string().contains(&conv_b) && !f.to_string().contains(&tb.project_id),
                "project B leaked into project A: {f}"
            );
        }
    }
    let stored = c.stored(0, &ta.key, &conv_a).await;
    assert_eq!(stored.len(), 1, "the intrusion was not stored: {stored:?}");
}

/// Revocation, suspension and expiry made on the control plane reach every gateway within a
/// second, also when the gateways had the key cached; sockets using it are closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_and_suspension_reach_every_gateway_within_a_second() {
    let c = Cluster::start(2).await;
    let t = c.tenant("revoke").await;
    let agent = json!({"type": "agent", "id": "agent-1"});
    let list = "/api/v1/conversations?limit=1";

    // 1. Revocation.
    let mut sockets = Vec::new();
    for gw in 0..2 {
        let (s, _) = c.client(gw, Method::GET, list, &t.key, None).await;
        assert_eq!(s, StatusCode::OK, "warm the key cache of gateway {gw}");
        sockets.push(
            connect(&c.gateways[gw].ws_url(), &t.key, Some(agent.clone()))
                .await
                .unwrap(),
        );
    }
    let started = Instant::now();
    let (s, b) = c
        .admin(
            Method::DELETE,
            &format!("/api/admin/api-keys/{}", t.key_id),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let answered = started.elapsed();
    let refused = refused_everywhere(&c, list, &t.key, StatusCode::UNAUTHORIZED, started).await;
    let mut closed = Vec::new();
    for ws in &mut sockets {
        match next_frame(ws, Duration::from_secs(2)).await {
            Frame::Closed(Some(4001)) => closed.push(started.elapsed()),
            other => panic!("socket of a revoked key: {other:?}"),
        }
    }
    println!(
        "revocation: admin answered in {:.1} ms; refused by gateway 1/2 after {:.1}/{:.1} ms; sockets closed (4001) after {:.1}/{:.1} ms",
        ms(answered),
        ms(refused[0]),
        ms(refused[1]),
        ms(closed[0]),
        ms(closed[1])
    );
    for d in refused.iter().chain(&closed) {
        assert!(*d < Duration::from_secs(1), "took {d:?}");
    }

    // 2. Suspension of the project.
    let (_, key2) = c.key(&t.project_id, json!({"name": "k2"})).await;
    let mut sockets = Vec::new();
    for gw in 0..2 {
        let (s, _) = c.client(gw, Method::GET, list, &key2, None).await;
        assert_eq!(s, StatusCode::OK);
        sockets.push(
            connect(&c.gateways[gw].ws_url(), &key2, Some(agent.clone()))
                .await
                .unwrap(),
        );
    }
    let started = Instant::now();
    let (s, b) = c
        .admin(
            Method::PATCH,
            &format!("/api/admin/projects/{}", t.project_id),
            Some(json!({"status": "suspended"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let refused = refused_everywhere(&c, list, &key2, StatusCode::FORBIDDEN, started).await;
    let mut closed = Vec::new();
    for ws in &mut sockets {
        match next_frame(ws, Duration::from_secs(2)).await {
            Frame::Closed(Some(4030)) => closed.push(started.elapsed()),
            other => panic!("socket of a suspended project: {other:?}"),
        }
    }
    println!(
        "suspension: refused by gateway 1/2 after {:.1}/{:.1} ms; sockets closed after {:.1}/{:.1} ms",
        ms(refused[0]),
        ms(refused[1]),
        ms(closed[0]),
        ms(closed[1])
    );
    for d in refused.iter().chain(&closed) {
        assert!(*d < Duration::from_secs(1), "took {d:?}");
    }

    // 3. Expiry: no notice is sent; every gateway checks the expiry it cached.
    let t2 = c.tenant("expiry").await;
    let expires = chrono::Utc::now() + chrono::Duration::seconds(3);
    let (_, key3) = c
        .key(
            &t2.project_id,
            json!({"name": "short", "expires_at": expires.to_rfc3339()}),
        )
        .await;
    for gw in 0..2 {
        let (s, _) = c.client(gw, Method::GET, list, &key3, None).await;
        assert_eq!(s, StatusCode::OK);
    }
    let until = (expires - chrono::Utc::now())
        .to_std()
        .unwrap_or(Duration::ZERO);
    tokio::time::sleep(until).await;
    let started = Instant::now();
    let refused = refused_everywhere(&c, list, &key3, StatusCode::UNAUTHORIZED, started).await;
    println!(
        "expiry: refused by gateway 1/2 {:.1}/{:.1} ms after expires_at",
        ms(refused[0]),
        ms(refused[1])
    );
    for d in &refused {
        assert!(*d < Duration::from_secs(1), "took {d:?}");
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Polls every gateway until it answers `status`; returns how long after `since` each did.
async fn refused_everywhere(
    c: &Cluster,
    path: &str,
    key: &str,
    status: StatusCode,
    since: Instant,
) -> Vec<Duration> {
    let mut out = Vec::new();
    for gw in 0..c.gateways.len() {
        loop {
            let (s, body) = c.client(gw, Method::GET, path, key, None).await;
            if s == status {
                out.push(since.elapsed());
                break;
            }
            assert_eq!(s, StatusCode::OK, "gateway {gw}: {body}");
            assert!(
                since.elapsed() < Duration::from_secs(5),
                "gateway {gw} still accepts the key after 5 s"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    out
}

/// Writers and readers on two gateways; one gateway is SIGKILLed and restarted. Nothing
/// acknowledged is lost, nothing is stored twice, every reader ends with the store's sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_sigkill_loses_no_acknowledged_message() {
    let mut c = Cluster::start(2).await;
    let mut run = Workload::start(&c, "failover", 2, 2, 1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before_kill = run.acked();
    c.gateways[0].kill();
    println!("failover: gateway 1 SIGKILLed after {before_kill} acks");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_window = run.acked() - before_kill;
    c.gateways[0].restart();
    println!("failover: gateway 1 restarted; {killed_window} acks meanwhile through gateway 2");
    // A third reader joins on the restarted gateway and replays everything.
    run.add_reader(0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    run.finish("failover", &c).await;
    assert!(
        killed_window > 0,
        "writers kept going through the surviving gateway"
    );
}

/// NATS is killed and restarted during traffic: sends keep being acknowledged and stored;
/// the gateways tell their clients to resume (4102) and refuse subscriptions until NATS is
/// back; every reader ends with the store's sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_during_traffic_loses_nothing() {
    let mut nats = OwnNats::start();
    let c = Cluster::start_on(&nats.url(), 2).await;
    let run = Workload::start(&c, "nats-restart", 2, 2, 0).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = run.acked();
    nats.kill();
    let down_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = run.acked() - before;
    nats.restart();
    println!(
        "nats restart: NATS down for {:.1} s; {during} sends acknowledged meanwhile",
        down_at.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, views) = run.finish("nats restart", &c).await;
    assert!(during > 0, "sends are acknowledged while NATS is away");
    for (i, v) in views.iter().enumerate() {
        let v = v.lock().unwrap();
        assert!(
            v.close_codes.contains(&Some(4102)),
            "reader {i} was told to resume after the outage: {:?}",
            v.close_codes
        );
    }
}

/// NATS carries one copy of a conversation's events per interested gateway, not one per
/// client: a gateway subscribes on its first local subscriber and unsubscribes after its last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_nats_subscription_per_gateway_and_conversation() {
    let nats = OwnNats::start();
    let c = Cluster::start_on(&nats.url(), 2).await;
    let t = c.tenant("interest").await;
    let agent = json!({"type": "agent", "id": "watcher"});
    let conv = {
        let (u, _) = c.user(0, &t.key, "customer").await;
        c.conversation(0, &t.key, &[&u]).await
    };
    let subject = format!("lc.v1.{}.conv.{conv}", t.project_id);
    assert_eq!(nats.subscriptions(&subject).await, 0);
    let mut sockets = Vec::new();
    for i in 0..20 {
        let mut ws = connect(&c.gateways[i % 2].ws_url(), &t.key, Some(agent.clone()))
            .await
            .unwrap();
        subscribe(&mut ws, &conv, None).await;
        sockets.push(ws);
    }
    assert_eq!(
        nats.subscriptions(&subject).await,
        2,
        "20 clients on 2 gateways: one NATS subscription per gateway"
    );
    // The last local subscriber of gateway 1 leaves: only gateway 2 stays interested.
    for ws in sockets.iter_mut().step_by(2) {
        ws.close(None).await.unwrap();
    }
    sockets = sockets.into_iter().skip(1).step_by(2).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while nats.subscriptions(&subject).await != 1 {
        assert!(Instant::now() < deadline, "gateway 1 did not unsubscribe");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Still delivered to the clients of gateway 2, through gateway 1's publish.
    let (s, _) = c
        .client(
            0,
            Method::POST,
            &format!("/api/v1/conversations/{conv}/messages"),
            &t.key,
            Some(json!({"text": "still here?", "sender": agent})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    for ws in &mut sockets {
        let (m, _) = expect_type(ws, "message").await;
        assert_eq!(m["message"]["text"], "still here?");
    }
}

/// A split process without the distributed backends, the shared secrets or a migrated
/// keyspace stops at once and says what to set or run.
#[test]
fn split_processes_refuse_a_configuration_that_cannot_work() {
    let run = |role: &str, env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_larachat"))
            .args([role, "--listen", "127.0.0.1:0"])
            .env("LARACHAT_LOG", "error")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("run larachat");
        assert!(!out.status.success(), "{role} started with {env:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run("gateway", &[]);
    assert!(err.contains("bus.backend = \"nats\""), "{err}");
    let nats = required_env("LARACHAT_TEST_NATS_URL");
    let cassandra = required_env("LARACHAT_TEST_CASSANDRA");
    let distributed = [
        ("LARACHAT_BUS__BACKEND", "nats"),
        ("LARACHAT_BUS__NATS__URL", nats.as_str()),
        ("LARACHAT_STORAGE__BACKEND", "scylla"),
        (
            "LARACHAT_STORAGE__SCYLLA__CONTACT_POINTS",
            cassandra.as_str(),
        ),
    ];
    let err = run("control-plane", &distributed);
    assert!(err.contains("security.jwt_secret"), "{err}");
    let mut unmigrated = distributed.to_vec();
    unmigrated.extend([
        ("LARACHAT_SECURITY__JWT_SECRET", JWT_SECRET),
        ("LARACHAT_SECURITY__KEY_PEPPER", KEY_PEPPER),
        ("LARACHAT_STORAGE__SCYLLA__KEYSPACE", "lc_never_migrated"),
    ]);
    let err = run("gateway", &unmigrated);
    assert!(err.contains("larachat migrate"), "{err}");
}

/// Presence settings short enough for tests (debounce, beats, claim TTL).
fn fast_presence_env() -> Vec<(String, String)> {
    vars(&[
        ("LARACHAT_REALTIME__PRESENCE_DEBOUNCE_MS", "500"),
        ("LARACHAT_REALTIME__PRESENCE_HEARTBEAT_MS", "200"),
        ("LARACHAT_REALTIME__PRESENCE_TTL_MS", "1500"),
    ])
}

async fn watch_feed(ws: &mut Socket, feed: &str) {
    send(ws, json!({"type": "watch", "id": 5, "feed": feed}))
        .await
        .unwrap();
    let (w, _) = expect_type(ws, "watching").await;
    assert_eq!(w["feed"], json!(feed), "{w}");
}

/// Feeds and presence across two gateways over NATS: an end user on gateway A hears of a
/// conversation started and a message sent through gateway B (created, unread); an agent on
/// B sees the user come online, the conversation, its assignment through gateway A and the
/// message preview; the user with one
/// connection on each gateway stays online until both are closed; who-is-online answers the
/// same on both gateways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_and_presence_across_two_gateways() {
    let c = Cluster::start_with(
        &Backends::shared(),
        vec![fast_presence_env(), fast_presence_env()],
    )
    .await;
    let t = c.tenant("feeds").await;
    let (alice, alice_token) = c.user(0, &t.key, "alice").await;
    let mut agent = connect(&c.gateways[1].ws_url(), &t.key, None)
        .await
        .unwrap();
    watch_feed(&mut agent, "inbox").await;

    let mut on_a = connect(&c.gateways[0].ws_url(), &alice_token, None)
        .await
        .unwrap();
    watch_feed(&mut on_a, "user").await;
    let (p, _) = expect_type(&mut agent, "presence").await;
    assert_eq!(
        (p["user_id"].clone(), p["status"].clone()),
        (json!(alice), json!("online")),
        "{p}"
    );
    for i in 0..2 {
        let (s, list) = c
            .client(i, Method::GET, "/api/v1/presence", &t.key, None)
            .await;
        assert_eq!(s, StatusCode::OK, "{list}");
        let ids: Vec<&Value> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| &u["user_id"])
            .collect();
        assert_eq!(ids, vec![&json!(alice)], "gateway {i}: {list}");
    }

    // Through gateway B: a conversation, then a message.
    let conv = c.conversation(1, &t.key, &[&alice]).await;
    let (f, _) = expect_type(&mut on_a, "conversation_created").await;
    assert_eq!(f["conversation"]["id"], json!(conv), "{f}");
    let (f, _) = expect_type(&mut agent, "conversation_created").await;
    assert_eq!(f["conversation"]["id"], json!(conv), "{f}");
    // Assigned through gateway A: the inbox on B hears it, and B lists it by assignee (the
    // CQL assignee index).
    let (s, body) = c
        .client(
            0,
            Method::PATCH,
            &format!("/api/v1/conversations/{conv}"),
            &t.key,
            Some(json!({"assignee": "ana@acme"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (f, _) = expect_type(&mut agent, "conversation_updated").await;
    assert_eq!(
        (
            f["conversation"]["id"].clone(),
            f["conversation"]["assignee"].clone()
        ),
        (json!(conv), json!("ana@acme")),
        "{f}"
    );
    for (q, want) in [
        ("assignee=ana@acme", json!([conv])),
        ("assignee=none", json!([])),
    ] {
        let (s, list) = c
            .client(
                1,
                Method::GET,
                &format!("/api/v1/conversations?{q}"),
                &t.key,
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{list}");
        let ids: Vec<Value> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].clone())
            .collect();
        assert_eq!(json!(ids), want, "{q}: {list}");
    }
    let (s, m) = c
        .client(
            1,
            Method::POST,
            &format!("/api/v1/conversations/{conv}/messages"),
            &t.key,
            Some(json!({"text": "hello from B"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{m}");
    let (f, _) = expect_type(&mut agent, "message_preview").await;
    assert_eq!(
        (f["text"].clone(), f["seq"].clone()),
        (json!("hello from B"), json!(1)),
        "{f}"
    );
    let (f, _) = expect_type(&mut on_a, "unread").await;
    assert_eq!(
        (
            f["head_seq"].clone(),
            f["read_seq"].clone(),
            f["unread"].clone()
        ),
        (json!(1), json!(0), json!(1)),
        "{f}"
    );
    // Read on gateway B (a second device): the device on A hears its count drop.
    let mut on_b = connect(&c.gateways[1].ws_url(), &alice_token, None)
        .await
        .unwrap();
    send(
        &mut on_b,
        json!({"type": "read", "id": 6, "conversation_id": conv, "message_id": m["message"]["id"]}),
    )
    .await
    .unwrap();
    expect_type(&mut on_b, "ok").await;
    let (f, _) = expect_type(&mut on_a, "unread").await;
    assert_eq!(f["unread"], json!(0), "{f}");

    // Close the device on A: alice stays online (B still holds her), for longer than the
    // debounce plus the claim TTL.
    drop(on_a);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    send(&mut agent, json!({"type": "who_is_online", "id": 7}))
        .await
        .unwrap();
    let (o, before) = expect_type(&mut agent, "online").await;
    assert!(
        before.iter().all(|f| f["type"] != "presence"),
        "no presence change while one connection is left: {before:?}"
    );
    assert_eq!(o["users"][0]["user_id"], json!(alice), "{o}");
    // Close the last one: offline.
    drop(on_b);
    let (p, _) = expect_type(&mut agent, "presence").await;
    assert_eq!(
        (p["user_id"].clone(), p["status"].clone()),
        (json!(alice), json!("offline")),
        "{p}"
    );
}

/// A gateway that is killed (SIGKILL: no `down`, no close) takes its users offline within the
/// claim TTL plus one beat, as seen by an agent on the other gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_takes_its_users_offline_within_the_bound() {
    let mut c = Cluster::start_with(
        &Backends::shared(),
        vec![fast_presence_env(), fast_presence_env()],
    )
    .await;
    let t = c.tenant("presence-kill").await;
    let (bob, bob_token) = c.user(0, &t.key, "bob").await;
    let mut agent = connect(&c.gateways[1].ws_url(), &t.key, None)
        .await
        .unwrap();
    watch_feed(&mut agent, "inbox").await;
    let _bob = connect(&c.gateways[0].ws_url(), &bob_token, None)
        .await
        .unwrap();
    let (p, _) = expect_type(&mut agent, "presence").await;
    assert_eq!(
        (p["user_id"].clone(), p["status"].clone()),
        (json!(bob), json!("online")),
        "{p}"
    );

    let killed = Instant::now();
    c.gateways[0].kill();
    let (p, _) = expect_type(&mut agent, "presence").await;
    let took = killed.elapsed();
    assert_eq!(
        (p["user_id"].clone(), p["status"].clone()),
        (json!(bob), json!("offline")),
        "{p}"
    );
    println!("bob offline {took:?} after his gateway was killed (ttl 1.5 s, beats 0.2 s)");
    assert!(took < Duration::from_secs(10), "offline after {took:?}");
}

/// A member removed, or whose role is lowered, on the control plane loses its agent token's
/// sockets on every gateway at once (the control notice over NATS), not at the gateways'
/// next credential re-check (an hour away here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_or_demoted_member_loses_its_sockets_on_every_gateway_at_once() {
    let slow_heartbeat = vars(&[("LARACHAT_REALTIME__HEARTBEAT_SECS", "3600")]);
    let c = Cluster::start_with(
        &Backends::shared(),
        vec![slow_heartbeat.clone(), slow_heartbeat],
    )
    .await;
    let t = c.tenant("member-sockets").await;
    let members = format!("/api/admin/projects/{}/members", t.project_id);
    let email = format!("ana-{}@example.com", uuid::Uuid::new_v4().simple());
    let (s, inv) = c
        .admin(
            Method::POST,
            &format!("/api/admin/projects/{}/invites", t.project_id),
            Some(json!({"email": email, "role": "admin"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{inv}");
    let url = |p: &str| format!("{}{p}", c.control.base());
    let (s, accepted) = common::call(
        &c.http,
        Method::POST,
        &url("/api/admin/invites/accept"),
        None,
        Some(json!({"token": inv["token"], "name": "Ana", "password": "ana's own password"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{accepted}");
    let ana_id = accepted["user"]["id"].as_str().unwrap().to_owned();
    let ana = accepted["token"].as_str().unwrap().to_owned();
    let (s, tok) = common::call(
        &c.http,
        Method::POST,
        &url(&format!("/api/admin/projects/{}/agent-token", t.project_id)),
        Some(&ana),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{tok}");
    let token = tok["token"].as_str().unwrap().to_owned();
    let open_everywhere = || async {
        let mut sockets = Vec::new();
        for gw in &c.gateways {
            sockets.push(connect(&gw.ws_url(), &token, None).await.expect("connect"));
        }
        sockets
    };
    let closed_everywhere = |mut sockets: Vec<Socket>, what: &'static str| async move {
        let started = Instant::now();
        for (i, ws) in sockets.iter_mut().enumerate() {
            match next_frame(ws, common::WAIT).await {
                Frame::Closed(Some(4001)) => {}
                other => panic!("{what}: the socket on gateway {i}: {other:?}"),
            }
        }
        println!(
            "{what}: sockets on both gateways closed (4001) {:.1} ms after the admin's answer",
            ms(started.elapsed())
        );
    };

    // Lowered from admin to agent: both sockets close; the member may connect again.
    let sockets = open_everywhere().await;
    let (s, b) = c
        .admin(
            Method::PATCH,
            &format!("{members}/{ana_id}"),
            Some(json!({"role": "agent"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    closed_everywhere(sockets, "role lowered").await;

    // Removed: both sockets close, and the token is refused.
    let sockets = open_everywhere().await;
    let (s, b) = c
        .admin(Method::DELETE, &format!("{members}/{ana_id}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    closed_everywhere(sockets, "member removed").await;
    for gw in 0..c.gateways.len() {
        let (s, b) = c
            .client(gw, Method::GET, "/api/v1/conversations", &token, None)
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "gateway {gw}: {b}");
    }
}

/// Distributed mode, dashboard on the control plane and the Client API on a gateway (another
/// origin): the control plane tells the dashboard the gateway's origin and allows exactly it
/// (http and ws) in its CSP; the gateway answers CORS for the configured dashboard origin only,
/// without credentials mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_reaches_the_gateways_across_origins_with_cors_for_its_origin_only() {
    let mut c = Cluster::start(1).await;
    let dash = c.control.base();
    let gw = c.gw(0);
    let gw_ws = gw.replacen("http://", "ws://", 1);
    // Each side learns the other's origin (ports are kept across restarts).
    c.control.kill();
    c.control
        .env
        .push(("LARACHAT_DASHBOARD__GATEWAY_URL".into(), gw.clone()));
    c.control.restart();
    c.gateways[0].kill();
    c.gateways[0].env.push((
        "LARACHAT_DASHBOARD__ALLOWED_ORIGINS".into(),
        format!("{dash},https://other-dashboard.example"),
    ));
    c.gateways[0].restart();

    // The page is told, and its policy lets it connect there and nowhere else.
    let r = c
        .http
        .get(format!("{dash}/dashboard/config.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let cfg: Value = r.json().await.unwrap();
    assert_eq!(cfg, json!({ "gateway_url": gw }));
    let r = c
        .http
        .get(format!("{dash}/dashboard/"))
        .send()
        .await
        .unwrap();
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains(&format!("connect-src 'self' {gw} {gw_ws};")),
        "{csp}"
    );

    let t = c.tenant("dashboard-cors").await;
    let list = format!("{gw}/api/v1/conversations?limit=1");
    let preflight = |origin: &'static str| {
        let (http, list) = (c.http.clone(), list.clone());
        async move {
            http.request(Method::OPTIONS, &list)
                .header("origin", origin)
                .header("access-control-request-method", "GET")
                .header("access-control-request-headers", "authorization")
                .send()
                .await
                .unwrap()
        }
    };
    let get = |origin: &'static str| {
        let (http, list, key) = (c.http.clone(), list.clone(), t.key.clone());
        async move {
            http.get(&list)
                .header("origin", origin)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
        }
    };
    let dash_origin: &'static str = Box::leak(dash.clone().into_boxed_str());

    // Allowed origin: the preflight names it, the methods and the bearer header; no
    // credentials mode. The request itself carries the origin too.
    let r = preflight(dash_origin).await;
    assert!(r.status().is_success(), "{}", r.status());
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], dash_origin);
    let methods = h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_owned();
    for m in ["GET", "POST", "PATCH", "DELETE"] {
        assert!(methods.contains(m), "{methods}");
    }
    let headers = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(headers.contains("authorization"), "{headers}");
    assert!(h.get("access-control-allow-credentials").is_none());
    let r = get(dash_origin).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["access-control-allow-origin"], dash_origin);
    assert!(
        r.headers()
            .get("access-control-allow-credentials")
            .is_none()
    );
    let vary = r
        .headers()
        .get_all("vary")
        .iter()
        .map(|v| v.to_str().unwrap().to_lowercase())
        .collect::<Vec<_>>()
        .join(",");
    assert!(vary.contains("origin"), "{vary}");

    // Refused origin: no CORS header on either, so a browser keeps the answer from the page.
    for origin in ["https://evil.example", "null"] {
        let r = preflight(origin).await;
        assert!(
            r.headers().get("access-control-allow-origin").is_none(),
            "{origin}: {:?}",
            r.headers()
        );
        let r = get(origin).await;
        assert!(
            r.headers().get("access-control-allow-origin").is_none(),
            "{origin}: {:?}",
            r.headers()
        );
    }
}
