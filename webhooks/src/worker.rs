//! The worker: from the event log to the endpoints.
//!
//! Two loops share a [`Dispatcher`]:
//! - [`run_consumer`] reads the durable consumer `webhooks` of the event log, turns each event
//!   into one delivery row per enabled endpoint whose filter matches, a fetched batch at a
//!   time ([`Dispatcher::fan_out_batch`]),
//!   and acknowledges the event only once those rows are stored. A crash before the ack
//!   redelivers the event; the (endpoint, event) row is inserted only once, so the
//!   redelivery adds nothing. Several workers of the consumer share the log (work queue).
//! - [`run_deliveries`] claims due deliveries (a lease per row: one worker attempts a given
//!   delivery at a time), attempts them concurrently, and records each attempt with the
//!   delivery's next state: delivered, retry at the scheduled time, dead letter when the
//!   attempts are spent, endpoint disabled on `410 Gone`.
//!
//! Nothing here is on the chat path: a change commits its event to the log and returns;
//! slow or failing endpoints only delay their own deliveries.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use larachat_core::event::{ConsumerName, ConsumerOptions, DomainEvent, EventLog};
use larachat_core::id::{EventId, ProjectId};

use crate::client::{DeliveryClient, Outgoing};
use crate::model::{Attempt, Delivery, DeliveryStatus, Endpoint, EndpointId, TEST_EVENT};
use crate::retry::{RetryPolicy, Verdict};
use crate::ssrf::TargetUrl;
use crate::store::{WebhookStore, WebhookStoreError, WebhookStoreResult};
use larachat_core::clock::Clock;

/// The name of the event-log consumer that feeds webhooks.
pub const CONSUMER: &str = "webhooks";
/// Deliveries claimed per pass, and attempted at once.
const BATCH: usize = 64;
/// After a fetch that drained the log, the consumer waits this long before the next one, so
/// under steady traffic one pass handles what arrived meanwhile instead of one event each (a
/// pass costs a claim, a read of the endpoints, the acks and wake-ups of several threads; on
/// the 1:1 benchmark it ran once per message sent). Also the most it adds to a webhook's
/// delay.
const LINGER: Duration = Duration::from_millis(20);
const CONCURRENCY: usize = 32;

