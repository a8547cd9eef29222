//! # larachat-gateway
//!
//! The edge. Every tenant request and every realtime connection enters here:
//! - [`auth`]: who is calling — secret keys (cached lookup, constant-time check), end-user
//!   JWTs — and what they may touch ([`auth::Principal`]). A request's project comes only from
//!   its credential.
//! - [`api`]: the Client API `/api/v1/*` (axum handlers: parse into typed values, call the
//!   service layer `larachat-service`, which makes every change and emits its event;
//!   `/api/v1/webhooks` calls `larachat-webhooks`).
//! - [`service`]: the edge half of the operations shared by HTTP, widget and realtime
//!   (transport metrics, the send rate limit, parsing), delegating to `larachat-service`.
//! - [`realtime`]: the WebSocket endpoint `/realtime/v1` — one task per connection, a bounded
//!   outbound queue drained in batches, pipelined requests answered in order, resume from the
//!   store, heartbeats, close codes from the catalog.
//! - `socket` (private): the WebSocket layer under [`realtime`] — the upgrade handshake, a
//!   frame reader that buffers nothing while idle, and a writer that sends many frames per
//!   syscall.
//! - [`widget`]: the Widget API `/widget/v1/*` (publishable key + origin allow-list, CORS,
//!   identity verification, visitor sessions) and the widget's static files.
//! - [`presence`]: which end users are online, across gateways (local connection counts,
//!   beats on `lc.v1.<project>.presence`, per-project views for watchers, debounce, expiry).
//! - [`control`]: obeys control-plane notices (key revoked, project changed) from the bus.
//! - [`meter`]: usage metered at the edge (API requests, peak realtime connections per
//!   project), flushed to the store by each process.
//! - [`policy`]: which rate-limit buckets (`larachat-limits`) a request, a widget session
//!   start or a message takes, per principal, end user, project and sender.
//! - [`telemetry`]: the gateway's metric families with their HELP text, described once.
//!
//! Depends on `core`, `service` (every change), `store` (reads, through `Arc<dyn Store>`) and `broker` (through `Arc<dyn Bus>`
//! and a [`Hub`](larachat_broker::Hub) for fan-out). Never on the control plane: the two meet
//! through the store and bus subjects. Keeps no state another gateway would need.

pub mod api;
pub mod auth;
pub mod control;
pub mod meter;
pub mod policy;
pub mod presence;
pub mod realtime;
pub mod service;
mod socket;
pub mod telemetry;
pub mod widget;

use std::sync::Arc;
use std::time::Duration;

use larachat_broker::{Bus, Hub};
use larachat_core::protocol::SharedFrame;
use larachat_store::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use api::ApiDoc;

/// Settings of a gateway. The binary fills it from the configuration file, environment and
/// flags; tests build it directly.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// HS256 key for end-user tokens.
    pub jwt_secret: Vec<u8>,
    /// Server-wide secret mixed into API key hashes (must match the control plane's).
    pub key_pepper: Vec<u8>,
    /// Lifetime of end-user tokens.
    pub user_token_ttl: Duration,
    /// Longest (and default) lifetime of agent tokens.
    pub agent_token_ttl: Duration,
    /// The process's rate limits (shared with the control plane in a single-node process).
    pub limits: Arc<larachat_limits::Limits>,
    /// How long cached keys and projects are trusted without a control notice.
    pub cache_ttl: Duration,
    /// Largest HTTP request body.
    pub max_body_bytes: usize,
    /// Realtime limits.
    pub realtime: RealtimeConfig,
    /// Webhooks (`/api/v1/webhooks`): their store and the dispatcher that queues test events
    /// and redeliveries. `None`: those routes answer `unavailable`.
    pub webhooks: Option<larachat_webhooks::Dispatcher>,
    /// Dashboard origins allowed to call the Client API from a browser (CORS without
    /// credentials); empty: no CORS on the Client API (the widget's API has its own).
    pub dashboard_origins: Vec<larachat_core::origin::Origin>,
}

