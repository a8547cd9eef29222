//! Servers the tool starts itself for `compare`: a fresh `larachat serve` (SQLite, durable acks)
//! and a Centrifugo v6 it installs from the Go module proxy and configures (memory engine, a
//! `chat` namespace where subscribers may publish, optionally with history and recovery).
//! Each run gets its own temporary directory (data, config, log) and a fresh process.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::api::{Api, Target};
use crate::endpoint::Endpoint;
use crate::proto::Encoding;

/// The Centrifugo release the comparison is pinned to.
pub const CENTRIFUGO_MODULE: &str = "github.com/centrifugal/centrifugo/v6";
pub const CENTRIFUGO_VERSION: &str = "v6.9.1";

const ADMIN_EMAIL: &str = "loadtest@example.com";
const ADMIN_PASSWORD: &str = "loadtest-admin-password";

/// A server configuration to compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// `larachat serve`: SQLite with `sqlite_synchronous=full` (acks are durable).
    Lara,
    /// Centrifugo, memory engine, no history.
    Centrifugo,
    /// Centrifugo, memory engine, with history and recovery in the namespace.
    CentrifugoHistory,
    /// Another build of `larachat serve` (`--larachat-base-bin`), configured like `lara`:
    /// before/after comparisons in the same rounds (the table's `lara ÷ lara-base` column).
    LaraBase,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Lara => "lara",
            Kind::Centrifugo => "centrifugo",
            Kind::CentrifugoHistory => "centrifugo-history",
            Kind::LaraBase => "lara-base",
        }
    }

    pub fn is_lara(self) -> bool {
        self == Kind::Lara
    }
}

/// How to start the servers.
#[derive(Debug, Clone, clap::Args)]
pub struct Launch {
    /// The `larachat` binary. Default: `larachat` next to this program.
    #[arg(long)]
    pub larachat_bin: Option<PathBuf>,
    /// The `larachat` binary of the `lara-base` server (e.g. a build of main, for
    /// before/after).
    #[arg(long)]
    pub larachat_base_bin: Option<PathBuf>,
    /// The Centrifugo binary. Default: ~/.cache/larachat/bin/centrifugo, installed with
    /// `go install github.com/centrifugal/centrifugo/v6@v6.9.1` when missing.
    #[arg(long)]
    pub centrifugo_bin: Option<PathBuf>,
    /// Extra environment for `larachat serve`, KEY=VALUE (repeatable), e.g.
    /// LARACHAT_REALTIME__OUTBOUND_QUEUE=4096.
    #[arg(long = "lara-env", value_parser = parse_env)]
    pub lara_env: Vec<(String, String)>,
    /// Lara Chat frames: json or msgpack.
    #[arg(long, value_enum, default_value_t = Encoding::Json)]
    pub encoding: Encoding,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// A running server with the endpoint to load it; stopped on [`Server::stop`] or drop.
pub struct Server {
    pub kind: Kind,
    pub endpoint: Endpoint,
    pub pid: u32,
    child: Child,
    pub log: PathBuf,
    dir: tempfile::TempDir,
}

impl Server {
    pub async fn start(kind: Kind, launch: &Launch, limit: Duration) -> Result<Self> {
        match kind {
            Kind::Lara => start_lara(kind, launch.larachat_bin.as_deref(), launch, limit).await,
            Kind::LaraBase => match &launch.larachat_base_bin {
                Some(bin) => start_lara(kind, Some(bin), launch, limit).await,
                None => bail!("--servers lara-base needs --larachat-base-bin"),
            },
            Kind::Centrifugo | Kind::CentrifugoHistory => {
                let bin = centrifugo_binary(launch.centrifugo_bin.as_deref()).await?;
                start_centrifugo(kind, &bin, limit).await
            }
        }
    }

