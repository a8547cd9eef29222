//! `larachat-loadtest`: a load generator for Lara Chat that speaks only the public protocols
//! (HTTP Admin/Client API, Realtime v1 over WebSocket in JSON or MessagePack), and that runs the
//! same loads against a Centrifugo it starts itself, for comparison. See `loadtest/README.md`.
//! It depends on no server crate: only what a client sees.
//!
//! Modules:
//! - `api`: HTTP setup (project, key, end users, conversations); loopback-only targets.
//! - `proto`: both wire protocols (Lara Chat JSON/MessagePack, Centrifugo JSON) as frames
//!   and [`proto::Event`]s.
//! - `ws`: WebSocket connections (source address, small buffers) that speak a `proto`.
//! - `endpoint`: the server under load: identities, rooms, subscribed connections.
//! - `servers`: starting `larachat serve` and Centrifugo (install, config) for `compare`.
//! - scenarios: `throughput`, `latency`, `fanout`, `chat`, `idle` (with its worker processes),
//!   `compare` (rounds over servers, ratio table), and `echo` (the latency floor: a trivial
//!   WebSocket echo server, `examples/echo_server.rs`).
//! - `stats` (percentiles, CDFs, sequence sets), `procstat` (server CPU and RSS from /proc),
//!   `progress` (live line on stderr), `output` (JSON results), `plot` (SVG), `report`
//!   (markdown tables).

mod api;
mod chat;
mod compare;
mod echo;
mod endpoint;
mod fanout;
mod idle;
mod latency;
mod output;
mod plot;
mod procstat;
mod progress;
mod proto;
mod report;
mod servers;
mod stats;
mod throughput;
mod ws;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use api::{Api, Target};
use endpoint::Endpoint;
use output::{OutDir, RunOutput};
use progress::Progress;
use proto::Encoding;

/// Connections one process opens in the scenarios other than `idle` (which spreads its
/// connections over worker processes).
pub const MAX_CONNECTIONS: usize = 10_000;
/// Concurrent HTTP requests / WebSocket handshakes while setting up.
pub const SETUP_CONCURRENCY: usize = 32;

#[derive(Debug, Parser)]
#[command(
    name = "larachat-loadtest",
    version,
    about = "Load generator for Lara Chat, and a side-by-side comparison with Centrifugo (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a project and a read/write secret key, and print them.
    Setup {
        #[command(flatten)]
        common: Common,
    },
    /// Agents sending with a window of unacknowledged messages: acked msgs/s and ack latency.
    Throughput {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        opts: throughput::Opts,
    },
    /// Pairs of end users at a steady rate: send→receive latency and completeness.
    Latency {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        opts: latency::Opts,
    },
    /// One sender, K subscribers: delivery latency, deliveries/s, server CPU per delivery.
    Fanout {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        opts: fanout::Opts,
    },
    /// 1:1 conversations and groups at chat-like rates: latency, deliveries/s, completeness.
    Chat {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        opts: chat::Opts,
    },
    /// Many idle, subscribed connections (several processes): server RSS per connection and
    /// after closing, connection setup rate.
    Idle {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        opts: idle::Opts,
    },
    /// Run one scenario against Lara Chat and Centrifugo, both started by the tool; ratios
    /// per round.
    Compare {
        #[command(flatten)]
        opts: compare::Opts,
        /// Seconds to wait for any single network operation.
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
        /// Output directory (default: loadtest-results/compare-<scenario>-<unix time>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// No live progress line on stderr.
        #[arg(long)]
        no_progress: bool,
    },
    /// The latency floor: P connections to a trivial WebSocket echo server (`--example
    /// echo_server`) at R frames/s each; send→echo latency.
    Echo {
        #[command(flatten)]
        opts: echo::Opts,
    },
    /// Worker process of `idle` (reads its orders on stdin).
    #[command(hide = true)]
    IdleWorker,
    /// Turn JSON result lines (from --json runs or results.jsonl) into a markdown table; with
    /// --compare, compare-<scenario>.json summaries into one comparison table.
    Report {
        /// Files with one JSON result per line (`-` or none reads standard input), or with
        /// --compare, compare summaries.
        files: Vec<std::path::PathBuf>,
        /// The files are `compare` summaries (compare-<scenario>.json).
        #[arg(long)]
        compare: bool,
    },
}

