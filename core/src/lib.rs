//! # larachat-core
//!
//! The vocabulary every other Lara Chat crate speaks. No I/O lives here: no sockets, no files,
//! no clocks other than "now" passed in or read once.
//!
//! Modules:
//! - [`id`]: typed UUID identifiers, and the rule that gives a message its UUIDv7 id after its predecessor.
//! - [`model`]: domain types (projects, API keys, end users, conversations, messages, reads).
//! - [`plan`]: plans as data (limits, features), usage periods (calendar months, UTC) and
//!   the quota refusal.
//! - [`analytics`]: analytics ranges (whole UTC hours or days), what a store reads from its
//!   rollups, and the series and percentiles computed from it.
//! - [`origin`]: web origins, parsed and normalised as browsers serialise them.
//! - [`team`]: project members, their roles ([`team::ProjectRole`]) and the one permission
//!   matrix ([`team::ProjectRole::allows`]); invitations.
//! - [`search`]: conversation search: words, index keys, parsed queries (both backends).
//! - [`validate`]: input rules shared by every transport (lengths, identifier alphabets).
//! - [`error`]: the client-facing error catalog — stable code → HTTP status → WebSocket close
//!   code → retry or not.
//! - [`protocol`]: realtime protocol v1 frames and their JSON and MessagePack codecs.
//! - [`event`]: domain events ([`event::DomainEvent`], one builder per kind, the JSON wire
//!   shape with a stable id) and the durable log's consumer traits ([`event::EventLog`]).
//! - [`control`]: control-plane notices (key revoked, project changed) gateways obey.
//! - [`subject`]: bus subject names, built only from validated ids.
//! - [`http`] (feature `axum`): catalog errors as HTTP responses, JSON/path/query extractors
//!   whose rejections use the catalog.
//! - [`throttle`]: when a repeated event deserves a log line (1st, 2nd, 4th, 8th…).
//! - [`openapi`] (feature `openapi`): the catalog errors every API operation documents,
//!   added to the OpenAPI documents in one place.
//! - [`keys`]: API key format (`sk_live_…`, `pk_live_…`), checksum, hashing, constant-time check.
//!
//! Depends on nothing of ours; `store`, `broker`, `gateway` and `control-plane` depend on it.

pub mod analytics;
pub mod clock;
pub mod control;
pub mod error;
pub mod event;
pub mod id;
pub mod keys;
pub mod model;
pub mod origin;
pub mod plan;
pub mod protocol;
pub mod search;
pub mod subject;
pub mod team;
pub mod throttle;
pub mod validate;

pub use error::{ApiError, ErrorCode};
pub use id::{
    AdminUserId, ApiKeyId, ConversationId, EndUserId, EventId, InviteId, MessageId, ProjectId,
};

#[cfg(feature = "axum")]
pub mod http;
#[cfg(feature = "openapi")]
pub mod openapi;
