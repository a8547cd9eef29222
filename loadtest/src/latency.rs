//! `latency`: pairs of end users in their own room (1:1); one sends at a steady rate, the
//! other measures how long each message takes to arrive. With `--receiver-url` (Lara only) the
//! receivers connect to another gateway than the senders, so every message crosses the bus.

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
    /// Sender/receiver pairs, each in its own room (two connections per pair).
    #[arg(long, default_value_t = 10)]
    pub pairs: usize,
    /// Messages per second each sender sends, evenly spaced.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// How long the senders send.
    #[arg(long, default_value_t = 20)]
    pub duration_secs: u64,
    /// After the senders stop, how long receivers wait for the last messages.
    #[arg(long, default_value_t = 5)]
    pub drain_secs: u64,
    /// Message text size in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Base URL of the Lara server (gateway) the receivers connect and subscribe to; loopback
    /// only. Default: --url. Another gateway of the same cluster measures cross-gateway
    /// delivery.
    #[arg(long)]
    pub receiver_url: Option<String>,
}

impl Opts {
    /// Where the receivers connect: --receiver-url, or else `senders` (--url).
    pub fn receiver_target(&self, senders: &Target) -> Result<Target> {
        match &self.receiver_url {
            Some(u) => Target::parse_flag("--receiver-url", u),
            None => Ok(senders.clone()),
        }
    }
}

struct Pair {
    room: String,
    sender: Conn,
    receiver: Conn,
}

#[derive(Default)]
struct PairResult {
    sent: u64,
    acked: u64,
    errors: u64,
    received: u64,
    duplicates_received: u64,
    missing: u64,
    ack_lat: Latencies,
    recv_lat: Latencies,
    problems: BTreeMap<String, u64>,
    conns: Vec<Conn>,
}

/// `receiver`: where the receivers connect (the same endpoint unless --receiver-url).
pub async fn run(ctx: &Ctx, o: &Opts, receiver: &Endpoint) -> Result<RunOutput> {
    if o.pairs == 0 || o.pairs * 2 > MAX_CONNECTIONS {
        bail!("--pairs must be 1..={}", MAX_CONNECTIONS / 2);
    }
    if !(o.rate > 0.0 && o.rate <= 10_000.0) {
        bail!("--rate must be in (0, 10000]");
    }
    let p = ctx.progress.clone();
    let _printer = p.start("latency");
    let pairs: Vec<Pair> = stream::iter(0..o.pairs)
        .map(|i| setup_pair(ctx, receiver, i))
        .buffered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;

    let period = Duration::from_secs_f64(1.0 / o.rate);
    let text = Arc::new(ws::payload(o.size));
    let start = Instant::now() + Duration::from_millis(100);
    let send_end = start + Duration::from_secs(o.duration_secs);
    let n = pairs.len();
    let cpu = CpuWatch::start(ctx.server_pid)?;
    let mut tasks = Vec::with_capacity(n);
    for (i, pair) in pairs.into_iter().enumerate() {
        // Spread the pairs' sends evenly over one period instead of all at once.
        let first = start + period.mul_f64(i as f64 / n as f64);
        let args = PairArgs {
            prefix: format!("lt{}-p{i}", ctx.run_id),
            text: text.clone(),
            first,
            period,
            send_end,
            drain: Duration::from_secs(o.drain_secs),
            limit: ctx.timeout,
            progress: p.clone(),
        };
        tasks.push(tokio::spawn(run_pair(pair, args)));
    }
    let mut t = PairResult::default();
    for task in tasks {
        let r = task.await?;
        t.sent += r.sent;
        t.acked += r.acked;
        t.errors += r.errors;
        t.received += r.received;
        t.duplicates_received += r.duplicates_received;
        t.missing += r.missing;
        t.ack_lat.merge(r.ack_lat);
        t.recv_lat.merge(r.recv_lat);
        t.conns.extend(r.conns);
        for (k, v) in r.problems {
            *t.problems.entry(k).or_default() += v;
        }
    }
    let usage = cpu.finish(t.received);
    stream::iter(std::mem::take(&mut t.conns))
        .for_each_concurrent(SETUP_CONCURRENCY, |c| c.close())
        .await;
    drop(_printer);
    let (ack, recv) = (t.ack_lat.summary(), t.recv_lat.summary());
    let offered = o.rate * n as f64;
    let achieved = rate(t.sent, Duration::from_secs(o.duration_secs));
    let cross_gateway = receiver.addr() != ctx.ep.addr();
    println!(
        "latency on {}: {n} pair(s) x {} msg/s for {} s (offered {offered} msg/s, sent {achieved} msg/s)",
        ctx.ep.proto().name(),
        o.rate,
        o.duration_secs
    );
    println!(
        "  senders on {}, receivers on {}{}",
        ctx.ep.addr(),
        receiver.addr(),
        if cross_gateway {
            " (cross-gateway)"
        } else {
            " (same server)"
        }
    );
    println!(
        "  sent {} acked {} errors {} received {} missing {} duplicate deliveries {}",
        t.sent, t.acked, t.errors, t.received, t.missing, t.duplicates_received
    );
    println!("  send->receive {recv}");
    println!("  send->ack     {ack}");
    if let Some(c) = usage["server_cpu_us_per_delivery"].as_f64() {
        println!("  server CPU {c} us per message");
    }
    if let Some(w) = usage["server_written_kib_per_delivery"].as_f64() {
        println!("  server wrote {w} KiB to storage per message");
    }
    for (k, v) in &t.problems {
        println!("  problem x{v}: {k}");
    }
    let mut result = json!({
        "scenario": "latency",
        "params": format!("P={n} R={}/s {} s", o.rate, o.duration_secs),
        "pairs": n,
        "rate_per_pair": o.rate,
        "duration_s": o.duration_secs,
        "size": o.size,
        "sender_addr": ctx.ep.addr().to_string(),
        "receiver_addr": receiver.addr().to_string(),
        "cross_gateway": cross_gateway,
        "sent": t.sent,
        "acked": t.acked,
        "errors": t.errors,
        "received": t.received,
        "deliveries": t.received,
        "missing": t.missing,
        "duplicate_deliveries": t.duplicates_received,
        "msgs_per_sec": achieved,
        "receive_latency": recv,
        "delivery_latency": recv,
        "ack_latency": ack,
        "error_samples": t.problems,
    });
    merge(&mut result, usage);
    let mut out = RunOutput::new(result);
    out.latency = Some(t.recv_lat);
    Ok(out)
}

