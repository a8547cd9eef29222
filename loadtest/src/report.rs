//! `report`: JSON result lines → one markdown table.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::Value;

pub fn run(files: &[PathBuf]) -> Result<()> {
    let mut text = String::new();
    if files.is_empty() || files.iter().any(|f| f.as_os_str() == "-") {
        std::io::stdin().read_to_string(&mut text)?;
    }
    for f in files.iter().filter(|f| f.as_os_str() != "-") {
        text.push_str(
            &std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
        );
        text.push('\n');
    }
    print!("{}", table(&text));
    Ok(())
}

/// Renders every line of `text` that is a JSON result object as a table row.
pub fn table(text: &str) -> String {
    let mut out = String::from(
        "| label | scenario | parameters | rate | latency measured | p50 ms | p90 ms | p99 ms | max ms | errors / missing | server CPU µs/delivery |\n\
         |---|---|---|---:|---|---:|---:|---:|---:|---|---:|\n",
    );
    for line in text.lines().map(str::trim).filter(|l| l.starts_with('{')) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if let Some(row) = row(&v) {
            out.push_str(&row);
            out.push('\n');
        }
    }
    out
}

fn row(v: &Value) -> Option<String> {
    let n = |k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let label = v
        .get("label")
        .or_else(|| v.get("server"))
        .and_then(Value::as_str)
        .unwrap_or("-");
    let cpu = v
        .get("server_cpu_us_per_delivery")
        .and_then(Value::as_f64)
        .map_or("-".to_owned(), |c| format!("{c:.2}"));
    let (scenario, params, rate, what, lat, problems) = match v.get("scenario")?.as_str()? {
        "throughput" => (
            "throughput",
            format!(
                "C={} W={}{}",
                n("connections"),
                n("window"),
                if n("conversations") == 1.0 && n("connections") > 1.0 {
                    " shared conv"
                } else {
                    ""
                }
            ),
            format!("{} msg/s", n("msgs_per_sec")),
            "send→ack",
            v.get("ack_latency")?,
            format!("{} errors", n("errors")),
        ),
        "latency" => (
            "latency",
            format!(
                "P={} R={}/s {} s{}",
                n("pairs"),
                n("rate_per_pair"),
                n("duration_s"),
                match v.get("receiver_addr").and_then(Value::as_str) {
                    Some(r) if v.get("cross_gateway") == Some(&Value::Bool(true)) => {
                        format!(", receivers on {r} (cross-gateway)")
                    }
                    _ => String::new(),
                }
            ),
            format!("{} msg/s", n("msgs_per_sec")),
            "send→receive",
            v.get("receive_latency")?,
            format!(
                "{} errors, {} of {} missing",
                n("errors"),
                n("missing"),
                n("acked")
            ),
        ),
        "echo" => (
            "echo (floor)",
            format!(
                "P={} R={}/s {} s",
                n("pairs"),
                n("rate_per_pair"),
                n("duration_s")
            ),
            format!("{} frames", n("deliveries")),
            "send→echo",
            v.get("delivery_latency")?,
            format!("{} of {} missing", n("missing"), n("sent")),
        ),
        "fanout" => (
            "fanout",
            format!("K={} N={}", n("subscribers"), n("messages")),
            format!(
                "{} deliveries/s ({} msg/s)",
                n("deliveries_per_sec"),
                n("msgs_per_sec")
            ),
            "send→delivery",
            v.get("delivery_latency")?,
            format!(
                "{} errors, {} of {} missing",
                n("errors"),
                n("missing"),
                n("expected_deliveries")
            ),
        ),
        "chat" => (
            "chat",
            v.get("params")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            format!(
                "{} deliveries/s ({} msg/s)",
                n("deliveries_per_sec"),
                n("msgs_per_sec")
            ),
            "send→receive",
            v.get("delivery_latency")?,
            format!(
                "{} errors, {} of {} missing, {} duplicates",
                n("errors"),
                n("missing"),
                n("expected_deliveries"),
                n("duplicate_deliveries")
            ),
        ),
        "idle" => {
            return Some(format!(
                "| {label} | idle | N={} | {} connections/s | RSS per connection {} KiB, after close {} KiB | - | - | - | - | {} failed or dropped | - |",
                n("connections"),
                n("setup_per_sec"),
                n("rss_kib_per_connection"),
                n("rss_kib_after_close"),
                n("errors"),
            ));
        }
        _ => return None,
    };
    let l = |k: &str| lat.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    Some(format!(
        "| {label} | {scenario} | {params} | {rate} | {what} | {:.2} | {:.2} | {:.2} | {:.2} | {problems} | {cpu} |",
        l("p50_ms"),
        l("p90_ms"),
        l("p99_ms"),
        l("max_ms")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_for_each_scenario_and_junk_is_skipped() {
        let text = r#"some log line
{"scenario":"throughput","label":"full","connections":1,"window":32,"conversations":1,"msgs_per_sec":1234.5,"errors":0,"ack_latency":{"p50_ms":1.5,"p90_ms":2,"p99_ms":3,"max_ms":4}}
{"scenario":"fanout","subscribers":500,"messages":200,"deliveries_per_sec":9000,"msgs_per_sec":18,"errors":0,"missing":0,"expected_deliveries":100000,"delivery_latency":{"p50_ms":1,"p90_ms":2,"p99_ms":3,"max_ms":4}}
{"scenario":"setup"}
{"scenario":"idle","server":"centrifugo","connections":5000,"setup_per_sec":3000,"rss_kib_per_connection":45.5,"rss_kib_after_close":300000,"errors":0}
{"scenario":"chat","server":"lara-json","params":"2 1:1","deliveries_per_sec":100,"msgs_per_sec":20,"errors":0,"missing":0,"expected_deliveries":500,"duplicate_deliveries":0,"delivery_latency":{"p50_ms":1,"p90_ms":2,"p99_ms":3,"max_ms":4},"server_cpu_us_per_delivery":12.5}
{"scenario":"latency","label":"x","pairs":10,"rate_per_pair":20,"duration_s":20,"sender_addr":"127.0.0.1:1","receiver_addr":"127.0.0.1:2","cross_gateway":true,"msgs_per_sec":200,"errors":0,"missing":0,"acked":4000,"receive_latency":{"p50_ms":1,"p90_ms":2,"p99_ms":3,"max_ms":4}}
"#;
        let t = table(text);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 7, "{t}");
        assert!(
            lines[2]
                .starts_with("| full | throughput | C=1 W=32 | 1234.5 msg/s | send→ack | 1.50 |"),
            "{t}"
        );
        assert!(lines[3].contains("K=500 N=200"), "{t}");
        assert!(lines[3].contains("0 of 100000 missing"), "{t}");
        assert!(
            lines[4].starts_with(
                "| centrifugo | idle | N=5000 | 3000 connections/s | RSS per connection 45.5 KiB"
            ),
            "{t}"
        );
        assert!(lines[5].starts_with("| lara-json | chat | 2 1:1 |"), "{t}");
        assert!(lines[5].ends_with("| 12.50 |"), "{t}");
        assert!(
            lines[6].contains("P=10 R=20/s 20 s, receivers on 127.0.0.1:2 (cross-gateway)"),
            "{t}"
        );
    }
}
