//! # larachat (the binary's library)
//!
//! Wiring only: configuration ([`config`]), the listener that owns accept, connection caps,
//! timeouts and the shutdown drain ([`server`]), the HTTP layers every response passes through
//! ([`edge`]), the operations endpoints ([`ops`]), metrics and their HELP text
//! ([`telemetry`]), the demo pages ([`demo`]), the distributed event log's publisher and
//! sweeper ([`outbox`]) and assembling one process from the library crates ([`app`]). Where a request goes from here:
//! - `/api/v1/*` and `/realtime/v1` → `larachat-gateway` (auth in `gateway/src/auth.rs`,
//!   handlers in `gateway/src/api/`, the socket in `gateway/src/realtime.rs`, the shared send
//!   path in `gateway/src/service.rs`);
//! - `/api/admin/*` → `larachat-control-plane`;
//! - storage → `larachat-store` (`Arc<dyn Store>`), routing → `larachat-broker`
//!   (`Arc<dyn Bus>`).

pub mod app;
pub mod config;
pub mod dashboard;
pub mod demo;
pub mod edge;
pub mod ops;
pub mod outbox;
pub mod server;
pub mod telemetry;

pub use app::{App, Bound, run_server};
pub use config::Config;