#[derive(Debug, Clone, Args)]
struct Common {
    /// The server's base URL (Client API and realtime: a gateway in distributed mode); only
    /// loopback addresses are accepted.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Base URL of the Admin API, used only to create the project and key (the control plane
    /// in distributed mode). Default: --url.
    #[arg(long)]
    admin_url: Option<String>,
    /// Secret key (sk_live_…, scopes read+write). Without it, a project and key are created
    /// with the admin credentials.
    #[arg(long, env = "LOADTEST_KEY", hide_env_values = true)]
    key: Option<String>,
    #[arg(long, env = "LARACHAT_ADMIN_EMAIL")]
    admin_email: Option<String>,
    #[arg(long, env = "LARACHAT_ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: Option<String>,
    /// Seconds to wait for any single network operation.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    /// Free-form label copied into the JSON result (e.g. the server configuration).
    #[arg(long)]
    label: Option<String>,
    /// Also print the result as one JSON line (last line of the output).
    #[arg(long)]
    json: bool,
    /// Lara Chat frames: json or msgpack (docs/protocol.md §8).
    #[arg(long, value_enum, default_value_t = Encoding::Json)]
    encoding: Encoding,
    /// The server's process id, to report its CPU per delivery and its RSS (read from
    /// /proc/<pid>); the server must run on this machine.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Another process of the system under test whose CPU per delivery to report (`fanout`;
    /// e.g. `nats=1234`); repeatable.
    #[arg(long, value_parser = parse_watch_pid)]
    watch_pid: Vec<(String, u32)>,
    /// Directory for the JSON result (results.jsonl, <run>.json) and the plot (<run>.svg).
    #[arg(long, default_value = "loadtest-results")]
    out: PathBuf,
    /// No live progress line on stderr.
    #[arg(long)]
    no_progress: bool,
}

/// What every scenario needs.
pub struct Ctx {
    pub ep: Endpoint,
    pub timeout: Duration,
    /// Distinguishes this run's keys, users and rooms from other runs.
    pub run_id: String,
    /// The server's pid, for CPU and RSS readings.
    pub server_pid: Option<u32>,
    /// Other processes to report CPU for (`--watch-pid`).
    pub watch_pids: Vec<(String, u32)>,
    pub progress: Progress,
}

/// `NAME=PID` of `--watch-pid`.
fn parse_watch_pid(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s.split_once('=').ok_or("expected NAME=PID")?;
    let pid = pid.parse().map_err(|_| format!("not a pid: {pid}"))?;
    if name.is_empty() {
        return Err("expected NAME=PID".into());
    }
    Ok((name.to_owned(), pid))
}

pub fn new_run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

impl Ctx {
    async fn new(c: &Common) -> Result<Self> {
        if c.timeout_secs == 0 || c.timeout_secs > 600 {
            bail!("--timeout-secs must be 1..=600");
        }
        let target = Target::parse(&c.url)?;
        let admin_target = c.admin_target()?;
        let timeout = Duration::from_secs(c.timeout_secs);
        let api = Api::new(target.clone(), timeout)?;
        let run_id = new_run_id();
        let key = match &c.key {
            Some(k) => k.clone(),
            None => {
                let admin = Api::new(admin_target, timeout)?;
                setup(&admin, c, &run_id).await?.key
            }
        };
        if let Some(pid) = c.server_pid {
            procstat::sample(pid).context("--server-pid")?;
        }
        Ok(Self {
            ep: Endpoint::Lara {
                target,
                api,
                key,
                encoding: c.encoding,
            },
            timeout,
            run_id,
            server_pid: c.server_pid,
            watch_pids: c.watch_pid.clone(),
            progress: Progress::new(!c.no_progress),
        })
    }
}

impl Common {
    /// Where the Admin API is: --admin-url, or else --url.
    fn admin_target(&self) -> Result<Target> {
        match &self.admin_url {
            Some(u) => Target::parse_flag("--admin-url", u),
            None => Target::parse(&self.url),
        }
    }
}

