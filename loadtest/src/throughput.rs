//! `throughput`: agents sending as fast as their window of unacknowledged sends allows.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;
use futures::{StreamExt, stream};
use serde_json::json;

use crate::endpoint::Endpoint;
use crate::output::{CpuWatch, RunOutput, merge};
use crate::proto::Event;
use crate::stats::{Latencies, rate};
use crate::ws::{self, Conn};
use crate::{Ctx, MAX_CONNECTIONS, SETUP_CONCURRENCY};

#[derive(Debug, Clone, Args)]
pub struct Opts {
    /// Concurrent agent connections.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Messages per connection at most (the run also stops after --duration-secs).
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Unacknowledged sends in flight per connection (1 = send, wait for ack, send...).
    #[arg(long, default_value_t = 1)]
    pub window: usize,
    /// Stop sending after this many seconds, then wait for outstanding acks.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// All connections send into one conversation instead of one each.
    #[arg(long)]
    pub shared_conversation: bool,
    /// Message text size in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
}

#[derive(Default)]
struct ConnResult {
    sent: u64,
    acked: u64,
    duplicates: u64,
    errors: u64,
    /// Sends never answered (the connection failed or closed first).
    unanswered: u64,
    latencies: Latencies,
    last_ack: Option<Instant>,
    error_codes: BTreeMap<String, u64>,
    failure: Option<String>,
}

