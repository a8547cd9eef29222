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
    let mut missing_by_id = Vec::new();
    for (cmid, id) in &last {
        // `read` looks the message up by id (404 if it does not exist). Just after the
        // restart a request can still meet a store that is not back on every connection:
        // 503 is "no verdict, retry" (protocol §1.1), so only a definite answer counts.
        let retry_until = Instant::now() + Duration::from_secs(30);
        let (s, body) = loop {
            let (s, body) = c
                .client(
                    0,
                    Method::POST,
                    &format!("/api/v1/conversations/{}/read", run.conversation),
                    &run.key,
                    Some(json!({"message_id": id})),
                )
                .await;
            if s != StatusCode::SERVICE_UNAVAILABLE || Instant::now() >= retry_until {
                break (s, body);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if s != StatusCode::OK {
            missing_by_id.push(format!("{cmid} ({id}): {s} {body}"));
        }
    }
    println!(
        "cql sigkill: {} messages acknowledged in the 500 ms before the kill, {} of them not found by id {missing_by_id:?}",
        last.len(),
        missing_by_id.len()
    );
    run.finish("CQL node SIGKILL under writes, restarted on its data", &c)
        .await;
    assert!(
        missing_by_id.is_empty(),
        "acknowledged, then lost: {missing_by_id:?}"
    );
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
    let mut without_retry_after = 0;
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
                if resp.headers().get("retry-after").map(|v| v.as_bytes()) != Some(&b"1"[..]) {
                    without_retry_after += 1;
                }
                let body: Value = resp.json().await.unwrap();
                assert_eq!(body["error"]["code"], "unavailable", "{body}");
            }
            *statuses.entry(status.as_u16()).or_insert(0u32) += 1;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    node.signal(Signal::CONT);
    println!(
        "store outage: node frozen for {:.1} s; HTTP answers with the key meanwhile: {statuses:?} \
         ({without_retry_after} 503s without Retry-After); {} sends acknowledged meanwhile",
        stopped.elapsed().as_secs_f64(),
        run.acked() - acked_before
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
    // Readers 1 and 2 are the agents (secret keys). The readers follow §7: a 4000–4099 close
    // or a refused credential stops them, so what they then miss is counted.
    let views = run.views.clone();
    let report = || {
        for (i, v) in views.iter().enumerate() {
            let v = v.lock().unwrap();
            println!(
                "store outage: reader {i}: close codes {:?}, failed (re)connections {:?}",
                v.close_codes, v.connect_errors
            );
        }
    };
    let outcome = tokio::spawn(async move {
        run.finish("CQL node SIGSTOP for 15 s, key cache TTL 3 s", &c)
            .await;
    })
    .await;
    report();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
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
            .filter(|e| e.contains("unauthorized"))
            .collect();
        assert!(
            refused.is_empty(),
            "reader {i} refused as unauthorized: {refused:?}"
        );
    }
    assert!(
        statuses.contains_key(&503),
        "the outage outlived the key cache: {statuses:?}"
    );
    assert!(
        !statuses.contains_key(&401),
        "an outage is not bad credentials: {statuses:?}"
    );
    assert_eq!(without_retry_after, 0, "every 503 says when to retry");
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
    println!("{}", Summary::HEADER);
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
///
/// Two timed trials reproduce the clock failures of the first version:
/// - after the conversation was idle for 6 s, a message S is sent through the gateway 10 s
///   behind, which is frozen in the middle of storing it; meanwhile R is stored through the
///   right clock and readers resume (and get R); then S is stored. S must reach the readers
///   (live or by their next resume, with either cursor) and not get an id below R's;
/// - right after the fast gateway's clock is set back, both gateways are behind the newest id;
///   pairs of sends through both gateways at the same moment must get distinct ids and keep
///   their own content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_a_shifted_clock_breaks_neither_ids_nor_resume() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let libfaketime = libfaketime();
    // Each phase restarts gateway 2 with its offset: a process whose clock changed while it
    // ran would keep its ids monotonic by itself (uuid's v7 context), hiding what a gateway
    // started with a wrong clock does.
    let skewed = vars(&[
        ("LD_PRELOAD", libfaketime.as_str()),
        ("FAKETIME", "+0"),
        // Only the wall clock moves.
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ]);
    let mut c = Cluster::start_with(&Backends::shared(), vec![Vec::new(), skewed]).await;
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
    let trials = Trials::new(run.key.clone(), run.conversation.clone());
    for (name, offset, expected) in [
        ("real clock", "+0", 0),
        ("10 s behind", "-10", -10),
        ("10 s ahead", "+10", 10),
        ("real clock again", "+0", 0),
    ] {
        if name != "real clock" {
            // kill -9 in the middle of the traffic; its writers retry on gateway 1 and come
            // back once it is up again.
            let g = &mut c.gateways[1];
            g.kill();
            for (k, v) in g.env.iter_mut() {
                if k == "FAKETIME" {
                    *v = offset.to_owned();
                }
            }
            g.restart();
        }
        let measured = trials.clock_of_gateway_2(&c, expected).await;
        let before = run.acked();
        if name == "real clock again" {
            // Both gateways are behind the newest id (written 10 s ahead).
            run.pause_writers(true);
            trials.concurrent_pairs(&c, 20).await;
            run.pause_writers(false);
        }
        tokio::time::sleep(Duration::from_secs(4)).await;
        // Idle: the conversation's newest id ages, then messages come from both sides.
        run.pause_writers(true);
        tokio::time::sleep(Duration::from_secs(3)).await;
        if offset == "-10" {
            for _ in 0..4 {
                // Longer than the first version's 5 s window.
                tokio::time::sleep(Duration::from_secs(6)).await;
                trials.resume_after_idle(&c).await;
            }
        }
        run.pause_writers(false);
        tokio::time::sleep(Duration::from_secs(4)).await;
        println!(
            "clock skew: {name}: gateway 2 at {measured:+.1} s, {} sends acknowledged",
            run.acked() - before
        );
    }
    let t = trials.report(&c).await;
    println!("{}", Summary::HEADER);
    println!(
        "{}",
        t.row("timed trials: a send frozen mid-store on the slow gateway after 6 s idle ×4, concurrent pairs on both gateways ×40")
    );
    run.add_attempted(t.attempted);
    run.finish(
        "one gateway's clock −10 s, +10 s, then right (faketime, restarts)",
        &c,
    )
    .await;
    t.assert_correct("clock skew trials");
}

