//! # larachat-webhooks
//!
//! Webhooks: signed, retried, SSRF-safe HTTP deliveries of domain events to the endpoints a
//! project registers, following the Standard Webhooks spec (the conventions of Svix and
//! Stripe). This crate owns everything between "an event happened" and "a receiver answered":
//! - [`config`]: `[webhooks]` ([`WebhooksConfig`]);
//! - [`signing`]: `whsec_` secrets and the `webhook-id` / `webhook-timestamp` /
//!   `webhook-signature` headers, several signatures during a rotation overlap;
//! - [`ssrf`]: the URL rules and the address matrix every resolved address must pass;
//! - [`client`]: [`DeliveryClient`], one signed POST over reqwest with a checking resolver
//!   (connects only to checked addresses, no proxy, no redirects, one timeout, capped body);
//! - [`retry`]: the schedule (exponential with full jitter over at least 3 days, anchored to
//!   the first attempt), `Retry-After`, and what a status means ([`Verdict`]);
//! - the injected clock ([`Clock`], [`ManualClock`] for tests), re-exported from `larachat_core::clock`;
//! - [`model`]: endpoints, deliveries (one per event and endpoint), attempts;
//! - [`store`]: [`WebhookStore`] and its backends (SQLite file of its own; `webhook_*` CQL
//!   tables with feature `scylla`) and the contract suite both pass;
//! - [`worker`]: [`Dispatcher`] (fan-out of an event to matching endpoints, claiming and
//!   attempting due deliveries, test events, redelivery) and the two loops `serve` and
//!   `larachat worker` run ([`worker::run_consumer`] over the event log's `webhooks`
//!   consumer, [`worker::run_deliveries`]).
//!
//! Depends on `core` only (ids, the error catalog); must not depend on the gateway or the
//! control plane, which call into it.

pub mod client;
pub mod config;
pub mod model;
pub mod retry;
pub mod signing;
pub mod ssrf;
pub mod store;
pub mod worker;

pub use client::{AttemptOutcome, ClientSettings, DeliveryClient, Lookup, Outgoing, SystemLookup};
pub use config::WebhooksConfig;
pub use larachat_core::clock::{Clock, ManualClock, SystemClock};
pub use retry::{RetryPolicy, Verdict};
pub use signing::{Secret, SigningError};
pub use ssrf::{TargetError, TargetPolicy, TargetUrl};
pub use store::{WebhookStore, WebhookStoreError};
pub use worker::Dispatcher;
