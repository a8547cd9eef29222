//! `fanout`: one sender, K subscribers of the same room. With `--rate` the sender publishes on
//! a fixed schedule (latency under a steady load); without, as fast as its window of
//! unacknowledged messages allows (maximum deliveries/s). The sender is subscribed too (a
//! Centrifugo namespace lets only subscribers publish; Lara does the same for symmetry), but
//! only the K subscribers' deliveries are counted.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use futures::{StreamExt, stream};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::api::Target;
use crate::endpoint::Endpoint;
use crate::output::{CpuWatch, RunOutput, merge};
use crate::progress::Progress;
use crate::proto::Event;
use crate::stats::{Latencies, SeqSet, key_seq, rate};
use crate::ws::{self, Conn};
use crate::{Ctx, MAX_CONNECTIONS, SETUP_CONCURRENCY};

#[derive(Debug, Clone, Args)]
pub struct Opts {
    /// Subscriber connections in the one room.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Messages the sender sends.
    #[arg(long, default_value_t = 100)]
    pub messages: u64,
    /// Messages per second on a fixed schedule, whatever the acks (open loop: a server that
    /// falls behind builds a backlog); 0 sends as fast as --window allows.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Unacknowledged messages the sender may have in flight. Default: 1 without --rate (each
    /// message waits for the previous ack), 10000 with --rate (the schedule decides).
    #[arg(long)]
    pub window: Option<usize>,
    /// After the last ack, how long subscribers wait for the last deliveries.
    #[arg(long, default_value_t = 10)]
    pub drain_secs: u64,
    /// Message text size in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Base URL of the Lara server (gateway) the K subscribers connect to; loopback only.
    /// Default: --url. Another gateway of the same cluster measures fan-out across gateways
    /// (the sender's gateway stores and publishes on the bus, the subscribers' gateway fans
    /// out).
    #[arg(long)]
    pub receiver_url: Option<String>,
}

impl Opts {
    /// Where the subscribers connect: --receiver-url, or else `sender` (--url).
    pub fn receiver_target(&self, sender: &Target) -> Result<Target> {
        match &self.receiver_url {
            Some(u) => Target::parse_flag("--receiver-url", u),
            None => Ok(sender.clone()),
        }
    }
}

#[derive(Default)]
struct SubResult {
    received: u64,
    duplicates: u64,
    lat: Latencies,
    last: Option<Instant>,
    problem: Option<String>,
}

