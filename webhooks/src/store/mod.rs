//! Where endpoints, deliveries and attempts live: [`WebhookStore`] and its two backends.
//!
//! - [`SqliteWebhookStore`] (single node): its own database file `webhooks.sqlite3` beside
//!   the chat database, not a table of it. The chat store has one writer thread with group
//!   commit; attempt logging to a slow or failing endpoint must never queue in front of (or
//!   behind) a chat message, so webhooks get their own file and their own writer lock.
//! - `ScyllaWebhookStore` (cargo feature `scylla`, distributed): `webhook_*` tables in the
//!   cluster's keyspace, deliveries and attempts in bounded partitions
//!   (project, endpoint, day) with a TTL; the due queue sharded so workers share it.
//! - [`contract`]: the suite both pass.
//!
//! Tenancy as in `larachat-store`: everything takes the project first and another project's
//! ids look missing.

pub mod contract;
#[cfg(feature = "scylla")]
pub mod scylla;
pub mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use larachat_core::id::{EventId, ProjectId};

use crate::model::{Attempt, Delivery, DeliveryQuery, Endpoint, EndpointId};

#[cfg(feature = "scylla")]
pub use self::scylla::ScyllaWebhookStore;
pub use sqlite::SqliteWebhookStore;

/// Endpoints a project may register.
pub const MAX_ENDPOINTS_PER_PROJECT: usize = 20;

/// Failures of a webhook store operation.
#[derive(Debug, thiserror::Error)]
pub enum WebhookStoreError {
    /// The project already has [`MAX_ENDPOINTS_PER_PROJECT`] endpoints.
    #[error("too many endpoints")]
    TooManyEndpoints,
    /// The database is unreachable or failed; retry later.
    #[error("webhook store unavailable: {0}")]
    Unavailable(String),
    /// A stored row could not be read back (a bug or a corrupted row).
    #[error("webhook store corrupt row: {0}")]
    Corrupt(String),
}

pub type WebhookStoreResult<T> = Result<T, WebhookStoreError>;

/// The storage of webhooks. Object-safe; held as `Arc<dyn WebhookStore>`.
#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    /// Adds an endpoint (refused beyond [`MAX_ENDPOINTS_PER_PROJECT`]).
    async fn create_endpoint(&self, e: &Endpoint) -> WebhookStoreResult<()>;
    async fn get_endpoint(
        &self,
        project: ProjectId,
        id: EndpointId,
    ) -> WebhookStoreResult<Option<Endpoint>>;
    /// A project's endpoints, oldest first.
    async fn list_endpoints(&self, project: ProjectId) -> WebhookStoreResult<Vec<Endpoint>>;
    /// Replaces an existing endpoint's mutable fields; `false` if it does not exist.
    async fn update_endpoint(&self, e: &Endpoint) -> WebhookStoreResult<bool>;
    /// `false` if it did not exist. Its deliveries stay in the log until their TTL.
    async fn delete_endpoint(&self, project: ProjectId, id: EndpointId)
    -> WebhookStoreResult<bool>;

    /// Records a new delivery unless one exists for (endpoint, event): `true` if inserted.
    /// This is the de-duplication point between workers and across event redeliveries.
    async fn enqueue(&self, d: &Delivery) -> WebhookStoreResult<bool>;
    /// [`enqueue`](Self::enqueue) for several deliveries (the fan-out of a batch of events);
    /// returns how many were new. Backends that can store them in one transaction override
    /// it; either way a failure may leave some stored, and a retry adds only the rest.
    async fn enqueue_many(&self, ds: &[Delivery]) -> WebhookStoreResult<usize> {
        let mut new = 0;
        for d in ds {
            if self.enqueue(d).await? {
                new += 1;
            }
        }
        Ok(new)
    }
    /// Leases up to `limit` pending deliveries due at `now` until `lease_until`; a delivery
    /// is leased to one caller at a time, so it is attempted by one worker at a time. A
    /// lease that runs out (its worker died) makes the delivery claimable again.
    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> WebhookStoreResult<Vec<Delivery>>;
    /// Logs an attempt and stores the delivery's new state (which releases the lease).
    async fn record_attempt(&self, attempt: &Attempt, state: &Delivery) -> WebhookStoreResult<()>;
    /// [`record_attempt`](Self::record_attempt) for several attempts (of different
    /// deliveries). Backends that can store them in one transaction override it.
    async fn record_attempts(&self, batch: &[(Attempt, Delivery)]) -> WebhookStoreResult<()> {
        for (attempt, state) in batch {
            self.record_attempt(attempt, state).await?;
        }
        Ok(())
    }
    async fn get_delivery(
        &self,
        project: ProjectId,
        endpoint: EndpointId,
        event: EventId,
    ) -> WebhookStoreResult<Option<Delivery>>;
    /// One endpoint's deliveries, event-id order.
    async fn list_deliveries(
        &self,
        project: ProjectId,
        endpoint: EndpointId,
        query: &DeliveryQuery,
    ) -> WebhookStoreResult<Vec<Delivery>>;
    /// One delivery's attempts, in order.
    async fn list_attempts(
        &self,
        project: ProjectId,
        endpoint: EndpointId,
        event: EventId,
    ) -> WebhookStoreResult<Vec<Attempt>>;
    /// Starts a new series of attempts for an existing delivery (whatever its status), due at
    /// `now`; `false` if it does not exist.
    async fn redeliver(
        &self,
        project: ProjectId,
        endpoint: EndpointId,
        event: EventId,
        now: DateTime<Utc>,
    ) -> WebhookStoreResult<bool>;
}

/// Clamps a listing limit as `larachat-store` does.
pub(crate) fn clamp_limit(limit: usize) -> usize {
    limit.clamp(1, 1000)
}

impl From<WebhookStoreError> for larachat_core::ApiError {
    fn from(e: WebhookStoreError) -> Self {
        use larachat_core::ApiError;
        match e {
            WebhookStoreError::TooManyEndpoints => ApiError::conflict(format!(
                "a project has at most {MAX_ENDPOINTS_PER_PROJECT} webhook endpoints"
            )),
            WebhookStoreError::Unavailable(_) => ApiError::unavailable(),
            WebhookStoreError::Corrupt(_) => ApiError::internal(),
        }
    }
}
