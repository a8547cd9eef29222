//! `idle`: many authenticated, subscribed connections that stay idle, to measure the server's
//! memory per connection and its connection setup rate.
//!
//! One process may hold only so many open files (`ulimit -n`, 20,000 here), so the coordinator
//! spawns worker processes of this same binary (`idle-worker`, one per 5,000 connections by
//! default) and spreads the client sockets over loopback source addresses 127.0.0.1, .2, …
//! (each source address has its own range of ephemeral ports). Coordinator and workers talk
//! JSON lines over the workers' stdin/stdout: the coordinator says `open`, `close`, `exit`;
//! workers report progress, `opened` and `closed`.
//!
//! Per cycle: open every connection (auth + subscribe), hold them `--hold-secs`, read the
//! server's RSS, close them all, wait `--settle-secs`, read RSS again. Meanwhile the server's
//! RSS is sampled against the number of open connections for the plot.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use futures::{StreamExt, stream};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::{Api, Target};
use crate::endpoint::Endpoint;
use crate::output::{RssPoint, RunOutput};
use crate::proto::{Encoding, Event};
use crate::stats::rate;
use crate::ws::Conn;
use crate::{Ctx, procstat};

/// Connections per worker process by default.
const PER_WORKER: usize = 5_000;
/// Hard ceiling per worker: below the 20,000 open files a process may have here.
const MAX_PER_WORKER: usize = 19_000;

#[derive(Debug, Clone, Args)]
pub struct Opts {
    /// Idle connections to open (each authenticated and subscribed).
    #[arg(long, default_value_t = 5_000)]
    pub connections: usize,
    /// Worker processes holding the connections; 0: one per 5,000.
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Loopback source addresses to spread connections over (127.0.0.1, .2, …); 0: one per
    /// 5,000 connections.
    #[arg(long, default_value_t = 0)]
    pub source_ips: usize,
    /// Rooms the connections subscribe to, round robin (Lara conversations / channels).
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Open/close cycles.
    #[arg(long, default_value_t = 1)]
    pub cycles: u32,
    /// Seconds to hold the connections open before reading the server's RSS.
    #[arg(long, default_value_t = 5)]
    pub hold_secs: u64,
    /// Seconds to wait after closing before reading the server's RSS.
    #[arg(long, default_value_t = 5)]
    pub settle_secs: u64,
    /// Connection handshakes in flight at once (over all workers).
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
}

/// What a worker needs to open its share of connections.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    server: WorkerServer,
    rooms: Vec<String>,
    /// Global index of this worker's first connection (names the agents / JWT subjects).
    first: usize,
    count: usize,
    source_ips: Vec<IpAddr>,
    concurrency: usize,
    timeout_secs: u64,
    run_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum WorkerServer {
    Lara {
        url: String,
        key: String,
        encoding: Encoding,
    },
    Centrifugo {
        addr: std::net::SocketAddr,
        secret: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
enum Cmd {
    Open,
    Close,
    Exit,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "lowercase")]
enum WorkerEvent {
    Progress {
        open: u64,
        failed: u64,
    },
    Opened {
        open: u64,
        failed: u64,
        first_error: Option<String>,
        /// Seconds from the `open` command to the last connection that succeeded.
        last_open_s: f64,
    },
    Closed {
        /// Connections the server ended while they were idle.
        dropped: u64,
    },
    /// The worker's stdout ended (it exited); made up by the coordinator, never sent.
    Gone,
}

#[derive(Debug, Clone, Serialize)]
struct Cycle {
    opened: u64,
    failed: u64,
    setup_s: f64,
    setup_per_sec: f64,
    rss_kib_open: Option<u64>,
    dropped_while_idle: u64,
    close_s: f64,
    rss_kib_closed: Option<u64>,
}

/// `127.0.0.1`, `127.0.0.2`, … for a loopback IPv4 target; none otherwise.
fn source_ips(target: IpAddr, n: usize) -> Vec<IpAddr> {
    match target {
        IpAddr::V4(v4) if v4.is_loopback() => (1..=n.clamp(1, 250))
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i as u8)))
            .collect(),
        _ => Vec::new(),
    }
}

