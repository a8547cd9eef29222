//! The buckets: one `governor` rate limiter per [`Kind`] (and per distinct per-project rule),
//! each keeping its per-key state in a bounded `moka` cache.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use governor::clock::{Clock, FakeRelativeClock};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use moka::sync::Cache;
use parking_lot::Mutex;

use larachat_core::ApiError;
use larachat_core::error::RateLimitInfo;
use larachat_core::throttle::PowersOfTwo;

use crate::client_ip;
use crate::config::{LimitsConfig, ProjectLimits, Rule};

/// Distinct rules one kind of bucket may hold (the configured one plus per-project
/// overrides). Plans give a handful; past this, overrides fall back to the configured rule.
const MAX_RULES_PER_KIND: usize = 32;

/// Which bucket a check goes to. The name is the configuration key and the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Ip,
    ApiKey,
    EndUser,
    Project,
    LoginIp,
    LoginAccount,
    WidgetInitIp,
    WidgetInitProject,
    Messages,
}

impl Kind {
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Ip => "ip",
            Kind::ApiKey => "api_key",
            Kind::EndUser => "end_user",
            Kind::Project => "project",
            Kind::LoginIp => "login_ip",
            Kind::LoginAccount => "login_account",
            Kind::WidgetInitIp => "widget_init_ip",
            Kind::WidgetInitProject => "widget_init_project",
            Kind::Messages => "messages",
        }
    }

    /// What a refusal says.
    const fn refusal(self) -> &'static str {
        match self {
            Kind::Ip => "too many requests from this address",
            Kind::ApiKey => "too many requests for this API key",
            Kind::EndUser => "too many requests for this user",
            Kind::Project => "too many requests for this project",
            Kind::LoginIp => "too many login attempts from this address",
            Kind::LoginAccount => "too many login attempts for this account",
            Kind::WidgetInitIp => "too many widget sessions started from this address",
            Kind::WidgetInitProject => "too many widget sessions started for this project",
            Kind::Messages => "too many messages; slow down",
        }
    }

    fn rule(self, c: &LimitsConfig) -> Rule {
        match self {
            Kind::Ip => c.ip,
            Kind::ApiKey => c.api_key,
            Kind::EndUser => c.end_user,
            Kind::Project => c.project,
            Kind::LoginIp => c.login_ip,
            Kind::LoginAccount => c.login_account,
            Kind::WidgetInitIp => c.widget_init_ip,
            Kind::WidgetInitProject => c.widget_init_project,
            Kind::Messages => c.messages,
        }
    }

    fn override_in(self, p: &ProjectLimits) -> Option<Rule> {
        match self {
            Kind::ApiKey => p.api_key,
            Kind::EndUser => p.end_user,
            Kind::Project => p.project,
            Kind::WidgetInitProject => p.widget_init_project,
            Kind::Messages => p.messages,
            Kind::Ip | Kind::LoginIp | Kind::LoginAccount | Kind::WidgetInitIp => None,
        }
    }
}

/// The clock of the buckets: the monotonic clock, or a manual one in tests.
#[derive(Debug, Clone)]
enum LimitClock {
    Real(Instant),
    Manual(FakeRelativeClock),
}

impl Clock for LimitClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        match self {
            LimitClock::Real(start) => Nanos::from(start.elapsed()),
            LimitClock::Manual(c) => c.now(),
        }
    }
}

/// A clock tests move by hand (see [`Limits::with_manual_clock`]).
#[derive(Debug, Clone, Default)]
pub struct ManualClock(FakeRelativeClock);

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        self.0.advance(by);
    }
}

/// Per-key GCRA states in a bounded cache. A key idle for as long as its bucket takes to
/// refill is in the same state as a fresh one, so the time-to-idle forgets nothing that
/// matters; the capacity bounds memory when many keys are busy at once (the cache's
/// frequency-based admission keeps the keys that keep coming back, which are the ones being
/// limited).
struct BoundedStore {
    cache: Cache<u64, Arc<InMemoryState>>,
}

impl StateStore for BoundedStore {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let state = self.cache.get_with(*key, Default::default);
        state.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

/// One rule's limiter, and a handle on its per-key states.
struct Bucket {
    limiter: RateLimiter<u64, BoundedStore, LimitClock, StateInformationMiddleware>,
    keys: Cache<u64, Arc<InMemoryState>>,
}

/// Every rate limit of a process. Cheap to share (`Arc`); one per process, used by the
/// gateway and the control plane.
pub struct Limits {
    config: LimitsConfig,
    clock: LimitClock,
    hasher: RandomState,
    buckets: Mutex<HashMap<(Kind, Rule), Arc<Bucket>>>,
    /// Overrides that found no room for their rule (logged at powers of two).
    overflow: PowersOfTwo,
}

impl Limits {
    /// The limits of `config` (checked with [`LimitsConfig::validate`] by the caller).
    pub fn new(config: LimitsConfig) -> Self {
        Self::with_clock(config, LimitClock::Real(Instant::now()))
    }