async fn setup(api: &Api, c: &Common, run_id: &str) -> Result<api::Tenant> {
    let (Some(email), Some(password)) = (&c.admin_email, &c.admin_password) else {
        bail!(
            "give --key, or --admin-email and --admin-password (or LARACHAT_ADMIN_EMAIL/PASSWORD)"
        );
    };
    api.setup(email, password, &format!("loadtest-{run_id}"))
        .await
        .context("setting up a project")
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let (common, mut out) = match &cli.command {
        Command::Report {
            files,
            compare: true,
        } => {
            print!("{}", compare::combined_table(files)?);
            return Ok(());
        }
        Command::Report { files, .. } => return report::run(files),
        Command::IdleWorker => return idle::worker().await,
        Command::Echo { opts } => {
            let mut out = echo::run(opts).await?;
            out.result["load_average"] = json!(compare::loadavg());
            let dir = OutDir::create(&opts.out)?;
            let written = dir.write(&format!("echo-{}", new_run_id()), &mut out)?;
            eprintln!(
                "wrote {}",
                written
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if opts.json {
                println!("{}", out.result);
            }
            return Ok(());
        }
        Command::Compare {
            opts,
            timeout_secs,
            out,
            no_progress,
        } => {
            if *timeout_secs == 0 || *timeout_secs > 600 {
                bail!("--timeout-secs must be 1..=600");
            }
            let dir = out
                .clone()
                .unwrap_or_else(|| compare::default_out(opts.scenario_name()));
            let out = OutDir::create(&dir)?;
            return compare::run(opts, Duration::from_secs(*timeout_secs), !no_progress, &out)
                .await;
        }
        Command::Setup { common } => {
            let api = Api::new(
                common.admin_target()?,
                Duration::from_secs(common.timeout_secs.max(1)),
            )?;
            let t = setup(&api, common, &new_run_id()).await?;
            println!("project_id {}", t.project_id);
            println!("key        {}", t.key);
            if common.json {
                println!(
                    "{}",
                    json!({ "scenario": "setup", "project_id": t.project_id, "key": t.key })
                );
            }
            return Ok(());
        }
        Command::Throughput { common, opts } => {
            let ctx = Ctx::new(common).await?;
            (common, throughput::run(&ctx, opts).await?)
        }
        Command::Latency { common, opts } => {
            // Checked before any setup work is done.
            let receiver = opts.receiver_target(&Target::parse(&common.url)?)?;
            let ctx = Ctx::new(common).await?;
            let receiver_ep = ctx.ep.with_target(receiver);
            (common, latency::run(&ctx, opts, &receiver_ep).await?)
        }
        Command::Fanout { common, opts } => {
            // Checked before any setup work is done.
            let receiver = opts.receiver_target(&Target::parse(&common.url)?)?;
            let ctx = Ctx::new(common).await?;
            let receiver_ep = ctx.ep.with_target(receiver);
            (common, fanout::run(&ctx, opts, &receiver_ep).await?)
        }
        Command::Chat { common, opts } => {
            let ctx = Ctx::new(common).await?;
            (common, chat::run(&ctx, opts).await?)
        }
        Command::Idle { common, opts } => {
            let ctx = Ctx::new(common).await?;
            (common, idle::run(&ctx, opts).await?)
        }
    };
    finish(common, &mut out)
}

/// Labels the result, writes it and its plot to --out, and prints it with --json.
fn finish(common: &Common, out: &mut RunOutput) -> Result<()> {
    out.result["server"] = json!(format!("lara-{}", common.encoding.name()));
    out.result["encoding"] = json!(common.encoding.name());
    out.result["load_average"] = json!(compare::loadavg());
    if let Some(l) = &common.label {
        out.result["label"] = json!(l);
    }
    let scenario = out.result["scenario"].as_str().unwrap_or("run").to_owned();
    let dir = OutDir::create(&common.out)?;
    let name = format!("{scenario}-{}", new_run_id());
    let written = dir.write(&name, out)?;
    eprintln!(
        "wrote {}",
        written
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if common.json {
        println!("{}", out.result);
    }
    Ok(())
}
