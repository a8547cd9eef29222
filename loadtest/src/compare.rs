//! `compare`: the same scenario against Lara Chat and Centrifugo, each started fresh by the
//! tool for every run ([`crate::servers`]). Rounds alternate which server goes first; ratios
//! Lara ÷ Centrifugo are taken within a round (both measured minutes apart under the same
//! machine load), and the table shows their range over the rounds.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::output::{OutDir, RssPoint, RunOutput};
use crate::progress::Progress;
use crate::servers::{Kind, Launch, Server};
use crate::{Ctx, chat, fanout, idle, latency, plot};

#[derive(Debug, Clone, Args)]
pub struct Opts {
    /// Rounds; each runs the scenario once per server, the first server alternating.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Servers to compare (comma-separated): lara, centrifugo, centrifugo-history, lara-base
    /// (another larachat build, --larachat-base-bin).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "lara,centrifugo"
    )]
    pub servers: Vec<Kind>,
    #[command(flatten)]
    pub launch: Launch,
    /// Pause between runs, letting the machine settle.
    #[arg(long, default_value_t = 2)]
    pub pause_secs: u64,
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    /// Idle connections: RSS per connection, RSS after closing, setup rate.
    Idle(idle::Opts),
    /// One room, K subscribers (--rate R, or as fast as possible).
    Fanout(fanout::Opts),
    /// 1:1 pairs at a steady rate: send→receive latency.
    Latency(latency::Opts),
    /// 1:1 conversations plus groups at chat-like rates.
    Chat(chat::Opts),
}

impl Opts {
    pub fn scenario_name(&self) -> &'static str {
        self.scenario.name()
    }
}

impl Scenario {
    fn name(&self) -> &'static str {
        match self {
            Scenario::Idle(_) => "idle",
            Scenario::Fanout(_) => "fanout",
            Scenario::Latency(_) => "latency",
            Scenario::Chat(_) => "chat",
        }
    }
}

/// The metrics compared for a scenario: (label, JSON pointer into the result).
fn metrics(scenario: &str) -> &'static [(&'static str, &'static str)] {
    match scenario {
        "idle" => &[
            ("RSS per idle connection (KiB)", "/rss_kib_per_connection"),
            ("RSS after closing all (MiB)", "/rss_mib_after_close"),
            ("RSS after all cycles (MiB)", "/rss_mib_after_cycles"),
            ("connection setup (per s)", "/setup_per_sec"),
            ("failed or dropped connections", "/errors"),
        ],
        "fanout" | "chat" => &[
            ("delivery p50 (ms)", "/delivery_latency/p50_ms"),
            ("delivery p99 (ms)", "/delivery_latency/p99_ms"),
            ("deliveries/s", "/deliveries_per_sec"),
            (
                "server CPU per delivery (µs)",
                "/server_cpu_us_per_delivery",
            ),
            (
                "load generator CPU per delivery (µs)",
                "/loadgen_cpu_us_per_delivery",
            ),
            ("missing + duplicate deliveries", "/lost_or_doubled"),
        ],
        "latency" => &[
            ("send→receive p50 (ms)", "/delivery_latency/p50_ms"),
            ("send→receive p99 (ms)", "/delivery_latency/p99_ms"),
            (
                "server CPU per delivery (µs)",
                "/server_cpu_us_per_delivery",
            ),
            ("missing + duplicate deliveries", "/lost_or_doubled"),
        ],
        _ => &[],
    }
}

struct Done {
    kind: Kind,
    round: u32,
    result: Value,
    cdf: Vec<(f64, f64)>,
    rss: Vec<RssPoint>,
}