/// `receiver`: where the subscribers connect (the same endpoint unless --receiver-url).
pub async fn run(ctx: &Ctx, o: &Opts, receiver: &Endpoint) -> Result<RunOutput> {
    if o.subscribers == 0 || o.subscribers >= MAX_CONNECTIONS {
        bail!("--subscribers must be 1..{MAX_CONNECTIONS}");
    }
    if !(o.rate >= 0.0 && o.rate <= 100_000.0) {
        bail!("--rate must be in [0, 100000]");
    }
    let window = o.window.unwrap_or(if o.rate > 0.0 { 10_000 } else { 1 });
    if window == 0 || window > 10_000 {
        bail!("--window must be 1..=10000");
    }
    let ep = &ctx.ep;
    let room = ep.room(&format!("{}-fanout", ctx.run_id), &[]).await?;
    let setup_start = Instant::now();
    let p = ctx.progress.clone();
    let _printer = p.start("fanout");
    let rooms = [room.clone()];
    let subs: Vec<Conn> = stream::iter(0..o.subscribers)
        .map(|i| {
            let (rooms, p) = (&rooms, p.clone());
            async move {
                let m = receiver.agent(&format!("lt-{}-sub-{i}", ctx.run_id))?;
                let c = receiver.open(&m, rooms, None, ctx.timeout).await?;
                p.add_open(1);
                anyhow::Ok(c)
            }
        })
        .buffered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let setup_secs = setup_start.elapsed().as_secs_f64();
    let sender_m = ep.agent(&format!("lt-{}-sender", ctx.run_id))?;
    let mut sender = ep.open(&sender_m, &rooms, None, ctx.timeout).await?;
    p.add_open(1);

    let prefix = format!("lt{}-f", ctx.run_id);
    let (acked_tx, acked_rx) = watch::channel(None::<u64>);
    let drain = Duration::from_secs(o.drain_secs);
    // The sender cannot take longer than one timeout per message.
    let hard_end = Instant::now() + ctx.timeout * (o.messages.min(1000) as u32 + 2) + drain;
    let cpu = CpuWatch::start(ctx.server_pid)?.watching(&ctx.watch_pids)?;
    let mut readers = Vec::with_capacity(subs.len());
    for c in subs {
        readers.push(tokio::spawn(subscriber(
            c,
            format!("{prefix}-"),
            acked_rx.clone(),
            drain,
            hard_end,
            p.clone(),
        )));
    }

    let text = Arc::new(ws::payload(o.size));
    let start = Instant::now();
    let mut tick = (o.rate > 0.0).then(|| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / o.rate));
        t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        t
    });
    let mut ack_lat = Latencies::new();
    let (mut acked, mut errors, mut sent) = (0u64, 0u64, 0u64);
    let mut problems: BTreeMap<String, u64> = BTreeMap::new();
    let mut inflight: VecDeque<(u64, Instant)> = VecDeque::new();
    let mut failed = false;
    let proto = sender.proto;
    let mut seq = 0u64;
    while !failed {
        if seq >= o.messages || inflight.len() >= window {
            if inflight.is_empty() {
                break;
            }
            failed = !await_ack(
                &mut sender,
                &mut inflight,
                ctx.timeout,
                (&mut acked, &mut errors, &mut ack_lat),
                &mut problems,
                &p,
            )
            .await;
            continue;
        }
        if let Some(t) = tick.as_mut() {
            if inflight.is_empty() {
                t.tick().await;
            } else {
                // Read acks while waiting for the next tick, so that ack latency does not
                // include the wait.
                tokio::select! {
                    _ = t.tick() => {}
                    ok = await_ack(
                        &mut sender,
                        &mut inflight,
                        ctx.timeout,
                        (&mut acked, &mut errors, &mut ack_lat),
                        &mut problems,
                        &p,
                    ) => {
                        failed = !ok;
                        continue;
                    }
                }
            }
        }
        seq += 1;
        let frame = proto.publish(seq, &room, &format!("{prefix}-{seq}"), &text)?;
        if let Err(e) = sender.send(frame).await {
            *problems.entry(format!("sender: {e:#}")).or_default() += 1;
            break;
        }
        inflight.push_back((seq, Instant::now()));
        sent += 1;
        p.c.sent.fetch_add(1, Relaxed);
    }
    let send_elapsed = start.elapsed();
    let _ = acked_tx.send(Some(acked));

    let mut lat = Latencies::new();
    let (mut delivered, mut dups, mut closed) = (0u64, 0u64, 0u64);
    let mut last = start;
    let mut to_close = Vec::with_capacity(readers.len());
    for r in readers {
        let (r, c) = r.await?;
        to_close.extend(c);
        delivered += r.received;
        dups += r.duplicates;
        lat.merge(r.lat);
        if let Some(l) = r.last {
            last = last.max(l);
        }
        if let Some(pr) = r.problem {
            closed += 1;
            *problems.entry(pr).or_default() += 1;
        }
    }
    let usage = cpu.finish(delivered);
    sender.close().await;
    // Closed after the CPU reading, so that it counts deliveries only.
    stream::iter(to_close)
        .for_each_concurrent(SETUP_CONCURRENCY, |c| {
            let p = p.clone();
            async move {
                c.close().await;
                p.add_open(-1);
            }
        })
        .await;
    drop(_printer);
    let k = o.subscribers as u64;
    let expected = acked * k;
    let missing = expected.saturating_sub(delivered);
    let elapsed = last.saturating_duration_since(start);
    let dps = rate(delivered, elapsed);
    let summary = lat.summary();
    let ack = ack_lat.summary();
    let mode = if o.rate > 0.0 {
        format!("{} msg/s", o.rate)
    } else {
        format!("max, window {window}")
    };
    println!(
        "fanout on {}: {k} subscribers (connected in {setup_secs:.1} s), {} messages, {mode}",
        ep.proto().name(),
        o.messages,
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
    if let Some(c) = usage["server_cpu_us_per_delivery"].as_f64() {
        println!("  server CPU {c} us per delivery");
    }
    if let Some(by) = usage["cpu_us_per_delivery_by_process"].as_object() {
        for (name, c) in by {
            println!("  {name} CPU {c} us per delivery");
        }
    }
    if closed > 0 {
        println!("  {closed} subscriber(s) ended early");
    }
    for (pr, v) in &problems {
        println!("  problem x{v}: {pr}");
    }
    let mut result = json!({
        "scenario": "fanout",
        "params": format!("K={k} N={} {mode}", o.messages),
        "subscribers": k,
        "messages": o.messages,
        "rate": o.rate,
        "window": window,
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
    });
    merge(&mut result, usage);
    let mut out = RunOutput::new(result);
    out.latency = Some(lat);
    Ok(out)
}

