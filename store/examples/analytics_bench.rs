//! Analytics query time of `SqliteStore` on a large project.
//!
//! ```text
//! cargo run --release -p larachat-store --example analytics_bench -- [messages] [runs]
//! ```
//!
//! Generates one project with `messages` (default 1,000,000) messages over the last 30 days:
//! conversations of 50 messages (end user and agent taking turns a minute apart, some bot and
//! system messages), 60 % of them closed. The rows are inserted directly (big transactions)
//! into a database set back to schema 7, then the store is reopened so that migration 8
//! builds the rollups from them (its backfill is timed too). Then it times `analytics` +
//! `ProjectAnalytics::compute` `runs` times (default 20) for 30 days by the hour, 30 days by
//! the day and 24 hours by the hour, and prints p50 and p90, and checks that the rollups
//! count every message.

use std::time::Instant;

use chrono::TimeDelta;
use rusqlite::params;

use larachat_core::analytics::{AnalyticsRange, Granularity, ProjectAnalytics};
use larachat_core::id::{AdminUserId, ProjectId};
use larachat_core::model::{self, PlanId, Project, ProjectStatus};
use larachat_store::{SqliteConfig, SqliteStore, Store};
use serde_json::json;

#[path = "support/mod.rs"]
mod support;

use support::{Rng, ms, percentile, v7_at};

const PER_CONVERSATION: usize = 50;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let total: usize = args
        .first()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let runs: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(20);

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("analytics.db");
    let config = SqliteConfig {
        synchronous_full: false,
        ..SqliteConfig::new(&path)
    };
    let t = model::now();
    let project = Project {
        id: ProjectId::new_v7(),
        name: "big".into(),
        owner_id: AdminUserId::new_v7(),
        plan: PlanId::parse("enterprise").unwrap(),
        status: ProjectStatus::Active,
        settings: json!({}),
        created_at: t,
        updated_at: t,
    };
    {
        let store = SqliteStore::open(config.clone())?;
        store.create_project(&project).await?;
    }

    // Direct inserts into a schema-6 database (no rollups yet).
    let started = Instant::now();
    let mut conn = rusqlite::Connection::open(&path)?;
    conn.execute_batch(
        // The tables of migration 8 (analytics) and of every later one, so that reopening
        // applies them all again.
        "DROP TABLE analytics_hours; DROP TABLE analytics_active; \
         DROP TABLE analytics_conversations; DROP TABLE usage_edge; \
         DROP TABLE project_members; DROP TABLE project_invites; \
         DROP TABLE conversation_keys; DROP TABLE search_terms; DROP TABLE backfills; \
         PRAGMA user_version = 7; \
         PRAGMA synchronous = OFF; PRAGMA foreign_keys = OFF;",
    )?;
    let pid = *project.id.as_uuid().as_bytes();
    let now_ms = t.timestamp_millis();
    let span_ms = TimeDelta::days(30).num_milliseconds();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let conversations = total.div_ceil(PER_CONVERSATION);
    let mut written = 0usize;
    let tx = conn.transaction()?;
    {
        let mut conv = tx.prepare(
            "INSERT INTO conversations (project_id, id, subject, status, metadata, created_at, \
             updated_at, last_message_id, last_seq) VALUES (?1, ?2, NULL, ?3, '{}', ?4, ?5, ?6, ?7)",
        )?;
        let mut msg = tx.prepare(
            "INSERT INTO messages (project_id, conversation_id, id, sender_kind, sender_id, \
             sender_name, text, metadata, client_msg_id, created_at, seq) \
             VALUES (?1, ?2, ?3, ?4, ?5, NULL, 'hello, I need help with my order', '{}', NULL, \
             ?6, ?7)",
        )?;
        for _ in 0..conversations {
            // Started at a random time of the 30 days, ending before now.
            let start = now_ms - span_ms + (rng.next() % (span_ms as u64 - 7_200_000)) as i64;
            let cid = v7_at(start);
            let n = PER_CONVERSATION.min(total - written);
            let mut at = start;
            let mut last = cid;
            for seq in 1..=n {
                at += 20_000 + (rng.next() % 60_000) as i64;
                let kind = match (seq % 2, rng.next() % 20) {
                    (_, 0) => "bot",
                    (_, 1) => "system",
                    (1, _) => "end_user",
                    _ => "agent",
                };
                last = v7_at(at);
                msg.execute(params![
                    pid,
                    cid.as_bytes(),
                    last.as_bytes(),
                    kind,
                    "sender",
                    at,
                    seq as i64
                ])?;
            }
            written += n;
            let closed = rng.next() % 10 < 6;
            conv.execute(params![
                pid,
                cid.as_bytes(),
                if closed { "closed" } else { "open" },
                start,
                at + 600_000,
                last.as_bytes(),
                n as i64
            ])?;
        }
    }
    tx.commit()?;
    drop(conn);
    println!(
        "generated {written} messages in {conversations} conversations in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let store = SqliteStore::open(config)?;
    println!(
        "migration 8 (rollups from the existing messages): {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let now = model::now();
    for (name, span, granularity) in support::cases() {
        let range = AnalyticsRange::new(now - span, now, granularity)?;
        let mut times = Vec::with_capacity(runs);
        let mut answer = None;
        for _ in 0..runs.max(1) {
            let t0 = Instant::now();
            let data = store.analytics(project.id, &range).await?;
            let a = ProjectAnalytics::compute(range, data);
            times.push(t0.elapsed());
            answer = Some(a);
        }
        times.sort();
        let pct = |p: usize| percentile(&times, p);
        let a = answer.expect("at least one run");
        let messages: u64 = a.messages.iter().map(|b| b.count).sum();
        println!(
            "{name}: p50 {:.2} ms, p90 {:.2} ms ({} buckets, {messages} messages, {} active, \
             {} created, first response n={} median {:?} s)",
            ms(pct(50)),
            ms(pct(90)),
            a.messages.len(),
            a.active_conversations,
            a.conversations_created.iter().map(|b| b.count).sum::<u64>(),
            a.first_response.count,
            a.first_response.median_seconds,
        );
        if span == TimeDelta::days(30) && granularity == Granularity::Hour {
            // The range is the whole generated period plus the current hour.
            assert_eq!(
                messages as usize, written,
                "the rollups count every message"
            );
        }
    }
    Ok(())
}
