//! The bus contract suite (`larachat_broker::contract`) run against [`NatsBus`] on a real
//! nats-server, plus what only NATS has: the durable event stream, reconnection, slow
//! consumers.
//!
//! Needs a running server, never a mock:
//!
//! ```sh
//! deploy/nats.sh install && eval "$(deploy/nats.sh start)"
//! LARACHAT_TEST_NATS_URL=$NATS_URL cargo test -p larachat-broker --features nats
//! ```
//!
//! Without `LARACHAT_TEST_NATS_URL` every test fails (it does not skip). The restart and
//! stream-limit tests start their own nats-server (`LARACHAT_NATS_SERVER_BIN`, or the binary
//! `deploy/nats.sh install` builds) on a port of their own.
#![cfg(feature = "nats")]

use std::collections::HashSet;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use larachat_broker::nats::{EVENTS_STREAM, EVENTS_SUBJECTS};
use larachat_broker::{
    Bus, BusError, BusSubscription, DurableSubject, EventKind, NatsBus, NatsOptions, Subject,
    contract,
};
use larachat_core::id::{ConversationId, ProjectId};
use tokio::time::{Instant, sleep, timeout};

const HOW_TO_START: &str = "start one with `deploy/nats.sh install && eval \"$(deploy/nats.sh start)\"`, \
     then run `LARACHAT_TEST_NATS_URL=$NATS_URL cargo test -p larachat-broker --features nats`";

macro_rules! contract_tests {
    ($($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                contract::$check(bus().await).await;
            }
        )*
    };
}

larachat_broker::for_each_bus_check!(contract_tests);

/// The whole suite on one bus instance: checks must not depend on a fresh connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_on_one_bus() {
    contract::run_all(bus().await).await;
}

// ---------------------------------------------------------------------------------------------
// NATS-specific
// ---------------------------------------------------------------------------------------------

/// Connecting creates the event stream with the documented configuration; connecting again
/// (another gateway, a restart) keeps the same stream and its events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_exists_after_connect_and_connecting_again_keeps_it() {
    let url = nats_url();
    let first = connect(&url, options()).await;
    let subject = DurableSubject::new(ProjectId::new_v7(), EventKind::MessageSent);
    let seq = durable(&first, &subject, Bytes::from_static(b"kept")).await;

    let js = raw_jetstream(&url).await;
    let info = stream_info(&js).await;
    let config = &info.config;
    assert_eq!(config.subjects, vec![EVENTS_SUBJECTS.to_owned()]);
    assert_eq!(config.storage, stream::StorageType::File);
    assert_eq!(config.retention, stream::RetentionPolicy::Limits);
    assert_eq!(config.discard, stream::DiscardPolicy::Old);
    assert_eq!(config.max_age, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(config.max_bytes, NatsOptions::default().events_max_bytes);

    let _second = connect(&url, options()).await;
    let again = stream_info(&js).await;
    assert_eq!(again.created, info.created, "the stream was recreated");
    let stored = read_event(&js, seq).await;
    assert_eq!(
        stored.payload,
        Bytes::from_static(b"kept"),
        "an event was lost"
    );
}

/// A durable event is acknowledged with its sequence, and the stream holds it under its
/// subject, payload unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_publish_is_acked_and_readable_from_the_stream() {
    let url = nats_url();
    let bus = connect(&url, options()).await;
    let project = ProjectId::new_v7();
    let sent = DurableSubject::new(project, EventKind::MessageSent);
    let read = DurableSubject::new(project, EventKind::MessageRead);
    let payload = Bytes::from(r#"{"event":"message.sent","data":{"text":"héllo"}}"#);
    let first = durable(&bus, &sent, payload.clone()).await;
    let second = durable(&bus, &read, Bytes::from_static(b"read")).await;
    assert!(second > first, "sequences {first} then {second}");

    let js = raw_jetstream(&url).await;
    let stored = read_event(&js, first).await;
    assert_eq!(stored.subject.as_str(), sent.as_str());
    assert_eq!(stored.payload, payload);
    assert_eq!(
        DurableSubject::parse(stored.subject.as_str()),
        Some((project, EventKind::MessageSent))
    );
    let stored = read_event(&js, second).await;
    assert_eq!(
        DurableSubject::parse(stored.subject.as_str()),
        Some((project, EventKind::MessageRead))
    );
}

