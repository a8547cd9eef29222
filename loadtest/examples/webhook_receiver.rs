//! A fast webhook receiver for `loadtest/webhook-lag.py` (`RECEIVER=rust`, the default): the
//! Python one (`RECEIVER=python`) is limited by its interpreter before the server's
//! delivery worker is. Answers every `POST` with `204` at once and reports it on stdout as
//! `<receipt unix ms> <event timestamp unix ms> <webhook-id>`; it does NOT verify signatures
//! (the tests do, with the independent `standardwebhooks` package: `webhooks/tests/`).
//! `--flood URL CONNECTIONS SECONDS` instead posts a fixed body to URL from CONNECTIONS
//! concurrent clients and prints requests/s: the rate a receiver manages alone. Not part of
//! the product.
//!
//!   cargo build --release -p larachat-loadtest --example webhook_receiver
//!   target/release/examples/webhook_receiver 127.0.0.1:0      # prints `listening <port>`
//!   target/release/examples/webhook_receiver --flood http://127.0.0.1:PORT/hook 32 5

use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use tokio::sync::mpsc;

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or_default()
}

async fn hook(
    State(out): State<mpsc::UnboundedSender<String>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let at = now_ms();
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let timestamp = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["timestamp"].as_str().map(str::to_owned))
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
        .map_or(f64::NAN, |t| t.timestamp_millis() as f64);
    let _ = out.send(format!("{at:.3} {timestamp:.0} {id}\n"));
    StatusCode::NO_CONTENT
}

async fn receive(addr: &str) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening {}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    // One writer thread: lines are batched into few writes, flushed whenever the queue is
    // momentarily empty.
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        while let Some(line) = rx.blocking_recv() {
            if out.write_all(line.as_bytes()).is_err() {
                return;
            }
            while let Ok(more) = rx.try_recv() {
                if out.write_all(more.as_bytes()).is_err() {
                    return;
                }
            }
            if out.flush().is_err() {
                return;
            }
        }
    });
    let app = Router::new().route("/{*path}", post(hook)).with_state(tx);
    axum::serve(listener, app).await
}

async fn flood(url: String, connections: usize, secs: u64) {
    let body = serde_json::json!({
        "id": "0193e2c4-8f1a-7b2c-9d3e-4f5a6b7c8d9e", "event": "message.sent",
        "timestamp": "2026-11-30T12:34:56.789Z",
        "data": {"text": "Hello world", "metadata": {}}
    })
    .to_string();
    let client = reqwest::Client::new();
    let until = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|i| {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            tokio::spawn(async move {
                let (mut ok, mut n) = (0u64, 0u64);
                while Instant::now() < until {
                    n += 1;
                    let r = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("webhook-id", format!("flood-{i}-{n}"))
                        .body(body.clone())
                        .send()
                        .await;
                    if r.is_ok_and(|r| r.status().is_success()) {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap_or(0);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{ok} requests answered 2xx in {secs:.1} s from {connections} connections: {:.0} requests/s",
        ok as f64 / secs
    );
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--flood") if args.len() == 4 => {
            let connections = args[2].parse().unwrap_or(32);
            let secs = args[3].parse().unwrap_or(5);
            flood(args[1].clone(), connections, secs).await;
            Ok(())
        }
        Some(addr) => receive(addr).await,
        None => receive("127.0.0.1:0").await,
    }
}
