//! Correct under faults: the distributed mode with real processes while something breaks.
//!
//! - the CQL node is `SIGKILL`ed under writes and restarted on its data: no acknowledged
//!   message is lost (the commit log is synced before an ack);
//! - the CQL node is `SIGSTOP`ped for longer than the key cache TTL: no socket is closed with
//!   4001, HTTP answers 503 with `Retry-After`, agents resume and miss nothing;
//! - a gateway is `SIGSTOP`ped 0.3–2 ms after a send reached it while the client retries the
//!   same `client_msg_id` on the other gateway, 100 times: every message is stored once, in
//!   the sender's order;
//! - one gateway runs with its clock 10 s behind, then 10 s ahead, then right again
//!   (Debian's `faketime`), with writers on both gateways and readers resuming every few
//!   seconds, also after the conversation was idle: nothing missing, nothing overwritten;
//! - many writers on three gateways write one conversation: distinct ids, gapless `seq`, every
//!   acknowledged message stored as sent.
//!
//! Each test prints its counts as a row of the fault table (`cargo test --test faults --
//! --nocapture`): attempted / acknowledged / stored / lost / duplicated / overwritten /
//! acknowledged missing per reader. The two CQL-node tests start a Cassandra node of their own
//! (`deploy/cassandra.sh` in a temporary run directory); the others use the run's services
//! (`LARACHAT_TEST_NATS_URL`, `LARACHAT_TEST_CASSANDRA`). The tests run one at a time: each
//! measures a fault, and two of them on a 2-core machine would measure each other.
//!
//! `LARACHAT_TEST_BIN=<another larachat>` runs the same harness against another build (the
//! "before" column of the closing note); `LARACHAT_CASSANDRA_COMMITLOG_SYNC=periodic` gives the
//! own nodes the commit-log mode shipped before.

mod common;
mod harness;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::{Method, StatusCode};
use rustix::process::Signal;
use serde_json::{Value, json};

use harness::*;

/// One fault at a time (see the module docs).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// libfaketime's thread-safe variant, from Debian's `faketime` package
/// (`/usr/lib/<multiarch>/faketime/libfaketimeMT.so.1`).
fn libfaketime() -> String {
    std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|d| d.path().join("faketime/libfaketimeMT.so.1"))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| {
            panic!("libfaketimeMT.so.1 is missing: apt-get install faketime (scripts/test.sh does)")
        })
}

fn header() {
    println!(
        "| fault | attempted | acknowledged | stored | lost | duplicated | overwritten | acknowledged missing per reader |"
    );
}

