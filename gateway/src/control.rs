//! Obeys control-plane notices: a revoked key stops working and its connections close; a
//! changed project is reloaded and, if no longer active, its connections close; a member
//! removed or whose role changed loses the connections of its agent tokens.
//!
//! The bus is at-most-once, so the key and project caches also expire on their own
//! (`cache_ttl`) as a backstop.
//!
//! It also watches the bus for connection losses ([`Bus::outages`]): live messages published
//! while the bus is away are lost for every subscription of this gateway, and nothing in the
//! subscription streams shows the gap. As soon as a loss is seen, every realtime connection
//! is closed with `4102 unavailable` (retryable); clients reconnect, and their subscriptions
//! are refused (`unavailable`) until the bus is back, then resume from the store (protocol
//! §7). Closing at the loss, not at the recovery, matters: a connection left open would
//! receive the first live messages after the recovery, and a client resuming from 5 s before
//! its newest id would then step over the start of a longer outage. Control notices missed
//! meanwhile are covered by forgetting every cached key and project once the bus answers
//! again.

use std::time::Duration;

use futures::StreamExt;

use larachat_broker::{Bus, BusError};
use larachat_core::ErrorCode;
use larachat_core::control::ControlEvent;
use larachat_core::subject::Subject;

use crate::Gateway;

/// Subscribes to control notices and spawns the task that applies them.
pub(crate) async fn spawn(gw: Gateway) -> Result<(), BusError> {
    let mut notices = gw.bus().subscribe(&Subject::control()).await?;
    let shutdown = gw.shutdown_token().clone();
    let notices_gw = gw.clone();
    gw.tasks().clone().spawn(async move {
        let gw = notices_gw;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                next = notices.next() => {
                    let Some(msg) = next else { break };
                    match ControlEvent::from_json(&msg.payload) {
                        Some(event) => gw.apply_control(&event),
                        None => tracing::warn!("ignoring an unreadable control notice"),
                    }
                }
            }
        }
    });
    if let Some(outages) = gw.bus().outages() {
        gw.tasks()
            .clone()
            .spawn(async move { watch_outages(gw, outages).await });
    }
    Ok(())
}

/// At each bus outage: tell every connection to resume elsewhere or later, then, once the bus
/// answers again, drop cached credentials.
async fn watch_outages(gw: Gateway, mut outages: tokio::sync::watch::Receiver<u64>) {
    let shutdown = gw.shutdown_token().clone();
    outages.mark_unchanged();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = outages.changed() => if changed.is_err() { return },
        }
        let lost = *outages.borrow_and_update();
        metrics::counter!("larachat_gateway_bus_outages_total").increment(1);
        let closed = gw.connections().kick_all(ErrorCode::Unavailable);
        tracing::warn!(
            outages = lost,
            closed,
            "bus connection lost: connections told to reconnect and resume"
        );
        if !wait_for_bus(gw.bus().as_ref(), &shutdown).await {
            return;
        }
        gw.auth().invalidate_all();
        tracing::info!("bus is back: cached keys and projects forgotten");
    }
}

/// Pings until the bus answers; `false` if the gateway shuts down first.
async fn wait_for_bus(bus: &dyn Bus, shutdown: &tokio_util::sync::CancellationToken) -> bool {
    let mut delay = Duration::from_millis(50);
    loop {
        if bus.ping().await.is_ok() {
            return true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

impl Gateway {
    /// Applies a control notice at once: forgets cached credentials and closes the
    /// connections of a revoked key. Synchronous so that a single-node process can call it
    /// before the revoking request answers. Notices arrive twice in a single node (directly
    /// and over the bus); applying one twice is harmless.
    pub fn apply_control(&self, event: &ControlEvent) {
        match *event {
            ControlEvent::KeyRevoked { key_id, .. } => {
                self.auth().invalidate_key(key_id);
                let closed = self.connections().kick_key(key_id, ErrorCode::Unauthorized);
                if closed > 0 {
                    tracing::info!(%key_id, closed, "key revoked: connections closed");
                }
            }
            ControlEvent::ProjectChanged { project_id } => {
                self.auth().invalidate_project(project_id);
                // Its plan may have changed.
                self.store().plans_changed();
                // Whether its connections must go needs a store read: see `check_project`.
                let gw = self.clone();
                let event = event.clone();
                self.tasks()
                    .spawn(async move { check_project(&gw, &event).await });
            }
            ControlEvent::MemberChanged {
                project_id,
                admin_id,
            } => {
                // Removed, or its role changed: its agent tokens' sockets close now, on every
                // gateway (a member still in the project reconnects with a fresh token, which
                // carries what its role allows now).
                self.auth().invalidate_member(project_id, admin_id);
                let closed =
                    self.connections()
                        .kick_member(project_id, admin_id, ErrorCode::Unauthorized);
                if closed > 0 {
                    tracing::info!(%project_id, %admin_id, closed, "membership changed: connections closed");
                }
            }
            ControlEvent::PlanChanged { .. } => {
                // The store applies plan limits; a backend that caches them re-reads now.
                self.store().plans_changed();
            }
        }
    }
}

/// Closes a project's connections if the project is no longer active. Only the store's answer
/// closes them: while it cannot be reached the check is retried (with back-off, until the
/// gateway stops), never taken as "the project is gone".
async fn check_project(gw: &Gateway, event: &ControlEvent) {
    let ControlEvent::ProjectChanged { project_id } = *event else {
        return;
    };
    let shutdown = gw.shutdown_token().clone();
    let mut delay = Duration::from_millis(100);
    loop {
        let code = match gw.auth().require_active_project(project_id).await {
            Ok(_) => return,
            Err(e) if e.code == ErrorCode::ProjectSuspended => ErrorCode::ProjectSuspended,
            Err(e) if e.code == ErrorCode::Unauthorized => ErrorCode::Unauthorized,
            Err(e) => {
                tracing::debug!(%project_id, error = %e.message, "project check postponed: store unreachable");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let closed = gw.connections().kick_project(project_id, code);
        tracing::info!(%project_id, closed, "project no longer active");
        return;
    }
}
