//! Assembling one process from the library crates.
//!
//! A process plays a [`Role`]: `larachat serve` is both roles in one process (embedded SQLite
//! and the in-process bus by default); `larachat gateway` and `larachat control-plane` are the
//! two halves of the distributed mode, meeting only through the store (ScyllaDB) and the bus
//! (NATS). The backends come from the configuration (`[storage] backend`, `[bus] backend`).

use std::fs;
use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use larachat_broker::{Bus, LocalBus, NatsBus, NatsOptions};
use larachat_control_plane::{ControlPlane, ControlPlaneConfig};
use larachat_core::event::EventLog;
use larachat_gateway::{Gateway, GatewayConfig};
use larachat_store::{ScyllaConfig, ScyllaStore, SqliteConfig, SqliteStore, Store};
use larachat_webhooks::store::{ScyllaWebhookStore, SqliteWebhookStore};
use larachat_webhooks::{DeliveryClient, Dispatcher, SystemClock, WebhookStore};

use crate::config::Config;
use crate::ops::{self, Ops};
use crate::server;

/// What a process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Gateway and control plane in one process (`larachat serve`): any backends.
    All,
    /// Client API, Widget API and realtime (`larachat gateway`): NATS and ScyllaDB.
    Gateway,
    /// Admin API and background work (`larachat control-plane`): NATS and ScyllaDB.
    ControlPlane,
    /// Background work only (`larachat worker`): webhook deliveries from the event log and
    /// the outbox sweeper; health and metrics over HTTP, no API. NATS and ScyllaDB.
    Worker,
}

impl Role {
    fn serves_gateway(self) -> bool {
        matches!(self, Role::All | Role::Gateway)
    }
    fn serves_control_plane(self) -> bool {
        matches!(self, Role::All | Role::ControlPlane)
    }
    /// Runs the webhook workers (and, distributed, the outbox sweeper).
    fn runs_workers(self) -> bool {
        matches!(self, Role::All | Role::ControlPlane | Role::Worker)
    }
    fn name(self) -> &'static str {
        match self {
            Role::All => "larachat",
            Role::Gateway => "larachat-gateway",
            Role::ControlPlane => "larachat-control-plane",
            Role::Worker => "larachat-worker",
        }
    }
}

/// A built process, ready to serve.
pub struct App {
    /// Everything served on `server.listen`, with the [`edge`](crate::edge) layers.
    pub router: Router,
    /// `/metrics`, `/ready`, `/live` for `server.admin_listen`, when it is set.
    pub admin_router: Option<Router>,
    /// The gateway, unless this is a control-plane process.
    pub gateway: Option<Gateway>,
    pub store: Arc<dyn Store>,
    /// The durable event log over the same data (docs/events.md): the SQLite outbox in
    /// single-node mode; JetStream `LARACHAT_EVENTS` in distributed mode.
    pub events: Option<Arc<dyn EventLog>>,
    /// Distributed mode: the CQL store and the NATS connection, for the outbox publisher and
    /// sweeper ([`crate::outbox`]).
    pub distributed: Option<(Arc<ScyllaStore>, NatsBus)>,
    /// Stops the outbox publisher started by [`App::build_role`] (distributed mode).
    pub background: tokio_util::sync::CancellationToken,
    pub bus: Arc<dyn Bus>,
    /// Webhooks: their store and dispatcher (the API queues through it; processes that
    /// serve the control plane also run its delivery loop, see [`run_role`]).
    pub webhooks: Dispatcher,
    pub config: Config,
}

/// Secrets generated on first start when the configuration has none.
#[derive(Debug, Serialize, Deserialize)]
struct Secrets {
    jwt_secret: String,
    key_pepper: String,
}

impl App {
    /// Builds a single-node process (`larachat serve`). `addr` is the bound address (the
    /// demo allows the origins a browser uses for it).
    pub async fn build(config: Config, addr: std::net::SocketAddr) -> anyhow::Result<App> {
        Self::build_role(config, Role::All, addr).await
    }

