//! `chat`: a chat-shaped load. 1:1 conversations and groups (10 members by default); every
//! member is an end user with one connection subscribed to their conversation, and sends at
//! random (Poisson) times so that each conversation carries its configured rate. Reports
//! send→receive latency to the other members, deliveries/s, missing and duplicate deliveries.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use futures::{StreamExt, stream};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::output::{CpuWatch, RunOutput, merge};
use crate::progress::Progress;
use crate::proto::Event;
use crate::stats::{Latencies, rate};
use crate::ws::{self, Conn};
use crate::{Ctx, MAX_CONNECTIONS, SETUP_CONCURRENCY};

#[derive(Debug, Clone, Args)]
pub struct Opts {
    /// 1:1 conversations (two end users each).
    #[arg(long, default_value_t = 200)]
    pub pairs: usize,
    /// Group conversations.
    #[arg(long, default_value_t = 20)]
    pub groups: usize,
    /// Members per group.
    #[arg(long, default_value_t = 10)]
    pub group_size: usize,
    /// Messages per second in each 1:1 conversation (both members together).
    #[arg(long, default_value_t = 0.2)]
    pub pair_rate: f64,
    /// Messages per second in each group (all members together).
    #[arg(long, default_value_t = 1.0)]
    pub group_rate: f64,
    /// How long members send.
    #[arg(long, default_value_t = 30)]
    pub duration_secs: u64,
    /// After sending stops, how long members wait for the last deliveries.
    #[arg(long, default_value_t = 5)]
    pub drain_secs: u64,
    /// Message text size in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Seed of the send schedule (the same seed gives the same schedule on every server).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

struct Member {
    conv: usize,
    idx: usize,
    room: String,
    conn: Conn,
    /// Messages per second this member sends.
    rate: f64,
}

#[derive(Default)]
struct MemberResult {
    conv: usize,
    sent: u64,
    acked: Vec<String>,
    errors: u64,
    received: HashSet<String>,
    duplicates: u64,
    lat: Latencies,
    ack_lat: Latencies,
    last_delivery: Option<Instant>,
    problems: BTreeMap<String, u64>,
    conn: Option<Conn>,
}

struct Shared {
    run: String,
    text: Arc<String>,
    start: Instant,
    send_end: Instant,
    drain: Duration,
    limit: Duration,
    seed: u64,
    progress: Progress,
}

pub async fn run(ctx: &Ctx, o: &Opts) -> Result<RunOutput> {
    if o.group_size < 2 {
        bail!("--group-size must be at least 2");
    }
    let users = o.pairs * 2 + o.groups * o.group_size;
    if users == 0 || users > MAX_CONNECTIONS {
        bail!("pairs x 2 + groups x group-size must be 1..={MAX_CONNECTIONS} (got {users})");
    }
    for (name, r) in [("--pair-rate", o.pair_rate), ("--group-rate", o.group_rate)] {
        if !(r > 0.0 && r <= 1000.0) {
            bail!("{name} must be in (0, 1000]");
        }
    }
    let p = ctx.progress.clone();
    let _printer = p.start("chat");
    let convs: Vec<(usize, f64)> = (0..o.pairs)
        .map(|_| (2, o.pair_rate))
        .chain((0..o.groups).map(|_| (o.group_size, o.group_rate)))
        .collect();
    let setup_start = Instant::now();
    let members: Vec<Vec<Member>> = stream::iter(convs.iter().copied().enumerate())
        .map(|(c, (size, conv_rate))| setup_conv(ctx, c, size, conv_rate))
        .buffered(SETUP_CONCURRENCY / 4)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let setup_s = setup_start.elapsed().as_secs_f64();

    let start = Instant::now() + Duration::from_millis(100);
    let shared = Arc::new(Shared {
        run: ctx.run_id.clone(),
        text: Arc::new(ws::payload(o.size)),
        start,
        send_end: start + Duration::from_secs(o.duration_secs),
        drain: Duration::from_secs(o.drain_secs),
        limit: ctx.timeout,
        seed: o.seed,
        progress: p.clone(),
    });
    let (report_tx, mut report_rx) = mpsc::channel::<(usize, u64)>(users);
    let (expected_tx, expected_rx) = watch::channel(None::<Arc<Vec<u64>>>);
    let cpu = CpuWatch::start(ctx.server_pid)?;
    let mut tasks = Vec::with_capacity(users);
    for m in members.into_iter().flatten() {
        tasks.push(tokio::spawn(member(
            m,
            shared.clone(),
            report_tx.clone(),
            expected_rx.clone(),
        )));
    }
    drop(report_tx);
    // Every member reports how many of its messages were acknowledged once it stops sending;
    // then each knows how many deliveries to wait for.
    let mut acked_per_conv = vec![0u64; convs.len()];
    for _ in 0..users {
        let Some((c, n)) = report_rx.recv().await else {
            break;
        };
        acked_per_conv[c] += n;
    }
    let _ = expected_tx.send(Some(Arc::new(acked_per_conv)));

    let mut results = Vec::with_capacity(users);
    for t in tasks {
        results.push(t.await?);
    }
    let delivered: u64 = results.iter().map(|r| r.received.len() as u64).sum();
    let usage = cpu.finish(delivered);
    let to_close: Vec<Conn> = results.iter_mut().filter_map(|r| r.conn.take()).collect();
    stream::iter(to_close)
        .for_each_concurrent(SETUP_CONCURRENCY, |c| c.close())
        .await;
    drop(_printer);

    // Missing: every message acknowledged in a conversation, for every other member.
    let mut conv_keys: Vec<HashSet<&str>> = vec![HashSet::new(); convs.len()];
    for r in &results {
        conv_keys[r.conv].extend(r.acked.iter().map(String::as_str));
    }
    let (mut expected, mut missing) = (0u64, 0u64);
    let (mut sent, mut acked, mut errors, mut dups) = (0u64, 0u64, 0u64, 0u64);
    let mut lat = Latencies::new();
    let mut ack_lat = Latencies::new();
    let mut problems: BTreeMap<String, u64> = BTreeMap::new();
    let mut last = start;
    for r in &results {
        let own: HashSet<&str> = r.acked.iter().map(String::as_str).collect();
        for k in conv_keys[r.conv].iter().filter(|k| !own.contains(*k)) {
            expected += 1;
            missing += u64::from(!r.received.contains(*k));
        }
    }
    drop(conv_keys);
    for r in results {
        sent += r.sent;
        acked += r.acked.len() as u64;
        errors += r.errors;
        dups += r.duplicates;
        lat.merge(r.lat);
        ack_lat.merge(r.ack_lat);
        last = last.max(r.last_delivery.unwrap_or(start));
        for (k, v) in r.problems {
            *problems.entry(k).or_default() += v;
        }
    }
    let elapsed = last.saturating_duration_since(start);
    let dps = rate(delivered, elapsed);
    let (summary, ack) = (lat.summary(), ack_lat.summary());
    let msgs_per_sec = rate(acked, Duration::from_secs(o.duration_secs));
    let params = format!(
        "{} 1:1 x {}/s + {} groups of {} x {}/s, {} s",
        o.pairs, o.pair_rate, o.groups, o.group_size, o.group_rate, o.duration_secs
    );
    println!(
        "chat on {}: {params}; {users} connections (set up in {setup_s:.1} s)",
        ctx.ep.proto().name()
    );
    println!(
        "  sent {sent} acked {acked} errors {errors} ({msgs_per_sec} msg/s); deliveries {delivered} of {expected} (missing {missing}, duplicates {dups}): {dps} deliveries/s"
    );
    println!("  send->receive {summary}");
    println!("  send->ack     {ack}");
    if let Some(c) = usage["server_cpu_us_per_delivery"].as_f64() {
        println!("  server CPU {c} us per delivery");
    }
    for (k, v) in &problems {
        println!("  problem x{v}: {k}");
    }
    let mut result = json!({
        "scenario": "chat",
        "params": params,
        "pairs": o.pairs,
        "groups": o.groups,
        "group_size": o.group_size,
        "pair_rate": o.pair_rate,
        "group_rate": o.group_rate,
        "duration_s": o.duration_secs,
        "size": o.size,
        "seed": o.seed,
        "connections": users,
        "setup_s": setup_s,
        "sent": sent,
        "acked": acked,
        "errors": errors,
        "msgs_per_sec": msgs_per_sec,
        "deliveries": delivered,
        "expected_deliveries": expected,
        "missing": missing,
        "duplicate_deliveries": dups,
        "elapsed_s": elapsed.as_secs_f64(),
        "deliveries_per_sec": dps,
        "delivery_latency": summary,
        "ack_latency": ack,
        "error_samples": problems,
    });
    merge(&mut result, usage);
    let mut out = RunOutput::new(result);
    out.latency = Some(lat);
    Ok(out)
}

async fn setup_conv(ctx: &Ctx, c: usize, size: usize, conv_rate: f64) -> Result<Vec<Member>> {
    let mut users = Vec::with_capacity(size);
    for i in 0..size {
        users.push(ctx.ep.user(&format!("lt-{}-c{c}-m{i}", ctx.run_id)).await?);
    }
    let refs: Vec<_> = users.iter().collect();
    let room = ctx.ep.room(&format!("{}-c{c}", ctx.run_id), &refs).await?;
    let rooms = [room.clone()];
    let mut out = Vec::with_capacity(size);
    for (idx, u) in users.iter().enumerate() {
        let conn = ctx.ep.open(u, &rooms, None, ctx.timeout).await?;
        ctx.progress.add_open(1);
        out.push(Member {
            conv: c,
            idx,
            room: room.clone(),
            conn,
            rate: conv_rate / size as f64,
        });
    }
    Ok(out)
}

/// Exponentially distributed gap for a Poisson process of `rate` per second.
fn poisson_gap(rng: &mut StdRng, rate: f64) -> Duration {
    let u: f64 = rng.r#gen::<f64>();
    Duration::from_secs_f64((-(1.0 - u).ln() / rate).min(3600.0))
}

async fn member(
    m: Member,
    s: Arc<Shared>,
    report: mpsc::Sender<(usize, u64)>,
    mut expected: watch::Receiver<Option<Arc<Vec<u64>>>>,
) -> MemberResult {
    let Member {
        conv,
        idx,
        room,
        mut conn,
        rate: my_rate,
    } = m;
    let p = &s.progress;
    let mut rng = StdRng::seed_from_u64(s.seed ^ ((conv as u64) << 20) ^ idx as u64);
    let prefix = format!("lt{}-c{conv}-", s.run);
    let mine = format!("{prefix}m{idx}-");
    let mut r = MemberResult {
        conv,
        ..Default::default()
    };
    let mut next_send = s.start + poisson_gap(&mut rng, my_rate);
    let mut inflight: VecDeque<(u64, String, Instant)> = VecDeque::new();
    let mut reported = false;
    let mut drain_until: Option<Instant> = None;
    let hard_end = s.send_end + s.limit + s.drain;
    let mut alive = true;
    loop {
        let now = Instant::now();
        let sending = now < s.send_end;
        if !sending && inflight.is_empty() && !reported {
            reported = true;
            let _ = report.send((conv, r.acked.len() as u64)).await;
        }
        if reported {
            if let Some(exp) = expected.borrow_and_update().as_ref() {
                let from_others = exp[conv].saturating_sub(r.acked.len() as u64);
                if r.received.len() as u64 >= from_others {
                    break;
                }
                drain_until.get_or_insert(now + s.drain);
            }
        }
        let end = drain_until.unwrap_or(hard_end).min(hard_end);
        if now >= end {
            break;
        }
        let step = (now + Duration::from_millis(200)).min(end);
        let send_at = if sending { next_send } else { hard_end };
        tokio::select! {
            _ = tokio::time::sleep_until(send_at), if sending => {
                next_send += poisson_gap(&mut rng, my_rate);
                if Instant::now() >= s.send_end {
                    continue;
                }
                let seq = r.sent + 1;
                let key = format!("{mine}{seq}");
                let sent = match conn.proto.publish(seq, &room, &key, &s.text) {
                    Ok(f) => conn.send(f).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = sent {
                    *r.problems.entry(format!("member: {e:#}")).or_default() += 1;
                    alive = false;
                    break;
                }
                r.sent = seq;
                inflight.push_back((seq, key, Instant::now()));
                p.c.sent.fetch_add(1, Relaxed);
            }
            ev = conn.next_event(step) => match ev {
                Ok(Some(Event::Delivery { key, sent_us })) => {
                    if !key.starts_with(&prefix) || key.starts_with(&mine) {
                        continue;
                    }
                    let t = sent_us;
                    if r.received.insert(key) {
                        if let Some(t) = t {
                            r.lat.record_us(ws::now_us().saturating_sub(t));
                        }
                        r.last_delivery = Some(Instant::now());
                        p.c.delivered.fetch_add(1, Relaxed);
                    } else {
                        r.duplicates += 1;
                    }
                }
                Ok(Some(Event::Reply { id, result })) => {
                    let Some(pos) = inflight.iter().position(|(s, _, _)| *s == id) else {
                        continue;
                    };
                    let Some((_, key, t0)) = inflight.remove(pos) else { continue };
                    match result {
                        Ok(_) => {
                            r.ack_lat.record(t0.elapsed());
                            r.acked.push(key);
                            p.c.acked.fetch_add(1, Relaxed);
                        }
                        Err(t) => {
                            r.errors += 1;
                            p.c.errors.fetch_add(1, Relaxed);
                            *r.problems.entry(format!("member: {t}")).or_default() += 1;
                        }
                    }
                }
                Ok(Some(Event::Error(t))) => {
                    *r.problems.entry(format!("member: {t}")).or_default() += 1;
                }
                Ok(Some(e @ (Event::Closed(_) | Event::Disconnect(_)))) => {
                    *r.problems.entry(format!("member closed by the server: {e:?}")).or_default() += 1;
                    alive = false;
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    *r.problems.entry(format!("member: {e:#}")).or_default() += 1;
                    alive = false;
                    break;
                }
            }
        }
    }
    if !reported {
        let _ = report.send((conv, r.acked.len() as u64)).await;
    }
    if !inflight.is_empty() {
        *r.problems
            .entry("member: acks still missing at the end".into())
            .or_default() += inflight.len() as u64;
    }
    if alive {
        r.conn = Some(conn);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_gaps_average_one_over_the_rate() {
        let mut rng = StdRng::seed_from_u64(7);
        let n = 20_000;
        let total: f64 = (0..n)
            .map(|_| poisson_gap(&mut rng, 4.0).as_secs_f64())
            .sum();
        let mean = total / n as f64;
        assert!((mean - 0.25).abs() < 0.01, "mean gap {mean}");
        // The same seed gives the same schedule.
        let a: Vec<_> = {
            let mut r = StdRng::seed_from_u64(3);
            (0..5).map(|_| poisson_gap(&mut r, 1.0)).collect()
        };
        let b: Vec<_> = {
            let mut r = StdRng::seed_from_u64(3);
            (0..5).map(|_| poisson_gap(&mut r, 1.0)).collect()
        };
        assert_eq!(a, b);
    }
}