/// What the worker needs, shared by its loops and by the API (test events, redelivery).
#[derive(Clone)]
pub struct Dispatcher {
    store: Arc<dyn WebhookStore>,
    client: DeliveryClient,
    clock: Arc<dyn Clock>,
    retry: RetryPolicy,
    /// A claimed delivery is leased for this long: longer than one attempt can take.
    lease: chrono::Duration,
    /// Wakes the delivery loop when something was enqueued.
    wake: Arc<Notify>,
    /// How long the previous secret keeps signing after a rotation, by default.
    rotation_overlap: chrono::Duration,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("retry", &self.retry)
            .field("client", self.client.settings())
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn WebhookStore>,
        client: DeliveryClient,
        clock: Arc<dyn Clock>,
        retry: RetryPolicy,
        attempt_timeout: Duration,
    ) -> Self {
        metrics::describe_counter!(
            "larachat_webhooks_attempts_total",
            "Webhook delivery attempts, by result (delivered, failed)"
        );
        let lease = chrono::Duration::from_std(attempt_timeout * 3 + Duration::from_secs(30))
            .unwrap_or(chrono::Duration::minutes(5));
        Self {
            store,
            client,
            clock,
            retry,
            lease,
            wake: Arc::new(Notify::new()),
            rotation_overlap: chrono::Duration::hours(24),
        }
    }

    /// Sets the default overlap of a secret rotation.
    pub fn with_rotation_overlap(mut self, overlap: Duration) -> Self {
        self.rotation_overlap =
            chrono::Duration::from_std(overlap).unwrap_or(chrono::Duration::hours(24));
        self
    }

    pub fn rotation_overlap(&self) -> chrono::Duration {
        self.rotation_overlap
    }

    /// The rules webhook URLs are registered under.
    pub fn target_policy(&self) -> crate::ssrf::TargetPolicy {
        self.client.settings().policy
    }

    pub fn store(&self) -> &Arc<dyn WebhookStore> {
        &self.store
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Queues `event` for every enabled endpoint of its project whose filter matches;
    /// returns how many deliveries were new.
    pub async fn fan_out(&self, event: &DomainEvent) -> WebhookStoreResult<usize> {
        self.fan_out_batch(&[event]).await
    }

    /// [`fan_out`](Self::fan_out) for a batch of events: each project's endpoints are read
    /// once for the batch, and every delivery of the batch is stored in one call (one
    /// transaction on the single node). Returns how many deliveries were new.
    ///
    /// The endpoints are not cached beyond the batch: a batch is read a few milliseconds
    /// after its events committed, so a registration, change or deletion made anywhere
    /// (another process, another worker sharing the store) is seen by the next batch, as it
    /// was when every event read them; nothing needs invalidating.
    pub async fn fan_out_batch(&self, events: &[&DomainEvent]) -> WebhookStoreResult<usize> {
        // At most one entry per distinct project of the batch (bounded by the batch size).
        let mut endpoints: Vec<(ProjectId, Vec<Endpoint>)> = Vec::new();
        let now = self.clock.now();
        let mut deliveries = Vec::new();
        for event in events {
            let i = match endpoints.iter().position(|(p, _)| *p == event.project_id) {
                Some(i) => i,
                None => {
                    let list = self.store.list_endpoints(event.project_id).await?;
                    endpoints.push((event.project_id, list));
                    endpoints.len() - 1
                }
            };
            let mut matching = endpoints[i]
                .1
                .iter()
                .filter(|e| e.enabled && e.filter.matches(event.kind()))
                .peekable();
            if matching.peek().is_none() {
                continue;
            }
            let body = String::from_utf8_lossy(&event.to_json()).into_owned();
            for e in matching {
                deliveries.push(Delivery::new(
                    event.project_id,
                    e.id,
                    event.id,
                    event.kind().name(),
                    body.clone(),
                    now,
                ));
            }
        }
        let new = self.store.enqueue_many(&deliveries).await?;
        if new > 0 {
            self.wake.notify_one();
        }
        Ok(new)
    }

    /// Queues a `webhook.test` event for one endpoint (whatever its filter); returns its id.
    pub async fn send_test(&self, endpoint: &Endpoint) -> WebhookStoreResult<EventId> {
        let id = EventId::new_v7();
        let now = self.clock.now();
        let body = test_payload(id, endpoint.project_id, now);
        let d = Delivery::new(endpoint.project_id, endpoint.id, id, TEST_EVENT, body, now);
        self.store.enqueue(&d).await?;
        self.wake.notify_one();
        Ok(id)
    }

    /// Starts a new series of attempts for a delivery; `false` if it does not exist.
    pub async fn redeliver(
        &self,
        project: ProjectId,
        endpoint: &Endpoint,
        event: EventId,
    ) -> WebhookStoreResult<bool> {
        let ok = self
            .store
            .redeliver(project, endpoint.id, event, self.clock.now())
            .await?;
        if ok {
            self.wake.notify_one();
        }
        Ok(ok)
    }

    /// One pass: claims what is due now and attempts it. Returns the attempts made.
    pub async fn run_due(&self) -> WebhookStoreResult<usize> {
        let now = self.clock.now();
        let due = self.store.claim_due(now, now + self.lease, BATCH).await?;
        let n = due.len();
        let results: Vec<WebhookStoreResult<()>> = futures::stream::iter(due)
            .map(|d| self.attempt(d))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for r in results {
            r?;
        }
        Ok(n)
    }

    /// Runs passes until nothing is due at the clock's current time.
    pub async fn drain(&self) -> WebhookStoreResult<usize> {
        let mut total = 0;
        loop {
            let n = self.run_due().await?;
            total += n;
            if n == 0 {
                return Ok(total);
            }
        }
    }

    async fn attempt(&self, d: Delivery) -> WebhookStoreResult<()> {
        let endpoint = self.store.get_endpoint(d.project_id, d.endpoint_id).await?;
        let (attempt, state) = self.try_delivery(d, endpoint).await?;
        self.store.record_attempt(&attempt, &state).await
    }

    /// Makes one attempt of `d` to `endpoint` (as read for it; `None` if deleted) and returns
    /// the attempt and the delivery's new state, for the caller to record (which releases
    /// the lease). A `410 Gone` disables the endpoint here.
    async fn try_delivery(
        &self,
        mut d: Delivery,
        endpoint: Option<Endpoint>,
    ) -> WebhookStoreResult<(Attempt, Delivery)> {
        let now = self.clock.now();
        let mut attempt = Attempt {
            project_id: d.project_id,
            endpoint_id: d.endpoint_id,
            event_id: d.event_id,
            attempt: d.attempts + 1,
            at: now,
            succeeded: false,
            response_code: None,
            response_body: String::new(),
            duration_ms: 0,
            error: None,
            next_attempt_at: None,
        };
        d.attempts += 1;
        d.series_attempts += 1;
        d.updated_at = now;
        let verdict = match &endpoint {
            None => {
                attempt.error = Some("endpoint_deleted".into());
                None
            }
            Some(e) if !e.enabled => {
                attempt.error = Some("endpoint_disabled".into());
                None
            }
            Some(e) => Some(match TargetUrl::from_stored(&e.url) {
                Err(err) => {
                    attempt.error = Some(format!("refused_target: {err}"));
                    (Verdict::Retry, None)
                }
                Ok(url) => {
                    let secrets = e.signing_secrets(now);
                    let out = self
                        .client
                        .deliver(
                            &url,
                            &secrets,
                            Outgoing {
                                id: &d.event_id.to_string(),
                                timestamp: now,
                                body: d.payload.as_bytes(),
                            },
                        )
                        .await;
                    attempt.response_code = out.status;
                    attempt.response_body = out.body;
                    attempt.duration_ms =
                        u32::try_from(out.duration.as_millis()).unwrap_or(u32::MAX);
                    attempt.error = out.error;
                    d.last_response_code = out.status;
                    (Verdict::of_status(out.status), out.retry_after)
                }
            }),
        };
        match verdict {
            Some((Verdict::Delivered, _)) => {
                attempt.succeeded = true;
                d.status = DeliveryStatus::Succeeded;
                d.next_attempt_at = None;
            }
            Some((Verdict::Retry, retry_after)) => {
                d.next_attempt_at = self.retry.next_after_failure(
                    d.series_started_at,
                    d.series_attempts,
                    now,
                    retry_after,
                    &mut rand::thread_rng(),
                );
                // No attempt left: a dead letter (kept, redeliverable).
                if d.next_attempt_at.is_none() {
                    d.status = DeliveryStatus::Failed;
                }
                attempt.next_attempt_at = d.next_attempt_at;
            }
            Some((Verdict::Gone, _)) => {
                d.status = DeliveryStatus::Failed;
                d.next_attempt_at = None;
                if let Some(mut e) = endpoint {
                    e.enabled = false;
                    e.disabled_reason = Some("gone".into());
                    e.updated_at = now;
                    self.store.update_endpoint(&e).await?;
                    tracing::info!(endpoint = %e.id, "webhook endpoint answered 410 Gone: disabled");
                }
            }
            None => {
                // Nothing to deliver to (deleted or disabled endpoint): a dead letter,
                // redeliverable once the endpoint is enabled again.
                d.status = DeliveryStatus::Failed;
                d.next_attempt_at = None;
            }
        }
        metrics::counter!(
            "larachat_webhooks_attempts_total",
            "result" => if attempt.succeeded { "delivered" } else { "failed" }
        )
        .increment(1);
        Ok((attempt, d))
    }
}

