//! Configuration: defaults → TOML file → `LARACHAT_*` environment → command-line flags, each
//! layer overriding the one before, checked as a whole before any port is bound.
//!
//! Environment variables map onto the file's keys: `LARACHAT_<SECTION>__<KEY>` (double
//! underscore between levels), e.g. `LARACHAT_SERVER__LISTEN=0.0.0.0:8080`. A few common ones
//! have short aliases: `LARACHAT_LISTEN`, `LARACHAT_DATA_DIR`, `LARACHAT_ADMIN_EMAIL`,
//! `LARACHAT_ADMIN_PASSWORD`, `LARACHAT_LOG`, and the seed's `WEBHOOK_RETRY_ATTEMPTS` (also
//! `LARACHAT_WEBHOOK_RETRY_ATTEMPTS`) and `DEFAULT_PROJECT_PLAN` (also
//! `LARACHAT_DEFAULT_PROJECT_PLAN`). Unknown keys in the file and unknown
//! `SECTION__KEY` variables are errors, not silently ignored; other `LARACHAT_*` variables
//! (no `__`, not an alias) belong to tools and are ignored.
//!
//! [`Config::load`] takes the file text and the environment as plain values so tests can pass
//! a map instead of touching the process environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

/// The whole configuration. Every field has a default; no file is needed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub bus: BusConfig,
    pub security: SecurityConfig,
    pub realtime: RealtimeSection,
    pub admin: AdminBootstrap,
    pub plans: PlansConfig,
    pub log: LogConfig,
    pub demo: DemoConfig,
    pub limits: larachat_limits::LimitsConfig,
    pub webhooks: larachat_webhooks::WebhooksConfig,
    pub dashboard: DashboardConfig,
}

/// The dashboard across origins (docs/dashboard.md, "Distributed mode"): where its inbox
/// reaches the Client API, and which dashboard origins the gateways let in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardConfig {
    /// Read by the process serving the dashboard (`serve`, `control-plane`): the public origin
    /// of the gateways (`https://api.chat.example.com`), told to the dashboard
    /// (`/dashboard/config.json`) and allowed in its CSP `connect-src` (http and ws). Empty:
    /// the dashboard's own origin (`serve`, or a proxy in front of both).
    pub gateway_url: String,
    /// Read by gateways: the dashboard origins allowed to call the Client API from a browser
    /// (CORS, without credentials: the inbox sends a bearer token). Empty: none.
    pub allowed_origins: Vec<String>,
}

impl DashboardConfig {
    /// `gateway_url`, normalised; `None` when empty.
    pub fn gateway_origin(&self) -> Option<larachat_core::origin::Origin> {
        let url = self.gateway_url.trim().trim_end_matches('/');
        (!url.is_empty())
            .then(|| larachat_core::origin::Origin::parse(url).ok())
            .flatten()
    }

    /// `allowed_origins`, normalised (invalid ones are refused by `validate`).
    pub fn origins(&self) -> Vec<larachat_core::origin::Origin> {
        self.allowed_origins
            .iter()
            .filter_map(|o| larachat_core::origin::Origin::parse(o).ok())
            .collect()
    }
}

/// The demo pages (`/demo`, `/demo/agent`) and their "Demo" project.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemoConfig {
    /// `auto` (default): on when `server.listen` is a loopback address, off otherwise;
    /// `true` / `false`: on or off whatever the address.
    pub enabled: DemoEnabled,
}

/// Whether `serve` runs the demo: `"auto"`, `true` or `false`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DemoEnabled {
    /// Only when listening on a loopback address.
    #[default]
    Auto,
    On,
    Off,
}

impl DemoEnabled {
    /// Whether the demo runs on a process listening on `listen`.
    pub fn applies_to(self, listen: SocketAddr) -> bool {
        match self {
            DemoEnabled::Auto => listen.ip().is_loopback(),
            DemoEnabled::On => true,
            DemoEnabled::Off => false,
        }
    }
}

