//! `larachat-loadtest`: a load generator for Lara Chat that speaks only the public protocols
//! (HTTP Admin/Client API and Realtime v1 over WebSocket). See `loadtest/README.md`.

mod api;
mod fanout;
mod latency;
mod report;
mod stats;
mod throughput;
mod ws;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use api::{Api, Target};

/// Connections one process may open (the machine allows ~20,000 open files).
pub const MAX_CONNECTIONS: usize = 5_000;
/// Concurrent HTTP requests / WebSocket handshakes while setting up.
pub const SETUP_CONCURRENCY: usize = 32;

#[derive(Debug, Parser)]
#[command(
    name = "larachat-loadtest",
    version,
    about = "Load generator for Lara Chat (loopback only)"
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
    /// One sender, K subscribers: delivery latency and deliveries/s.
    Fanout {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        opts: fanout::Opts,
    },
    /// Turn JSON result lines (from --json runs) into a markdown table.
    Report {
        /// Files with one JSON result per line; `-` or none reads standard input.
        files: Vec<std::path::PathBuf>,
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
}

/// What every scenario needs.
pub struct Ctx {
    pub target: Target,
    pub api: Api,
    pub key: String,
    pub timeout: Duration,
    /// Distinguishes this run's client_msg_ids and user identifiers from other runs.
    pub run_id: String,
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
        let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let key = match &c.key {
            Some(k) => k.clone(),
            None => {
                let admin = Api::new(admin_target, timeout)?;
                setup(&admin, c, &run_id).await?.key
            }
        };
        Ok(Self {
            target,
            api,
            key,
            timeout,
            run_id,
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
    let (common, result) = match &cli.command {
        Command::Report { files } => return report::run(files),
        Command::Setup { common } => {
            let api = Api::new(
                common.admin_target()?,
                Duration::from_secs(common.timeout_secs.max(1)),
            )?;
            let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
            let t = setup(&api, common, &run_id).await?;
            println!("project_id {}", t.project_id);
            println!("key        {}", t.key);
            (
                common,
                json!({ "scenario": "setup", "project_id": t.project_id, "key": t.key }),
            )
        }
        Command::Throughput { common, opts } => {
            let ctx = Ctx::new(common).await?;
            (common, throughput::run(&ctx, opts).await?)
        }
        Command::Latency { common, opts } => {
            // Checked before any setup work is done.
            let receiver = opts.receiver_target(&Target::parse(&common.url)?)?;
            let ctx = Ctx::new(common).await?;
            (common, latency::run(&ctx, opts, &receiver).await?)
        }
        Command::Fanout { common, opts } => {
            let ctx = Ctx::new(common).await?;
            (common, fanout::run(&ctx, opts).await?)
        }
    };
    if common.json {
        let mut result: Value = result;
        if let Some(l) = &common.label {
            result["label"] = json!(l);
        }
        println!("{result}");
    }
    Ok(())
}