pub async fn run(o: &Opts, timeout: Duration, progress: bool, out: &OutDir) -> Result<()> {
    if o.rounds == 0 || o.rounds > 20 {
        bail!("--rounds must be 1..=20");
    }
    if o.servers.is_empty() {
        bail!("--servers needs at least one server");
    }
    let receiver_url = match &o.scenario {
        Scenario::Latency(l) => l.receiver_url.is_some(),
        Scenario::Fanout(f) => f.receiver_url.is_some(),
        _ => false,
    };
    if receiver_url {
        bail!("--receiver-url is for a Lara cluster, not for compare");
    }
    let scenario = o.scenario.name();
    let mut done: Vec<Done> = Vec::new();
    for round in 1..=o.rounds {
        let mut order = o.servers.clone();
        let shift = (round as usize - 1) % order.len();
        order.rotate_left(shift);
        for kind in order {
            eprintln!(
                "== {scenario}, round {round}/{}: {} (load average {})",
                o.rounds,
                kind.name(),
                loadavg()
            );
            let load_before = loadavg();
            let server = Server::start(kind, &o.launch, timeout).await?;
            let ctx = Ctx {
                ep: server.endpoint.clone(),
                timeout,
                run_id: crate::new_run_id(),
                server_pid: Some(server.pid),
                watch_pids: Vec::new(),
                progress: Progress::new(progress),
            };
            let run = run_scenario(&o.scenario, &ctx).await;
            let log = server.log.clone();
            let log_text = std::fs::read_to_string(&log).unwrap_or_default();
            let log_errors = log_text
                .lines()
                .filter(|l| l.contains("panicked") || l.contains("ERROR"))
                .count();
            if let Err(e) = server.stop().await {
                eprintln!("warning: {e:#}");
            }
            let mut run = run?;
            annotate(&mut run.result, kind, round, &o.launch, &load_before);
            run.result["server_log_errors"] = json!(log_errors);
            let name = format!("{scenario}-{}-r{round}", kind.name());
            out.write(&name, &mut run)?;
            done.push(Done {
                kind,
                round,
                cdf: run.latency.as_mut().map(|l| l.cdf(400)).unwrap_or_default(),
                rss: run.rss,
                result: run.result,
            });
            tokio::time::sleep(Duration::from_secs(o.pause_secs)).await;
        }
    }
    let table = summary_table(scenario, &o.servers, &done);
    println!();
    println!("{table}");
    let summary = json!({
        "scenario": scenario,
        "rounds": o.rounds,
        "servers": o.servers.iter().map(|k| k.name()).collect::<Vec<_>>(),
        "encoding": o.launch.encoding.name(),
        "table_markdown": table,
        "runs": done.iter().map(|d| &d.result).collect::<Vec<_>>(),
    });
    std::fs::write(
        out.dir.join(format!("compare-{scenario}.json")),
        serde_json::to_vec_pretty(&summary)?,
    )?;
    let svg = out.dir.join(format!("compare-{scenario}.svg"));
    let title = format!(
        "{scenario}: {} ({} rounds)",
        done.first()
            .and_then(|d| d.result["params"].as_str())
            .unwrap_or(""),
        o.rounds
    );
    if matches!(o.scenario, Scenario::Idle(_)) {
        let series: Vec<(String, Vec<RssPoint>)> = done
            .iter()
            .map(|d| (format!("{} r{}", d.kind.name(), d.round), d.rss.clone()))
            .filter(|(_, s)| !s.is_empty())
            .collect();
        if !series.is_empty() {
            plot::rss_vs_connections(&svg, &title, &series)?;
        }
    } else {
        let series: Vec<(String, Vec<(f64, f64)>)> = done
            .iter()
            .map(|d| (format!("{} r{}", d.kind.name(), d.round), d.cdf.clone()))
            .filter(|(_, s)| !s.is_empty())
            .collect();
        if !series.is_empty() {
            plot::latency_cdf(&svg, &title, &series)?;
        }
    }
    eprintln!(
        "results, per-run plots and {} in {}",
        svg.display(),
        out.dir.display()
    );
    Ok(())
}

async fn run_scenario(s: &Scenario, ctx: &Ctx) -> Result<RunOutput> {
    match s {
        Scenario::Idle(o) => idle::run(ctx, o).await,
        Scenario::Fanout(o) => fanout::run(ctx, o, &ctx.ep).await,
        Scenario::Latency(o) => latency::run(ctx, o, &ctx.ep).await,
        Scenario::Chat(o) => chat::run(ctx, o).await,
    }
}

/// Adds the fields every compared result carries, and derived ones the table reads.
fn annotate(v: &mut Value, kind: Kind, round: u32, launch: &Launch, load: &str) {
    v["server"] = json!(kind.name());
    v["round"] = json!(round);
    v["load_average_before"] = json!(load);
    if matches!(kind, Kind::Lara | Kind::LaraBase) {
        v["encoding"] = json!(launch.encoding.name());
    }
    let n = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64);
    if let (Some(m), Some(d)) = (n(v, "missing"), n(v, "duplicate_deliveries")) {
        v["lost_or_doubled"] = json!(m + d);
    }
    for (from, to) in [
        ("rss_kib_after_close", "rss_mib_after_close"),
        ("rss_kib_after_cycles", "rss_mib_after_cycles"),
    ] {
        if let Some(k) = n(v, from) {
            v[to] = json!((k / 1024.0 * 10.0).round() / 10.0);
        }
    }
}