impl Serialize for DemoEnabled {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            DemoEnabled::Auto => s.serialize_str("auto"),
            DemoEnabled::On => s.serialize_bool(true),
            DemoEnabled::Off => s.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for DemoEnabled {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(DemoEnabled::On),
            Raw::Bool(false) => Ok(DemoEnabled::Off),
            Raw::Text(t) => match t.as_str() {
                "auto" => Ok(DemoEnabled::Auto),
                "true" => Ok(DemoEnabled::On),
                "false" => Ok(DemoEnabled::Off),
                other => Err(serde::de::Error::custom(format!(
                    "demo.enabled must be \"auto\", true or false, got {other:?}"
                ))),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the HTTP port (API, realtime, operations). Port 0 picks a free port.
    pub listen: String,
    /// Largest HTTP request body, in bytes.
    pub max_body_bytes: usize,
    /// How long SIGTERM waits for connections and in-flight work.
    pub shutdown_grace_secs: u64,
    /// Optional second listener for `/metrics`, `/ready` and `/live` (empty: none, and
    /// `/metrics` stays on `listen`).
    pub admin_listen: String,
    /// Open connections (WebSockets included) on `listen` before new ones are refused; 0 =
    /// derived from the descriptor limit.
    pub max_connections: usize,
    /// Open connections per client IP (per /64 for IPv6) on `listen`; 0 = no per-IP cap.
    pub max_connections_per_ip: usize,
    /// Seconds to receive a complete request head, from the connection's start or the end of
    /// its previous response (also the keep-alive idle timeout and the WebSocket handshake
    /// deadline).
    pub header_timeout_secs: u64,
    /// Seconds for reading a request's body and answering it.
    pub request_timeout_secs: u64,
    /// HTTP requests in progress at once (not counting `/live`, `/ready`, `/metrics` and open
    /// WebSockets); more are answered 503 at once.
    pub max_in_flight: usize,
    /// The address people reach the dashboard at (`https://chat.example.com`), for invite
    /// links; empty: the address of the request that creates the invite.
    pub public_url: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Directory for the embedded database and generated secrets.
    pub data_dir: PathBuf,
    /// `full` (default: every commit survives power loss) or `normal` (survives process
    /// crashes; faster).
    pub sqlite_synchronous: String,
    /// Read-only SQLite connections used in parallel.
    pub sqlite_readers: usize,
    /// `sqlite` (embedded, one process) or `scylla` (ScyllaDB / Cassandra, any number of
    /// processes).
    pub backend: String,
    /// The CQL cluster, when `backend = "scylla"`.
    pub scylla: ScyllaSection,
}

/// `[storage.scylla]`: where the CQL cluster is and how data is kept there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScyllaSection {
    /// `host:port` of one or more nodes; the driver discovers the others.
    pub contact_points: Vec<String>,
    /// Keyspace (`[a-z_][a-z0-9_]*`, at most 48 characters).
    pub keyspace: String,
    /// CQL replication map used when `larachat migrate` creates the keyspace.
    pub replication: String,
    /// Consistency of every statement: `local_quorum` (default), `quorum`, `local_one`, `one`,
    /// `all`, `each_quorum`.
    pub consistency: String,
    /// Client-side timeout of one request, in seconds.
    pub request_timeout_secs: u64,
}

/// `[bus]`: how gateways and the control plane exchange live events and control notices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// `local` (in-process, one process) or `nats` (any number of processes).
    pub backend: String,
    /// The NATS connection, when `backend = "nats"`.
    pub nats: NatsSection,
}

/// `[bus.nats]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsSection {
    /// `nats://host:port`, comma-separated for several servers; credentials may be in the URL.
    pub url: String,
    /// Replicas of the durable event stream when it is created (1 for one server, 3 for a
    /// typical cluster).
    pub events_replicas: usize,
    /// Messages buffered per subscription before NATS drops (slow consumer).
    pub subscription_capacity: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// HS256 key for admin and end-user tokens (≥ 32 bytes). Generated and kept in
    /// `<data_dir>/secrets.toml` when empty.
    pub jwt_secret: String,
    /// Secret mixed into API key hashes (≥ 32 bytes). Generated like `jwt_secret` when empty.
    /// Changing it invalidates every existing key.
    pub key_pepper: String,
    /// Lifetime of end-user tokens, in seconds.
    pub user_token_ttl_secs: u64,
    /// Lifetime of admin tokens, in seconds.
    pub admin_token_ttl_secs: u64,
    /// Longest (and default) lifetime of agent tokens, in seconds.
    pub agent_token_ttl_secs: u64,
    /// How long gateways trust a cached key or project without a control notice.
    pub cache_ttl_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RealtimeSection {
    pub auth_timeout_secs: u64,
    pub heartbeat_secs: u64,
    pub max_frame_bytes: usize,
    pub outbound_queue: usize,
    pub max_subscriptions: usize,
    pub max_frames_per_sec: u32,
    /// An end user stays online this long after their last connection closed.
    pub presence_debounce_ms: u64,
    /// Interval of each gateway's presence beats (and of the expiry sweep).
    pub presence_heartbeat_ms: u64,
    /// A gateway's presence claims expire this long after it was last heard (a dead
    /// gateway's users go offline within this plus one heartbeat).
    pub presence_ttl_ms: u64,
}