/// Limits of the realtime endpoint.
#[derive(Debug, Clone)]
pub struct RealtimeConfig {
    /// The first frame must authenticate within this time.
    pub auth_timeout: Duration,
    /// Interval of server pings; a peer silent for two intervals is dropped.
    pub heartbeat: Duration,
    /// Largest inbound frame (and message) in bytes.
    pub max_frame_bytes: usize,
    /// Bounded outbound queue per connection (frames).
    pub outbound_queue: usize,
    /// Subscriptions per connection.
    pub max_subscriptions: usize,
    /// Inbound frames per second per connection (token bucket, burst = 2 s worth).
    pub max_frames_per_sec: u32,
    /// Presence of end users (debounce, beats, expiry).
    pub presence: presence::PresenceConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            jwt_secret: Vec::new(),
            key_pepper: Vec::new(),
            user_token_ttl: Duration::from_secs(24 * 3600),
            agent_token_ttl: Duration::from_secs(15 * 60),
            limits: Arc::new(larachat_limits::Limits::default()),
            cache_ttl: Duration::from_secs(30),
            max_body_bytes: 64 * 1024,
            realtime: RealtimeConfig::default(),
            webhooks: None,
            dashboard_origins: Vec::new(),
        }
    }
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        Self {
            auth_timeout: Duration::from_secs(10),
            heartbeat: Duration::from_secs(25),
            max_frame_bytes: 64 * 1024,
            outbound_queue: 1024,
            max_subscriptions: 100,
            max_frames_per_sec: 200,
            presence: presence::PresenceConfig::default(),
        }
    }
}

/// A running gateway's shared state. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    service: larachat_service::Service,
    bus: Arc<dyn Bus>,
    hub: Hub<SharedFrame>,
    config: GatewayConfig,
    auth: auth::Authenticator,
    connections: realtime::Registry,
    presence: presence::Presence,
    meter: Arc<meter::UsageMeter>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Gateway {
    /// Builds a gateway and starts its background tasks (control notices, the usage meter's
    /// flushes). Call [`Gateway::shutdown`] to stop it.
    pub async fn start(
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        config: GatewayConfig,
    ) -> Result<Self, larachat_broker::BusError> {
        let hub = Hub::new(bus.clone(), |m: &larachat_broker::BusMessage| {
            SharedFrame::from_json(m.payload.clone()).ok()
        });
        let auth = auth::Authenticator::new(store.clone(), &config);
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let presence = presence::Presence::start(
            bus.clone(),
            config.realtime.presence.clone(),
            &tasks,
            shutdown.clone(),
        );
        let meter = Arc::new(meter::UsageMeter::new(store.clone()));
        tasks.spawn(meter.clone().run(shutdown.clone()));
        let gw = Self {
            inner: Arc::new(Inner {
                service: larachat_service::Service::new(store.clone(), bus.clone()),
                store,
                bus,
                hub,
                auth,
                connections: realtime::Registry::default(),
                presence,
                meter,
                shutdown,
                tasks,
                config,
            }),
        };
        control::spawn(gw.clone()).await?;
        Ok(gw)
    }

    /// The axum router for `/api/v1/*` and `/realtime/v1`.
    pub fn router(&self) -> axum::Router {
        api::router(self.clone())
            .merge(realtime::router(self.clone()))
            .merge(widget::router(self.clone()))
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }
    /// The one write path: every change goes through it.
    pub fn service(&self) -> &larachat_service::Service {
        &self.inner.service
    }
    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.inner.bus
    }
    pub fn hub(&self) -> &Hub<SharedFrame> {
        &self.inner.hub
    }
    pub fn config(&self) -> &GatewayConfig {
        &self.inner.config
    }
    pub fn auth(&self) -> &auth::Authenticator {
        &self.inner.auth
    }
    pub fn webhooks(&self) -> Option<&larachat_webhooks::Dispatcher> {
        self.inner.config.webhooks.as_ref()
    }
    pub fn limits(&self) -> &Arc<larachat_limits::Limits> {
        &self.inner.config.limits
    }
    /// Presence of end users (online/offline, who is online).
    pub fn presence(&self) -> &presence::Presence {
        &self.inner.presence
    }
    /// API requests and realtime connections metered per project.
    pub fn meter(&self) -> &meter::UsageMeter {
        &self.inner.meter
    }
    pub(crate) fn connections(&self) -> &realtime::Registry {
        &self.inner.connections
    }
    pub(crate) fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }
    pub(crate) fn tasks(&self) -> &TaskTracker {
        &self.inner.tasks
    }

    /// Number of open realtime connections.
    pub fn connection_count(&self) -> usize {
        self.inner.connections.len()
    }

    /// Tells every realtime connection to reconnect elsewhere (close 4101) and waits up to
    /// `grace` for them and the background tasks to finish.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.shutdown.cancel();
        // Authenticated connections watch a flag of their own, not the token (connections
        // registering after this see the token; see `realtime`).
        self.inner
            .connections
            .kick_all(larachat_core::ErrorCode::ShuttingDown);
        self.inner.tasks.close();
        if tokio::time::timeout(grace, self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = self.inner.tasks.len(),
                "gateway tasks still running after the grace period"
            );
        }
    }
}