/// The CQL node is killed with SIGKILL under writes (3 writers, 2 readers, 2 gateways) and
/// restarted on its data. Every acknowledged message is still there — by id and in history —
/// including those acknowledged in the last moments before the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cql_node_sigkill_loses_no_acknowledged_message() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let node = OwnCassandra::start();
    let backends = Backends::fresh(
        &required_env("LARACHAT_TEST_NATS_URL"),
        &node.contact_point,
        "lc_faults",
    );
    let c = Cluster::start_with(&backends, vec![Vec::new(), Vec::new()]).await;
    let run = Workload::start(&c, "cql-sigkill", 3, 2, 0).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before = run.acked();
    node.kill();
    let killed_at = Instant::now();
    println!("cql sigkill: node killed after {before} acks");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let took = node.restart();
    println!(
        "cql sigkill: node restarted on its data in {:.1} s",
        took.as_secs_f64()
    );
    // Writes go on once the gateways have reconnected.
    let resumed = run.acked();
    let deadline = Instant::now() + Duration::from_secs(60);
    while run.acked() < resumed + 50 {
        assert!(
            Instant::now() < deadline,
            "no acknowledgement within 60 s of the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The acknowledgements of the last 500 ms before the kill are checked one by one, by id.
    let last: Vec<(String, String)> = run
        .history
        .lock()
        .unwrap()
        .ack_times
        .iter()
        .filter(|(t, _, _)| {
            *t <= killed_at && killed_at.duration_since(*t) < Duration::from_millis(500)
        })
        .map(|(_, cmid, id)| (cmid.clone(), id.clone()))
        .collect();
    for (cmid, id) in &last {
        // `read` looks the message up by id (404 if it does not exist).
        let (s, body) = c
            .client(
                0,
                Method::POST,
                &format!("/api/v1/conversations/{}/read", run.conversation),
                &run.key,
                Some(json!({"message_id": id})),
            )
            .await;
        assert_eq!(
            s,
            StatusCode::OK,
            "{cmid} ({id}) acknowledged before the kill: {body}"
        );
    }
    println!(
        "cql sigkill: {} messages acknowledged in the 500 ms before the kill, each found by id",
        last.len()
    );
    let (summary, _) = run.finish("cql sigkill", &c).await;
    header();
    println!("{}", summary.row("CQL node SIGKILL under writes"));
}

/// The CQL node is frozen (SIGSTOP) for 15 s, five times the key cache TTL, while agents with
/// secret keys hold sockets and end users write. No credential is refused: sockets stay open
/// or are told to come back (4102), HTTP answers 503 with `Retry-After`; afterwards every
/// reader (agents included) holds every acknowledged message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_longer_than_the_key_cache_never_looks_like_bad_credentials() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let node = OwnCassandra::start();
    let backends = Backends::fresh(
        &required_env("LARACHAT_TEST_NATS_URL"),
        &node.contact_point,
        "lc_faults",
    );
    let gateway = vars(&[
        ("LARACHAT_SECURITY__CACHE_TTL_SECS", "3"),
        ("LARACHAT_REALTIME__HEARTBEAT_SECS", "1"),
        ("LARACHAT_STORAGE__SCYLLA__REQUEST_TIMEOUT_SECS", "2"),
    ]);
    let c = Cluster::start_with(&backends, vec![gateway.clone(), gateway]).await;
    let mut run = Workload::start(&c, "store-outage", 2, 1, 0).await;
    // Two agents on secret-key sockets, one per gateway.
    run.add_reader_token(0, ReaderSpec::default(), run.key.clone());
    run.add_reader_token(1, ReaderSpec::default(), run.key.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let list = "/api/v1/conversations?limit=1";
    for gw in 0..2 {
        let (s, _) = c.client(gw, Method::GET, list, &run.key, None).await;
        assert_eq!(s, StatusCode::OK);
    }

    node.signal(Signal::STOP);
    let stopped = Instant::now();
    let acked_before = run.acked();
    // Past the cache TTL, HTTP with the key answers 503 + Retry-After, never 401.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut statuses = BTreeMap::new();
    while stopped.elapsed() < Duration::from_secs(15) {
        for gw in 0..2 {
            let url = format!("{}{list}", c.gw(gw));
            let resp = c
                .http
                .get(&url)
                .bearer_auth(&run.key)
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .expect("the gateway answers during a store outage");
            let status = resp.status();
            if status == StatusCode::SERVICE_UNAVAILABLE {
                assert_eq!(
                    resp.headers().get("retry-after").map(|v| v.as_bytes()),
                    Some(&b"1"[..]),
                    "503 says when to retry"
                );
                let body: Value = resp.json().await.unwrap();
                assert_eq!(body["error"]["code"], "unavailable", "{body}");
            }
            assert_ne!(
                status,
                StatusCode::UNAUTHORIZED,
                "an outage is not bad credentials"
            );
            *statuses.entry(status.as_u16()).or_insert(0u32) += 1;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    node.signal(Signal::CONT);
    println!(
        "store outage: node frozen for {:.1} s; HTTP answers with the key meanwhile: {statuses:?}; {} sends acknowledged meanwhile",
        stopped.elapsed().as_secs_f64(),
        run.acked() - acked_before
    );
    assert!(
        statuses.contains_key(&503),
        "the outage outlived the key cache: {statuses:?}"
    );
    let resumed = run.acked();
    let deadline = Instant::now() + Duration::from_secs(60);
    while run.acked() < resumed + 20 {
        assert!(
            Instant::now() < deadline,
            "no acknowledgement after the outage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (summary, views) = run.finish("store outage", &c).await;
    for (i, v) in views.iter().enumerate() {
        let v = v.lock().unwrap();
        assert!(
            v.close_codes
                .iter()
                .all(|c| c.is_none_or(|c| (4100..4200).contains(&c) || c == 1001)),
            "reader {i} was closed with a do-not-reconnect code: {:?}",
            v.close_codes
        );
        let refused: Vec<&String> = v
            .connect_errors
            .iter()
            .filter(|e| e.contains("unauthorized") || e.contains("4001"))
            .collect();
        assert!(
            refused.is_empty(),
            "reader {i} refused as unauthorized: {refused:?}"
        );
        println!(
            "store outage: reader {i}: close codes {:?}, {} failed (re)connections (none unauthorized)",
            v.close_codes,
            v.connect_errors.len()
        );
    }
    header();
    println!("{}", summary.row("CQL node SIGSTOP 15 s (cache TTL 3 s)"));
}

/// A gateway is frozen 0.3–2 ms after a `send` frame reached it; the client retries the same
/// `client_msg_id` on the other gateway, gets its ack, and only then the frozen gateway goes
/// on. 100 rounds, one sender: each message is stored once, in the sender's order, and both
/// gateways (when the first answers at all) acknowledge the same message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_stalled_mid_send_while_the_client_retries_elsewhere_stores_once() {
    const ROUNDS: usize = 100;
    let _serial = ONE_AT_A_TIME.lock().await;
    let c = Cluster::start(2).await;
    let t = c.tenant("stall").await;
    let (user, token) = c.user(0, &t.key, "sender").await;
    let conv = c.conversation(0, &t.key, &[&user]).await;
    let mut rng = rand::thread_rng();
    let mut first_answers: BTreeMap<String, u32> = BTreeMap::new();
    let mut acked: HashMap<String, String> = HashMap::new();
    let mut mismatched = 0;
    let mut delays = Vec::new();
    for round in 0..ROUNDS {
        let cmid = format!("s-{round}");
        let mut stalled = connect(&c.gateways[0].ws_url(), &token, None)
            .await
            .unwrap();
        let mut retry = connect(&c.gateways[1].ws_url(), &token, None)
            .await
            .unwrap();
        send(
            &mut stalled,
            json!({"type": "send", "id": 1, "conversation_id": conv, "client_msg_id": cmid, "text": cmid}),
        )
        .await
        .unwrap();
        // The frame is written; freeze the gateway within 0.3–2 ms (a spin: a timer would not
        // be that precise).
        let delay = Duration::from_micros(rng.gen_range(300..=2000));
        let written = Instant::now();
        while written.elapsed() < delay {
            std::hint::spin_loop();
        }
        c.gateways[0].signal(Signal::STOP);
        delays.push(written.elapsed());
        send(
            &mut retry,
            json!({"type": "send", "id": 2, "conversation_id": conv, "client_msg_id": cmid, "text": cmid}),
        )
        .await
        .unwrap();
        let (ack, _) = expect_type(&mut retry, "ack").await;
        c.gateways[0].signal(Signal::CONT);
        let id = ack["message"]["id"].as_str().unwrap().to_owned();
        acked.insert(cmid.clone(), id.clone());
        // What the frozen gateway answers once it goes on: the same message, or an error.
        let answer = match next_frame(&mut stalled, Duration::from_secs(10)).await {
            Frame::Data(f) if f["type"] == "ack" => {
                if f["message"]["id"] != json!(id) {
                    mismatched += 1;
                }
                if f["duplicate"] == json!(true) {
                    "ack (duplicate)".to_owned()
                } else {
                    "ack (created)".to_owned()
                }
            }
            Frame::Data(f) => format!("{} {}", f["type"], f["code"]),
            other => format!("{other:?}"),
        };
        *first_answers.entry(answer).or_default() += 1;
    }
    delays.sort();
    let stored = c.stored(1, &t.key, &conv).await;
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for m in &stored {
        *copies
            .entry(m["client_msg_id"].as_str().unwrap_or_default())
            .or_default() += 1;
    }
    let duplicated: usize = copies.values().map(|n| n - 1).sum();
    let lost = acked
        .iter()
        .filter(|(cmid, id)| {
            !stored
                .iter()
                .any(|m| m["id"] == json!(id) && m["client_msg_id"] == json!(cmid))
        })
        .count();
    let order: Vec<usize> = stored
        .iter()
        .filter_map(|m| {
            m["client_msg_id"]
                .as_str()?
                .strip_prefix("s-")?
                .parse()
                .ok()
        })
        .collect();
    let in_order = order.windows(2).all(|w| w[0] < w[1]);
    let overwritten = stored
        .iter()
        .filter(|m| m["text"] != m["client_msg_id"])
        .count();
    println!(
        "gateway stall: {ROUNDS} rounds, stop {:.2}–{:.2} ms after the frame was written; the stalled gateway then answered {first_answers:?} ({mismatched} with another message); \
         store: {} messages, {lost} lost acknowledged, {duplicated} duplicated, sender order kept: {in_order}",
        delays[0].as_secs_f64() * 1e3,
        delays[delays.len() - 1].as_secs_f64() * 1e3,
        stored.len(),
    );
    header();
    println!(
        "{}",
        Summary {
            attempted: ROUNDS,
            acknowledged: acked.len(),
            stored: stored.len(),
            lost,
            duplicated,
            overwritten,
            reader_missing: Vec::new(),
            seq_gapless: true,
            out_of_order: usize::from(!in_order),
        }
        .row("gateway SIGSTOP mid-send, retry on the other gateway (×100)")
    );
    assert_eq!(duplicated, 0, "a client_msg_id stored twice");
    assert_eq!(lost, 0, "an acknowledged message is missing");
    assert_eq!(
        mismatched, 0,
        "the two gateways acknowledged different messages"
    );
    assert_eq!(stored.len(), ROUNDS);
    assert!(in_order, "the sender's order: {order:?}");
    let seqs: Vec<u64> = stored.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=ROUNDS as u64).collect::<Vec<_>>(), "gapless");
}

/// One of two gateways runs under libfaketime: real clock, then 10 s behind, then 10 s
/// ahead, then the real clock again, with idle periods in each phase. Writers start on both
/// gateways; two readers resume from the contiguous cursor every 3 s, a third resumes the way
/// the first protocol version said (5 s before the highest id). Nothing acknowledged is
/// missing from any reader, nothing stored differs from what was sent, ids follow `seq`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_a_shifted_clock_breaks_neither_ids_nor_resume() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let libfaketime = libfaketime();
    let clock = tempfile::NamedTempFile::new().expect("tempfile");
    let set_offset = |offset: &str| std::fs::write(clock.path(), offset).expect("write offset");
    set_offset("+0");
    let skewed = vars(&[
        ("LD_PRELOAD", libfaketime.as_str()),
        ("FAKETIME_TIMESTAMP_FILE", clock.path().to_str().unwrap()),
        // Re-read the offset on every clock read (its cache would keep a negative offset
        // for longer than its duration); only the wall clock moves.
        ("FAKETIME_NO_CACHE", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ]);
    let c = Cluster::start_with(&Backends::shared(), vec![Vec::new(), skewed]).await;
    let every = Some(Duration::from_secs(3));
    let readers = [
        ReaderSpec {
            resume: Resume::Contiguous,
            reconnect_every: every,
        },
        ReaderSpec {
            resume: Resume::Contiguous,
            reconnect_every: every,
        },
        ReaderSpec {
            resume: Resume::Window,
            reconnect_every: every,
        },
    ];
    let run = Workload::start_with(&c, "clock-skew", 2, &readers, 0).await;
    // The clock offset of gateway 2, seen in a message it stores in a fresh conversation.
    let probe = |expected_s: i64| {
        let c = &c;
        let key = run.key.clone();
        async move {
            let conv = c.conversation(1, &key, &[]).await;
            let (s, m) = c
                .client(
                    1,
                    Method::POST,
                    &format!("/api/v1/conversations/{conv}/messages"),
                    &key,
                    Some(json!({"text": "what time is it?"})),
                )
                .await;
            assert_eq!(s, StatusCode::CREATED, "{m}");
            let at: chrono::DateTime<chrono::Utc> = m["message"]["created_at"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            let offset = (at - chrono::Utc::now()).num_milliseconds() as f64 / 1e3;
            assert!(
                (offset - expected_s as f64).abs() < 2.0,
                "gateway 2's clock is {offset:.1} s off, expected {expected_s} s"
            );
            offset
        }
    };
    let phase = |name: &'static str, offset: &'static str, expected: i64| {
        let run = &run;
        let set_offset = &set_offset;
        let probe = &probe;
        async move {
            set_offset(offset);
            tokio::time::sleep(Duration::from_millis(200)).await;
            let measured = probe(expected).await;
            let before = run.acked();
            tokio::time::sleep(Duration::from_secs(4)).await;
            // Idle: the conversation's newest id ages, then a message comes from each side.
            run.pause_writers(true);
            tokio::time::sleep(Duration::from_secs(3)).await;
            run.pause_writers(false);
            tokio::time::sleep(Duration::from_secs(4)).await;
            println!(
                "clock skew: {name}: gateway 2 at {measured:+.1} s, {} sends acknowledged",
                run.acked() - before
            );
        }
    };
    phase("real clock", "+0", 0).await;
    phase("10 s behind", "-10", -10).await;
    phase("10 s ahead", "+10", 10).await;
    phase("real clock again", "+0", 0).await;
    let (summary, _) = run.finish("clock skew", &c).await;
    header();
    println!(
        "{}",
        summary.row("one gateway's clock −10 s, +10 s, back (faketime)")
    );
}

/// Sixteen writers on three gateways write one conversation at once (each one message at a
/// time, moving to another gateway only on failure). Every acknowledged message is stored as
/// sent, once, with a distinct id; `seq` is 1..=n in id order; two readers hold it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_writers_on_three_gateways_into_one_conversation() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let c = Cluster::start(3).await;
    let run = Workload::start(&c, "many-writers", 16, 2, 0).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (summary, _) = run.finish("many writers", &c).await;
    header();
    println!(
        "{}",
        summary.row("16 writers on 3 gateways, one conversation")
    );
    assert!(
        summary.acknowledged > 100,
        "the writers got through: {summary:?}"
    );
}