/// Plans: the default plan of new projects and who may edit plans.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlansConfig {
    /// Plan of a project created without one (`DEFAULT_PROJECT_PLAN`; `free` by default).
    pub default: larachat_core::plan::PlanId,
    /// Emails of the platform admins: they edit plans and choose projects' plans. The
    /// bootstrap admin (`admin.email`) is always one.
    pub platform_admins: Vec<String>,
}

/// The first platform admin, created on start if no admin with this email exists.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminBootstrap {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `larachat_gateway=debug,info`.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 64 * 1024,
            shutdown_grace_secs: 10,
            admin_listen: String::new(),
            max_connections: 0,
            max_connections_per_ip: 256,
            header_timeout_secs: 10,
            request_timeout_secs: 30,
            max_in_flight: 1024,
            public_url: String::new(),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            sqlite_synchronous: "full".into(),
            sqlite_readers: 4,
            backend: "sqlite".into(),
            scylla: ScyllaSection::default(),
        }
    }
}

impl Default for ScyllaSection {
    fn default() -> Self {
        Self {
            contact_points: vec!["127.0.0.1:9042".into()],
            keyspace: "larachat".into(),
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".into(),
            consistency: "local_quorum".into(),
            request_timeout_secs: 10,
        }
    }
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            backend: "local".into(),
            nats: NatsSection::default(),
        }
    }
}

impl Default for NatsSection {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            events_replicas: 1,
            subscription_capacity: 4096,
        }
    }
}

impl Default for RealtimeSection {
    fn default() -> Self {
        let d = larachat_gateway::RealtimeConfig::default();
        Self {
            auth_timeout_secs: d.auth_timeout.as_secs(),
            heartbeat_secs: d.heartbeat.as_secs(),
            max_frame_bytes: d.max_frame_bytes,
            outbound_queue: d.outbound_queue,
            max_subscriptions: d.max_subscriptions,
            max_frames_per_sec: d.max_frames_per_sec,
            presence_debounce_ms: millis(d.presence.debounce),
            presence_heartbeat_ms: millis(d.presence.heartbeat),
            presence_ttl_ms: millis(d.presence.ttl),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug)]
pub enum ConfigError {
    /// The file or a value could not be parsed, or a key is unknown.
    Parse(String),
    /// A value parsed but breaks a rule.
    Invalid(String),
}

impl std::error::Error for ConfigError {}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Parse(m) => write!(f, "configuration could not be read: {m}"),
            Self::Invalid(m) => write!(f, "configuration is invalid: {m}"),
        }
    }
}

/// Short environment aliases → dotted keys.
const ENV_ALIASES: &[(&str, &str)] = &[
    ("LARACHAT_LISTEN", "server.listen"),
    ("LARACHAT_DATA_DIR", "storage.data_dir"),
    ("LARACHAT_ADMIN_EMAIL", "admin.email"),
    ("LARACHAT_ADMIN_PASSWORD", "admin.password"),
    ("LARACHAT_LOG", "log.level"),
    // The seed's name and ours.
    ("DEFAULT_PROJECT_PLAN", "plans.default"),
    ("LARACHAT_DEFAULT_PROJECT_PLAN", "plans.default"),
    // The seed's name (no LARACHAT_ prefix) and ours.
    ("WEBHOOK_RETRY_ATTEMPTS", "webhooks.retry_attempts"),
    ("LARACHAT_WEBHOOK_RETRY_ATTEMPTS", "webhooks.retry_attempts"),
];

