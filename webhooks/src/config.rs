//! `[webhooks]`: the delivery settings.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::ClientSettings;
use crate::retry::RetryPolicy;
use crate::ssrf::TargetPolicy;

/// `[webhooks]` of the configuration file (`LARACHAT_WEBHOOKS__*`; the seed's
/// `WEBHOOK_RETRY_ATTEMPTS` is an alias of `retry_attempts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Development and tests only: allow `http://` URLs and loopback addresses. Private,
    /// link-local and metadata addresses stay refused.
    pub allow_insecure_targets: bool,
    /// Attempts per event and endpoint, the first included (1..=50).
    pub retry_attempts: u32,
    /// Seconds from the first attempt to the last retry (at least 3 days by default).
    pub retry_horizon_secs: u64,
    /// Longest `Retry-After` honoured, in seconds.
    pub max_retry_after_secs: u64,
    /// Total time of one attempt, in seconds.
    pub timeout_secs: u64,
    /// Bytes of a response body kept in the deliveries log.
    pub response_body_cap: usize,
    /// Days the deliveries log is kept.
    pub log_retention_days: u32,
    /// Hours the previous secret stays valid after a rotation, unless the request says.
    pub rotation_overlap_hours: u32,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            allow_insecure_targets: false,
            retry_attempts: 15,
            retry_horizon_secs: 3 * 24 * 3600,
            max_retry_after_secs: 3600,
            timeout_secs: 10,
            response_body_cap: 64 * 1024,
            log_retention_days: 30,
            rotation_overlap_hours: 24,
        }
    }
}

impl WebhooksConfig {
    /// Checks values that types alone cannot; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=50).contains(&self.retry_attempts) {
            return Err("webhooks.retry_attempts must be 1..=50".into());
        }
        if self.retry_horizon_secs == 0 || self.timeout_secs == 0 {
            return Err("webhooks.retry_horizon_secs and timeout_secs must be positive".into());
        }
        if !(1..=300).contains(&self.timeout_secs) {
            return Err("webhooks.timeout_secs must be 1..=300".into());
        }
        if !(1024..=1024 * 1024).contains(&self.response_body_cap) {
            return Err("webhooks.response_body_cap must be 1 KiB..=1 MiB".into());
        }
        if self.log_retention_days == 0 {
            return Err("webhooks.log_retention_days must be positive".into());
        }
        Ok(())
    }

    pub fn target_policy(&self) -> TargetPolicy {
        TargetPolicy {
            allow_insecure: self.allow_insecure_targets,
        }
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            attempts: self.retry_attempts,
            horizon: Duration::from_secs(self.retry_horizon_secs),
            max_retry_after: Duration::from_secs(self.max_retry_after_secs),
        }
    }

    pub fn client_settings(&self) -> ClientSettings {
        ClientSettings {
            policy: self.target_policy(),
            timeout: Duration::from_secs(self.timeout_secs),
            body_cap: self.response_body_cap,
        }
    }
}
