//! `larachat`: the command line. Parses flags, loads the configuration, and hands over to the
//! library (`larachat::app`). See `larachat --help`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use toml::Value;

use larachat::app::Role;
use larachat::config::Config;

/// jemalloc instead of glibc malloc, because glibc kept what abuse made the process allocate.
/// Measured on the 2-core VM with release builds (`LARACHAT_BIN=… cargo test --test abuse
/// memory -- --nocapture`): with glibc, 1,000 failed admin logins took RSS from 77 to 363 MiB
/// (argon2's 19 MiB buffers freed into per-thread arenas that are never returned) and 5,000
/// closed WebSockets left it at 1,010 MiB; with jemalloc (and small WebSocket buffers) RSS
/// stayed at 21 MiB through the logins, peaked at 69 MiB with the 5,000 sockets open and was
/// back at 22 MiB 15 s after they closed. Built with background threads on
/// (`background_threads` feature), jemalloc purges unused pages after its decay time (10 s)
/// even while the process is idle. mimalloc was not measured.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "larachat",
    version,
    about = "Lara Chat: self-hostable chat-as-a-service"
)]
struct Cli {
    /// TOML configuration file (optional; defaults need none).
    #[arg(long, short, global = true, env = "LARACHAT_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run gateway and control plane in one process on the embedded store (single node).
    Serve {
        /// Address to listen on, e.g. 127.0.0.1:8080 (overrides server.listen).
        #[arg(long)]
        listen: Option<String>,
        /// Data directory (overrides storage.data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Run a gateway: Client API, Widget API and realtime (distributed mode: needs
    /// bus.backend = "nats" and storage.backend = "scylla"; run as many as needed).
    Gateway {
        /// Address to listen on (overrides server.listen).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Run the control plane: Admin API and background work (distributed mode).
    ControlPlane {
        /// Address to listen on (overrides server.listen).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Run a worker: webhook deliveries from the event log (JetStream) and the event outbox
    /// sweeper, with `/live`, `/ready` and `/metrics` only (distributed mode; run several:
    /// they share the events, each delivered to an endpoint once except on retry).
    Worker {
        /// Address of the health and metrics listener (overrides server.listen).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Create the keyspace and apply pending schema migrations (idempotent; run once per
    /// upgrade, from one process, before starting gateways and the control plane).
    Migrate,
    /// Administration tasks.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Print the effective configuration (secrets redacted) after checking it.
    CheckConfig,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create a platform admin in the configured store (no-op if the email exists).
    CreateUser {
        #[arg(long)]
        email: String,
        /// Password (at least 10 characters). Prefer the environment variable.
        #[arg(long, env = "LARACHAT_NEW_ADMIN_PASSWORD", hide_env_values = true)]
        password: String,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let file = match &cli.config {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let mut flags: Vec<(&str, Value)> = Vec::new();
    match &cli.command {
        Command::Serve { listen, data_dir } => {
            if let Some(l) = listen {
                flags.push(("server.listen", Value::String(l.clone())));
            }
            if let Some(d) = data_dir {
                flags.push(("storage.data_dir", Value::String(d.display().to_string())));
            }
        }
        Command::Gateway { listen: Some(l) }
        | Command::ControlPlane { listen: Some(l) }
        | Command::Worker { listen: Some(l) } => {
            flags.push(("server.listen", Value::String(l.clone())));
        }
        Command::Admin {
            command: AdminCommand::CreateUser {
                data_dir: Some(d), ..
            },
        } => flags.push(("storage.data_dir", Value::String(d.display().to_string()))),
        _ => {}
    }
    let env = std::env::vars().filter(|(k, _)| k != "LARACHAT_NEW_ADMIN_PASSWORD");
    let config = match Config::load(file.as_deref(), env, flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&config);

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve { .. } => {
                larachat::run_server(config, shutdown_signal(), |bound| {
                    // Printed on stdout so scripts (and tests) can find a port picked with :0.
                    println!("larachat listening on http://{}", bound.public);
                    print_admin(bound);
                })
                .await
            }
            Command::Gateway { .. } => {
                larachat::app::run_role(config, Role::Gateway, shutdown_signal(), |bound| {
                    println!("larachat gateway listening on http://{}", bound.public);
                    print_admin(bound);
                })
                .await
            }
            Command::ControlPlane { .. } => {
                larachat::app::run_role(config, Role::ControlPlane, shutdown_signal(), |bound| {
                    println!(
                        "larachat control-plane listening on http://{}",
                        bound.public
                    );
                    print_admin(bound);
                })
                .await
            }
            Command::Worker { .. } => {
                larachat::app::run_role(config, Role::Worker, shutdown_signal(), |bound| {
                    println!("larachat worker listening on http://{}", bound.public);
                    print_admin(bound);
                })
                .await
            }
            Command::Migrate => larachat::app::migrate(config).await,
            Command::Admin {
                command:
                    AdminCommand::CreateUser {
                        email, password, ..
                    },
            } => larachat::app::create_admin(config, &email, &password).await,
            Command::CheckConfig => {
                let mut shown = config.clone();
                for s in [
                    &mut shown.security.jwt_secret,
                    &mut shown.security.key_pepper,
                    &mut shown.admin.password,
                ] {
                    if !s.is_empty() {
                        *s = "<redacted>".into();
                    }
                }
                println!("{}", toml::to_string_pretty(&shown)?);
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The admin listener's address, when there is one, on its own stdout line.
fn print_admin(bound: larachat::Bound) {
    if let Some(admin) = bound.admin {
        println!("larachat admin listening on http://{admin}");
    }
}

fn init_tracing(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&config.log.level).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: log files and journals get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