/// A subscriber that does not read loses messages beyond its queue (counted), instead of
/// growing memory; what it kept arrives in order and it receives again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_subscription_queue_drops_and_counts() {
    const CAPACITY: usize = 16;
    let bus = connect(
        &nats_url(),
        NatsOptions {
            subscription_capacity: CAPACITY,
            ..options()
        },
    )
    .await;
    let s = conversation();
    let mut sub = bus.subscribe(&s).await.expect("subscribe");
    for i in 0..1000u32 {
        bus.publish(&s, Bytes::copy_from_slice(&i.to_be_bytes()))
            .await
            .expect("publish");
    }
    // The server answers a ping after everything published before it, so all 1000 have
    // reached the client by then.
    bus.ping().await.expect("ping");
    eventually("drops counted", || bus.dropped() > 0).await;
    let mut kept = Vec::new();
    while let Some(Some(m)) = sub.next().now_or_never() {
        kept.push(u32::from_be_bytes(
            m.payload[..].try_into().expect("4 bytes"),
        ));
    }
    assert!(kept.len() <= CAPACITY, "{} messages buffered", kept.len());
    assert_eq!(kept, (0..kept.len() as u32).collect::<Vec<_>>());
    bus.publish(&s, Bytes::from_static(b"again"))
        .await
        .expect("publish");
    assert_eq!(recv(&mut sub).await, Bytes::from_static(b"again"));
}

/// Dropping a subscription removes it from the server, not only locally: the server stops
/// routing the subject to this connection. Observed through "no responders", which the server
/// answers to a request only when the subject has no subscription at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_subscription_unsubscribes_at_the_server() {
    let url = nats_url();
    let bus = connect(&url, options()).await;
    let raw = async_nats::connect(&url).await.expect("raw NATS client");
    let s = conversation();
    let has_subscribers = || async {
        let request = async_nats::Request::new().timeout(Some(Duration::from_millis(300)));
        match raw.send_request(s.as_str().to_owned(), request).await {
            Err(e) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => false,
            Err(e) if e.kind() == async_nats::client::RequestErrorKind::TimedOut => true,
            other => panic!("unexpected answer: {other:?}"),
        }
    };
    assert!(!has_subscribers().await);
    let sub = bus.subscribe(&s).await.expect("subscribe");
    assert!(
        has_subscribers().await,
        "subscribe did not reach the server"
    );
    drop(sub);
    let deadline = Instant::now() + Duration::from_secs(10);
    while has_subscribers().await {
        assert!(
            Instant::now() < deadline,
            "the server still routes the subject 10 s after the drop"
        );
    }
}

/// Connecting to a port where no server listens fails with `Unavailable`, promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_without_a_server_fails_promptly() {
    let url = format!("nats://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let result = timeout(
        Duration::from_secs(10),
        NatsBus::connect(
            &url,
            NatsOptions {
                connect_timeout: Duration::from_secs(1),
                ..options()
            },
        ),
    )
    .await
    .expect("connect hung");
    assert!(
        matches!(result, Err(BusError::Unavailable(_))),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A comma-separated URL names the servers of one cluster; a malformed entry is refused with a
/// clear error instead of a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_list_connects_and_a_bad_entry_is_refused() {
    let url = nats_url();
    let bus = connect(&format!("{url}, {url}"), options()).await;
    bus.ping().await.expect("ping over a URL list");
    let bad = NatsBus::connect(&format!("{url},nats://127.0.0.1:notaport"), options()).await;
    assert!(
        matches!(&bad, Err(BusError::Unavailable(m)) if m.contains("invalid NATS URL")),
        "{:?}",
        bad.err()
    );
}