/// The body of a `webhook.test` event: the payload shape of every event.
pub fn test_payload(id: EventId, project: ProjectId, at: chrono::DateTime<Utc>) -> String {
    serde_json::json!({
        "id": id.to_string(),
        "event": TEST_EVENT,
        "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "project_id": project.to_string(),
        "data": {"message": "This is a test event from Lara Chat."},
    })
    .to_string()
}

/// Feeds deliveries from the event log until `shutdown`. Errors (log or store unavailable)
/// are logged and retried after a pause; nothing is acknowledged that was not stored.
pub async fn run_consumer(
    log: Arc<dyn EventLog>,
    dispatcher: Dispatcher,
    shutdown: CancellationToken,
) {
    let name = match ConsumerName::new(CONSUMER) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!("webhooks consumer: {e}");
            return;
        }
    };
    let mut consumer = loop {
        match log.consumer(&name, ConsumerOptions::default()).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!("webhooks consumer unavailable: {e}");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    };
    loop {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => return,
            b = consumer.fetch(BATCH, Duration::from_secs(1)) => b,
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("webhooks consumer fetch: {e}");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
        };
        // Fan out the whole batch at once (each project's endpoints read once, every
        // delivery stored in one transaction), then acknowledge it: the acks move the
        // consumer's position (the SQLite log keeps it in memory and writes it about once a
        // second). If the fan-out fails nothing is acknowledged and the log delivers the
        // batch again after its ack wait (deliveries already stored are not stored twice).
        let drained = batch.len() < BATCH;
        let events: Vec<&DomainEvent> = batch.iter().map(|d| &d.event).collect();
        if let Err(e) = dispatcher.fan_out_batch(&events).await {
            tracing::warn!("webhooks fan-out: {e}");
            continue;
        }
        for r in futures::future::join_all(batch.into_iter().map(|d| d.ack())).await {
            if let Err(e) = r {
                tracing::warn!("webhooks consumer ack: {e}");
            }
        }
        if drained {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(LINGER) => {}
            }
        }
    }
}