    /// SIGTERM, up to 15 s to exit, then SIGKILL. Keeps the log if the exit was not clean.
    pub async fn stop(mut self) -> Result<()> {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        match tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await {
            Ok(_) => Ok(()),
            Err(_) => {
                let _ = self.child.kill().await;
                let kept = self.dir.keep();
                bail!(
                    "{} did not stop within 15 s after SIGTERM; killed (log kept in {})",
                    self.kind.name(),
                    kept.display()
                )
            }
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn log_files(path: &Path) -> Result<(Stdio, Stdio)> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    Ok((Stdio::from(f.try_clone()?), Stdio::from(f)))
}

async fn start_lara(
    kind: Kind,
    bin: Option<&Path>,
    launch: &Launch,
    limit: Duration,
) -> Result<Server> {
    let bin = match bin {
        Some(b) => b.to_path_buf(),
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow!("no directory for the current executable"))?
            .join("larachat"),
    };
    if !bin.exists() {
        bail!(
            "{} not found (build it with cargo build --release -p larachat, or give --larachat-bin)",
            bin.display()
        );
    }
    let dir = tempfile::Builder::new().prefix("lt-lara-").tempdir()?;
    let log = dir.path().join("server.log");
    let (out, err) = log_files(&log)?;
    let mut cmd = Command::new(&bin);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("LARACHAT_STORAGE__SQLITE_SYNCHRONOUS", "full")
        // The load shapes send faster than the default per-connection frame limit allows.
        .env("LARACHAT_REALTIME__MAX_FRAMES_PER_SEC", "1000000")
        // The load is far above a public server's per-address and per-key defaults.
        .env("LARACHAT_LIMITS__ENABLED", "false")
        .env("LARACHAT_SERVER__MAX_CONNECTIONS_PER_IP", "0")
        .env("LARACHAT_DEMO__ENABLED", "false")
        .env("LARACHAT_LOG", "warn")
        .env("LARACHAT_ADMIN_EMAIL", ADMIN_EMAIL)
        .env("LARACHAT_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .envs(launch.lara_env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child
        .id()
        .ok_or_else(|| anyhow!("larachat exited at once"))?;
    let started = Instant::now();
    let url = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(u) = text
            .lines()
            .find_map(|l| l.strip_prefix("larachat listening on "))
            .and_then(|r| r.split_whitespace().next())
        {
            break u.to_owned();
        }
        if let Some(status) = child.try_wait()? {
            bail!("larachat serve exited ({status}):\n{text}");
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("larachat serve did not print its address within 60 s:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let target = Target::parse(&url)?;
    let api = Api::new(target.clone(), limit)?;
    let tenant = api
        .setup(ADMIN_EMAIL, ADMIN_PASSWORD, "loadtest-compare")
        .await
        .context("creating the load test project")?;
    Ok(Server {
        kind,
        endpoint: Endpoint::Lara {
            target,
            api,
            key: tenant.key,
            encoding: launch.encoding,
        },
        pid,
        child,
        log,
        dir,
    })
}

/// The generated Centrifugo configuration (v6 layout): HMAC connection tokens, memory engine,
/// a `chat` namespace that lets clients subscribe and subscribers publish; with `history`, the
/// namespace keeps 100 publications for 5 minutes and forces recovery.
pub fn centrifugo_config(port: u16, secret: &str, history: bool) -> Value {
    let mut ns = json!({
        "name": "chat",
        "allow_subscribe_for_client": true,
        "allow_publish_for_subscriber": true,
    });
    if history {
        ns["history_size"] = json!(100);
        ns["history_ttl"] = json!("300s");
        ns["force_recovery"] = json!(true);
    }
    json!({
        "http_server": { "address": "127.0.0.1", "port": port },
        "log": { "level": "error" },
        "engine": { "type": "memory" },
        "usage_stats": { "disabled": true },
        "health": { "enabled": true },
        "client": {
            "token": { "hmac_secret_key": secret },
            "allowed_origins": ["*"],
        },
        "channel": { "namespaces": [ns] },
    })
}

/// Where the pinned Centrifugo is cached.
pub fn centrifugo_cache() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").ok_or_else(|| anyhow!("HOME is not set"))?;
    Ok(PathBuf::from(home).join(".cache/larachat/bin"))
}

/// The Centrifugo binary: `explicit`, or the cached one, installed with `go install` when it
/// is missing or (per `go version -m`) not the pinned version.
pub async fn centrifugo_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.exists() {
            bail!("--centrifugo-bin {} does not exist", p.display());
        }
        return Ok(p.to_owned());
    }
    let dir = centrifugo_cache()?;
    let bin = dir.join("centrifugo");
    if bin.exists() && installed_version(&bin).await.as_deref() != Some(CENTRIFUGO_VERSION) {
        eprintln!(
            "{} is not Centrifugo {CENTRIFUGO_VERSION} (go version -m); reinstalling",
            bin.display()
        );
    } else if bin.exists() {
        return Ok(bin);
    }
    std::fs::create_dir_all(&dir)?;
    eprintln!(
        "installing Centrifugo {CENTRIFUGO_VERSION} into {} (go install; a few minutes)...",
        dir.display()
    );
    let status = Command::new("go")
        .args([
            "install",
            &format!("{CENTRIFUGO_MODULE}@{CENTRIFUGO_VERSION}"),
        ])
        .env("GOBIN", &dir)
        .env("GOFLAGS", "-buildvcs=false")
        .stdin(Stdio::null())
        .status()
        .await
        .context("running go install (is Go installed?)")?;
    if !status.success() || !bin.exists() {
        bail!("go install {CENTRIFUGO_MODULE}@{CENTRIFUGO_VERSION} failed ({status})");
    }
    Ok(bin)
}

/// The module version `go version -m` reports for a Go binary (None without Go).
async fn installed_version(bin: &Path) -> Option<String> {
    let out = Command::new("go")
        .args(["version", "-m"])
        .arg(bin)
        .output()
        .await
        .ok()?;
    module_version(&String::from_utf8_lossy(&out.stdout))
}

/// Parses the `mod <path> <version>` line of `go version -m`.
fn module_version(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next() == Some("mod") && f.next() == Some(CENTRIFUGO_MODULE))
            .then(|| f.next().map(str::to_owned))
            .flatten()
    })
}