impl Config {
    /// Builds the configuration from its layers. `file` is the TOML text, `env` the process
    /// environment (only `LARACHAT_*` entries are read), `flags` dotted keys from the command
    /// line.
    pub fn load<'a>(
        file: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: impl IntoIterator<Item = (&'a str, Value)>,
    ) -> Result<Config, ConfigError> {
        let mut table = Table::new();
        if let Some(text) = file {
            let file_table: Table = text
                .parse()
                .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
            merge(&mut table, file_table);
        }
        let mut env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| {
                k.starts_with("LARACHAT_") || ENV_ALIASES.iter().any(|(alias, _)| alias == k)
            })
            .collect();
        env.sort(); // deterministic when an alias and a full key both appear
        let defaults = Value::try_from(Config::default()).unwrap_or(Value::Table(Table::new()));
        for (key, raw) in env {
            // Only aliases and `SECTION__KEY` names are configuration (and an unknown
            // section or key there is an error); other `LARACHAT_*` variables belong to tools
            // and scripts (`LARACHAT_CONFIG`, `LARACHAT_BIN`, test settings) and are ignored.
            let dotted = match ENV_ALIASES.iter().find(|(alias, _)| *alias == key) {
                Some((_, dotted)) => (*dotted).to_owned(),
                None if key.contains("__") => key["LARACHAT_".len()..]
                    .to_ascii_lowercase()
                    .replace("__", "."),
                None => continue,
            };
            let value = env_value(&raw, get_dotted(&defaults, &dotted));
            set_dotted(&mut table, &dotted, value);
        }
        for (dotted, value) in flags {
            set_dotted(&mut table, dotted, value);
        }
        // A rate-limit rule is a pair (`rate`, `burst`) whose defaults differ per rule: setting
        // one half (`LARACHAT_LIMITS__LOGIN_IP__BURST=5`) keeps the other half's default.
        if let (Some(Value::Table(user)), Some(Value::Table(base))) =
            (table.get("limits"), defaults.get("limits"))
        {
            let mut limits = base.clone();
            merge(&mut limits, user.clone());
            table.insert("limits".into(), Value::Table(limits));
        }
        let config: Config = Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.server.listen.parse::<SocketAddr>().is_err() {
            return bad(format!(
                "server.listen must be an address like 127.0.0.1:8080, got {:?}",
                self.server.listen
            ));
        }
        if self.server.max_body_bytes < 1024 {
            return bad("server.max_body_bytes must be at least 1024".into());
        }
        let dash = &self.dashboard;
        let gateway_url = dash.gateway_url.trim().trim_end_matches('/');
        if !gateway_url.is_empty() {
            if let Err(e) = larachat_core::origin::Origin::parse(gateway_url) {
                return bad(format!(
                    "dashboard.gateway_url must be empty or an origin like https://api.example.com: {}",
                    e.message
                ));
            }
        }
        for o in &dash.allowed_origins {
            if let Err(e) = larachat_core::origin::Origin::parse(o) {
                return bad(format!("dashboard.allowed_origins: {}", e.message));
            }
        }
        let srv = &self.server;
        if !srv.public_url.is_empty()
            && !srv.public_url.starts_with("https://")
            && !srv.public_url.starts_with("http://")
        {
            return bad(format!(
                "server.public_url must be empty or an http(s) URL like https://chat.example.com, got {:?}",
                srv.public_url
            ));
        }
        if !srv.admin_listen.is_empty() {
            match srv.admin_listen.parse::<SocketAddr>() {
                Err(_) => {
                    return bad(format!(
                        "server.admin_listen must be empty or an address like 127.0.0.1:9090, got {:?}",
                        srv.admin_listen
                    ));
                }
                Ok(a) if a.port() != 0 && a == self.listen_addr() => {
                    return bad("server.admin_listen must differ from server.listen".into());
                }
                Ok(_) => {}
            }
        }
        let cap = crate::server::MAX_CONNECTIONS_LIMIT;
        if srv.max_connections > cap || srv.max_connections_per_ip > cap {
            return bad(format!(
                "server.max_connections and server.max_connections_per_ip must be at most {cap}"
            ));
        }
        if srv.header_timeout_secs == 0 || srv.request_timeout_secs == 0 {
            return bad(
                "server.header_timeout_secs and server.request_timeout_secs must be at least 1"
                    .into(),
            );
        }
        if srv.max_in_flight == 0 || srv.max_in_flight > cap {
            return bad(format!("server.max_in_flight must be between 1 and {cap}"));
        }
        if !matches!(self.storage.sqlite_synchronous.as_str(), "full" | "normal") {
            return bad("storage.sqlite_synchronous must be full or normal".into());
        }
        if self.storage.sqlite_readers == 0 {
            return bad("storage.sqlite_readers must be at least 1".into());
        }
        match self.storage.backend.as_str() {
            "sqlite" => {}
            "scylla" => {
                let s = &self.storage.scylla;
                if s.contact_points.is_empty()
                    || s.contact_points.iter().any(|c| c.trim().is_empty())
                {
                    return bad(
                        "storage.scylla.contact_points must list at least one host:port".into(),
                    );
                }
                if !larachat_store::scylla::valid_keyspace(&s.keyspace) {
                    return bad(format!(
                        "storage.scylla.keyspace must match [a-z_][a-z0-9_]* (at most 48 characters), got {:?}",
                        s.keyspace
                    ));
                }
                if !s.replication.trim_start().starts_with('{') {
                    return bad("storage.scylla.replication must be a CQL map like {'class': 'NetworkTopologyStrategy', 'dc1': 3}".into());
                }
                if consistency(&s.consistency).is_none() {
                    return bad(format!(
                        "storage.scylla.consistency must be one of local_quorum, quorum, each_quorum, local_one, one, all; got {:?}",
                        s.consistency
                    ));
                }
                if s.request_timeout_secs == 0 {
                    return bad("storage.scylla.request_timeout_secs must be at least 1".into());
                }
            }
            other => {
                return bad(format!(
                    "storage.backend must be sqlite or scylla, got {other:?}"
                ));
            }
        }
        match self.bus.backend.as_str() {
            "local" => {}
            "nats" => {
                let n = &self.bus.nats;
                if !n
                    .url
                    .split(',')
                    .all(|u| u.trim().starts_with("nats://") || u.trim().starts_with("tls://"))
                {
                    return bad(format!(
                        "bus.nats.url must be nats://host:port (comma-separated), got {:?}",
                        n.url
                    ));
                }
                if n.events_replicas == 0 || n.events_replicas > 5 {
                    return bad("bus.nats.events_replicas must be between 1 and 5".into());
                }
                if n.subscription_capacity == 0 {
                    return bad("bus.nats.subscription_capacity must be at least 1".into());
                }
            }
            other => return bad(format!("bus.backend must be local or nats, got {other:?}")),
        }
        for (name, v) in [
            ("security.jwt_secret", &self.security.jwt_secret),
            ("security.key_pepper", &self.security.key_pepper),
        ] {
            if !v.is_empty() && v.len() < 32 {
                return bad(format!(
                    "{name} must be at least 32 bytes (or empty to generate one)"
                ));
            }
        }
        let r = &self.realtime;
        if r.auth_timeout_secs == 0 || r.heartbeat_secs == 0 {
            return bad("realtime timeouts must be at least 1 second".into());
        }
        if r.max_frame_bytes < 1024 || r.outbound_queue == 0 || r.max_subscriptions == 0 {
            return bad("realtime limits must be positive (max_frame_bytes ≥ 1024)".into());
        }
        if r.max_frames_per_sec == 0 {
            return bad("realtime.max_frames_per_sec must be at least 1".into());
        }
        if r.presence_heartbeat_ms < 10 || r.presence_ttl_ms <= r.presence_heartbeat_ms {
            return bad(
                "realtime.presence_heartbeat_ms must be at least 10 and presence_ttl_ms greater than it"
                    .into(),
            );
        }
        if self.admin.email.is_empty() != self.admin.password.is_empty() {
            return bad("admin.email and admin.password must be set together".into());
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return bad("log.format must be text or json".into());
        }
        if self.security.agent_token_ttl_secs > 24 * 3600 {
            return bad("security.agent_token_ttl_secs must be at most 86400 (a day)".into());
        }
        self.limits.validate().map_err(ConfigError::Invalid)?;
        self.webhooks.validate().map_err(ConfigError::Invalid)?;
        Ok(())
    }

    /// The admin listener's address, if one is configured (validated).
    pub fn admin_listen_addr(&self) -> Option<SocketAddr> {
        self.server.admin_listen.parse().ok()
    }

    /// The listen address (validated).
    pub fn listen_addr(&self) -> SocketAddr {
        self.server
            .listen
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080)))
    }

    pub fn security_durations(&self) -> (Duration, Duration, Duration) {
        let s = &self.security;
        let or = |v: u64, d: u64| Duration::from_secs(if v == 0 { d } else { v });
        (
            or(s.user_token_ttl_secs, 24 * 3600),
            or(s.admin_token_ttl_secs, 12 * 3600),
            or(s.cache_ttl_secs, 30),
        )
    }

    /// Longest lifetime of agent tokens (`0` means 15 minutes).
    pub fn agent_token_ttl(&self) -> Duration {
        match self.security.agent_token_ttl_secs {
            0 => Duration::from_secs(15 * 60),
            s => Duration::from_secs(s),
        }
    }

    /// Realtime limits for the gateway.
    pub fn realtime_config(&self) -> larachat_gateway::RealtimeConfig {
        let r = &self.realtime;
        larachat_gateway::RealtimeConfig {
            auth_timeout: Duration::from_secs(r.auth_timeout_secs),
            heartbeat: Duration::from_secs(r.heartbeat_secs),
            max_frame_bytes: r.max_frame_bytes,
            outbound_queue: r.outbound_queue,
            max_subscriptions: r.max_subscriptions,
            max_frames_per_sec: r.max_frames_per_sec,
            presence: larachat_gateway::presence::PresenceConfig {
                debounce: Duration::from_millis(r.presence_debounce_ms),
                heartbeat: Duration::from_millis(r.presence_heartbeat_ms),
                ttl: Duration::from_millis(r.presence_ttl_ms),
                ..Default::default()
            },
        }
    }
}

