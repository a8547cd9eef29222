//! Append throughput and latency of `SqliteStore` under concurrency.
//!
//! ```text
//! cargo run --release -p larachat-store --example append_bench -- [messages] [tasks] [normal]
//! ```
//!
//! Appends `messages` (default 20000) from `tasks` (default 64) concurrent tasks spread over 16
//! conversations, each with a `client_msg_id` like the gateway sends, then prints messages/s,
//! p50/p99/max latency of one append (ack = durable) and how the writer grouped the commits.
//! `normal` switches to `synchronous=NORMAL`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use larachat_core::id::{AdminUserId, ConversationId, ProjectId};
use larachat_core::model::{
    self, Actor, ActorKind, Conversation, ConversationStatus, NewMessage, PlanId, Project,
    ProjectStatus,
};
use larachat_store::{SqliteConfig, SqliteStore, Store};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let total: usize = args
        .first()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20_000);
    let tasks: usize = args
        .get(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(64)
        .max(1);
    let synchronous_full = args.get(2).map(String::as_str) != Some("normal");

    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(SqliteConfig {
        synchronous_full,
        ..SqliteConfig::new(dir.path().join("bench.db"))
    })?;
    let t = model::now();
    let project = Project {
        id: ProjectId::new_v7(),
        name: "bench".into(),
        owner_id: AdminUserId::new_v7(),
        plan: PlanId::parse("pro").unwrap(),
        status: ProjectStatus::Active,
        settings: json!({}),
        created_at: t,
        updated_at: t,
    };
    store.create_project(&project).await?;
    let mut conversations = Vec::new();
    for _ in 0..16 {
        let c = Conversation {
            id: ConversationId::new_v7(),
            project_id: project.id,
            subject: None,
            status: ConversationStatus::Open,
            members: vec![],
            metadata: json!({}),
            created_at: t,
            updated_at: t,
            last_message_id: None,
            assignee: None,
        };
        store.create_conversation(&c).await?;
        conversations.push(c.id);
    }
    let conversations = Arc::new(conversations);
    let before = store.stats();

    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for task in 0..tasks {
        let store = store.clone();
        let conversations = conversations.clone();
        let n = total / tasks + usize::from(task < total % tasks);
        set.spawn(async move {
            let mut latencies = Vec::with_capacity(n);
            for i in 0..n {
                let m = NewMessage {
                    project_id: project.id,
                    conversation_id: conversations[(task + i) % conversations.len()],
                    sender: Actor {
                        kind: ActorKind::EndUser,
                        id: format!("user-{task}"),
                        name: None,
                    },
                    text: "The quick brown fox jumps over the lazy dog, twice.".into(),
                    metadata: json!({}),
                    client_msg_id: Some(format!("{task}-{i}")),
                };
                let t0 = Instant::now();
                store.append_message(&m).await?;
                latencies.push(t0.elapsed());
            }
            Ok::<_, larachat_store::StoreError>(latencies)
        });
    }
    let mut latencies: Vec<Duration> = Vec::with_capacity(total);
    while let Some(r) = set.join_next().await {
        latencies.extend(r??);
    }
    let elapsed = started.elapsed();
    let after = store.stats();

    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    let batches = after.batches - before.batches;
    println!(
        "{} appends, {tasks} tasks, synchronous={}: {:.0} msg/s in {:.2?}",
        latencies.len(),
        if synchronous_full { "FULL" } else { "NORMAL" },
        latencies.len() as f64 / elapsed.as_secs_f64(),
        elapsed
    );
    println!(
        "latency p50 {:.2?}  p99 {:.2?}  max {:.2?}",
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
    println!(
        "{batches} commits, {:.1} appends per commit, largest batch {}",
        (after.writes - before.writes) as f64 / batches.max(1) as f64,
        after.largest_batch
    );
    Ok(())
}