/// Reads the sender's socket until the oldest in-flight message is answered. False if the
/// sender's connection failed.
async fn await_ack(
    sender: &mut Conn,
    inflight: &mut VecDeque<(u64, Instant)>,
    limit: Duration,
    (acked, errors, ack_lat): (&mut u64, &mut u64, &mut Latencies),
    problems: &mut BTreeMap<String, u64>,
    p: &Progress,
) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match sender.next_event(deadline).await {
            Ok(Some(Event::Reply { id, result })) => {
                let Some(pos) = inflight.iter().position(|(s, _)| *s == id) else {
                    continue;
                };
                let (_, t0) = inflight.remove(pos).unwrap_or((id, Instant::now()));
                match result {
                    Ok(_) => {
                        ack_lat.record(t0.elapsed());
                        *acked += 1;
                        p.c.acked.fetch_add(1, Relaxed);
                    }
                    Err(t) => {
                        *errors += 1;
                        p.c.errors.fetch_add(1, Relaxed);
                        *problems.entry(format!("sender: {t}")).or_default() += 1;
                    }
                }
                return true;
            }
            Ok(Some(e @ (Event::Closed(_) | Event::Disconnect(_)))) => {
                *problems
                    .entry(format!("sender closed by the server: {e:?}"))
                    .or_default() += 1;
                return false;
            }
            Ok(Some(Event::Error(t))) => {
                *problems.entry(format!("sender: {t}")).or_default() += 1;
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                *problems
                    .entry(format!("sender: no ack within {limit:?}"))
                    .or_default() += 1;
                return false;
            }
            Err(e) => {
                *problems.entry(format!("sender: {e:#}")).or_default() += 1;
                return false;
            }
        }
    }
}

async fn subscriber(
    mut c: Conn,
    prefix: String,
    mut acked_rx: watch::Receiver<Option<u64>>,
    drain: Duration,
    hard_end: Instant,
    p: Progress,
) -> (SubResult, Option<Conn>) {
    let mut r = SubResult::default();
    let mut drain_until: Option<Instant> = None;
    let mut seen = SeqSet::default();
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
        match c.next_event(step).await {
            Ok(None) => {}
            Ok(Some(Event::Delivery { key, sent_us })) => {
                let Some(seq) = key.strip_prefix(&prefix).and_then(|_| key_seq(&key)) else {
                    continue;
                };
                if !seen.insert(seq) {
                    r.duplicates += 1;
                    continue;
                }
                if let Some(t) = sent_us {
                    r.lat.record_us(ws::now_us().saturating_sub(t));
                }
                r.received += 1;
                r.last = Some(Instant::now());
                p.c.delivered.fetch_add(1, Relaxed);
            }
            Ok(Some(e @ (Event::Closed(_) | Event::Disconnect(_)))) => {
                r.problem = Some(format!("subscriber closed by the server: {e:?}"));
                p.add_open(-1);
                return (r, None);
            }
            Ok(Some(_)) => {}
            Err(e) => {
                r.problem = Some(format!("subscriber: {e:#}"));
                p.add_open(-1);
                return (r, None);
            }
        }
    }
    (r, Some(c))
}