/// The CQL consistency named in the configuration.
pub fn consistency(name: &str) -> Option<larachat_store::scylla::Consistency> {
    use larachat_store::scylla::Consistency as C;
    Some(match name {
        "local_quorum" => C::LocalQuorum,
        "quorum" => C::Quorum,
        "each_quorum" => C::EachQuorum,
        "local_one" => C::LocalOne,
        "one" => C::One,
        "all" => C::All,
        _ => return None,
    })
}

/// Environment values take the type of the key they set (a number for `heartbeat_secs`, a
/// string for `password` even when it is all digits). A value that does not parse as that
/// type stays a string, so the error names the key and the expected type.
fn env_value(raw: &str, like: Option<&Value>) -> Value {
    match like {
        Some(Value::Integer(_)) => raw
            .parse::<i64>()
            .map_or_else(|_| Value::String(raw.to_owned()), Value::Integer),
        Some(Value::Boolean(_)) => raw
            .parse::<bool>()
            .map_or_else(|_| Value::String(raw.to_owned()), Value::Boolean),
        Some(Value::Float(_)) => raw
            .parse::<f64>()
            .map_or_else(|_| Value::String(raw.to_owned()), Value::Float),
        // Lists are comma-separated: `LARACHAT_STORAGE__SCYLLA__CONTACT_POINTS=a:9042,b:9042`.
        Some(Value::Array(_)) => Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        ),
        _ => Value::String(raw.to_owned()),
    }
}