    /// Opens the store and the bus named by the configuration, starts the parts `role`
    /// serves, bootstraps the first admin if configured, and assembles the router.
    pub async fn build_role(
        mut config: Config,
        role: Role,
        addr: std::net::SocketAddr,
    ) -> anyhow::Result<App> {
        check_role(&config, role)?;
        if role == Role::All {
            let data_dir = config.storage.data_dir.clone();
            fs::create_dir_all(&data_dir)
                .with_context(|| format!("creating data directory {}", data_dir.display()))?;
            fill_secrets(&mut config, &data_dir)?;
        }
        // `serve` migrates its own store; split processes expect `larachat migrate` to have
        // run once, so that several of them never race on schema changes.
        let opened = open_store(&config, role == Role::All).await?;
        if let (Some(scylla), Role::All | Role::ControlPlane) = (&opened.scylla, role) {
            // Index rows for what was stored before the search index: once, in pages, in
            // the background (the SQLite store starts its own in `open_store`).
            scylla.spawn_search_backfill();
        }
        let (store, mut events) = (opened.store, opened.events);
        let (bus, nats) = open_bus(&config, role).await?;
        let background = tokio_util::sync::CancellationToken::new();
        // Distributed mode: every writer publishes its changes' events off the ack path; the
        // log is JetStream (docs/events.md).
        let distributed = match (opened.scylla, nats) {
            (Some(scylla), Some(nats)) => {
                let queue = crate::outbox::queue(&scylla);
                tokio::spawn(crate::outbox::run_publisher(
                    scylla.clone(),
                    nats.clone(),
                    queue,
                    background.clone(),
                ));
                let mut log = larachat_broker::JetStreamLog::new(&nats)
                    .scoped(&config.storage.scylla.keyspace);
                // This deployment's events start when its outbox was created (a minute of
                // margin for clock differences between the migrating process and NATS).
                if let Some(t) = scylla.outbox_created_at().await? {
                    log = log.since((t - chrono::Duration::minutes(1)).into());
                }
                events = Some(Arc::new(log));
                Some((scylla, nats))
            }
            _ => None,
        };
        let webhooks = open_webhooks(&config, role == Role::All).await?;

        if role.serves_control_plane() && !config.admin.email.is_empty() {
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
        // One set of buckets per process: in `serve`, the gateway and the control plane share
        // them (one client address, one budget).
        let limits = Arc::new(larachat_limits::Limits::new(config.limits.clone()));
        let gateway = if role.serves_gateway() {
            Some(
                Gateway::start(
                    store.clone(),
                    bus.clone(),
                    GatewayConfig {
                        jwt_secret: config.security.jwt_secret.clone().into_bytes(),
                        key_pepper: config.security.key_pepper.clone().into_bytes(),
                        user_token_ttl: user_ttl,
                        agent_token_ttl: config.agent_token_ttl(),
                        limits: limits.clone(),
                        cache_ttl,
                        max_body_bytes: config.server.max_body_bytes,
                        realtime: config.realtime_config(),
                        webhooks: Some(webhooks.clone()),
                        dashboard_origins: config.dashboard.origins(),
                    },
                )
                .await
                .context("starting the gateway")?,
            )
        } else {
            None
        };
        let control_plane = if role.serves_control_plane() {
            let cp = ControlPlane::new(
                store.clone(),
                bus.clone(),
                ControlPlaneConfig {
                    jwt_secret: config.security.jwt_secret.clone().into_bytes(),
                    key_pepper: config.security.key_pepper.clone().into_bytes(),
                    admin_token_ttl: admin_ttl,
                    limits: limits.clone(),
                    default_plan: config.plans.default.clone(),
                    platform_admins: config
                        .plans
                        .platform_admins
                        .iter()
                        .chain(std::iter::once(&config.admin.email))
                        .filter(|e| !e.is_empty())
                        .cloned()
                        .collect(),
                    // Members' agent tokens are checked by the gateways like theirs.
                    agent_token_ttl: config.agent_token_ttl(),
                    public_url: Some(config.server.public_url.clone()).filter(|u| !u.is_empty()),
                },
            )
            .context("configuring the control plane")?;
            // Who is online, for analytics: the gateway's presence view in the same process;
            // otherwise a view of its own on the bus (it has no connections, so it only
            // listens to the gateways' beats and asks them to beat; docs/protocol.md §3.5).
            let presence = match &gateway {
                Some(gw) => gw.presence().clone(),
                None => larachat_gateway::presence::Presence::start(
                    bus.clone(),
                    config.realtime_config().presence,
                    &tokio_util::task::TaskTracker::new(),
                    background.clone(),
                ),
            };
            cp.set_presence(Arc::new(move |project| {
                let presence = presence.clone();
                Box::pin(async move {
                    presence
                        .online(project)
                        .await
                        .map(|(users, truncated)| (users.len() as u64, truncated))
                        .map_err(|e| e.to_string())
                })
            }));
            if let Some(gw) = &gateway {
                // Same process: revocations and project changes reach the gateway before the
                // admin request answers, not only through the bus.
                let local_gateway = gw.clone();
                cp.add_local_listener(Arc::new(move |event| local_gateway.apply_control(event)));
            }
            Some(cp)
        } else {
            None
        };
        let ops = Ops {
            store: store.clone(),
            bus: bus.clone(),
            metrics: crate::telemetry::handle(),
            openapi: Arc::new(ops::openapi_json()),
        };
        let mut router = Router::new();
        let demo_gateway = gateway
            .as_ref()
            .filter(|_| role == Role::All && config.demo.enabled.applies_to(addr));
        if let Some(gw) = demo_gateway {
            let demo = crate::demo::ensure(
                gw.service(),
                config.security.key_pepper.as_bytes(),
                &config.storage.data_dir,
                addr,
            )
            .await
            .context("preparing the demo project")?;
            router = router.merge(crate::demo::router(demo, gw.clone()));
        }
        if let Some(gw) = &gateway {
            router = router.merge(gw.router());
        }
        if let Some(cp) = control_plane {
            router = router.merge(larachat_control_plane::router(cp));
            router = router.merge(crate::dashboard::router(config.dashboard.gateway_origin()));
        }
        let edge = crate::edge::Edge {
            request_timeout: Duration::from_secs(config.server.request_timeout_secs),
            max_in_flight: config.server.max_in_flight,
            max_body_bytes: config
                .server
                .max_body_bytes
                .max(larachat_control_plane::MAX_BODY_BYTES),
        };
        let has_admin = config.admin_listen_addr().is_some();
        // The in-flight limit covers the application, not the probes: `/live` and `/ready`
        // answer even when every slot is taken.
        let router = crate::edge::limit_in_flight(
            router.fallback(larachat_core::http::not_found_fallback),
            edge.max_in_flight,
        )
        .merge(ops::router(ops.clone(), !has_admin));
        let router = crate::edge::layers(router, &edge);
        let admin_router = has_admin.then(|| {
            crate::edge::layers(
                ops::admin_router(ops).fallback(larachat_core::http::not_found_fallback),
                &edge,
            )
        });
        Ok(App {
            router,
            admin_router,
            gateway,
            store,
            events,
            distributed,
            background,
            bus,
            webhooks,
            config,
        })
    }
}

/// Refuses combinations that cannot work, before anything is opened.
fn check_role(config: &Config, role: Role) -> anyhow::Result<()> {
    if role == Role::All {
        return Ok(());
    }
    let what = role.name();
    if config.bus.backend != "nats" {
        bail!(
            "{what} needs bus.backend = \"nats\": the in-process bus cannot reach the other \
             processes (set LARACHAT_BUS__BACKEND=nats and LARACHAT_BUS__NATS__URL)"
        );
    }
    if config.storage.backend != "scylla" {
        bail!(
            "{what} needs storage.backend = \"scylla\": the embedded database belongs to one \
             process (set LARACHAT_STORAGE__BACKEND=scylla and \
             LARACHAT_STORAGE__SCYLLA__CONTACT_POINTS)"
        );
    }
    if role != Role::Worker
        && (config.security.jwt_secret.is_empty() || config.security.key_pepper.is_empty())
    {
        bail!(
            "{what} needs security.jwt_secret and security.key_pepper, the same in every \
             process (they are generated only for `larachat serve`)"
        );
    }
    Ok(())
}

/// The ScyllaDB / Cassandra settings of the configuration.
pub fn scylla_config(config: &Config) -> ScyllaConfig {
    let s = &config.storage.scylla;
    let mut c = ScyllaConfig::new(s.contact_points.clone(), s.keyspace.clone());
    c.replication = s.replication.clone();
    if let Some(level) = crate::config::consistency(&s.consistency) {
        c.consistency = level;
    }
    c.request_timeout = Duration::from_secs(s.request_timeout_secs);
    c
}

/// How long the single-node outbox keeps events that every consumer has handled.
const EVENT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// A store as opened: the trait object, the event log over it (SQLite), the concrete CQL store.
struct Opened {
    store: Arc<dyn Store>,
    events: Option<Arc<dyn EventLog>>,
    scylla: Option<Arc<ScyllaStore>>,
}

/// Opens the configured store. `migrate`: apply schema migrations (single process) instead of
/// requiring them to be applied already.
async fn open_store(config: &Config, migrate: bool) -> anyhow::Result<Opened> {
    match config.storage.backend.as_str() {
        "scylla" => {
            let cfg = scylla_config(config);
            let store = ScyllaStore::connect(cfg.clone()).await.with_context(|| {
                format!(
                    "connecting to ScyllaDB/Cassandra at {:?}",
                    cfg.contact_points
                )
            })?;
            if migrate {
                store.migrate().await.context("migrating the keyspace")?;
            } else {
                store.check_schema().await?;
            }
            let store = Arc::new(store);
            Ok(Opened {
                store: store.clone(),
                events: None,
                scylla: Some(store),
            })
        }
        _ => {
            let data_dir = &config.storage.data_dir;
            fs::create_dir_all(data_dir)
                .with_context(|| format!("creating data directory {}", data_dir.display()))?;
            let store = SqliteStore::open(SqliteConfig {
                path: data_dir.join("larachat.db"),
                readers: config.storage.sqlite_readers,
                synchronous_full: config.storage.sqlite_synchronous == "full",
                ..SqliteConfig::default()
            })
            .context("opening the embedded database")?;
            // Events every consumer has handled are kept a week (docs/events.md).
            store.spawn_event_trimmer(EVENT_RETENTION, Duration::from_secs(3600));
            // Index rows for what was stored before the search index (once, in batches).
            store.spawn_search_backfill();
            Ok(Opened {
                store: Arc::new(store.clone()),
                events: Some(Arc::new(store)),
                scylla: None,
            })
        }
    }
}

/// Opens the webhook store of the configured backend (single node: its own SQLite file
/// beside the chat database; distributed: `webhook_*` tables in the keyspace, created by
/// `larachat migrate` or `serve`) and the dispatcher over it.
async fn open_webhooks(config: &Config, migrate: bool) -> anyhow::Result<Dispatcher> {
    let wh = &config.webhooks;
    let store: Arc<dyn WebhookStore> = match config.storage.backend.as_str() {
        "scylla" => {
            let s = &config.storage.scylla;
            let store =
                ScyllaWebhookStore::connect(&s.contact_points, &s.keyspace, wh.log_retention_days)
                    .await
                    .context("connecting the webhook store")?;
            if migrate {
                store
                    .migrate()
                    .await
                    .context("creating the webhook tables")?;
            }
            Arc::new(store)
        }
        _ => Arc::new(
            SqliteWebhookStore::open(
                &config.storage.data_dir.join("webhooks.sqlite3"),
                wh.log_retention_days,
            )
            .context("opening the webhook database")?,
        ),
    };
    let client =
        DeliveryClient::new(wh.client_settings()).context("building the webhook client")?;
    Ok(Dispatcher::new(
        store,
        client,
        Arc::new(SystemClock),
        wh.retry_policy(),
        Duration::from_secs(wh.timeout_secs),
    )
    .with_rotation_overlap(Duration::from_secs(
        u64::from(wh.rotation_overlap_hours) * 3600,
    )))
}

async fn open_bus(config: &Config, role: Role) -> anyhow::Result<(Arc<dyn Bus>, Option<NatsBus>)> {
    match config.bus.backend.as_str() {
        "nats" => {
            let n = &config.bus.nats;
            let options = NatsOptions {
                name: role.name().to_owned(),
                subscription_capacity: n.subscription_capacity,
                events_replicas: n.events_replicas,
                ..NatsOptions::default()
            };
            let bus = NatsBus::connect(&n.url, options)
                .await
                .context("connecting to NATS")?;
            Ok((Arc::new(bus.clone()), Some(bus)))
        }
        _ => Ok((Arc::new(LocalBus::new()), None)),
    }
}

/// `larachat migrate`: creates the keyspace and applies pending schema migrations (ScyllaDB),
/// or opens (and so migrates) the embedded database. Idempotent; run it from one process.
pub async fn migrate(config: Config) -> anyhow::Result<()> {
    open_store(&config, true).await?;
    open_webhooks(&config, true).await?;
    match config.storage.backend.as_str() {
        "scylla" => println!(
            "keyspace {} is at schema version {}",
            config.storage.scylla.keyspace,
            larachat_store::scylla::SCHEMA_VERSION
        ),
        _ => println!(
            "embedded database {} is up to date",
            config.storage.data_dir.join("larachat.db").display()
        ),
    }
    Ok(())
}

/// Where a process listens, once bound (ports chosen with `:0` filled in).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// `server.listen`: APIs, realtime, `/live`, `/ready` (and `/metrics` without an admin
    /// listener).
    pub public: std::net::SocketAddr,
    /// `server.admin_listen`, when set: `/metrics`, `/ready`, `/live`.
    pub admin: Option<std::net::SocketAddr>,
}