    /// Limits on a clock the caller moves ([`ManualClock::advance`]).
    pub fn with_manual_clock(config: LimitsConfig) -> (Self, ManualClock) {
        let clock = ManualClock::default();
        (
            Self::with_clock(config, LimitClock::Manual(clock.0.clone())),
            clock,
        )
    }

    fn with_clock(config: LimitsConfig, clock: LimitClock) -> Self {
        metrics::describe_counter!(
            "larachat_ratelimit_refused_total",
            "Requests, frames and logins refused by a rate limit, by bucket"
        );
        Self {
            config,
            clock,
            hasher: RandomState::new(),
            buckets: Mutex::new(HashMap::new()),
            overflow: PowersOfTwo::default(),
        }
    }

    /// Limits that never refuse.
    pub fn disabled() -> Self {
        Self::new(LimitsConfig {
            enabled: false,
            ..LimitsConfig::default()
        })
    }

    pub fn config(&self) -> &LimitsConfig {
        &self.config
    }

    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// The client address of a request whose TCP peer is `peer` (see [`client_ip`]).
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        client_ip::resolve(peer, headers, &self.config.trusted_proxies)
    }

    /// Takes one request from `key`'s bucket of `kind` (with the project's override, if it
    /// has one). `Ok(None)` when limits are off, `Ok(Some(state))` when it passed,
    /// `Err(rate_limited)` with the retry hint otherwise.
    pub fn check<K: Hash + ?Sized>(
        &self,
        kind: Kind,
        key: &K,
        project: Option<&ProjectLimits>,
    ) -> Result<Option<RateLimitInfo>, ApiError> {
        if !self.config.enabled {
            return Ok(None);
        }
        let rule = project
            .and_then(|p| kind.override_in(p))
            .unwrap_or_else(|| kind.rule(&self.config));
        let bucket = self.bucket(kind, rule);
        let hashed = self.hasher.hash_one(key);
        let interval = rule.rate.interval();
        match bucket.limiter.check_key(&hashed) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let missing = rule.burst.saturating_sub(remaining);
                Ok(Some(RateLimitInfo {
                    limit: rule.burst,
                    remaining,
                    reset: interval.saturating_mul(missing),
                    retry_after: Duration::ZERO,
                }))
            }
            Err(not_until) => {
                metrics::counter!("larachat_ratelimit_refused_total", "limit" => kind.name())
                    .increment(1);
                let retry_after = not_until.wait_time_from(self.clock.now());
                let reset = retry_after + interval.saturating_mul(rule.burst.saturating_sub(1));
                Err(ApiError::rate_limited(
                    format!(
                        "{}; retry in {} s",
                        kind.refusal(),
                        retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0)
                    ),
                    RateLimitInfo {
                        limit: rule.burst,
                        remaining: 0,
                        reset,
                        retry_after,
                    },
                ))
            }
        }
    }

    /// Keys currently tracked by the buckets of `kind` (after pending evictions ran).
    pub fn tracked_keys(&self, kind: Kind) -> u64 {
        let buckets: Vec<Arc<Bucket>> = self
            .buckets
            .lock()
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|(_, b)| b.clone())
            .collect();
        buckets
            .iter()
            .map(|b| {
                b.keys.run_pending_tasks();
                b.keys.entry_count()
            })
            .sum()
    }

    fn bucket(&self, kind: Kind, rule: Rule) -> Arc<Bucket> {
        let mut buckets = self.buckets.lock();
        if let Some(b) = buckets.get(&(kind, rule)) {
            return b.clone();
        }
        let default = kind.rule(&self.config);
        let rule = if rule != default
            && buckets.keys().filter(|(k, _)| *k == kind).count() >= MAX_RULES_PER_KIND
        {
            if let Some(n) = self.overflow.add(1) {
                tracing::warn!(
                    limit = kind.name(),
                    overflows = n,
                    "too many distinct per-project rules; using the configured one"
                );
            }
            default
        } else {
            rule
        };
        buckets
            .entry((kind, rule))
            .or_insert_with(|| Arc::new(self.new_bucket(rule)))
            .clone()
    }

    fn new_bucket(&self, rule: Rule) -> Bucket {
        let burst =
            std::num::NonZeroU32::new(rule.burst.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
        let quota = Quota::with_period(rule.rate.interval())
            .unwrap_or_else(|| Quota::per_second(burst))
            .allow_burst(burst);
        let idle = quota.burst_size_replenished_in() + quota.replenish_interval();
        let keys = Cache::builder()
            .max_capacity(self.config.max_keys)
            .time_to_idle(idle)
            .build();
        let store = BoundedStore {
            cache: keys.clone(),
        };
        Bucket {
            limiter: RateLimiter::<u64, BoundedStore, LimitClock, StateInformationMiddleware>::new(
                quota,
                store,
                self.clock.clone(),
            ),
            keys,
        }
    }
}