/// The timed trials of the clock test (see its docs), in the workload's conversation.
struct Trials {
    key: String,
    conversation: String,
    n: std::sync::atomic::AtomicUsize,
    /// client_msg_id → acknowledged message.
    sent: std::sync::Mutex<Vec<(String, Value)>>,
    /// Messages stored through the slow gateway with an id below the one stored just before
    /// through the right clock.
    inversions: std::sync::atomic::AtomicUsize,
    /// Resume-after-idle trials in which a reader following the contiguous cursor / the 5 s
    /// window never got S.
    missed_contiguous: std::sync::atomic::AtomicUsize,
    missed_window: std::sync::atomic::AtomicUsize,
}

impl Trials {
    fn new(key: String, conversation: String) -> Self {
        Self {
            key,
            conversation,
            n: Default::default(),
            sent: Default::default(),
            inversions: Default::default(),
            missed_contiguous: Default::default(),
            missed_window: Default::default(),
        }
    }

    /// Sends one message through gateway `gw`, as an agent; returns the stored message.
    async fn send(&self, c: &Cluster, gw: usize, prefix: &str) -> Value {
        let n = self.n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let cmid = format!("{prefix}-{n}");
        let (s, body) = c
            .client(
                gw,
                Method::POST,
                &format!("/api/v1/conversations/{}/messages", &self.conversation),
                &self.key,
                Some(json!({"text": cmid, "client_msg_id": cmid})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
        let m = body["message"].clone();
        self.sent.lock().unwrap().push((cmid, m.clone()));
        m
    }

    /// Gateway 2's clock offset, from the `created_at` of a message it stores in a fresh
    /// conversation (where no predecessor moves its id).
    async fn clock_of_gateway_2(&self, c: &Cluster, expected_s: i64) -> f64 {
        let conv = c.conversation(1, &self.key, &[]).await;
        let (s, m) = c
            .client(
                1,
                Method::POST,
                &format!("/api/v1/conversations/{conv}/messages"),
                &self.key,
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

    /// `pairs` times, one send through each gateway at the same moment.
    async fn concurrent_pairs(&self, c: &Cluster, pairs: usize) {
        for _ in 0..pairs {
            tokio::join!(self.send(c, 0, "pa"), self.send(c, 1, "pb"));
        }
    }

    /// After an idle period, S is sent through the slow gateway, which is frozen 0.3–2 ms
    /// later (in the middle of storing it); R is stored through the right clock; two readers
    /// resume from their cursor before R (one as §7 says, one with the 5 s window) and get R;
    /// then the slow gateway goes on and stores S. S must reach each reader, live or through
    /// its next resume, and S's id must not be below R's if S was stored after R.
    async fn resume_after_idle(&self, c: &Cluster) {
        let before = c.stored(0, &self.key, &self.conversation).await;
        let last = before.last().expect("the conversation has messages");
        let last_id = last["id"].as_str().unwrap().to_owned();
        let n = self.n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let s_cmid = format!("sb-{n}");
        let mut slow = connect(&c.gateways[1].ws_url(), &self.key, None)
            .await
            .unwrap();
        send(
            &mut slow,
            json!({"type": "send", "id": 1, "conversation_id": self.conversation,
                "client_msg_id": s_cmid, "text": s_cmid}),
        )
        .await
        .unwrap();
        let delay = Duration::from_micros(rand::thread_rng().gen_range(300..=3000));
        let written = Instant::now();
        while written.elapsed() < delay {
            std::hint::spin_loop();
        }
        c.gateways[1].signal(Signal::STOP);
        let r = self.send(c, 0, "ra").await;
        let mut readers = Vec::new();
        for (resume, after) in [
            (Resume::Contiguous, last_id.clone()),
            (Resume::Window, resume_window(&last_id)),
        ] {
            let mut ws = connect(&c.gateways[0].ws_url(), &self.key, None)
                .await
                .unwrap();
            let replayed = subscribe(&mut ws, &self.conversation, Some(&after)).await;
            assert!(
                replayed.iter().any(|f| f["message"]["id"] == r["id"]),
                "the resume replays R"
            );
            readers.push((resume, ws, replayed));
        }
        c.gateways[1].signal(Signal::CONT);
        let (ack, _) = expect_type(&mut slow, "ack").await;
        let s = ack["message"].clone();
        self.sent.lock().unwrap().push((s_cmid, s.clone()));
        let s_after_r = s["seq"].as_u64() > r["seq"].as_u64() || s["seq"].is_null();
        if s_after_r && s["id"].as_str() < r["id"].as_str() {
            self.inversions
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        for (resume, mut ws, replayed) in readers {
            let held = |frames: &[Value]| {
                frames
                    .iter()
                    .any(|f| f["type"] == "message" && f["message"]["id"] == s["id"])
            };
            let mut got = held(&replayed);
            let mut newest = r["id"].as_str().unwrap().to_owned();
            while let Frame::Data(f) = next_frame(&mut ws, Duration::from_secs(1)).await {
                got |= held(std::slice::from_ref(&f));
                if let Some(id) = f["message"]["id"].as_str() {
                    newest = newest.max(id.to_owned());
                }
            }
            if !got {
                // The live copy never came: the next resume must bring it.
                let after = match resume {
                    Resume::Contiguous => r["id"].as_str().unwrap().to_owned(),
                    Resume::Window => resume_window(&newest),
                };
                let mut ws = connect(&c.gateways[0].ws_url(), &self.key, None)
                    .await
                    .unwrap();
                got = held(&subscribe(&mut ws, &self.conversation, Some(&after)).await);
            }
            if !got {
                let missed = match resume {
                    Resume::Contiguous => &self.missed_contiguous,
                    Resume::Window => &self.missed_window,
                };
                missed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }

    /// Checks every trial message against the store; prints and returns the counts.
    async fn report(&self, c: &Cluster) -> Summary {
        let stored = c.stored(0, &self.key, &self.conversation).await;
        let by_id: HashMap<&str, &Value> = stored
            .iter()
            .map(|m| (m["id"].as_str().unwrap(), m))
            .collect();
        let sent = self.sent.lock().unwrap().clone();
        let lost = sent
            .iter()
            .filter(|(cmid, m)| {
                by_id.get(m["id"].as_str().unwrap()).is_none_or(|row| {
                    row["client_msg_id"] != json!(cmid) || row["text"] != json!(cmid)
                })
            })
            .count();
        let ids: std::collections::HashSet<&str> = sent
            .iter()
            .map(|(_, m)| m["id"].as_str().unwrap())
            .collect();
        let load = std::sync::atomic::Ordering::SeqCst;
        println!(
            "clock skew trials: {} trial messages, {} distinct ids, {lost} lost or overwritten; \
             S stored below R {} times; S missed by the contiguous cursor {} times, by the 5 s window {} times",
            sent.len(),
            ids.len(),
            self.inversions.load(load),
            self.missed_contiguous.load(load),
            self.missed_window.load(load),
        );
        Summary {
            attempted: sent.len(),
            acknowledged: sent.len(),
            stored: sent
                .iter()
                .filter(|(_, m)| by_id.contains_key(m["id"].as_str().unwrap()))
                .count(),
            lost,
            duplicated: sent.len() - ids.len(),
            overwritten: lost,
            reader_missing: vec![
                self.missed_contiguous.load(load),
                self.missed_window.load(load),
            ],
            seq_gapless: self.inversions.load(load) == 0,
            out_of_order: 0,
        }
    }
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
    let (summary, _) = run
        .finish("16 writers on 3 gateways, one conversation", &c)
        .await;
    assert!(
        summary.acknowledged > 100,
        "the writers got through: {summary:?}"
    );
}
