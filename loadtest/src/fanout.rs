//! `fanout`: one sender, K subscribers of the same conversation.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use futures::{StreamExt, stream};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::stats::{Latencies, rate};
use crate::ws::{self, Incoming, Ws};
use crate::{Ctx, MAX_CONNECTIONS, SETUP_CONCURRENCY};

#[derive(Debug, Clone, Args)]
pub struct Opts {
    /// Subscriber connections (agents on the secret key) in the one conversation.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Messages the sender sends.
    #[arg(long, default_value_t = 100)]
    pub messages: u64,
    /// Messages per second; 0 sends the next one as soon as the previous is acknowledged.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// After the last ack, how long subscribers wait for the last deliveries.
    #[arg(long, default_value_t = 10)]
    pub drain_secs: u64,
    /// Message text size in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
}

#[derive(Default)]
struct SubResult {
    received: u64,
    duplicates: u64,
    lat: Latencies,
    last: Option<Instant>,
    problem: Option<String>,
}

pub async fn run(ctx: &Ctx, o: &Opts) -> Result<Value> {
    if o.subscribers == 0 || o.subscribers >= MAX_CONNECTIONS {
        bail!("--subscribers must be 1..{MAX_CONNECTIONS}");
    }
    if !(o.rate >= 0.0 && o.rate <= 100_000.0) {
        bail!("--rate must be in [0, 100000]");
    }
    let conv = ctx.api.create_conversation(&ctx.key, &[]).await?;
    let setup_start = Instant::now();
    let subs: Vec<Ws> = stream::iter(0..o.subscribers)
        .map(|i| {
            let (target, key, conv, limit) = (
                ctx.target.clone(),
                ctx.key.clone(),
                conv.clone(),
                ctx.timeout,
            );
            async move {
                let mut ws =
                    ws::connect_auth(&target, &key, Some(&format!("lt-sub-{i}")), limit).await?;
                ws::subscribe(&mut ws, 1, &conv, limit).await?;
                anyhow::Ok(ws)
            }
        })
        .buffered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let setup_secs = setup_start.elapsed().as_secs_f64();
    let mut sender =
        ws::connect_auth(&ctx.target, &ctx.key, Some("lt-sender"), ctx.timeout).await?;

    let prefix = format!("lt{}-f", ctx.run_id);
    let (acked_tx, acked_rx) = watch::channel(None::<u64>);
    let drain = Duration::from_secs(o.drain_secs);
    // The sender cannot take longer than one timeout per message.
    let hard_end = Instant::now() + ctx.timeout * (o.messages.min(1000) as u32 + 2) + drain;
    let mut readers = Vec::with_capacity(subs.len());
    for ws in subs {
        let acked_rx = acked_rx.clone();
        let prefix = format!("{prefix}-");
        readers.push(tokio::spawn(subscriber(
            ws, prefix, acked_rx, drain, hard_end,
        )));
    }

    // The sender: one message at a time (paced when --rate is set), waiting for each ack.
    let text = Arc::new(ws::payload(o.size));
    let start = Instant::now();
    let mut tick = (o.rate > 0.0).then(|| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / o.rate));
        t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        t
    });
    let mut ack_lat = Latencies::new();
    let (mut acked, mut errors) = (0u64, 0u64);
    let mut problems: BTreeMap<String, u64> = BTreeMap::new();
    let mut sent = 0u64;
    'send: for seq in 1..=o.messages {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        let frame = ws::send_frame(seq, &conv, &format!("{prefix}-{seq}"), &text, true);
        let t0 = Instant::now();
        if let Err(e) = ws::send(&mut sender, &frame, ctx.timeout).await {
            *problems.entry(format!("sender: {e:#}")).or_default() += 1;
            break;
        }
        sent += 1;
        loop {
            match ws::recv(&mut sender, ctx.timeout).await {
                Ok(Incoming::Frame(f)) if f.id == Some(seq) && f.kind == "ack" => {
                    ack_lat.record(t0.elapsed());
                    acked += 1;
                    break;
                }
                Ok(Incoming::Frame(f)) if f.id == Some(seq) && f.kind == "error" => {
                    errors += 1;
                    *problems
                        .entry(format!("sender: {}", f.error_text()))
                        .or_default() += 1;
                    break;
                }
                Ok(Incoming::Frame(_)) => {}
                Ok(Incoming::Closed(c)) => {
                    *problems
                        .entry(format!("sender closed by the server: {c:?}"))
                        .or_default() += 1;
                    break 'send;
                }
                Err(e) => {
                    *problems.entry(format!("sender: {e:#}")).or_default() += 1;
                    break 'send;
                }
            }
        }
    }
    let send_elapsed = start.elapsed();
    let _ = acked_tx.send(Some(acked));
    ws::close(&mut sender).await;

    let mut lat = Latencies::new();
    let (mut delivered, mut dups, mut closed) = (0u64, 0u64, 0u64);
    let mut last = start;
    for r in readers {
        let r = r.await?;
        delivered += r.received;
        dups += r.duplicates;
        lat.merge(r.lat);
        if let Some(l) = r.last {
            last = last.max(l);
        }
        if let Some(p) = r.problem {
            closed += 1;
            *problems.entry(p).or_default() += 1;
        }
    }
    let k = o.subscribers as u64;
    let expected = acked * k;
    let missing = expected.saturating_sub(delivered);
    let elapsed = last.saturating_duration_since(start);
    let dps = rate(delivered, elapsed);
    let summary = lat.summary();
    let ack = ack_lat.summary();
    println!(
        "fanout: {k} subscribers (connected in {setup_secs:.1} s), {} messages{}",
        o.messages,
        if o.rate > 0.0 {
            format!(" at {} msg/s", o.rate)
        } else {
            " back to back".into()
        }
    );
    println!(
        "  sent {sent} acked {acked} errors {errors} in {:.2} s ({} msg/s)",
        send_elapsed.as_secs_f64(),
        rate(acked, send_elapsed)
    );
    println!(
        "  deliveries {delivered} of {expected} (missing {missing}, duplicates {dups}) in {:.2} s: {dps} deliveries/s",
        elapsed.as_secs_f64()
    );
    println!("  send->delivery {summary}");
    println!("  send->ack      {ack}");
    if closed > 0 {
        println!("  {closed} subscriber(s) ended early");
    }
    for (p, v) in &problems {
        println!("  problem x{v}: {p}");
    }
    Ok(json!({
        "scenario": "fanout",
        "subscribers": k,
        "messages": o.messages,
        "rate": o.rate,
        "size": o.size,
        "sent": sent,
        "acked": acked,
        "errors": errors,
        "deliveries": delivered,
        "expected_deliveries": expected,
        "missing": missing,
        "duplicate_deliveries": dups,
        "subscribers_ended_early": closed,
        "elapsed_s": elapsed.as_secs_f64(),
        "deliveries_per_sec": dps,
        "msgs_per_sec": rate(acked, send_elapsed),
        "delivery_latency": summary,
        "ack_latency": ack,
        "setup_s": setup_secs,
        "error_samples": problems,
    }))
}