async fn start_centrifugo(kind: Kind, bin: &Path, limit: Duration) -> Result<Server> {
    let dir = tempfile::Builder::new()
        .prefix("lt-centrifugo-")
        .tempdir()?;
    let port = free_port()?;
    let secret =
        uuid::Uuid::new_v4().simple().to_string() + &uuid::Uuid::new_v4().simple().to_string();
    let config = centrifugo_config(port, &secret, kind == Kind::CentrifugoHistory);
    let config_path = dir.path().join("config.json");
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
    let log = dir.path().join("server.log");
    let (out, err) = log_files(&log)?;
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(&config_path)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child
        .id()
        .ok_or_else(|| anyhow!("centrifugo exited at once"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(limit)
        .build()?;
    let started = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("http://{addr}/health")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "centrifugo exited ({status}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("centrifugo did not answer /health within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Server {
        kind,
        endpoint: Endpoint::Centrifugo { addr, secret },
        pid,
        child,
        log,
        dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centrifugo_config_has_the_namespace_and_the_secret() {
        let c = centrifugo_config(8123, "s3cr3t", false);
        assert_eq!(c["http_server"]["port"], 8123);
        assert_eq!(c["http_server"]["address"], "127.0.0.1");
        assert_eq!(c["client"]["token"]["hmac_secret_key"], "s3cr3t");
        assert_eq!(c["engine"]["type"], "memory");
        let ns = &c["channel"]["namespaces"][0];
        assert_eq!(ns["name"], "chat");
        assert_eq!(ns["allow_subscribe_for_client"], true);
        assert_eq!(ns["allow_publish_for_subscriber"], true);
        assert!(ns.get("history_size").is_none());
        let h = centrifugo_config(8123, "s3cr3t", true);
        let ns = &h["channel"]["namespaces"][0];
        assert_eq!(ns["history_size"], 100);
        assert_eq!(ns["history_ttl"], "300s");
        assert_eq!(ns["force_recovery"], true);
    }

    #[test]
    fn go_version_m_output() {
        let out = "/root/.cache/larachat/bin/centrifugo: go1.26.8\n\tpath\tgithub.com/centrifugal/centrifugo/v6\n\tmod\tgithub.com/centrifugal/centrifugo/v6\tv6.9.1\th1:abc=\n\tdep\tgithub.com/centrifugal/centrifuge\tv0.38.1\n";
        assert_eq!(module_version(out).as_deref(), Some("v6.9.1"));
        assert_eq!(module_version("not a go binary"), None);
    }

    #[test]
    fn env_pairs() {
        assert_eq!(
            parse_env("A__B=1=2").unwrap(),
            ("A__B".to_owned(), "1=2".to_owned())
        );
        assert!(parse_env("novalue").is_err());
        assert!(parse_env("=x").is_err());
    }
}