/// Splits `n` connections over `workers` as evenly as possible: (first, count) each.
fn shares(n: usize, workers: usize) -> Vec<(usize, usize)> {
    let workers = workers.clamp(1, n.max(1));
    let (base, extra) = (n / workers, n % workers);
    let mut first = 0;
    (0..workers)
        .map(|w| {
            let count = base + usize::from(w < extra);
            let s = (first, count);
            first += count;
            s
        })
        .collect()
}

struct Worker {
    stdin: ChildStdin,
    child: tokio::process::Child,
}

async fn tell(workers: &mut [Worker], cmd: &Cmd) -> Result<()> {
    let line = serde_json::to_string(cmd)? + "\n";
    for w in workers.iter_mut() {
        w.stdin
            .write_all(line.as_bytes())
            .await
            .context("writing to a worker")?;
        w.stdin.flush().await?;
    }
    Ok(())
}

pub async fn run(ctx: &Ctx, o: &Opts) -> Result<RunOutput> {
    if o.connections == 0 || o.connections > 200_000 {
        bail!("--connections must be 1..=200000");
    }
    if o.rooms == 0 || o.cycles == 0 || o.concurrency == 0 {
        bail!("--rooms, --cycles and --concurrency must be at least 1");
    }
    let n_workers = if o.workers == 0 {
        o.connections.div_ceil(PER_WORKER)
    } else {
        o.workers
    };
    if o.connections.div_ceil(n_workers) > MAX_PER_WORKER {
        bail!("at most {MAX_PER_WORKER} connections per worker: use more --workers");
    }
    let n_ips = if o.source_ips == 0 {
        o.connections.div_ceil(PER_WORKER)
    } else {
        o.source_ips
    };
    let ips = source_ips(ctx.ep.addr().ip(), n_ips);
    let fd_limit = ctx.server_pid.and_then(procstat::open_files_limit);
    if let Some(l) = fd_limit {
        if (o.connections as u64) + 64 > l {
            eprintln!(
                "warning: the server may open {l} files; {} connections will not all fit",
                o.connections
            );
        }
    }
    let rooms: Vec<String> = stream::iter(0..o.rooms)
        .map(|i| async move { ctx.ep.room(&format!("{}-idle{i}", ctx.run_id), &[]).await })
        .buffered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let server = match &ctx.ep {
        Endpoint::Lara {
            target,
            key,
            encoding,
            ..
        } => WorkerServer::Lara {
            url: target.base.to_string(),
            key: key.clone(),
            encoding: *encoding,
        },
        Endpoint::Centrifugo { addr, secret } => WorkerServer::Centrifugo {
            addr: *addr,
            secret: secret.clone(),
        },
    };
    let rss_now = || {
        ctx.server_pid
            .and_then(|pid| procstat::sample(pid).ok())
            .map(|s| s.rss_kib)
    };
    let rss_before = rss_now();

    // Start the workers.
    let exe = std::env::current_exe()?;
    let (ev_tx, mut ev_rx) = mpsc::channel::<(usize, WorkerEvent)>(1024);
    let mut workers = Vec::new();
    let per_worker_concurrency = o.concurrency.div_ceil(n_workers).max(1);
    for (w, (first, count)) in shares(o.connections, n_workers).into_iter().enumerate() {
        let spec = WorkerSpec {
            server: server.clone(),
            rooms: rooms.clone(),
            first,
            count,
            source_ips: ips.clone(),
            concurrency: per_worker_concurrency,
            timeout_secs: ctx.timeout.as_secs(),
            run_id: ctx.run_id.clone(),
        };
        let mut child = Command::new(&exe)
            .arg("idle-worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting an idle-worker process")?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("no worker stdin"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no worker stdout"))?;
        stdin
            .write_all((serde_json::to_string(&spec)? + "\n").as_bytes())
            .await?;
        let tx = ev_tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if let Ok(ev) = serde_json::from_str::<WorkerEvent>(&l) {
                    if tx.send((w, ev)).await.is_err() {
                        return;
                    }
                }
            }
            let _ = tx.send((w, WorkerEvent::Gone)).await;
        });
        workers.push(Worker { stdin, child });
    }
    drop(ev_tx);

    // Sample the server's RSS against open connections for the plot.
    let open_total = Arc::new(AtomicU64::new(0));
    let series = Arc::new(std::sync::Mutex::new(Vec::<RssPoint>::new()));
    let t0 = Instant::now();
    let sampler = ctx.server_pid.map(|pid| {
        let (open_total, series) = (open_total.clone(), series.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                let Ok(s) = procstat::sample(pid) else { break };
                if let Ok(mut v) = series.lock() {
                    v.push(RssPoint {
                        t_s: t0.elapsed().as_secs_f64(),
                        connections: open_total.load(Relaxed),
                        rss_kib: s.rss_kib,
                    });
                }
            }
        })
    });

    let p = ctx.progress.clone();
    let _printer = p.start("idle");
    let mut per_worker_open = vec![0u64; workers.len()];
    let mut cycles = Vec::new();
    let mut first_error: Option<String> = None;
    // Waits for one kind of event from every worker, keeping progress current.
    macro_rules! wait_all {
        ($w:ident, $pat:pat => $body:expr) => {{
            let mut pending = workers.len();
            while pending > 0 {
                let Some(($w, ev)) = ev_rx.recv().await else {
                    bail!("every idle worker exited early (see their messages above)");
                };
                match ev {
                    WorkerEvent::Progress { open, .. } => per_worker_open[$w] = open,
                    WorkerEvent::Gone => {
                        bail!("idle worker {} exited early (see its messages above)", $w)
                    }
                    $pat => {
                        $body;
                        pending -= 1;
                    }
                    _ => {}
                }
                let total: u64 = per_worker_open.iter().sum();
                open_total.store(total, Relaxed);
                p.c.open.store(total, Relaxed);
            }
        }};
    }
    for c in 0..o.cycles {
        let start = Instant::now();
        tell(&mut workers, &Cmd::Open).await?;
        let (mut opened, mut failed, mut last_open_s) = (0u64, 0u64, 0f64);
        wait_all!(w, WorkerEvent::Opened { open, failed: f, first_error: e, last_open_s: l } => {
            per_worker_open[w] = open;
            last_open_s = last_open_s.max(l);
            opened += open;
            failed += f;
            if first_error.is_none() {
                first_error = e;
            }
        });
        p.c.errors.store(failed, Relaxed);
        // Failed attempts end with a timeout; the rate counts until the last success.
        let setup_s = if failed > 0 {
            last_open_s
        } else {
            start.elapsed().as_secs_f64()
        };
        tokio::time::sleep(Duration::from_secs(o.hold_secs)).await;
        let rss_open = rss_now();
        let close_start = Instant::now();
        tell(&mut workers, &Cmd::Close).await?;
        let mut dropped = 0u64;
        wait_all!(w, WorkerEvent::Closed { dropped: d } => {
            per_worker_open[w] = 0;
            dropped += d;
        });
        let close_s = close_start.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(o.settle_secs)).await;
        let cycle = Cycle {
            opened,
            failed,
            setup_s,
            setup_per_sec: rate(opened, Duration::from_secs_f64(setup_s)),
            rss_kib_open: rss_open,
            dropped_while_idle: dropped,
            close_s,
            rss_kib_closed: rss_now(),
        };
        eprintln!(
            "idle cycle {}: {opened} open ({failed} failed) in {setup_s:.1} s ({}/s); RSS open {} KiB, after close {} KiB",
            c + 1,
            cycle.setup_per_sec,
            fmt_opt(cycle.rss_kib_open),
            fmt_opt(cycle.rss_kib_closed)
        );
        cycles.push(cycle);
    }
    tell(&mut workers, &Cmd::Exit).await?;
    for mut w in workers {
        drop(w.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(30), w.child.wait()).await;
    }
    if let Some(s) = sampler {
        s.abort();
    }
    drop(_printer);
    let first = &cycles[0];
    let last = &cycles[cycles.len() - 1];
    let per_conn = match (rss_before, first.rss_kib_open) {
        (Some(b), Some(o)) if first.opened > 0 => {
            Some(((o as f64 - b as f64) / first.opened as f64 * 10.0).round() / 10.0)
        }
        _ => None,
    };
    println!(
        "idle on {}: {} connections, {} worker(s), {} source address(es), {} room(s)",
        ctx.ep.proto().name(),
        o.connections,
        n_workers,
        ips.len().max(1),
        o.rooms
    );
    println!(
        "  setup {:.0} connections/s (first cycle), failed {}",
        first.setup_per_sec, first.failed
    );
    println!(
        "  server RSS before {} KiB, open {} KiB ({} KiB per connection), after close {} KiB (after {} cycle(s): {} KiB)",
        fmt_opt(rss_before),
        fmt_opt(first.rss_kib_open),
        per_conn.map_or("?".into(), |v| v.to_string()),
        fmt_opt(first.rss_kib_closed),
        cycles.len(),
        fmt_opt(last.rss_kib_closed),
    );
    if let Some(e) = &first_error {
        println!("  first error: {e}");
    }
    let failed_total: u64 = cycles.iter().map(|c| c.failed).sum();
    let dropped_total: u64 = cycles.iter().map(|c| c.dropped_while_idle).sum();
    let result = json!({
        "scenario": "idle",
        "params": format!("N={} cycles={}", o.connections, o.cycles),
        "connections": o.connections,
        "workers": n_workers,
        "source_ips": ips.len().max(1),
        "rooms": o.rooms,
        "hold_s": o.hold_secs,
        "settle_s": o.settle_secs,
        "server_open_files_limit": fd_limit,
        "rss_kib_before": rss_before,
        "rss_kib_open": first.rss_kib_open,
        "rss_kib_per_connection": per_conn,
        "rss_kib_after_close": first.rss_kib_closed,
        "rss_kib_after_cycles": last.rss_kib_closed,
        "setup_per_sec": first.setup_per_sec,
        "failed": failed_total,
        "dropped_while_idle": dropped_total,
        "errors": failed_total + dropped_total,
        "first_error": first_error,
        "cycles": cycles,
    });
    let mut out = RunOutput::new(result);
    out.rss = series.lock().map(|v| v.clone()).unwrap_or_default();
    Ok(out)
}

