//! Analytics query time of `ScyllaStore` on a large project (needs a Cassandra node).
//!
//! ```text
//! LARACHAT_TEST_CASSANDRA=host:port cargo run --release -p larachat-store --features scylla \
//!     --example analytics_bench_cql -- [messages] [runs]
//! ```
//!
//! Migrates a fresh keyspace, then writes the analytics rows of `messages` (default 200,000)
//! messages of one project over the last 30 days directly (the rows the write path writes in
//! each message's batch: `analytics_messages`, `analytics_active`, `analytics_active_days`,
//! and one `analytics_conversations` row per conversation of 50 messages), grouped by
//! partition into unlogged single-partition batches (one mutation each on the node, 48 in
//! flight), so that loading takes minutes instead of one lightweight transaction per message. Then it
//! times `analytics` + `ProjectAnalytics::compute`: the first 30-day query by the hour (which
//! counts and seals every hour), then `runs` more of each case (sealed), printing p50 / p90.
//! The keyspace is dropped at the end unless `LARACHAT_BENCH_KEEP` is set.

use std::time::Instant;

use std::collections::BTreeMap;

use chrono::TimeDelta;
use futures::stream::{self, StreamExt, TryStreamExt};
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;
use uuid::Uuid;

use larachat_core::analytics::{AnalyticsRange, Granularity, ProjectAnalytics};
use larachat_core::id::ProjectId;
use larachat_core::model;
use larachat_store::{ScyllaConfig, ScyllaStore, Store};

#[path = "support/mod.rs"]
mod support;

use support::{Rng, ms, percentile, v7_at};

const PER_CONVERSATION: usize = 50;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

