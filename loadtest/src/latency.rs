//! `latency`: pairs of end users in their own conversation; one sends at a steady rate, the
//! other measures how long each message takes to arrive. With `--receiver-url` the receivers
//! connect to another gateway than the senders, so every message crosses the bus.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use futures::{SinkExt, StreamExt, stream};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior, timeout};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::api::Target;
use crate::stats::{Latencies, rate};
use crate::ws::{self, Incoming, Ws};
use crate::{Ctx, MAX_CONNECTIONS, SETUP_CONCURRENCY};

#[derive(Debug, Clone, Args)]
pub struct Opts {
    /// Sender/receiver pairs, each in its own conversation (two connections per pair).
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
    /// Base URL of the server (gateway) the receivers connect and subscribe to; loopback only.
    /// Default: --url. Another gateway of the same cluster measures cross-gateway delivery.
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
    conv: String,
    sender: Ws,
    receiver: Ws,
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
}

/// `receiver`: where the receivers connect (see [`Opts::receiver_target`]).
pub async fn run(ctx: &Ctx, o: &Opts, receiver: &Target) -> Result<Value> {
    if o.pairs == 0 || o.pairs * 2 > MAX_CONNECTIONS {
        bail!("--pairs must be 1..={}", MAX_CONNECTIONS / 2);
    }
    if !(o.rate > 0.0 && o.rate <= 10_000.0) {
        bail!("--rate must be in (0, 10000]");
    }
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
    let mut tasks = Vec::with_capacity(n);
    for (i, pair) in pairs.into_iter().enumerate() {
        // Spread the pairs' sends evenly over one period instead of all at once.
        let first = start + period.mul_f64(i as f64 / n as f64);
        let prefix = format!("lt{}-p{i}", ctx.run_id);
        let args = PairArgs {
            prefix,
            text: text.clone(),
            first,
            period,
            send_end,
            drain: Duration::from_secs(o.drain_secs),
            limit: ctx.timeout,
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
        for (k, v) in r.problems {
            *t.problems.entry(k).or_default() += v;
        }
    }
    let (ack, recv) = (t.ack_lat.summary(), t.recv_lat.summary());
    let offered = o.rate * n as f64;
    let achieved = rate(t.sent, Duration::from_secs(o.duration_secs));
    let cross_gateway = receiver.addr != ctx.target.addr;
    println!(
        "latency: {n} pair(s) x {} msg/s for {} s (offered {offered} msg/s, sent {achieved} msg/s)",
        o.rate, o.duration_secs
    );
    println!(
        "  senders on {}, receivers on {}{}",
        ctx.target.addr,
        receiver.addr,
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
    for (k, v) in &t.problems {
        println!("  problem x{v}: {k}");
    }
    Ok(json!({
        "scenario": "latency",
        "pairs": n,
        "rate_per_pair": o.rate,
        "duration_s": o.duration_secs,
        "size": o.size,
        "sender_addr": ctx.target.addr.to_string(),
        "receiver_addr": receiver.addr.to_string(),
        "cross_gateway": cross_gateway,
        "sent": t.sent,
        "acked": t.acked,
        "errors": t.errors,
        "received": t.received,
        "missing": t.missing,
        "duplicate_deliveries": t.duplicates_received,
        "msgs_per_sec": achieved,
        "receive_latency": recv,
        "ack_latency": ack,
        "error_samples": t.problems,
    }))
}

async fn setup_pair(ctx: &Ctx, receiver_target: &Target, i: usize) -> Result<Pair> {
    let (a, a_token) = ctx
        .api
        .create_user(&ctx.key, &format!("lt-{}-{i}-a", ctx.run_id))
        .await?;
    let (b, b_token) = ctx
        .api
        .create_user(&ctx.key, &format!("lt-{}-{i}-b", ctx.run_id))
        .await?;
    let conv = ctx.api.create_conversation(&ctx.key, &[a, b]).await?;
    let mut sender = ws::connect_auth(&ctx.target, &a_token, None, ctx.timeout).await?;
    let mut receiver = ws::connect_auth(receiver_target, &b_token, None, ctx.timeout).await?;
    ws::subscribe(&mut sender, 1, &conv, ctx.timeout).await?;
    ws::subscribe(&mut receiver, 1, &conv, ctx.timeout).await?;
    Ok(Pair {
        conv,
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
}

async fn run_pair(pair: Pair, a: PairArgs) -> PairResult {
    let Pair {
        conv,
        sender,
        receiver,
    } = pair;
    let (mut sink, mut stream) = sender.split();
    // The writer tells how many it sent; the ack reader tells which were acknowledged.
    let (sent_tx, sent_rx) = watch::channel(None::<u64>);
    let (acked_tx, acked_rx) = watch::channel(None::<u64>);
    let hard_end = a.send_end + a.drain + a.limit;

    let writer = {
        let (prefix, text, conv) = (a.prefix.clone(), a.text.clone(), conv.clone());
        let (first, period, send_end, limit) = (a.first, a.period, a.send_end, a.limit);
        async move {
            let mut tick = tokio::time::interval_at(first, period);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut sent = 0u64;
            let mut problem = None;
            loop {
                tick.tick().await;
                if Instant::now() >= send_end {
                    break;
                }
                let seq = sent + 1;
                let frame = ws::send_frame(seq, &conv, &format!("{prefix}-{seq}"), &text, true);
                match timeout(limit, sink.send(WsMessage::text(frame.to_string()))).await {
                    Ok(Ok(())) => sent = seq,
                    Ok(Err(e)) => {
                        problem = Some(format!("sender write: {e}"));
                        break;
                    }
                    Err(_) => {
                        problem = Some("sender write timed out".to_owned());
                        break;
                    }
                }
            }
            let _ = sent_tx.send(Some(sent));
            (sent, problem, sink)
        }
    };

    let ack_reader = async move {
        let mut acked: HashSet<String> = HashSet::new();
        let mut lat = Latencies::new();
        let mut errors = 0u64;
        let mut problems: BTreeMap<String, u64> = BTreeMap::new();
        loop {
            if let Some(sent) = *sent_rx.borrow() {
                if acked.len() as u64 + errors >= sent {
                    break;
                }
            }
            if Instant::now() >= hard_end {
                *problems
                    .entry("sender: acks still missing at the deadline".into())
                    .or_default() += 1;
                break;
            }
            let step = Instant::now() + Duration::from_millis(200);
            match ws::recv_until(&mut stream, step.min(hard_end)).await {
                Ok(None) => {}
                Ok(Some(Incoming::Frame(f))) => match f.kind.as_str() {
                    "ack" => {
                        if let Some(t) = f.sent_us() {
                            lat.record_us(ws::now_us().saturating_sub(t));
                        }
                        if let Some(c) = f.client_msg_id() {
                            acked.insert(c.to_owned());
                        }
                    }
                    "error" => {
                        errors += 1;
                        *problems
                            .entry(format!("sender: {}", f.error_text()))
                            .or_default() += 1;
                    }
                    _ => {} // its own message events, among others
                },
                Ok(Some(Incoming::Closed(c))) => {
                    *problems
                        .entry(format!("sender closed by the server: {c:?}"))
                        .or_default() += 1;
                    break;
                }
                Err(e) => {
                    *problems.entry(format!("sender: {e:#}")).or_default() += 1;
                    break;
                }
            }
        }
        let _ = acked_tx.send(Some(acked.len() as u64));
        (acked, lat, errors, problems, stream)
    };

    let receiver_task = {
        let prefix = format!("{}-", a.prefix);
        let drain = a.drain;
        let mut acked_rx = acked_rx;
        async move {
            let mut ws = receiver;
            let mut seen: HashSet<String> = HashSet::new();
            let mut lat = Latencies::new();
            let mut dups = 0u64;
            let mut problems: BTreeMap<String, u64> = BTreeMap::new();
            let mut drain_until: Option<Instant> = None;
            loop {
                if let Some(acked) = *acked_rx.borrow_and_update() {
                    if seen.len() as u64 >= acked {
                        break;
                    }
                    drain_until.get_or_insert(Instant::now() + drain);
                }
                let end = drain_until.unwrap_or(hard_end).min(hard_end);
                if Instant::now() >= end {
                    break;
                }
                let step = (Instant::now() + Duration::from_millis(200)).min(end);
                match ws::recv_until(&mut ws, step).await {
                    Ok(None) => {}
                    Ok(Some(Incoming::Frame(f))) if f.kind == "message" => {
                        let Some(cmid) = f.client_msg_id() else {
                            continue;
                        };
                        if !cmid.starts_with(&prefix) {
                            continue;
                        }
                        if seen.insert(cmid.to_owned()) {
                            if let Some(t) = f.sent_us() {
                                lat.record_us(ws::now_us().saturating_sub(t));
                            }
                        } else {
                            dups += 1;
                        }
                    }
                    Ok(Some(Incoming::Frame(f))) if f.kind == "error" => {
                        *problems
                            .entry(format!("receiver: {}", f.error_text()))
                            .or_default() += 1;
                    }
                    Ok(Some(Incoming::Frame(_))) => {}
                    Ok(Some(Incoming::Closed(c))) => {
                        *problems
                            .entry(format!("receiver closed by the server: {c:?}"))
                            .or_default() += 1;
                        break;
                    }
                    Err(e) => {
                        *problems.entry(format!("receiver: {e:#}")).or_default() += 1;
                        break;
                    }
                }
            }
            ws::close(&mut ws).await;
            (seen, lat, dups, problems)
        }
    };

    let ((sent, wproblem, sink), (acked, ack_lat, errors, mut problems, stream), recv) =
        tokio::join!(writer, ack_reader, receiver_task);
    if let Ok(mut ws) = sink.reunite(stream) {
        ws::close(&mut ws).await;
    }
    let (seen, recv_lat, dups, rproblems) = recv;
    if let Some(p) = wproblem {
        *problems.entry(p).or_default() += 1;
    }
    for (k, v) in rproblems {
        *problems.entry(k).or_default() += v;
    }
    let missing = acked.iter().filter(|c| !seen.contains(*c)).count() as u64;
    PairResult {
        sent,
        acked: acked.len() as u64,
        errors,
        received: seen.len() as u64,
        duplicates_received: dups,
        missing,
        ack_lat,
        recv_lat,
        problems,
    }
}