fn fmt_opt(v: Option<u64>) -> String {
    v.map_or("?".into(), |v| v.to_string())
}

/// The `idle-worker` process: reads its spec and then commands on stdin, reports on stdout.
pub async fn worker() -> Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let spec: WorkerSpec = serde_json::from_str(
        &lines
            .next_line()
            .await?
            .ok_or_else(|| anyhow!("idle-worker: no spec on stdin"))?,
    )
    .context("idle-worker: invalid spec")?;
    let limit = Duration::from_secs(spec.timeout_secs.clamp(1, 600));
    let ep = match &spec.server {
        WorkerServer::Lara { url, key, encoding } => {
            let target = Target::parse(url)?;
            Endpoint::Lara {
                api: Api::new(target.clone(), limit)?,
                target,
                key: key.clone(),
                encoding: *encoding,
            }
        }
        WorkerServer::Centrifugo { addr, secret } => Endpoint::Centrifugo {
            addr: *addr,
            secret: secret.clone(),
        },
    };
    let mut held: Vec<tokio::task::JoinHandle<Option<Conn>>> = Vec::new();
    let mut cancel = CancellationToken::new();
    let dropped = Arc::new(AtomicU64::new(0));
    while let Some(line) = lines.next_line().await? {
        match serde_json::from_str::<Cmd>(&line).context("idle-worker: invalid command")? {
            Cmd::Open => {
                cancel = CancellationToken::new();
                dropped.store(0, Relaxed);
                let started = Instant::now();
                let (open, failed, first_error, last_open) =
                    open_all(&ep, &spec, limit, &cancel, &dropped, &mut held).await;
                emit(&WorkerEvent::Opened {
                    open,
                    failed,
                    first_error,
                    last_open_s: last_open
                        .map_or(0.0, |t| t.saturating_duration_since(started).as_secs_f64()),
                });
            }
            Cmd::Close => {
                cancel.cancel();
                let conns: Vec<Conn> = futures::future::join_all(held.drain(..))
                    .await
                    .into_iter()
                    .filter_map(|r| r.ok().flatten())
                    .collect();
                stream::iter(conns)
                    .for_each_concurrent(spec.concurrency, |c| c.close())
                    .await;
                emit(&WorkerEvent::Closed {
                    dropped: dropped.load(Relaxed),
                });
            }
            Cmd::Exit => break,
        }
    }
    cancel.cancel();
    Ok(())
}