/// Attempts due deliveries until `shutdown`, as a pipeline: up to `CONCURRENCY` attempts are
/// in flight at any time and freed slots are refilled as soon as half of them are free (one
/// claim per several deliveries), so one slow endpoint (up to the 10 s timeout per attempt)
/// holds one slot instead of stalling a whole pass of other deliveries. Claims again whenever
/// something is enqueued, and at least every `poll` for retries that became due.
///
/// Each claim reads the endpoints of its deliveries once (one read per distinct endpoint, a
/// few milliseconds before the attempts, as fresh as a read per attempt was). Finished
/// attempts go to a recorder task that logs them in batches (one transaction for whatever
/// finished meanwhile, see [`WebhookStore::record_attempts`]); until its attempt is recorded a
/// delivery stays leased, so it is not attempted twice, and a crash before the record only
/// makes it due again when the lease runs out (at least once).
pub async fn run_deliveries(dispatcher: Dispatcher, poll: Duration, shutdown: CancellationToken) {
    let (done, results) = tokio::sync::mpsc::channel(RECORD_BATCH);
    let recorder = tokio::spawn(record_attempts(dispatcher.store.clone(), results));
    // Attempts run as tasks of their own, so they progress while this loop awaits a claim.
    let mut in_flight = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Nothing more was due at the last claim: wait for an enqueue or the next tick.
    let mut idle = false;
    loop {
        if !idle && in_flight.len() <= CONCURRENCY / 2 {
            let want = CONCURRENCY - in_flight.len();
            let now = dispatcher.clock.now();
            let due = match dispatcher
                .store
                .claim_due(now, now + dispatcher.lease, want)
                .await
            {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!("webhook deliveries: {e}");
                    idle = true;
                    continue;
                }
            };
            idle = due.len() < want;
            // At most one entry per distinct endpoint of the claim (≤ CONCURRENCY).
            let mut endpoints: Vec<(EndpointId, Option<Endpoint>)> = Vec::new();
            for d in due {
                let endpoint = match endpoints.iter().find(|(id, _)| *id == d.endpoint_id) {
                    Some((_, e)) => e.clone(),
                    None => match dispatcher
                        .store
                        .get_endpoint(d.project_id, d.endpoint_id)
                        .await
                    {
                        Ok(e) => {
                            endpoints.push((d.endpoint_id, e.clone()));
                            e
                        }
                        Err(e) => {
                            // Leased: attempted when the lease runs out.
                            tracing::warn!("webhook deliveries: {e}");
                            idle = true;
                            continue;
                        }
                    },
                };
                let dispatcher = dispatcher.clone();
                let done = done.clone();
                in_flight.spawn(async move {
                    let result = dispatcher.try_delivery(d, endpoint).await?;
                    done.send(result).await.map_err(|_| {
                        WebhookStoreError::Unavailable("the attempt recorder stopped".into())
                    })
                });
            }
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(r) = in_flight.join_next(), if !in_flight.is_empty() => {
                match r {
                    Ok(Err(e)) => tracing::warn!("webhook delivery: {e}"),
                    Err(e) => tracing::warn!("webhook delivery task: {e}"),
                    Ok(Ok(())) => {}
                }
            }
            _ = dispatcher.wake.notified() => idle = false,
            _ = tick.tick() => idle = false,
        }
    }
    // Attempts still in flight are abandoned (aborted; their leases run out); what finished
    // is recorded before returning.
    in_flight.shutdown().await;
    drop(done);
    let _ = recorder.await;
}

/// Attempts recorded per transaction, at most.
const RECORD_BATCH: usize = 256;

/// Records finished attempts: waits for one, takes whatever else has finished meanwhile, and
/// stores them together. Returns when every sender is gone and all is recorded.
async fn record_attempts(
    store: Arc<dyn WebhookStore>,
    mut results: tokio::sync::mpsc::Receiver<(Attempt, Delivery)>,
) {
    let mut batch = Vec::with_capacity(RECORD_BATCH);
    while let Some(first) = results.recv().await {
        batch.push(first);
        while batch.len() < RECORD_BATCH {
            match results.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        if let Err(e) = store.record_attempts(&batch).await {
            // Still leased: attempted again when their leases run out (at least once).
            tracing::warn!(attempts = batch.len(), "recording webhook attempts: {e}");
        }
        batch.clear();
    }
}