/// While the server is down, publishing fails fast instead of queueing; after it comes back
/// on the same address, the bus reconnects by itself and an existing subscription receives
/// again. Durable events stored before the crash are still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_keeps_working_after_the_server_restarts() {
    let mut server = TestServer::start();
    let bus = server.connect(options()).await;
    let mut outages = bus.outages();
    let s = conversation();
    let mut sub = bus.subscribe(&s).await.expect("subscribe");
    bus.publish(&s, Bytes::from_static(b"before"))
        .await
        .expect("publish");
    assert_eq!(recv(&mut sub).await, Bytes::from_static(b"before"));
    let durable_subject = DurableSubject::new(ProjectId::new_v7(), EventKind::MessageSent);
    let seq = durable(&bus, &durable_subject, Bytes::from_static(b"stored")).await;

    // A publish that returned `Ok` may still be delivered (at most once); one that failed
    // must never be.
    let mut rejected = HashSet::new();
    server.kill();
    let down = Instant::now();
    let error = loop {
        let payload = Bytes::from(format!("down-{}", down.elapsed().as_nanos()));
        let attempt = timeout(Duration::from_secs(5), bus.publish(&s, payload.clone()))
            .await
            .expect("publish blocked while NATS is down");
        if let Err(e) = attempt {
            rejected.insert(payload);
            break e;
        }
        assert!(
            down.elapsed() < Duration::from_secs(5),
            "publish kept succeeding with the server down"
        );
        sleep(Duration::from_millis(20)).await;
    };
    assert!(matches!(error, BusError::Unavailable(_)), "{error:?}");
    assert!(!bus.is_connected());
    assert!(
        matches!(bus.ping().await, Err(BusError::Unavailable(_))),
        "ping answered with the server down"
    );
    assert!(
        matches!(
            bus.publish_durable(&durable_subject, Bytes::new()).await,
            Err(BusError::Unavailable(_))
        ),
        "durable publish succeeded with the server down"
    );
    timeout(Duration::from_secs(5), outages.changed())
        .await
        .expect("the outage was not reported")
        .expect("the bus is gone");

    server.restart();
    let back = Instant::now();
    'reconnected: loop {
        // Publishing fails until the client has reconnected; the subscription was kept.
        let payload = Bytes::from(format!("up-{}", back.elapsed().as_nanos()));
        if bus.publish(&s, payload.clone()).await.is_err() {
            rejected.insert(payload);
        }
        while let Ok(Some(m)) = timeout(Duration::from_millis(100), sub.next()).await {
            assert!(
                !rejected.contains(&m.payload),
                "a publish that failed was delivered"
            );
            if m.payload.starts_with(b"up-") {
                break 'reconnected;
            }
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "the old subscription received nothing within 10 s of the restart"
        );
    }
    bus.ping().await.expect("ping after reconnect");
    let js = raw_jetstream(&server.url()).await;
    assert_eq!(
        read_event(&js, seq).await.payload,
        Bytes::from_static(b"stored")
    );
    durable(&bus, &durable_subject, Bytes::from_static(b"after")).await;
}

/// Connecting with other stream limits updates the existing stream (an operator changed the
/// configuration) without recreating it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_brings_the_stream_limits_in_line() {
    let server = TestServer::start();
    let _first = server
        .connect(NatsOptions {
            events_max_bytes: 1 << 20,
            ..options()
        })
        .await;
    let js = raw_jetstream(&server.url()).await;
    let before = stream_info(&js).await;
    assert_eq!(before.config.max_bytes, 1 << 20);

    let _second = server
        .connect(NatsOptions {
            events_max_bytes: 2 << 20,
            events_max_age: Duration::from_secs(3600),
            ..options()
        })
        .await;
    let after = stream_info(&js).await;
    assert_eq!(after.config.max_bytes, 2 << 20);
    assert_eq!(after.config.max_age, Duration::from_secs(3600));
    assert_eq!(after.created, before.created, "the stream was recreated");
}

// ---------------------------------------------------------------------------------------------
// Support
// ---------------------------------------------------------------------------------------------

