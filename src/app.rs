//! Assembling a single-node process (`larachat serve`): embedded SQLite store, in-process
//! bus, gateway and control plane behind one HTTP port.

use std::fs;
use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use larachat_broker::{Bus, LocalBus};
use larachat_control_plane::{ControlPlane, ControlPlaneConfig};
use larachat_gateway::{Gateway, GatewayConfig};
use larachat_store::{SqliteConfig, SqliteStore, Store};

use crate::config::Config;
use crate::ops::{self, Ops};

/// A built process, ready to serve.
pub struct App {
    pub router: Router,
    pub gateway: Gateway,
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub config: Config,
}

/// Secrets generated on first start when the configuration has none.
#[derive(Debug, Serialize, Deserialize)]
struct Secrets {
    jwt_secret: String,
    key_pepper: String,
}

impl App {
    /// Opens the store, starts the gateway and control plane, bootstraps the first admin if
    /// configured, and assembles the router.
    /// `addr` is the bound address (the demo allows the origins a browser uses for it).
    pub async fn build(mut config: Config, addr: std::net::SocketAddr) -> anyhow::Result<App> {
        let data_dir = config.storage.data_dir.clone();
        fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating data directory {}", data_dir.display()))?;
        fill_secrets(&mut config, &data_dir)?;

        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(SqliteConfig {
                path: data_dir.join("larachat.db"),
                readers: config.storage.sqlite_readers,
                synchronous_full: config.storage.sqlite_synchronous == "full",
                ..SqliteConfig::default()
            })
            .context("opening the embedded database")?,
        );
        let bus: Arc<dyn Bus> = Arc::new(LocalBus::new());

        if !config.admin.email.is_empty() {
            let outcome = larachat_control_plane::bootstrap_admin(
                store.as_ref(),
                &config.admin.email,
                &config.admin.password,
            )
            .await
            .map_err(|e| anyhow::anyhow!("bootstrapping the admin user: {e}"))?;
            tracing::info!(email = %config.admin.email, ?outcome, "admin bootstrap");
        }

        let (user_ttl, admin_ttl, cache_ttl) = config.security_durations();
        let gateway = Gateway::start(
            store.clone(),
            bus.clone(),
            GatewayConfig {
                jwt_secret: config.security.jwt_secret.clone().into_bytes(),
                key_pepper: config.security.key_pepper.clone().into_bytes(),
                user_token_ttl: user_ttl,
                cache_ttl,
                max_body_bytes: config.server.max_body_bytes,
                realtime: config.realtime_config(),
            },
        )
        .await
        .context("starting the gateway")?;
        let control_plane = ControlPlane::new(
            store.clone(),
            bus.clone(),
            ControlPlaneConfig {
                jwt_secret: config.security.jwt_secret.clone().into_bytes(),
                key_pepper: config.security.key_pepper.clone().into_bytes(),
                admin_token_ttl: admin_ttl,
            },
        )
        .context("configuring the control plane")?;
        // Same process: revocations and project changes reach the gateway before the admin
        // request answers, not only through the bus.
        let local_gateway = gateway.clone();
        control_plane.add_local_listener(Arc::new(move |event| local_gateway.apply_control(event)));
        let ops = Ops {
            store: store.clone(),
            bus: bus.clone(),
            metrics: ops::metrics_handle(),
            openapi: Arc::new(ops::openapi_json()),
        };
        let mut router = Router::new();
        if config.demo.enabled {
            let demo = crate::demo::ensure(
                &store,
                config.security.key_pepper.as_bytes(),
                &data_dir,
                addr,
            )
            .await
            .context("preparing the demo project")?;
            router = router.merge(crate::demo::router(demo));
        }
        let router = router
            .merge(gateway.router())
            .merge(larachat_control_plane::router(control_plane))
            .merge(ops::router(ops))
            .fallback(larachat_core::http::not_found_fallback)
            .layer(axum::middleware::from_fn(ops::http_metrics))
            .layer(TraceLayer::new_for_http())
            .layer(CatchPanicLayer::custom(|_| {
                use axum::response::IntoResponse;
                larachat_core::ApiError::internal().into_response()
            }));
        Ok(App {
            router,
            gateway,
            store,
            bus,
            config,
        })
    }
}

/// Builds and serves until `shutdown` resolves, then drains: realtime clients are told to
/// reconnect (close 4101), in-flight requests finish within the grace period.
/// `on_ready` receives the bound address (useful with port 0).
pub async fn run_server(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<()> {
    let addr = config.listen_addr();
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    let app = App::build(config, local).await?;
    tracing::info!(%local, "listening");
    on_ready(local);

    let gateway = app.gateway.clone();
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let drain = async move {
        shutdown.await;
        tracing::info!("shutting down: closing realtime connections");
        gateway.shutdown(grace).await;
        let _ = drained_tx.send(());
    };
    tokio::spawn(drain);
    axum::serve(
        listener,
        app.router
            .into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = drained_rx.await;
    })
    .await
    .context("serving HTTP")?;
    tracing::info!("stopped");
    Ok(())
}

/// Uses configured secrets, or loads / generates them in `<data_dir>/secrets.toml` so that
/// tokens and keys stay valid across restarts without any configuration.
fn fill_secrets(config: &mut Config, data_dir: &Path) -> anyhow::Result<()> {
    let sec = &mut config.security;
    if !sec.jwt_secret.is_empty() && !sec.key_pepper.is_empty() {
        return Ok(());
    }
    let path = data_dir.join("secrets.toml");
    let stored: Secrets = if path.exists() {
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
    } else {
        let s = Secrets {
            jwt_secret: random_hex(32),
            key_pepper: random_hex(32),
        };
        let text = toml::to_string(&s)?;
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        tracing::info!(path = %path.display(), "generated server secrets");
        s
    };
    if sec.jwt_secret.is_empty() {
        sec.jwt_secret = stored.jwt_secret;
    }
    if sec.key_pepper.is_empty() {
        sec.key_pepper = stored.key_pepper;
    }
    Ok(())
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// `larachat admin create-user`: creates a platform admin in the embedded store.
pub async fn create_admin(config: Config, email: &str, password: &str) -> anyhow::Result<()> {
    let data_dir = config.storage.data_dir.clone();
    fs::create_dir_all(&data_dir)?;
    let store = SqliteStore::open(SqliteConfig {
        path: data_dir.join("larachat.db"),
        ..SqliteConfig::default()
    })
    .context("opening the embedded database")?;
    let outcome = larachat_control_plane::bootstrap_admin(&store, email, password)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{outcome:?}: {email}");
    Ok(())
}