async fn setup_pair(ctx: &Ctx, receiver_ep: &Endpoint, i: usize) -> Result<Pair> {
    let a = ctx.ep.user(&format!("lt-{}-{i}-a", ctx.run_id)).await?;
    let b = ctx.ep.user(&format!("lt-{}-{i}-b", ctx.run_id)).await?;
    let room = ctx
        .ep
        .room(&format!("{}-p{i}", ctx.run_id), &[&a, &b])
        .await?;
    let rooms = [room.clone()];
    let sender = ctx.ep.open(&a, &rooms, None, ctx.timeout).await?;
    let receiver = receiver_ep.open(&b, &rooms, None, ctx.timeout).await?;
    ctx.progress.add_open(2);
    Ok(Pair {
        room,
        sender,
        receiver,
    })
}

struct PairArgs {
    prefix: String,
    text: Arc<String>,
    first: Instant,
    period: Duration,
    send_end: Instant,
    drain: Duration,
    limit: Duration,
    progress: Progress,
}

/// The sender: publishes on its schedule and reads its acks on the same task. Returns what it
/// sent and which sequence numbers were acknowledged.
async fn sender_task(
    mut c: Conn,
    room: String,
    a: &PairArgs,
    hard_end: Instant,
) -> (Conn, u64, SeqSet, u64, Latencies, BTreeMap<String, u64>) {
    let mut tick = tokio::time::interval_at(a.first, a.period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut sent, mut errors) = (0u64, 0u64);
    let mut acked = SeqSet::default();
    let mut lat = Latencies::new();
    let mut problems: BTreeMap<String, u64> = BTreeMap::new();
    let mut inflight: VecDeque<(u64, Instant)> = VecDeque::new();
    let p = &a.progress;
    loop {
        let sending = Instant::now() < a.send_end;
        if !sending && inflight.is_empty() {
            break;
        }
        if Instant::now() >= hard_end {
            *problems
                .entry("sender: acks still missing at the deadline".into())
                .or_default() += 1;
            break;
        }
        let step = (Instant::now() + Duration::from_millis(200)).min(hard_end);
        tokio::select! {
            _ = tick.tick(), if sending => {
                if Instant::now() >= a.send_end {
                    continue;
                }
                let seq = sent + 1;
                let frame = match c.proto.publish(seq, &room, &format!("{}-{seq}", a.prefix), &a.text) {
                    Ok(f) => f,
                    Err(e) => {
                        *problems.entry(format!("sender: {e:#}")).or_default() += 1;
                        break;
                    }
                };
                if let Err(e) = c.send(frame).await {
                    *problems.entry(format!("sender: {e:#}")).or_default() += 1;
                    break;
                }
                sent = seq;
                inflight.push_back((seq, Instant::now()));
                p.c.sent.fetch_add(1, Relaxed);
            }
            ev = c.next_event(step) => match ev {
                Ok(None) | Ok(Some(Event::Delivery { .. } | Event::Other | Event::Ping)) => {}
                Ok(Some(Event::Reply { id, result })) => {
                    let Some(pos) = inflight.iter().position(|(s, _)| *s == id) else {
                        continue;
                    };
                    let (_, t0) = inflight.remove(pos).unwrap_or((id, Instant::now()));
                    match result {
                        Ok(_) => {
                            lat.record(t0.elapsed());
                            acked.insert(id);
                            p.c.acked.fetch_add(1, Relaxed);
                        }
                        Err(t) => {
                            errors += 1;
                            p.c.errors.fetch_add(1, Relaxed);
                            *problems.entry(format!("sender: {t}")).or_default() += 1;
                        }
                    }
                }
                Ok(Some(Event::Error(t))) => {
                    *problems.entry(format!("sender: {t}")).or_default() += 1;
                }
                Ok(Some(e @ (Event::Closed(_) | Event::Disconnect(_)))) => {
                    *problems.entry(format!("sender closed by the server: {e:?}")).or_default() += 1;
                    break;
                }
                Err(e) => {
                    *problems.entry(format!("sender: {e:#}")).or_default() += 1;
                    break;
                }
            }
        }
    }
    (c, sent, acked, errors, lat, problems)
}

