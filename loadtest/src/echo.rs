//! `echo`: the floor under the 1:1 latency scenario. P connections to a trivial WebSocket echo
//! server (`cargo run --release -p larachat-loadtest --example echo_server`) each send R text
//! frames per second on the same staggered schedule as `latency`; each frame carries its send
//! time and the time its echo arrives is the latency. Client → server → client is the same
//! path a 1:1 message takes from sender to receiver (without the store, the bus and the
//! protocol), so this is what the server's loop, the kernel and this load generator cost.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::api::Target;
use crate::output::{CpuWatch, RunOutput, merge};
use crate::stats::Latencies;
use crate::ws::{self, now_us};

#[derive(Debug, Clone, Args)]
pub struct Opts {
    /// Base URL of the echo server (loopback only); the WebSocket is `<url>/echo`.
    #[arg(long, default_value = "http://127.0.0.1:8090")]
    pub url: String,
    /// Connections (the `latency` scenario's pairs).
    #[arg(long, default_value_t = 10)]
    pub pairs: usize,
    /// Frames per second per connection.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// How long the connections send.
    #[arg(long, default_value_t = 20)]
    pub duration_secs: u64,
    /// Frame size in bytes (at least the timestamp).
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// The echo server's process id, for its CPU per frame.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Seconds to wait for any single network operation.
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
    /// Directory for the JSON result and the plot.
    #[arg(long, default_value = "loadtest-results")]
    pub out: std::path::PathBuf,
    /// Also print the result as one JSON line (last line of the output).
    #[arg(long)]
    pub json: bool,
}

pub async fn run(o: &Opts) -> Result<RunOutput> {
    if o.pairs == 0 || o.pairs > crate::MAX_CONNECTIONS {
        bail!("--pairs must be 1..={}", crate::MAX_CONNECTIONS);
    }
    if !(o.rate > 0.0 && o.rate <= 10_000.0) {
        bail!("--rate must be in (0, 10000]");
    }
    let target = Target::parse(&o.url)?;
    let limit = Duration::from_secs(o.timeout_secs.clamp(1, 600));
    let mut conns = Vec::with_capacity(o.pairs);
    for _ in 0..o.pairs {
        let tcp = timeout(limit, TcpStream::connect(target.addr))
            .await
            .map_err(|_| anyhow!("connect timed out"))?
            .with_context(|| format!("connecting to {}", target.addr))?;
        tcp.set_nodelay(true)?;
        let req = format!("ws://{}/echo", target.addr).into_client_request()?;
        let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
        let (ws, _) = timeout(
            limit,
            tokio_tungstenite::client_async_with_config(req, tcp, Some(config)),
        )
        .await
        .map_err(|_| anyhow!("handshake timed out"))?
        .context("websocket handshake")?;
        conns.push(ws);
    }
    let period = Duration::from_secs_f64(1.0 / o.rate);
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + Duration::from_secs(o.duration_secs);
    let n = conns.len();
    let padding = ws::payload(o.size.saturating_sub(21).max(1));
    let cpu = CpuWatch::start(o.server_pid)?;
    let mut tasks = Vec::with_capacity(n);
    for (i, mut ws) in conns.into_iter().enumerate() {
        let first = start + period.mul_f64(i as f64 / n as f64);
        let padding = padding.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(first, period);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let (mut sent, mut lat) = (0u64, Latencies::new());
            let mut problem = None;
            loop {
                let sending = Instant::now() < end;
                if !sending && lat.len() as u64 == sent {
                    break;
                }
                tokio::select! {
                    _ = tick.tick(), if sending => {
                        let text = format!("{:020} {padding}", now_us());
                        if let Err(e) = ws.send(Message::text(text)).await {
                            problem = Some(format!("send: {e}"));
                            break;
                        }
                        sent += 1;
                    }
                    m = timeout(limit, ws.next()) => match m {
                        Ok(Some(Ok(Message::Text(t)))) => {
                            match t.get(..20).and_then(|s| s.parse::<u64>().ok()) {
                                Some(at) => lat.record_us(now_us().saturating_sub(at)),
                                None => {
                                    problem = Some("an echo without its timestamp".into());
                                    break;
                                }
                            }
                        }
                        Ok(Some(Ok(_))) => {}
                        Ok(Some(Err(e))) => {
                            problem = Some(format!("read: {e}"));
                            break;
                        }
                        Ok(None) => {
                            problem = Some("closed by the server".into());
                            break;
                        }
                        Err(_) => {
                            problem = Some("no echo within the timeout".into());
                            break;
                        }
                    },
                }
            }
            let _ = ws.close(None).await;
            (sent, lat, problem)
        }));
    }
    let (mut sent, mut lat, mut problems) = (0u64, Latencies::new(), Vec::new());
    for t in tasks {
        let (s, l, p) = t.await?;
        sent += s;
        lat.merge(l);
        problems.extend(p);
    }
    let received = lat.len() as u64;
    let usage = cpu.finish(received);
    let summary = lat.summary();
    println!(
        "echo: {n} connections × {}/s for {} s against {}",
        o.rate, o.duration_secs, target.addr
    );
    println!("  sent {sent} echoed {received}");
    println!("  send->echo {summary}");
    for p in &problems {
        println!("  problem: {p}");
    }
    let mut result = json!({
        "scenario": "echo",
        "params": format!("P={n} R={}/s {} s", o.rate, o.duration_secs),
        "pairs": n,
        "rate_per_pair": o.rate,
        "duration_s": o.duration_secs,
        "size": o.size,
        "sent": sent,
        "deliveries": received,
        "missing": sent - received.min(sent),
        "delivery_latency": summary,
        "receive_latency": summary,
        "error_samples": problems,
    });
    merge(&mut result, usage);
    let mut out = RunOutput::new(result);
    out.latency = Some(lat);
    Ok(out)
}