async fn subscriber(
    mut ws: Ws,
    prefix: String,
    mut acked_rx: watch::Receiver<Option<u64>>,
    drain: Duration,
    hard_end: Instant,
) -> SubResult {
    let mut r = SubResult::default();
    let mut drain_until: Option<Instant> = None;
    let mut seen: HashSet<String> = HashSet::new();
    loop {
        if let Some(acked) = *acked_rx.borrow_and_update() {
            if r.received >= acked {
                break;
            }
            drain_until.get_or_insert(Instant::now() + drain);
        }
        let end = drain_until.unwrap_or(hard_end).min(hard_end);
        if Instant::now() >= end {
            break;
        }
        // Wake up now and then to notice that the sender is done.
        let step = (Instant::now() + Duration::from_millis(250)).min(end);
        match ws::recv_until(&mut ws, step).await {
            Ok(None) => {}
            Ok(Some(Incoming::Frame(f))) if f.kind == "message" => {
                let Some(cmid) = f.client_msg_id().filter(|c| c.starts_with(&prefix)) else {
                    continue;
                };
                if !seen.insert(cmid.to_owned()) {
                    r.duplicates += 1;
                    continue;
                }
                let now = Instant::now();
                if let Some(t) = f.sent_us() {
                    r.lat.record_us(ws::now_us().saturating_sub(t));
                }
                r.received += 1;
                r.last = Some(now);
            }
            Ok(Some(Incoming::Frame(_))) => {}
            Ok(Some(Incoming::Closed(c))) => {
                r.problem = Some(format!("subscriber closed by the server: {c:?}"));
                return r;
            }
            Err(e) => {
                r.problem = Some(format!("subscriber: {e:#}"));
                return r;
            }
        }
    }
    ws::close(&mut ws).await;
    r
}