fn emit(ev: &WorkerEvent) {
    use std::io::Write;
    if let Ok(l) = serde_json::to_string(ev) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{l}");
        let _ = out.flush();
    }
}

async fn open_all(
    ep: &Endpoint,
    spec: &WorkerSpec,
    limit: Duration,
    cancel: &CancellationToken,
    dropped: &Arc<AtomicU64>,
    held: &mut Vec<tokio::task::JoinHandle<Option<Conn>>>,
) -> (u64, u64, Option<String>, Option<Instant>) {
    let open = Arc::new(AtomicU64::new(0));
    let mut last_open = None;
    let failed = Arc::new(AtomicU64::new(0));
    let reporter = {
        let (open, failed) = (open.clone(), failed.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                emit(&WorkerEvent::Progress {
                    open: open.load(Relaxed),
                    failed: failed.load(Relaxed),
                });
            }
        })
    };
    let mut first_error = None;
    let mut results = stream::iter(spec.first..spec.first + spec.count)
        .map(|g| async move {
            let source =
                (!spec.source_ips.is_empty()).then(|| spec.source_ips[g % spec.source_ips.len()]);
            let room = spec.rooms[g % spec.rooms.len()].clone();
            let m = ep.agent(&format!("lt-{}-idle-{g}", spec.run_id))?;
            ep.open(&m, &[room], source, limit).await
        })
        .buffer_unordered(spec.concurrency);
    while let Some(r) = results.next().await {
        match r {
            Ok(c) => {
                open.fetch_add(1, Relaxed);
                last_open = Some(Instant::now());
                held.push(tokio::spawn(hold(
                    c,
                    cancel.clone(),
                    dropped.clone(),
                    open.clone(),
                )));
            }
            Err(e) => {
                failed.fetch_add(1, Relaxed);
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    reporter.abort();
    (
        open.load(Relaxed),
        failed.load(Relaxed),
        first_error,
        last_open,
    )
}

/// Keeps a connection open (answering pings) until cancelled; `None` if the server ended it.
async fn hold(
    mut c: Conn,
    cancel: CancellationToken,
    dropped: Arc<AtomicU64>,
    open: Arc<AtomicU64>,
) -> Option<Conn> {
    let far = || Instant::now() + Duration::from_secs(3600);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Some(c),
            ev = c.next_event(far()) => match ev {
                Ok(Some(Event::Closed(_) | Event::Disconnect(_))) | Err(_) => {
                    dropped.fetch_add(1, Relaxed);
                    open.fetch_sub(1, Relaxed);
                    return None;
                }
                Ok(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_shared_evenly_and_completely() {
        assert_eq!(shares(10, 3), vec![(0, 4), (4, 3), (7, 3)]);
        assert_eq!(shares(20_000, 4).iter().map(|s| s.1).sum::<usize>(), 20_000);
        assert_eq!(shares(2, 5), vec![(0, 1), (1, 1)]);
    }

    #[test]
    fn source_addresses_only_for_ipv4_loopback() {
        let v = source_ips("127.0.0.1".parse().unwrap(), 3);
        assert_eq!(
            v,
            ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
                .map(|s| s.parse::<IpAddr>().unwrap())
                .to_vec()
        );
        assert!(source_ips("::1".parse().unwrap(), 3).is_empty());
        assert_eq!(source_ips("127.0.0.1".parse().unwrap(), 0).len(), 1);
    }

    #[test]
    fn worker_messages_round_trip() {
        let ev = WorkerEvent::Opened {
            open: 5,
            failed: 1,
            first_error: Some("x".into()),
            last_open_s: 1.5,
        };
        let line = serde_json::to_string(&ev).unwrap();
        assert!(line.contains(r#""ev":"opened""#), "{line}");
        assert!(matches!(
            serde_json::from_str::<WorkerEvent>(&line).unwrap(),
            WorkerEvent::Opened { open: 5, .. }
        ));
        assert_eq!(
            serde_json::to_string(&Cmd::Close).unwrap(),
            r#"{"cmd":"close"}"#
        );
    }
}