pub async fn run(ctx: &Ctx, o: &Opts) -> Result<RunOutput> {
    if o.connections == 0 || o.connections > MAX_CONNECTIONS {
        bail!("--connections must be 1..={MAX_CONNECTIONS}");
    }
    if o.window == 0 {
        bail!("--window must be at least 1");
    }
    let Endpoint::Lara { .. } = &ctx.ep else {
        bail!("throughput runs against Lara Chat only");
    };
    let ep = &ctx.ep;
    let n_convs = if o.shared_conversation {
        1
    } else {
        o.connections
    };
    let convs: Vec<String> = stream::iter(0..n_convs)
        .map(|i| async move { ep.room(&format!("{}-t{i}", ctx.run_id), &[]).await })
        .buffered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let conns: Vec<Conn> = stream::iter(0..o.connections)
        .map(|i| async move {
            let m = ep.agent(&format!("lt-agent-{i}"))?;
            ep.open(&m, &[], None, ctx.timeout).await
        })
        .buffered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;

    let text = Arc::new(ws::payload(o.size));
    let _printer = ctx.progress.start("throughput");
    ctx.progress.add_open(conns.len() as i64);
    let cpu = CpuWatch::start(ctx.server_pid)?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(o.duration_secs);
    let mut tasks = Vec::with_capacity(conns.len());
    for (i, ws) in conns.into_iter().enumerate() {
        let conv = convs[i % convs.len()].clone();
        let text = text.clone();
        let prefix = format!("lt{}-{i}", ctx.run_id);
        let (window, messages, limit) = (o.window, o.messages, ctx.timeout);
        let p = ctx.progress.clone();
        tasks.push(tokio::spawn(async move {
            let r = connection(ws, &conv, &prefix, &text, window, messages, deadline, limit).await;
            p.c.acked
                .fetch_add(r.acked, std::sync::atomic::Ordering::Relaxed);
            r
        }));
    }
    let mut total = ConnResult::default();
    for t in tasks {
        let r = t.await?;
        total.sent += r.sent;
        total.acked += r.acked;
        total.duplicates += r.duplicates;
        total.errors += r.errors;
        total.unanswered += r.unanswered;
        total.latencies.merge(r.latencies);
        total.last_ack = total.last_ack.max(r.last_ack);
        for (k, v) in r.error_codes {
            *total.error_codes.entry(k).or_default() += v;
        }
        if let Some(f) = r.failure {
            *total.error_codes.entry(f).or_default() += 1;
        }
    }
    let usage = cpu.finish(total.acked);
    drop(_printer);
    let elapsed = total
        .last_ack
        .unwrap_or(start)
        .saturating_duration_since(start);
    let lat = total.latencies.summary();
    let mps = rate(total.acked, elapsed);
    println!(
        "throughput: {} connection(s), window {}, {} conversation(s), {} B messages",
        o.connections, o.window, n_convs, o.size
    );
    println!(
        "  sent {} acked {} ({} duplicate) errors {} unanswered {} in {:.2} s",
        total.sent,
        total.acked,
        total.duplicates,
        total.errors,
        total.unanswered,
        elapsed.as_secs_f64()
    );
    println!("  throughput {mps} acked msgs/s");
    println!("  ack latency {lat}");
    for (k, v) in &total.error_codes {
        println!("  error x{v}: {k}");
    }
    let mut result = json!({
        "scenario": "throughput",
        "params": format!("C={} W={}", o.connections, o.window),
        "connections": o.connections,
        "window": o.window,
        "conversations": n_convs,
        "size": o.size,
        "sent": total.sent,
        "acked": total.acked,
        "duplicates": total.duplicates,
        "errors": total.errors + total.unanswered,
        "elapsed_s": elapsed.as_secs_f64(),
        "msgs_per_sec": mps,
        "ack_latency": lat,
        "error_samples": total.error_codes,
    });
    // Per acknowledged message here.
    merge(&mut result, usage);
    let mut out = RunOutput::new(result);
    // The plot is the send→ack latency CDF.
    out.latency = Some(total.latencies);
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    mut ws: Conn,
    conv: &str,
    prefix: &str,
    text: &str,
    window: usize,
    messages: u64,
    deadline: Instant,
    limit: Duration,
) -> ConnResult {
    let mut r = ConnResult::default();
    // Replies come in request order, so the oldest in-flight send is normally at the front.
    let mut inflight: VecDeque<(u64, Instant)> = VecDeque::with_capacity(window);
    let mut seq = 0u64;
    loop {
        let mut fed = false;
        while inflight.len() < window && seq < messages && Instant::now() < deadline {
            seq += 1;
            let msg = match ws
                .proto
                .publish(seq, conv, &format!("{prefix}-{seq}"), text)
            {
                Ok(m) => m,
                Err(e) => return r.fail(format!("{e:#}"), inflight.len()),
            };
            if let Err(e) = ws.feed(msg).await {
                return r.fail(format!("{e:#}"), inflight.len());
            }
            inflight.push_back((seq, Instant::now()));
            r.sent += 1;
            fed = true;
        }
        if fed {
            if let Err(e) = ws.flush().await {
                return r.fail(format!("{e:#}"), inflight.len());
            }
        }
        if inflight.is_empty() {
            break;
        }
        let deadline = tokio::time::Instant::now() + limit;
        let (id, result) = match ws.next_event(deadline).await {
            Ok(Some(Event::Reply { id, result })) => (id, result),
            Ok(Some(e @ (Event::Closed(_) | Event::Disconnect(_)))) => {
                return r.fail(format!("closed by the server: {e:?}"), inflight.len());
            }
            Ok(Some(Event::Error(t))) => {
                *r.error_codes.entry(t).or_default() += 1;
                continue;
            }
            Ok(Some(_)) => continue,
            Ok(None) => return r.fail(format!("no reply within {limit:?}"), inflight.len()),
            Err(e) => return r.fail(format!("{e:#}"), inflight.len()),
        };
        let Some(pos) = inflight.iter().position(|(s, _)| *s == id) else {
            continue;
        };
        let (_, sent_at) = inflight.remove(pos).unwrap_or((id, Instant::now()));
        match result {
            Ok(duplicate) => {
                let now = Instant::now();
                r.latencies.record(now - sent_at);
                r.acked += 1;
                r.last_ack = Some(now);
                r.duplicates += u64::from(duplicate);
            }
            Err(t) => {
                r.errors += 1;
                *r.error_codes.entry(t).or_default() += 1;
            }
        }
    }
    ws.close().await;
    r
}

impl ConnResult {
    fn fail(mut self, why: String, inflight: usize) -> Self {
        self.unanswered += inflight as u64;
        self.failure = Some(why);
        self
    }
}
