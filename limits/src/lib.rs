//! # larachat-limits
//!
//! Policy at the edge: the one rate-limit layer of Lara Chat, with one configuration
//! (`[limits]`), used by the gateway and the control plane alike. It lives below both so that
//! neither depends on the other, and outside `core` because it keeps state and reads a clock.
//!
//! The algorithm is GCRA from the maintained `governor` crate (a token bucket without a
//! timer). What is ours is only what makes the product: which buckets exist (per client IP,
//! API key, end user, project; login per IP and per account; widget init per IP and per
//! project; messages per sender), how a request's client IP is found behind trusted proxies,
//! per-project overrides (the plans will drive them), and how a refusal looks on every
//! transport (`429` with `Retry-After` and `RateLimit-*` headers, or a socket `error` with
//! `retry_after_ms`, both through [`larachat_core::ApiError::rate_limited`]).
//!
//! Memory is bounded whatever clients send: every bucket keeps its per-key state in a
//! `moka` cache with a capacity (`limits.max_keys`) and a time-to-idle equal to the time a
//! bucket takes to refill, after which a key's state is indistinguishable from a fresh one.
//! Keys are keyed hashes of the typed key (an IP, a key id, an e-mail), so an attacker picks
//! neither their size nor their collisions.
//!
//! Modules:
//! - [`config`]: `[limits]` ([`LimitsConfig`], [`Rule`], [`Rate`]) and per-project overrides
//!   ([`ProjectLimits`], read from a project's `settings.limits`).
//! - [`limiter`]: [`Limits`], the buckets, and [`Kind`], the list of buckets.
//! - [`client_ip`]: the client address of a request (TCP peer, or `Forwarded` /
//!   `X-Forwarded-For` from trusted proxies only) and the key it is limited under.
//! - [`http`]: the axum middleware for the per-IP limit and the `RateLimit-*` headers of
//!   successful responses.
//!
//! Depends on `core` only (for the error catalog).

pub mod client_ip;
pub mod config;
pub mod http;
pub mod limiter;

pub use client_ip::ClientIp;
pub use config::{LimitsConfig, ProjectLimits, Rate, Rule};
pub use limiter::{Kind, Limits, ManualClock};
