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
//! and one `analytics_conversations` row per conversation of 50 messages; 256 writes in
//! flight), so
//! that loading takes seconds instead of one lightweight transaction per message. Then it
//! times `analytics` + `ProjectAnalytics::compute`: the first 30-day query by the hour (which
//! counts and seals every hour), then `runs` more of each case (sealed), printing p50 / p90.

use std::time::Instant;

use chrono::TimeDelta;
use futures::stream::{self, StreamExt, TryStreamExt};
use scylla::client::session_builder::SessionBuilder;
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

/// One row to write.
enum Row {
    Message(Uuid, i64, &'static str, Uuid),
    Active(Uuid, i64, Uuid),
    ActiveDay(Uuid, i64, Uuid),
    Conversation(Uuid, i64, Uuid, i64, Option<i64>, Option<i64>, Option<i64>),
    Day(Uuid, i64),
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
    let mut rows = Vec::new();
    let mut written = 0;
    let mut days = std::collections::BTreeSet::new();
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
            rows.push(Row::Message(p, hour, kind, v7_at(at)));
            hours.insert(hour);
        }
        let mut active_days = std::collections::BTreeSet::new();
        for h in hours {
            rows.push(Row::Active(p, h, cid));
            active_days.insert(h.div_euclid(DAY_MS) * DAY_MS);
        }
        for d in active_days {
            rows.push(Row::ActiveDay(p, d, cid));
            days.insert(d);
        }
        let closed = (rng.next() % 10 < 6).then_some(at + 600_000);
        let day = start.div_euclid(DAY_MS) * DAY_MS;
        days.insert(day);
        rows.push(Row::Conversation(
            p, day, cid, start, asked, answered, closed,
        ));
        written += n;
    }
    for d in days {
        rows.push(Row::Day(p, d));
    }
    let started = Instant::now();
    let count = rows.len();
    let ts = |ms: i64| scylla::value::CqlTimestamp(ms);
    stream::iter(rows)
        .map(|row| {
            let session = &session;
            let (m, a, ad, c, d) = (
                &insert_message,
                &insert_active,
                &insert_active_day,
                &insert_conversation,
                &insert_day,
            );
            async move {
                match row {
                    Row::Message(p, h, k, id) => {
                        session.execute_unpaged(m, (p, h, k, id)).await.map(|_| ())
                    }
                    Row::Active(p, h, c2) => {
                        session.execute_unpaged(a, (p, h, c2)).await.map(|_| ())
                    }
                    Row::ActiveDay(p, day, c2) => {
                        session.execute_unpaged(ad, (p, day, c2)).await.map(|_| ())
                    }
                    Row::Conversation(p, day, id, created, asked, answered, closed) => session
                        .execute_unpaged(
                            c,
                            (
                                ts(created),
                                asked.map(ts),
                                answered.map(ts),
                                closed.map(ts),
                                p,
                                day,
                                id,
                            ),
                        )
                        .await
                        .map(|_| ()),
                    Row::Day(p, day) => session.execute_unpaged(d, (p, day)).await.map(|_| ()),
                }
            }
        })
        .buffer_unordered(256)
        .try_collect::<Vec<()>>()
        .await?;
    println!(
        "wrote the analytics rows of {written} messages ({count} rows) in {:.1} s",
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
    Ok(())
}