async fn run_pair(pair: Pair, a: PairArgs) -> PairResult {
    let Pair {
        room,
        sender,
        receiver,
    } = pair;
    let (acked_tx, mut acked_rx) = watch::channel(None::<Arc<SeqSet>>);
    let hard_end = a.send_end + a.drain + a.limit;
    let sender_side = async {
        let r = sender_task(sender, room, &a, hard_end).await;
        let _ = acked_tx.send(Some(Arc::new(r.2.clone())));
        r
    };
    let receiver_side = async {
        let mut c = receiver;
        let prefix = format!("{}-", a.prefix);
        let mut seen = SeqSet::default();
        let mut lat = Latencies::new();
        let mut dups = 0u64;
        let mut problems: BTreeMap<String, u64> = BTreeMap::new();
        let mut drain_until: Option<Instant> = None;
        let mut alive = true;
        loop {
            if let Some(acked) = acked_rx.borrow_and_update().as_ref() {
                if acked.iter().all(|s| seen.contains(s)) {
                    break;
                }
                drain_until.get_or_insert(Instant::now() + a.drain);
            }
            let end = drain_until.unwrap_or(hard_end).min(hard_end);
            if Instant::now() >= end {
                break;
            }
            let step = (Instant::now() + Duration::from_millis(200)).min(end);
            match c.next_event(step).await {
                Ok(Some(Event::Delivery { key, sent_us })) => {
                    let Some(seq) = key.strip_prefix(&prefix).and_then(|_| key_seq(&key)) else {
                        continue;
                    };
                    if seen.insert(seq) {
                        if let Some(t) = sent_us {
                            lat.record_us(ws::now_us().saturating_sub(t));
                        }
                        a.progress.c.delivered.fetch_add(1, Relaxed);
                    } else {
                        dups += 1;
                    }
                }
                Ok(Some(Event::Error(t))) => {
                    *problems.entry(format!("receiver: {t}")).or_default() += 1;
                }
                Ok(Some(e @ (Event::Closed(_) | Event::Disconnect(_)))) => {
                    *problems
                        .entry(format!("receiver closed by the server: {e:?}"))
                        .or_default() += 1;
                    alive = false;
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    *problems.entry(format!("receiver: {e:#}")).or_default() += 1;
                    alive = false;
                    break;
                }
            }
        }
        (alive.then_some(c), seen, lat, dups, problems)
    };
    let ((sc, sent, acked, errors, ack_lat, mut problems), (rc, seen, recv_lat, dups, rp)) =
        tokio::join!(sender_side, receiver_side);
    for (k, v) in rp {
        *problems.entry(k).or_default() += v;
    }
    let missing = acked.iter().filter(|s| !seen.contains(*s)).count() as u64;
    let mut conns = vec![sc];
    conns.extend(rc);
    PairResult {
        sent,
        acked: acked.len(),
        errors,
        received: seen.len(),
        duplicates_received: dups,
        missing,
        ack_lat,
        recv_lat,
        problems,
        conns,
    }
}