impl fmt::Debug for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limits")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::new(LimitsConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Per;
    use larachat_core::ErrorCode;

    fn config() -> LimitsConfig {
        LimitsConfig {
            ip: Rule::new(60, Per::Minute, 5),
            ..LimitsConfig::default()
        }
    }

    #[test]
    fn burst_then_refill_at_the_rate() {
        let (limits, clock) = Limits::with_manual_clock(config());
        let mut remaining = Vec::new();
        for _ in 0..5 {
            let info = limits.check(Kind::Ip, "a", None).unwrap().unwrap();
            assert_eq!(info.limit, 5);
            remaining.push(info.remaining);
        }
        assert_eq!(remaining, [4, 3, 2, 1, 0]);
        let refused = limits.check(Kind::Ip, "a", None).unwrap_err();
        assert_eq!(refused.code, ErrorCode::RateLimited);
        let hint = refused.rate_limit.as_deref().copied().unwrap();
        assert_eq!(hint.remaining, 0);
        assert_eq!(hint.retry_after, Duration::from_secs(1));
        assert_eq!(hint.retry_after_secs(), 1);
        assert!(refused.message.contains("retry in 1 s"), "{refused}");
        // Another key has its own bucket.
        assert!(limits.check(Kind::Ip, "b", None).is_ok());
        // One request per second comes back.
        clock.advance(Duration::from_millis(999));
        assert!(limits.check(Kind::Ip, "a", None).is_err());
        clock.advance(Duration::from_millis(1));
        assert!(limits.check(Kind::Ip, "a", None).is_ok());
        assert!(limits.check(Kind::Ip, "a", None).is_err());
        // After a full refill, the whole burst again.
        clock.advance(Duration::from_secs(5));
        let info = limits.check(Kind::Ip, "a", None).unwrap().unwrap();
        assert_eq!(info.remaining, 4);
        assert_eq!(info.reset, Duration::from_secs(1));
    }

    #[test]
    fn kinds_are_separate_buckets() {
        let (limits, _clock) = Limits::with_manual_clock(LimitsConfig {
            login_ip: Rule::new(1, Per::Hour, 1),
            ..config()
        });
        assert!(limits.check(Kind::LoginIp, "a", None).is_ok());
        assert!(limits.check(Kind::LoginIp, "a", None).is_err());
        assert!(
            limits.check(Kind::Ip, "a", None).is_ok(),
            "ip is another bucket"
        );
        let e = limits.check(Kind::LoginIp, "a", None).unwrap_err();
        assert_eq!(e.rate_limit.unwrap().retry_after, Duration::from_secs(3600));
    }

    #[test]
    fn projects_override_their_buckets() {
        let (limits, _clock) = Limits::with_manual_clock(LimitsConfig {
            project: Rule::new(1, Per::Minute, 2),
            ..config()
        });
        let big = ProjectLimits {
            project: Some(Rule::new(10, Per::Second, 50)),
            ..ProjectLimits::default()
        };
        for _ in 0..50 {
            assert!(limits.check(Kind::Project, "p1", Some(&big)).is_ok());
        }
        assert!(limits.check(Kind::Project, "p1", Some(&big)).is_err());
        let none = ProjectLimits::default();
        assert!(limits.check(Kind::Project, "p2", Some(&none)).is_ok());
        assert!(limits.check(Kind::Project, "p2", Some(&none)).is_ok());
        assert!(limits.check(Kind::Project, "p2", Some(&none)).is_err());
        // Rules that cannot be overridden per project ignore the section.
        let ip = ProjectLimits {
            project: Some(Rule::new(1, Per::Hour, 1)),
            ..ProjectLimits::default()
        };
        for _ in 0..5 {
            assert!(limits.check(Kind::Ip, "x", Some(&ip)).is_ok());
        }
    }

    #[test]
    fn disabled_limits_never_refuse() {
        let limits = Limits::disabled();
        for _ in 0..10_000 {
            assert_eq!(limits.check(Kind::LoginAccount, "a", None), Ok(None));
        }
    }

    #[test]
    fn memory_is_bounded_by_max_keys() {
        let (limits, _clock) = Limits::with_manual_clock(LimitsConfig {
            max_keys: 1000,
            ..config()
        });
        for i in 0..20_000u32 {
            let _ = limits.check(Kind::Ip, &i, None);
        }
        let tracked = limits.tracked_keys(Kind::Ip);
        assert!(tracked <= 1000, "{tracked} keys tracked");
        // A key that keeps coming back is still limited in the flood.
        let (limits, _clock) = Limits::with_manual_clock(LimitsConfig {
            max_keys: 1000,
            ..config()
        });
        let mut refused = 0;
        for i in 0..20_000u32 {
            let _ = limits.check(Kind::Ip, &i, None);
            if limits.check(Kind::Ip, "attacker", None).is_err() {
                refused += 1;
            }
        }
        assert!(refused > 19_000, "the busy key was refused {refused} times");
    }
}