fn get_dotted<'a>(value: &'a Value, dotted: &str) -> Option<&'a Value> {
    dotted
        .split('.')
        .try_fold(value, |v, part| v.as_table()?.get(part))
}

fn set_dotted(table: &mut Table, dotted: &str, value: Value) {
    let mut parts = dotted.split('.').peekable();
    let mut current = table;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            current.insert(part.to_owned(), value);
            return;
        }
        let entry = current
            .entry(part.to_owned())
            .or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        match entry {
            Value::Table(t) => current = t,
            _ => return,
        }
    }
}

fn merge(into: &mut Table, from: Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(Value::Table(a)), Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_need_nothing() {
        let c = Config::load(None, env(&[]), []).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.listen_addr().port(), 8080);
    }

    #[test]
    fn layers_override_in_order() {
        let file = "[server]\nlisten = \"127.0.0.1:9000\"\nmax_body_bytes = 2048\n[realtime]\nheartbeat_secs = 5\n";
        let c = Config::load(
            Some(file),
            env(&[
                ("LARACHAT_SERVER__LISTEN", "127.0.0.1:9001"),
                ("LARACHAT_REALTIME__OUTBOUND_QUEUE", "7"),
                ("PATH", "/bin"),
            ]),
            [("server.listen", Value::String("127.0.0.1:9002".into()))],
        )
        .unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:9002", "flags win");
        assert_eq!(c.server.max_body_bytes, 2048, "file beats defaults");
        assert_eq!(c.realtime.heartbeat_secs, 5);
        assert_eq!(c.realtime.outbound_queue, 7, "env typed as integer");
        let c = Config::load(
            Some(file),
            env(&[("LARACHAT_LISTEN", "127.0.0.1:9003")]),
            [],
        )
        .unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:9003", "env beats file");
    }

    #[test]
    fn distributed_backends_from_the_environment() {
        let c = Config::load(
            None,
            env(&[
                ("LARACHAT_STORAGE__BACKEND", "scylla"),
                (
                    "LARACHAT_STORAGE__SCYLLA__CONTACT_POINTS",
                    "10.0.0.1:9042, 10.0.0.2:9042",
                ),
                ("LARACHAT_STORAGE__SCYLLA__CONSISTENCY", "quorum"),
                ("LARACHAT_BUS__BACKEND", "nats"),
                ("LARACHAT_BUS__NATS__URL", "nats://a:4222,nats://b:4222"),
                ("LARACHAT_BUS__NATS__EVENTS_REPLICAS", "3"),
            ]),
            [],
        )
        .unwrap();
        assert_eq!(c.storage.backend, "scylla");
        assert_eq!(
            c.storage.scylla.contact_points,
            ["10.0.0.1:9042", "10.0.0.2:9042"],
            "lists are comma-separated"
        );
        assert_eq!(c.storage.scylla.keyspace, "larachat");
        assert_eq!(c.bus.nats.events_replicas, 3);
        let scylla = ("LARACHAT_STORAGE__BACKEND", "scylla");
        let nats = ("LARACHAT_BUS__BACKEND", "nats");
        let refused: [(&[(&str, &str)], &str); 8] = [
            (
                &[("LARACHAT_STORAGE__BACKEND", "postgres")],
                "storage.backend",
            ),
            (&[("LARACHAT_BUS__BACKEND", "kafka")], "bus.backend"),
            (
                &[scylla, ("LARACHAT_STORAGE__SCYLLA__KEYSPACE", "Drop;Table")],
                "storage.scylla.keyspace",
            ),
            (
                &[scylla, ("LARACHAT_STORAGE__SCYLLA__CONSISTENCY", "serial")],
                "storage.scylla.consistency",
            ),
            (
                &[nats, ("LARACHAT_BUS__NATS__URL", "http://x:4222")],
                "bus.nats.url",
            ),
            (
                &[("LARACHAT_SERVER__PUBLIC_URL", "chat.example.com")],
                "server.public_url",
            ),
            (
                &[(
                    "LARACHAT_DASHBOARD__GATEWAY_URL",
                    "https://api.example.com/v1",
                )],
                "dashboard.gateway_url",
            ),
            (
                &[("LARACHAT_DASHBOARD__ALLOWED_ORIGINS", "https://a.example,*")],
                "dashboard.allowed_origins",
            ),
        ];
        for (vars, named) in refused {
            let r = Config::load(None, env(vars), []);
            assert!(
                matches!(&r, Err(ConfigError::Invalid(m)) if m.contains(named)),
                "{vars:?}: {r:?}"
            );
        }
    }

    #[test]
    fn webhooks_from_the_environment_with_the_seed_alias() {
        let c = Config::load(
            None,
            env(&[
                ("WEBHOOK_RETRY_ATTEMPTS", "3"),
                ("LARACHAT_WEBHOOKS__ALLOW_INSECURE_TARGETS", "true"),
            ]),
            [],
        )
        .unwrap();
        assert_eq!(c.webhooks.retry_attempts, 3);
        assert!(c.webhooks.allow_insecure_targets);
        assert_eq!(Config::default().webhooks.retry_attempts, 15);
        let bad = Config::load(None, env(&[("WEBHOOK_RETRY_ATTEMPTS", "0")]), []);
        assert!(matches!(bad, Err(ConfigError::Invalid(m)) if m.contains("retry_attempts")));
        // Other unprefixed variables are not configuration.
        assert!(Config::load(None, env(&[("WEBHOOK_SIGNATURE_SECRET", "x")]), []).is_ok());
    }

    #[test]
    fn default_plan_from_the_seed_variable() {
        assert_eq!(Config::default().plans.default.as_str(), "free");
        let c = Config::load(None, env(&[("DEFAULT_PROJECT_PLAN", "pro")]), []).unwrap();
        assert_eq!(c.plans.default.as_str(), "pro");
        let file = "[plans]\ndefault = \"starter\"\nplatform_admins = [\"ops@example.com\"]\n";
        let c = Config::load(Some(file), env(&[]), []).unwrap();
        assert_eq!(c.plans.default.as_str(), "starter");
        assert_eq!(c.plans.platform_admins, ["ops@example.com"]);
        let bad = Config::load(None, env(&[("DEFAULT_PROJECT_PLAN", "Not A Plan")]), []);
        assert!(matches!(bad, Err(ConfigError::Parse(_))), "{bad:?}");
    }

    #[test]
    fn limits_and_demo_from_the_environment() {
        let c = Config::load(
            None,
            env(&[
                ("LARACHAT_LIMITS__IP__RATE", "10/s"),
                ("LARACHAT_LIMITS__IP__BURST", "5"),
                ("LARACHAT_LIMITS__TRUSTED_PROXIES", "127.0.0.1, 10.0.0.0/8"),
                ("LARACHAT_DEMO__ENABLED", "false"),
            ]),
            [],
        )
        .unwrap();
        assert_eq!(c.limits.ip.rate.to_string(), "10/s");
        assert_eq!(c.limits.ip.burst, 5);
        let half =
            Config::load(None, env(&[("LARACHAT_LIMITS__LOGIN_IP__BURST", "3")]), []).unwrap();
        assert_eq!(half.limits.login_ip.burst, 3);
        assert_eq!(
            half.limits.login_ip.rate,
            Config::default().limits.login_ip.rate
        );
        assert_eq!(c.limits.trusted_proxies.len(), 2);
        assert_eq!(c.demo.enabled, DemoEnabled::Off);
        let loopback: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let public: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let auto = Config::default().demo.enabled;
        assert!(auto.applies_to(loopback));
        assert!(!auto.applies_to(public), "auto: off on a public address");
        let on = Config::load(Some("[demo]\nenabled = true\n"), env(&[]), []).unwrap();
        assert!(on.demo.enabled.applies_to(public));
        for (vars, named) in [
            (&[("LARACHAT_LIMITS__IP__RATE", "fast")][..], "rate"),
            (
                &[("LARACHAT_LIMITS__LOGIN_IP__BURST", "0")][..],
                "login_ip.burst",
            ),
            (
                &[("LARACHAT_LIMITS__TRUSTED_PROXIES", "proxy.local")][..],
                "trusted proxy",
            ),
            (&[("LARACHAT_DEMO__ENABLED", "maybe")][..], "demo.enabled"),
        ] {
            let r = Config::load(None, env(vars), []);
            let msg = match &r {
                Err(ConfigError::Parse(m) | ConfigError::Invalid(m)) => m.clone(),
                Ok(_) => String::new(),
            };
            assert!(msg.contains(named), "{vars:?}: {r:?}");
        }
        // check-config prints it back as TOML that loads again.
        let text = toml::to_string(&c).unwrap();
        assert_eq!(Config::load(Some(&text), env(&[]), []).unwrap(), c);
    }

    #[test]
    fn aliases_fill_admin_bootstrap() {
        let c = Config::load(
            None,
            env(&[
                ("LARACHAT_ADMIN_EMAIL", "a@b.co"),
                ("LARACHAT_ADMIN_PASSWORD", "123456789012"),
            ]),
            [],
        )
        .unwrap();
        assert_eq!(c.admin.email, "a@b.co");
        assert_eq!(c.admin.password, "123456789012", "digits stay a string");
    }

    #[test]
    fn mistakes_are_reported_before_binding() {
        let unknown = Config::load(Some("[server]\nlisten_addr = \"x\"\n"), env(&[]), []);
        assert!(matches!(unknown, Err(ConfigError::Parse(m)) if m.contains("listen_addr")));
        let tools = Config::load(
            None,
            env(&[
                ("LARACHAT_BIN", "/x"),
                ("LARACHAT_TEST_NATS_URL", "nats://x"),
            ]),
            [],
        );
        assert!(tools.is_ok(), "tool variables are not configuration");
        let typo_env = Config::load(None, env(&[("LARACHAT_SERVR__LISTEN", "x")]), []);
        assert!(matches!(typo_env, Err(ConfigError::Parse(m)) if m.contains("servr")));
        let bad_addr = Config::load(None, env(&[("LARACHAT_LISTEN", "localhost")]), []);
        assert!(matches!(bad_addr, Err(ConfigError::Invalid(m)) if m.contains("server.listen")));
        let short = Config::load(Some("[security]\njwt_secret = \"short\"\n"), env(&[]), []);
        assert!(matches!(short, Err(ConfigError::Invalid(m)) if m.contains("jwt_secret")));
        for (var, value) in [
            ("LARACHAT_SERVER__ADMIN_LISTEN", "localhost:9090"),
            ("LARACHAT_SERVER__ADMIN_LISTEN", "127.0.0.1:8080"),
            ("LARACHAT_SERVER__HEADER_TIMEOUT_SECS", "0"),
            ("LARACHAT_SERVER__REQUEST_TIMEOUT_SECS", "0"),
            ("LARACHAT_SERVER__MAX_IN_FLIGHT", "0"),
            ("LARACHAT_SERVER__MAX_CONNECTIONS", "2000000"),
        ] {
            let r = Config::load(None, env(&[(var, value)]), []);
            assert!(
                matches!(&r, Err(ConfigError::Invalid(m)) if m.contains("server.")),
                "{var}={value}: {r:?}"
            );
        }
        let admin = Config::load(
            None,
            env(&[("LARACHAT_SERVER__ADMIN_LISTEN", "127.0.0.1:9090")]),
            [],
        )
        .unwrap();
        assert_eq!(admin.admin_listen_addr().map(|a| a.port()), Some(9090));
        assert_eq!(
            Config::default().admin_listen_addr(),
            None,
            "unset by default"
        );
        let half_admin = Config::load(None, env(&[("LARACHAT_ADMIN_EMAIL", "a@b.co")]), []);
        assert!(matches!(half_admin, Err(ConfigError::Invalid(_))));
        let wrong_type = Config::load(Some("[server]\nmax_body_bytes = \"big\"\n"), env(&[]), []);
        assert!(matches!(wrong_type, Err(ConfigError::Parse(_))));
        let wrong_env = Config::load(
            None,
            env(&[("LARACHAT_REALTIME__HEARTBEAT_SECS", "soon")]),
            [],
        );
        assert!(matches!(wrong_env, Err(ConfigError::Parse(m)) if m.contains("heartbeat_secs")));
    }
}
