//! Obeys control-plane notices: a revoked key stops working and its connections close; a
//! changed project is reloaded and, if no longer active, its connections close.
//!
//! The bus is at-most-once, so the key and project caches also expire on their own
//! (`cache_ttl`) as a backstop.

use futures::StreamExt;

use larachat_broker::BusError;
use larachat_core::ErrorCode;
use larachat_core::control::ControlEvent;
use larachat_core::subject::Subject;

use crate::Gateway;

/// Subscribes to control notices and spawns the task that applies them.
pub(crate) async fn spawn(gw: Gateway) -> Result<(), BusError> {
    let mut notices = gw.bus().subscribe(&Subject::control()).await?;
    let shutdown = gw.shutdown_token().clone();
    gw.tasks().clone().spawn(async move {
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
    Ok(())
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
                // Whether its connections must go needs a store read: see `check_project`.
                let gw = self.clone();
                let event = event.clone();
                self.tasks()
                    .spawn(async move { check_project(&gw, &event).await });
            }
        }
    }
}

/// Closes a project's connections if the project is no longer active.
async fn check_project(gw: &Gateway, event: &ControlEvent) {
    let ControlEvent::ProjectChanged { project_id } = *event else {
        return;
    };
    if let Err(e) = gw.auth().require_active_project(project_id).await {
        let code = if e.code == ErrorCode::ProjectSuspended {
            ErrorCode::ProjectSuspended
        } else {
            ErrorCode::Unauthorized
        };
        let closed = gw.connections().kick_project(project_id, code);
        tracing::info!(%project_id, closed, "project no longer active");
    }
}