/// `/proc/loadavg`'s 1, 5 and 15 minute averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn range(vals: &[f64]) -> String {
    if vals.is_empty() {
        return "–".into();
    }
    let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (a, b) = (fmt_num(lo), fmt_num(hi));
    if a == b { a } else { format!("{a}–{b}") }
}

fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if (x.fract() == 0.0 && a < 1e15) || a >= 1000.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 0.1 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// The markdown table: one row per metric; per server its range over the rounds; and for each
/// server other than Lara the range of Lara ÷ that server, taken within each round.
fn summary_table(scenario: &str, servers: &[Kind], done: &[Done]) -> String {
    table_header(servers) + &table_rows(scenario, "", servers, done)
}

fn table_header(servers: &[Kind]) -> String {
    let others = servers.iter().filter(|k| !k.is_lara()).count();
    let has_lara = servers.iter().any(|k| k.is_lara());
    let mut out = String::from("| metric |");
    for k in servers {
        out.push_str(&format!(" {} |", k.name()));
    }
    if has_lara {
        for k in servers.iter().filter(|k| !k.is_lara()) {
            out.push_str(&format!(" lara ÷ {} |", k.name()));
        }
    }
    out.push_str("\n|---|");
    for _ in 0..servers.len() + if has_lara { others } else { 0 } {
        out.push_str("---|");
    }
    out.push('\n');
    out
}

fn table_rows(scenario: &str, prefix: &str, servers: &[Kind], done: &[Done]) -> String {
    let others: Vec<Kind> = servers.iter().copied().filter(|k| !k.is_lara()).collect();
    let has_lara = servers.iter().any(|k| k.is_lara());
    let get = |d: &Done, ptr: &str| d.result.pointer(ptr).and_then(Value::as_f64);
    let mut out = String::new();
    for (label, ptr) in metrics(scenario) {
        out.push_str(&format!("| {prefix}{label} |"));
        for k in servers {
            let vals: Vec<f64> = done
                .iter()
                .filter(|d| d.kind == *k)
                .filter_map(|d| get(d, ptr))
                .collect();
            out.push_str(&format!(" {} |", range(&vals)));
        }
        if has_lara {
            for k in &others {
                let ratios: Vec<f64> = done
                    .iter()
                    .filter(|d| d.kind.is_lara())
                    .filter_map(|l| {
                        let o = done.iter().find(|d| d.kind == *k && d.round == l.round)?;
                        let (a, b) = (get(l, ptr)?, get(o, ptr)?);
                        (b != 0.0).then_some(a / b)
                    })
                    .collect();
                out.push_str(&format!(" {} |", range(&ratios)));
            }
        }
        out.push('\n');
    }
    out
}

/// One table from several `compare-<scenario>.json` summaries (`report --compare`): a row per
/// scenario and metric. The columns are the servers of the first summary.
pub fn combined_table(files: &[PathBuf]) -> Result<String> {
    use clap::ValueEnum;
    let mut servers: Option<Vec<Kind>> = None;
    let mut rows = String::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a compare summary", f.display()))?;
        let scenario = v["scenario"].as_str().unwrap_or("");
        let kinds: Vec<Kind> = v["servers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| Kind::from_str(s.as_str()?, true).ok())
            .collect();
        let servers = servers.get_or_insert(kinds);
        let done: Vec<Done> = v["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| {
                Some(Done {
                    kind: Kind::from_str(r["server"].as_str()?, true).ok()?,
                    round: r["round"].as_u64()? as u32,
                    result: r.clone(),
                    cdf: Vec::new(),
                    rss: Vec::new(),
                })
            })
            .collect();
        let params = done
            .first()
            .and_then(|d| d.result["params"].as_str())
            .unwrap_or("");
        rows.push_str(&table_rows(
            scenario,
            &format!("{scenario} ({params}): "),
            servers,
            &done,
        ));
    }
    let servers = servers.unwrap_or_default();
    Ok(table_header(&servers) + &rows)
}