/// Builds and serves until `shutdown` resolves, then drains: the listeners stop accepting,
/// realtime clients are told to reconnect (close 4101), in-flight requests finish within the
/// grace period and whatever is still open then is closed. `on_ready` receives the bound
/// addresses (useful with port 0).
pub async fn run_server(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(Bound),
) -> anyhow::Result<()> {
    run_role(config, Role::All, shutdown, on_ready).await
}

/// [`run_server`] for any [`Role`].
pub async fn run_role(
    config: Config,
    role: Role,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(Bound),
) -> anyhow::Result<()> {
    let nofile = server::raise_nofile_limit();
    let addr = config.listen_addr();
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let admin_listener = match config.admin_listen_addr() {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("binding the admin listener {a}"))?,
        ),
        None => None,
    };
    let bound = Bound {
        public: listener.local_addr()?,
        admin: match &admin_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        },
    };
    let public_limits = server::Limits {
        name: "public",
        max_connections: match config.server.max_connections {
            0 => server::default_max_connections(nofile, bound.admin.is_some()),
            n => n,
        },
        max_connections_per_ip: config.server.max_connections_per_ip,
        header_timeout: Duration::from_secs(config.server.header_timeout_secs),
    };
    let admin_limits = server::Limits {
        name: "admin",
        max_connections: server::ADMIN_MAX_CONNECTIONS,
        max_connections_per_ip: 0,
        ..public_limits.clone()
    };
    let app = App::build_role(config, role, bound.public).await?;
    tracing::info!(
        public = %bound.public,
        admin = ?bound.admin,
        role = role.name(),
        max_connections = public_limits.max_connections,
        max_connections_per_ip = public_limits.max_connections_per_ip,
        descriptor_limit = nofile,
        "listening"
    );
    on_ready(bound);

    // Webhook deliveries: `serve`, the control plane and `larachat worker` run the worker
    // (several processes share the work: the deliveries through the webhook store's leases,
    // the events through the log's consumer). The `webhooks` consumer of the event log
    // (`serve`: the SQLite outbox; distributed: JetStream, docs/events.md) turns every domain
    // event into deliveries to the project's matching endpoints; it acknowledges an event only
    // once its deliveries are stored, so a kill between the two redelivers it. In distributed
    // mode these processes also run the outbox sweeper (one at a time, under its lease).
    let webhook_stop = tokio_util::sync::CancellationToken::new();
    let mut webhook_workers = Vec::new();
    if let (true, Some((scylla, nats))) = (role.runs_workers(), app.distributed.clone()) {
        webhook_workers.push(tokio::spawn(crate::outbox::run_sweeper(
            scylla,
            nats,
            crate::outbox::SweeperConfig::default(),
            webhook_stop.clone(),
        )));
    }
    if role.runs_workers() {
        webhook_workers.push(tokio::spawn(larachat_webhooks::worker::run_deliveries(
            app.webhooks.clone(),
            Duration::from_secs(1),
            webhook_stop.clone(),
        )));
        if let Some(events) = app.events.clone() {
            webhook_workers.push(tokio::spawn(larachat_webhooks::worker::run_consumer(
                events,
                app.webhooks.clone(),
                webhook_stop.clone(),
            )));
        }
    }

    let drain = server::Shutdown::default();
    let mut listeners = vec![tokio::spawn(server::serve(
        listener,
        app.router,
        public_limits,
        drain.clone(),
    ))];
    if let (Some(l), Some(router)) = (admin_listener, app.admin_router) {
        listeners.push(tokio::spawn(server::serve(
            l,
            router,
            admin_limits,
            drain.clone(),
        )));
    }
    shutdown.await;
    tracing::info!("shutting down: closing realtime connections, finishing requests");
    let gateway = app.gateway.clone();
    let sockets = async move {
        if let Some(gateway) = gateway {
            gateway.shutdown(grace).await;
        }
    };
    let (_, forced) = tokio::join!(sockets, drain.drain(grace));
    for l in listeners {
        let _ = l.await;
    }
    // The requests finished during the drain are metered too.
    if let Some(gateway) = &app.gateway {
        if let Err(e) = gateway.meter().flush().await {
            tracing::warn!(error = %e, "could not write edge usage at shutdown");
        }
    }
    // An attempt in flight is abandoned; its lease runs out and it is attempted again.
    webhook_stop.cancel();
    for w in webhook_workers {
        let _ = w.await;
    }
    app.background.cancel();
    tracing::info!(force_closed = forced, "stopped");
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

/// `larachat admin create-user`: creates a platform admin in the configured store.
pub async fn create_admin(config: Config, email: &str, password: &str) -> anyhow::Result<()> {
    let opened = open_store(&config, config.storage.backend == "sqlite").await?;
    let outcome = larachat_control_plane::bootstrap_admin(opened.store.as_ref(), email, password)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{outcome:?}: {email}");
    Ok(())
}