/// Rows of one partition, written as one unlogged batch (one mutation on the node).
enum Chunk {
    Messages(Vec<(Uuid, i64, &'static str, Uuid)>),
    Active(Vec<(Uuid, i64, Uuid)>),
    ActiveDays(Vec<(Uuid, i64, Uuid)>),
    Conversations(Vec<ConversationRow>),
    Days(Vec<(Uuid, i64)>),
}

/// `created_at, first_user_message_at, first_response_at, closed_at, project_id, day, id`.
type ConversationRow = (
    CqlTimestamp,
    Option<CqlTimestamp>,
    Option<CqlTimestamp>,
    Option<CqlTimestamp>,
    Uuid,
    i64,
    Uuid,
);

/// Rows per batch: all of one partition, under Cassandra's default 50 kB batch limit.
const BATCH_ROWS: usize = 64;
/// Batches in flight.
const IN_FLIGHT: usize = 48;

/// Splits `rows` grouped by partition key into chunks of at most [`BATCH_ROWS`].
fn chunks<K: Ord, T>(
    groups: BTreeMap<K, Vec<T>>,
    wrap: impl Fn(Vec<T>) -> Chunk,
) -> impl Iterator<Item = Chunk> {
    groups.into_values().flat_map(move |rows| {
        let mut out = Vec::new();
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            out.push(wrap(rows.by_ref().take(BATCH_ROWS).collect()));
        }
        out
    })
}

/// An unlogged batch of `n` times `stmt`.
fn batch_of(stmt: &PreparedStatement, n: usize) -> Batch {
    let mut b = Batch::new(BatchType::Unlogged);
    for _ in 0..n {
        b.append_statement(stmt.clone());
    }
    b
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let total: usize = args
        .first()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(200_000);
    let runs: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(20);
    let node = std::env::var("LARACHAT_TEST_CASSANDRA")?;
    let keyspace = format!("lc_bench_{}", Uuid::new_v4().simple());
    let store = ScyllaStore::connect(ScyllaConfig::new(vec![node.clone()], &keyspace)).await?;
    store.migrate().await?;
    let session = SessionBuilder::new().known_node(&node).build().await?;
    session.use_keyspace(&keyspace, false).await?;
    let insert_message = session
        .prepare(
            "INSERT INTO analytics_messages (project_id, hour, sender_kind, id) \
             VALUES (?, ?, ?, ?)",
        )
        .await?;
    let insert_active = session
        .prepare(
            "INSERT INTO analytics_active (project_id, hour, conversation_id) VALUES (?, ?, ?)",
        )
        .await?;
    let insert_active_day = session
        .prepare(
            "INSERT INTO analytics_active_days (project_id, day, conversation_id) \
             VALUES (?, ?, ?)",
        )
        .await?;
    let insert_conversation = session
        .prepare(
            "UPDATE analytics_conversations SET created_at = ?, first_user_message_at = ?, \
             first_response_at = ?, closed_at = ? \
             WHERE project_id = ? AND day = ? AND conversation_id = ?",
        )
        .await?;
    let insert_day = session
        .prepare("INSERT INTO analytics_days (project_id, day) VALUES (?, ?)")
        .await?;

    let project = ProjectId::new_v7();
    let p = *project.as_uuid();
    let now_ms = model::now().timestamp_millis();
    let span_ms = TimeDelta::days(30).num_milliseconds();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Grouped by partition: (project, hour) / (project, day).
    let mut messages: BTreeMap<i64, Vec<_>> = BTreeMap::new();
    let mut active: BTreeMap<i64, Vec<_>> = BTreeMap::new();
    let mut active_days: BTreeMap<i64, Vec<_>> = BTreeMap::new();
    let mut conversations: BTreeMap<i64, Vec<ConversationRow>> = BTreeMap::new();
    let mut written = 0;
    let mut days = std::collections::BTreeSet::new();
    let ts = CqlTimestamp;
    while written < total {
        let start = now_ms - span_ms + (rng.next() % (span_ms as u64 - 7_200_000)) as i64;
        let cid = v7_at(start);
        let n = PER_CONVERSATION.min(total - written);
        let mut at = start;
        let mut hours = std::collections::BTreeSet::new();
        let (mut asked, mut answered) = (None, None);
        for seq in 1..=n {
            at += 20_000 + (rng.next() % 60_000) as i64;
            let kind = match (seq % 2, rng.next() % 20) {
                (_, 0) => "bot",
                (_, 1) => "system",
                (1, _) => "end_user",
                _ => "agent",
            };
            if kind == "end_user" && asked.is_none() {
                asked = Some(at);
            } else if matches!(kind, "agent" | "bot") && asked.is_some() && answered.is_none() {
                answered = Some(at);
            }
            let hour = at.div_euclid(HOUR_MS) * HOUR_MS;
            messages
                .entry(hour)
                .or_default()
                .push((p, hour, kind, v7_at(at)));
            hours.insert(hour);
        }
        let mut conversation_days = std::collections::BTreeSet::new();
        for h in hours {
            active.entry(h).or_default().push((p, h, cid));
            conversation_days.insert(h.div_euclid(DAY_MS) * DAY_MS);
        }
        for d in conversation_days {
            active_days.entry(d).or_default().push((p, d, cid));
            days.insert(d);
        }
        let closed = (rng.next() % 10 < 6).then_some(at + 600_000);
        let day = start.div_euclid(DAY_MS) * DAY_MS;
        days.insert(day);
        conversations.entry(day).or_default().push((
            ts(start),
            asked.map(ts),
            answered.map(ts),
            closed.map(ts),
            p,
            day,
            cid,
        ));
        written += n;
    }
    let day_rows: BTreeMap<i64, Vec<_>> = [(0, days.into_iter().map(|d| (p, d)).collect())].into();
    let work: Vec<Chunk> = chunks(messages, Chunk::Messages)
        .chain(chunks(active, Chunk::Active))
        .chain(chunks(active_days, Chunk::ActiveDays))
        .chain(chunks(conversations, Chunk::Conversations))
        .chain(chunks(day_rows, Chunk::Days))
        .collect();
    let started = Instant::now();
    let count = work.len();
    let done = std::sync::atomic::AtomicUsize::new(0);
    stream::iter(work)
        .map(|chunk| {
            let session = &session;
            let done = &done;
            let (m, a, ad, c, d) = (
                &insert_message,
                &insert_active,
                &insert_active_day,
                &insert_conversation,
                &insert_day,
            );
            async move {
                let r = match chunk {
                    Chunk::Messages(v) => session.batch(&batch_of(m, v.len()), v).await,
                    Chunk::Active(v) => session.batch(&batch_of(a, v.len()), v).await,
                    Chunk::ActiveDays(v) => session.batch(&batch_of(ad, v.len()), v).await,
                    Chunk::Conversations(v) => session.batch(&batch_of(c, v.len()), v).await,
                    Chunk::Days(v) => session.batch(&batch_of(d, v.len()), v).await,
                };
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if n % 5000 == 0 {
                    eprintln!(
                        "{n} of {count} batches in {:.0} s",
                        started.elapsed().as_secs_f64()
                    );
                }
                r.map(|_| ())
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
    println!(
        "wrote the analytics rows of {written} messages ({count} single-partition batches of up \
         to {BATCH_ROWS} rows, {IN_FLIGHT} in flight) in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let now = model::now();
    let month_by_hour = AnalyticsRange::new(now - TimeDelta::days(30), now, Granularity::Hour)?;
    let t0 = Instant::now();
    let first = ProjectAnalytics::compute(
        month_by_hour,
        store.analytics(project, &month_by_hour).await?,
    );
    let messages: u64 = first.messages.iter().map(|b| b.count).sum();
    println!(
        "first 30 days by the hour (counts and seals {} hours): {:.0} ms, {messages} messages",
        month_by_hour.buckets(),
        t0.elapsed().as_secs_f64() * 1000.0
    );
    assert_eq!(
        messages as usize, written,
        "the rollups count every message"
    );
    for (name, span, granularity) in support::cases() {
        let range = AnalyticsRange::new(now - span, now, granularity)?;
        let mut times = Vec::with_capacity(runs);
        let mut active = 0;
        for _ in 0..runs.max(1) {
            let t0 = Instant::now();
            let a = ProjectAnalytics::compute(range, store.analytics(project, &range).await?);
            times.push(t0.elapsed());
            active = a.active_conversations;
        }
        times.sort();
        let pct = |p: usize| percentile(&times, p);
        println!(
            "{name}: p50 {:.1} ms, p90 {:.1} ms ({active} active conversations)",
            ms(pct(50)),
            ms(pct(90)),
        );
    }
    // The keyspace is the benchmark's own: dropped unless asked to keep it.
    if std::env::var_os("LARACHAT_BENCH_KEEP").is_none() {
        session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), ())
            .await?;
        println!("dropped keyspace {keyspace} (LARACHAT_BENCH_KEEP=1 keeps it)");
    }
    Ok(())
}