/// Where `compare` writes by default: `loadtest-results/compare-<scenario>-<time>`.
pub fn default_out(scenario: &str) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    PathBuf::from("loadtest-results").join(format!("compare-{scenario}-{secs}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(kind: Kind, round: u32, p99: f64, cpu: f64) -> Done {
        Done {
            kind,
            round,
            result: json!({"delivery_latency":{"p50_ms":1.0,"p99_ms":p99},"server_cpu_us_per_delivery":cpu}),
            cdf: vec![],
            rss: vec![],
        }
    }

    #[test]
    fn ratios_are_taken_within_a_round() {
        let s = Scenario::Latency(latency::Opts {
            pairs: 1,
            rate: 1.0,
            duration_secs: 1,
            drain_secs: 1,
            size: 1,
            receiver_url: None,
        });
        let runs = [
            done(Kind::Lara, 1, 8.0, 10.0),
            done(Kind::Centrifugo, 1, 2.0, 2.0),
            done(Kind::Centrifugo, 2, 1.0, 5.0),
            done(Kind::Lara, 2, 6.0, 10.0),
        ];
        let t = summary_table(s.name(), &[Kind::Lara, Kind::Centrifugo], &runs);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "| metric | lara | centrifugo | lara ÷ centrifugo |"
        );
        // p99: round 1 8/2 = 4, round 2 6/1 = 6 (not 8/1 or 6/2).
        assert!(
            lines[3].starts_with("| send→receive p99 (ms) | 6–8 | 1–2 | 4–6 |"),
            "{t}"
        );
        assert!(lines[4].contains("| 10 | 2–5 | 2–5 |"), "{t}");
        // A metric no run has shows a dash.
        assert!(lines[5].contains("| – | – | – |"), "{t}");
    }

    #[test]
    fn one_table_from_several_summaries() {
        let dir = tempfile::tempdir().unwrap();
        let run = |server: &str, round: u32, rss: f64| json!({"scenario":"idle","server":server,"round":round,"params":"N=10","rss_kib_per_connection":rss,"setup_per_sec":100});
        let idle = json!({"scenario":"idle","servers":["lara","centrifugo"],"runs":[
            run("lara", 1, 130.0), run("centrifugo", 1, 50.0), run("lara", 2, 140.0), run("centrifugo", 2, 40.0)]});
        let lat = json!({"scenario":"latency","servers":["lara","centrifugo"],"runs":[
            {"scenario":"latency","server":"lara","round":1,"params":"P=1","delivery_latency":{"p50_ms":1.0}},
            {"scenario":"latency","server":"centrifugo","round":1,"params":"P=1","delivery_latency":{"p50_ms":0.5}}]});
        let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
        std::fs::write(&a, idle.to_string()).unwrap();
        std::fs::write(&b, lat.to_string()).unwrap();
        let t = combined_table(&[a, b]).unwrap();
        assert!(
            t.starts_with("| metric | lara | centrifugo | lara ÷ centrifugo |\n"),
            "{t}"
        );
        assert!(
            t.contains(
                "| idle (N=10): RSS per idle connection (KiB) | 130–140 | 40–50 | 2.60–3.50 |"
            ),
            "{t}"
        );
        assert!(
            t.contains("| latency (P=1): send→receive p50 (ms) | 1 | 0.50 | 2 |"),
            "{t}"
        );
        assert!(combined_table(&[dir.path().join("missing.json")]).is_err());
    }

    #[test]
    fn annotations() {
        let mut v = json!({"missing": 2, "duplicate_deliveries": 1, "rss_kib_after_close": 2048});
        let launch = Launch {
            larachat_bin: None,
            larachat_base_bin: None,
            centrifugo_bin: None,
            lara_env: vec![],
            encoding: crate::proto::Encoding::Msgpack,
        };
        annotate(&mut v, Kind::Lara, 2, &launch, "1.00 2.00 3.00");
        assert_eq!(v["lost_or_doubled"], 3.0);
        assert_eq!(v["rss_mib_after_close"], 2.0);
        assert_eq!(v["encoding"], "msgpack");
        assert_eq!(v["server"], "lara");
        assert_eq!(v["round"], 2);
    }

    #[test]
    fn number_formats() {
        assert_eq!(range(&[1234.4, 99.5]), "99.5–1234");
        assert_eq!(range(&[0.05]), "0.050");
        assert_eq!(range(&[0.0, 3.0]), "0–3");
        assert_eq!(range(&[2681.2, 2680.9]), "2681");
        assert_eq!(range(&[]), "–");
    }
}
