//! Control-plane notices that every gateway obeys, carried as JSON on
//! [`Subject::control`](crate::subject::Subject::control).
//!
//! Gateways cache API keys and projects; these notices make a change take effect everywhere
//! at once, with the cache TTL as the backstop if a notice is lost (the bus is at-most-once).

use serde::{Deserialize, Serialize};

use crate::id::{AdminUserId, ApiKeyId, ProjectId};
use crate::plan::PlanId;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlEvent {
    /// The key was revoked: forget it and close its connections.
    KeyRevoked {
        key_id: ApiKeyId,
        project_id: ProjectId,
    },
    /// The project changed (status, plan, settings) or was deleted: reload it.
    ProjectChanged { project_id: ProjectId },
    /// A plan's limits or features changed: forget cached plan limits.
    PlanChanged { plan_id: PlanId },
    /// A project member's role changed or the membership ended: forget the cached
    /// membership (agent tokens issued to it are re-checked).
    MemberChanged {
        project_id: ProjectId,
        admin_id: AdminUserId,
    },
}

impl ControlEvent {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
    pub fn from_json(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let e = ControlEvent::KeyRevoked {
            key_id: ApiKeyId::new_v7(),
            project_id: ProjectId::new_v7(),
        };
        assert_eq!(ControlEvent::from_json(&e.to_json()), Some(e));
        let e = ControlEvent::PlanChanged {
            plan_id: PlanId::free(),
        };
        assert_eq!(
            String::from_utf8(e.to_json()).unwrap(),
            r#"{"type":"plan_changed","plan_id":"free"}"#
        );
        assert_eq!(ControlEvent::from_json(&e.to_json()), Some(e));
        assert_eq!(ControlEvent::from_json(b"{\"type\":\"nope\"}"), None);
    }
}
