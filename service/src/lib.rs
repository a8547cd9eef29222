//! # larachat-service
//!
//! The one write path. Every change — from the Client API, the Widget API and the realtime
//! socket (in the gateway), and from the Admin API (control plane) — is an operation of
//! [`Service`]: it takes a
//! [`Principal`] and typed input values ([`input`]), checks what the principal may do, applies
//! the change through the store, and publishes the live frame on the bus. The change's domain
//! event ([`larachat_core::event::DomainEvent`]) is written by the store in the same
//! transaction as the change (the builders live in core, one per kind), so an operation that
//! returns `Ok` has its event in the durable log, and one that fails has none.
//!
//! Handlers only translate: HTTP bodies or socket frames into typed values and a service call,
//! results into responses. Edge concerns stay at the edge: authentication (who the principal
//! is), rate limits (`larachat-limits`, applied by the gateway before calling), transport
//! metrics. Per-operation policy that is about the tenant belongs here: one function per
//! operation, each the only way to make its change. Plan limits and usage counting are the
//! exception that proves the rule: they must be atomic with the change, so the store applies
//! them inside the write (see [`plans`]).
//!
//! Modules:
//! - [`principal`]: [`Principal`], who is calling (project, credential kind, scopes).
//! - [`input`]: typed input values (`MessageText`, `ClientMsgId`, `Name`, `Email`, `Url`,
//!   `Identifier`, `AgentId`, `Metadata`, `MemberList`), parsed once.
//! - [`messages`]: send, mark read, typing; the access checks they share.
//! - [`conversations`]: start, change (assignment included), close.
//! - [`users`]: create or identify end users (secret key, widget), change, delete.
//! - [`projects`]: the control plane's changes — projects, widget settings, API keys — for the
//!   admin who owns the project (no domain events yet; the control plane announces them to
//!   gateways).
//! - [`tokens`]: the claims of the tokens the gateway verifies, and agent tokens, signed in
//!   one place for both issuers (a secret key through the gateway, a project member through
//!   the control plane).
//! - [`plans`]: plans (read; edited by platform admins) and a project's usage against its
//!   plan. Quotas are enforced by the store inside each change's write (the only place a
//!   check and its change are atomic), so every operation here that creates end users,
//!   conversations, messages or projects refuses with `quota_exceeded` on every path.
//!
//! Depends on `core`, `store`, `broker` and `limits` (the shape of a project's rate-limit
//! settings); the gateway and the control plane depend on it, never the other way round.

pub mod conversations;
pub mod input;
pub mod messages;
pub mod plans;
pub mod principal;
pub mod projects;
pub mod tokens;
pub mod users;

use std::sync::Arc;

use larachat_broker::Bus;
use larachat_core::protocol::{Encoding, ServerFrame, encode};
use larachat_core::subject::Subject;
use larachat_store::Store;

pub use principal::{Principal, PrincipalKind};

/// The service layer: cheap to clone.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    publish_failures: larachat_core::throttle::PowersOfTwo,
    /// Bounds the live-feed work run beside requests ([`Service::beside`]).
    beside: Arc<tokio::sync::Semaphore>,
}

/// Most live-feed tasks (unread counts) running beside requests at once, per process.
const BESIDE_TASKS: usize = 1024;

impl Service {
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn Bus>) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                bus,
                publish_failures: Default::default(),
                beside: Arc::new(tokio::sync::Semaphore::new(BESIDE_TASKS)),
            }),
        }
    }

    /// The store, for reads.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Publishes a live frame. The change is already durable when this is called, so a bus
    /// failure is logged, not returned: subscribers catch up by resume.
    pub async fn publish(&self, subject: &Subject, frame: &ServerFrame) {
        self.publish_bytes(subject, encode(frame, Encoding::Json))
            .await;
    }

    /// Publishes one frame on several subjects (a change for the inbox and each member's
    /// feed), encoded once.
    pub async fn publish_to(&self, subjects: &[Subject], frame: &ServerFrame) {
        let bytes = encode(frame, Encoding::Json);
        for subject in subjects {
            self.publish_bytes(subject, bytes.clone()).await;
        }
    }

    /// Runs live-feed work that needs store reads (unread counts) beside the request rather
    /// than before its reply, so the sender's ack never waits for it. At most
    /// [`BESIDE_TASKS`] run at once; beyond that the work runs inline, slowing the caller
    /// instead of queueing without bound. Live events are at most once and may arrive out of
    /// order (protocol §3.4 says how clients combine them).
    pub(crate) async fn beside(&self, work: impl Future<Output = ()> + Send + 'static) {
        match self.inner.beside.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(async move {
                    work.await;
                    drop(permit);
                });
            }
            Err(_) => work.await,
        }
    }

    async fn publish_bytes(&self, subject: &Subject, bytes: bytes::Bytes) {
        if let Err(e) = self.inner.bus.publish(subject, bytes).await {
            metrics::counter!("larachat_gateway_publish_failures_total").increment(1);
            // While the bus is away every send fails to publish: not one line per message.
            if let Some(total) = self.inner.publish_failures.add(1) {
                tracing::warn!(error = %e, failures_total = total, "publish failed; subscribers will catch up by resume");
            }
        }
    }
}