/// The shared server's URL. Fails (never skips) when it is not configured.
fn nats_url() -> String {
    match std::env::var("LARACHAT_TEST_NATS_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "LARACHAT_TEST_NATS_URL is not set: these tests need a NATS server; {HOW_TO_START}"
        ),
    }
}

fn options() -> NatsOptions {
    NatsOptions {
        name: "larachat-broker-test".to_owned(),
        ..NatsOptions::default()
    }
}

async fn bus() -> Arc<dyn Bus> {
    Arc::new(connect(&nats_url(), options()).await)
}

async fn connect(url: &str, options: NatsOptions) -> NatsBus {
    match timeout(Duration::from_secs(15), NatsBus::connect(url, options)).await {
        Ok(Ok(bus)) => bus,
        Ok(Err(e)) => panic!("cannot connect to NATS at {url}: {e}; {HOW_TO_START}"),
        Err(_) => panic!("connecting to NATS at {url} hung"),
    }
}

async fn durable(bus: &NatsBus, subject: &DurableSubject, payload: Bytes) -> u64 {
    match timeout(
        Duration::from_secs(10),
        bus.publish_durable(subject, payload),
    )
    .await
    {
        Ok(Ok(seq)) => seq,
        Ok(Err(e)) => panic!("durable publish to {subject} failed: {e}"),
        Err(_) => panic!("durable publish to {subject} hung"),
    }
}

/// A separate plain client, to look at the stream as a consumer would.
async fn raw_jetstream(url: &str) -> jetstream::Context {
    let client = async_nats::connect(url).await.expect("raw NATS client");
    jetstream::new(client)
}

async fn stream_info(js: &jetstream::Context) -> stream::Info {
    let mut stream = js
        .get_stream(EVENTS_STREAM)
        .await
        .expect("the event stream does not exist");
    stream.info().await.expect("stream info").clone()
}

async fn read_event(
    js: &jetstream::Context,
    seq: u64,
) -> async_nats::jetstream::message::StreamMessage {
    js.get_stream(EVENTS_STREAM)
        .await
        .expect("the event stream does not exist")
        .get_raw_message(seq)
        .await
        .unwrap_or_else(|e| panic!("event {seq} is not in the stream: {e}"))
}

fn conversation() -> Subject {
    Subject::conversation(ProjectId::new_v7(), ConversationId::new_v7())
}

async fn recv(sub: &mut BusSubscription) -> Bytes {
    match timeout(Duration::from_secs(10), sub.next()).await {
        Ok(Some(m)) => m.payload,
        Ok(None) => panic!("subscription ended"),
        Err(_) => panic!("nothing received within 10 s"),
    }
}

async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        sleep(Duration::from_millis(5)).await;
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("no free loopback port")
        .port()
}

/// A nats-server of the test's own (JetStream on, state in a temporary directory), killed
/// when dropped.
struct TestServer {
    bin: PathBuf,
    port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
}

impl TestServer {
    fn start() -> Self {
        let bin = std::env::var_os("LARACHAT_NATS_SERVER_BIN")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .map(|home| PathBuf::from(home).join(".cache/larachat/bin/nats-server"))
            })
            .filter(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!("no nats-server binary (LARACHAT_NATS_SERVER_BIN or ~/.cache/larachat/bin/nats-server); {HOW_TO_START}")
            });
        let mut server = Self {
            bin,
            port: free_port(),
            store: tempfile::tempdir().expect("temporary directory"),
            child: None,
        };
        server.restart();
        server
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on its port, with its state, and waits until it accepts
    /// connections.
    fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(&self.bin)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not listen on port {} within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`: no goodbye to clients.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Connects, retrying while JetStream finishes starting.
    async fn connect(&self, options: NatsOptions) -> NatsBus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match NatsBus::connect(&self.url(), options.clone()).await {
                Ok(bus) => return bus,
                Err(e) if Instant::now() >= deadline => panic!("test server unusable: {e}"),
                Err(_) => sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}
