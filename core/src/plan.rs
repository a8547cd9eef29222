//! Plans as data, usage periods and quota refusals.
//!
//! A [`Plan`] is a row of the store (`plans` table in both backends), editable by platform
//! admins: its limits ([`PlanLimits`], each `None` = unlimited) and its features. A project
//! names its plan by [`PlanId`] (the slug, `"free"`, which is also the JSON wire value).
//! [`Plan::seed`] is the seed's four plans, written by the stores' migrations.
//!
//! Usage is counted per project per calendar month in UTC ([`Period`]); a refusal because a
//! limit is reached is a [`QuotaExceeded`], which names the limit and the time it resets.

use std::collections::BTreeSet;
use std::fmt;

use crate::id::ProjectId;
use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// A plan's id: a slug of 1 to 32 characters `[a-z0-9_-]`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PlanId(String);

/// A string that is not a valid [`PlanId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a plan id is 1 to 32 characters a-z, 0-9, '_' or '-', starting with a letter or digit")]
pub struct InvalidPlanId;

impl PlanId {
    pub const MAX_LEN: usize = 32;

    pub fn parse(s: &str) -> Result<Self, InvalidPlanId> {
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
            && s.as_bytes()[0].is_ascii_alphanumeric();
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidPlanId)
        }
    }

    /// The seed's free plan, the default plan of new projects unless configured otherwise.
    pub fn free() -> Self {
        Self("free".into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for PlanId {
    fn default() -> Self {
        Self::free()
    }
}

impl TryFrom<String> for PlanId {
    type Error = InvalidPlanId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<PlanId> for String {
    fn from(p: PlanId) -> Self {
        p.0
    }
}

impl fmt::Display for PlanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for PlanId {
    type Err = InvalidPlanId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for PlanId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^[a-z0-9][a-z0-9_-]{0,31}$"))
            .examples([serde_json::json!("free")])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for PlanId {}

/// What a plan allows. `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PlanLimits {
    /// Distinct end users active in a calendar month (created, identified, sent a message or
    /// were a member of a conversation opened that month).
    pub monthly_active_users: Option<u64>,
    /// Messages sent in a calendar month (all senders).
    pub messages_per_month: Option<u64>,
    /// Projects one admin may own, counted when a project on this plan is created.
    pub projects_per_owner: Option<u64>,
}

/// A plan: limits and features.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Plan {
    pub id: PlanId,
    /// Display name.
    pub name: String,
    pub limits: PlanLimits,
    /// Feature flags, e.g. `custom_branding`.
    pub features: BTreeSet<String>,
    pub updated_at: DateTime<Utc>,
}

impl Plan {
    /// The seed's four plans (Free, Starter, Pro, Enterprise), as the migrations write them.
    pub fn seed(at: DateTime<Utc>) -> Vec<Plan> {
        let plan = |id: &str, name: &str, mau, msgs, projects, features: &[&str]| Plan {
            id: PlanId(id.into()),
            name: name.into(),
            limits: PlanLimits {
                monthly_active_users: mau,
                messages_per_month: msgs,
                projects_per_owner: projects,
            },
            features: features.iter().map(|f| (*f).to_owned()).collect(),
            updated_at: at,
        };
        vec![
            plan("free", "Free", Some(100), Some(1_000), Some(1), &[]),
            plan(
                "starter",
                "Starter",
                Some(1_000),
                Some(10_000),
                Some(3),
                &[],
            ),
            plan(
                "pro",
                "Pro",
                Some(10_000),
                Some(100_000),
                Some(10),
                &["custom_branding"],
            ),
            plan(
                "enterprise",
                "Enterprise",
                None,
                None,
                None,
                &["custom_branding"],
            ),
        ]
    }

    pub fn has_feature(&self, feature: &str) -> bool {
        self.features.contains(feature)
    }
}

/// A feature flag name: 1 to 64 characters `[a-z0-9_]`.
pub fn valid_feature(f: &str) -> bool {
    !f.is_empty()
        && f.len() <= 64
        && f.bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
}

/// A calendar month in UTC: the period usage is counted in and quotas reset after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period {
    year: i32,
    /// 1..=12
    month: u32,
}

/// A string that is not `YYYY-MM`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a period is a month written YYYY-MM (2000-01 to 9999-12)")]
pub struct InvalidPeriod;

impl Period {
    /// The month `at` falls in.
    pub fn of(at: DateTime<Utc>) -> Self {
        Self {
            year: at.year(),
            month: at.month(),
        }
    }

    /// Parses `YYYY-MM`.
    pub fn parse(s: &str) -> Result<Self, InvalidPeriod> {
        let b = s.as_bytes();
        if b.len() != 7 || b[4] != b'-' {
            return Err(InvalidPeriod);
        }
        let digits = |r: std::ops::Range<usize>| {
            b[r.clone()]
                .iter()
                .all(u8::is_ascii_digit)
                .then(|| s[r].parse::<u32>().ok())
                .flatten()
        };
        let (Some(year), Some(month)) = (digits(0..4), digits(5..7)) else {
            return Err(InvalidPeriod);
        };
        if !(2000..=9999).contains(&year) || !(1..=12).contains(&month) {
            return Err(InvalidPeriod);
        }
        Ok(Self {
            year: year as i32,
            month,
        })
    }

    /// The first instant of the month.
    pub fn start(self) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(self.year, self.month, 1, 0, 0, 0)
            .single()
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    /// The month after.
    pub fn next(self) -> Self {
        if self.month == 12 {
            Self {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Self {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// When this period's quotas reset: the first instant of the next month.
    pub fn resets_at(self) -> DateTime<Utc> {
        self.next().start()
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl std::str::FromStr for Period {
    type Err = InvalidPeriod;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Period {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Period {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Period {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^[0-9]{4}-[0-9]{2}$"))
            .examples([serde_json::json!("2026-11")])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Period {}

/// What a project used in one period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UsageCounts {
    pub messages: u64,
    pub conversations: u64,
    pub active_users: u64,
    /// Bytes of message content added: [`content_bytes`] of each message counted.
    pub storage_bytes: u64,
    /// Client API and Widget API requests, metered by the gateways ([`EdgeUsage`]).
    pub api_requests: u64,
    /// The most realtime connections open at once: the largest, over the hours of the
    /// period, of the sum of every gateway process's peak in that hour ([`EdgeUsage`]).
    pub peak_connections: u64,
}

/// What one gateway process metered at the edge for one project in one UTC hour, so far:
/// its API requests and the most realtime connections it held at once.
///
/// Both are running values of that process, never increments: the store keeps the row of
/// (project, hour, process) with the largest values it was given, so writing a row again
/// (a retried flush, a flush after a lost answer) changes nothing. A project's requests are
/// the sum of the rows of the month; its peak connections the largest per-hour sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeUsage {
    pub project: ProjectId,
    /// The hour's first instant.
    pub hour: DateTime<Utc>,
    pub requests: u64,
    pub peak_connections: u64,
}

impl EdgeUsage {
    /// The first instant of the UTC hour of `at`.
    pub fn hour_of(at: DateTime<Utc>) -> DateTime<Utc> {
        let secs = at.timestamp().div_euclid(3600) * 3600;
        DateTime::from_timestamp(secs, 0).unwrap_or(at)
    }

    /// The requests and peak connections of `rows` (any processes and hours of one project
    /// and period): the sum of the requests, and the largest per-hour sum of the peaks.
    pub fn totals<'a>(rows: impl IntoIterator<Item = &'a EdgeUsage>) -> (u64, u64) {
        let mut requests = 0u64;
        let mut per_hour = std::collections::BTreeMap::<DateTime<Utc>, u64>::new();
        for r in rows {
            requests = requests.saturating_add(r.requests);
            let h = per_hour.entry(r.hour).or_default();
            *h = h.saturating_add(r.peak_connections);
        }
        (requests, per_hour.into_values().max().unwrap_or(0))
    }
}

/// The storage a message's content takes, as metered: the UTF-8 length of its text plus the
/// length of its serialized metadata (`{}` when it has none). A function of the message
/// alone, so every writer of one message (sender, retry, repairer) meters the same number.
pub fn content_bytes(text: &str, metadata: &serde_json::Value) -> u64 {
    (text.len() + metadata.to_string().len()) as u64
}

/// A limited quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum QuotaMetric {
    MonthlyActiveUsers,
    MessagesPerMonth,
    ProjectsPerOwner,
}

impl QuotaMetric {
    /// The JSON name (`messages_per_month`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::MonthlyActiveUsers => "monthly_active_users",
            Self::MessagesPerMonth => "messages_per_month",
            Self::ProjectsPerOwner => "projects_per_owner",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::MonthlyActiveUsers => "monthly active end users",
            Self::MessagesPerMonth => "messages per month",
            Self::ProjectsPerOwner => "projects per owner",
        }
    }
}

/// The shares of a monthly limit at which a project is warned (`usage.threshold_reached`).
pub const WARNING_PERCENTS: [u8; 2] = [80, 100];

/// The count at which `percent` of `limit` is reached: ⌈limit × percent / 100⌉, at least 1.
pub fn threshold_count(limit: u64, percent: u8) -> u64 {
    let n = u128::from(limit) * u128::from(percent);
    u64::try_from(n.div_ceil(100)).unwrap_or(u64::MAX).max(1)
}

/// A warning threshold of a monthly limit that a count reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ThresholdCrossing {
    pub metric: QuotaMetric,
    pub percent: u8,
    pub limit: u64,
    /// The count that reached it.
    pub used: u64,
}

impl ThresholdCrossing {
    /// The thresholds of `limit` that a count going from `before` to `after` reaches (none
    /// when it does not grow: a lowered limit is not "reached" by the count already there).
    fn crossed(metric: QuotaMetric, limit: u64, before: u64, after: u64) -> Vec<Self> {
        WARNING_PERCENTS
            .into_iter()
            .filter(|&p| {
                let t = threshold_count(limit, p);
                before < t && t <= after
            })
            .map(|percent| Self {
                metric,
                percent,
                limit,
                used: after,
            })
            .collect()
    }

    /// The thresholds of `limit` that `count` is at or past.
    fn reached(metric: QuotaMetric, limit: u64, count: u64) -> Vec<Self> {
        WARNING_PERCENTS
            .into_iter()
            .filter(|&p| threshold_count(limit, p) <= count)
            .map(|percent| Self {
                metric,
                percent,
                limit,
                used: count,
            })
            .collect()
    }

    /// The thresholds of the monthly limits of `limits` that usage going from `before` to
    /// `after` reaches.
    pub fn crossed_by(limits: &PlanLimits, before: &UsageCounts, after: &UsageCounts) -> Vec<Self> {
        Self::per_limit(limits, |metric, limit, pick| {
            Self::crossed(metric, limit, pick(before), pick(after))
        })
    }

    /// The thresholds of the monthly limits of `limits` that `count` is at or past.
    pub fn reached_by(limits: &PlanLimits, count: &UsageCounts) -> Vec<Self> {
        Self::per_limit(limits, |metric, limit, pick| {
            Self::reached(metric, limit, pick(count))
        })
    }

    /// `f` for each limited monthly metric: (metric, limit, the metric's count in a usage).
    fn per_limit(
        limits: &PlanLimits,
        f: impl Fn(QuotaMetric, u64, &dyn Fn(&UsageCounts) -> u64) -> Vec<Self>,
    ) -> Vec<Self> {
        let mut out = Vec::new();
        if let Some(limit) = limits.monthly_active_users {
            out.extend(f(QuotaMetric::MonthlyActiveUsers, limit, &|u| {
                u.active_users
            }));
        }
        if let Some(limit) = limits.messages_per_month {
            out.extend(f(QuotaMetric::MessagesPerMonth, limit, &|u| u.messages));
        }
        out
    }

    /// A key naming the warning for one period: `messages_per_month:80:1000`.
    pub fn key(&self) -> String {
        format!("{}:{}:{}", self.metric.as_str(), self.percent, self.limit)
    }
}

/// A change refused because it would go past a plan limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaExceeded {
    pub metric: QuotaMetric,
    pub limit: u64,
    pub plan: PlanId,
    /// When the limit resets (the next month); `None` for limits that do not reset
    /// (projects per owner).
    pub resets_at: Option<DateTime<Utc>>,
}

impl fmt::Display for QuotaExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the plan '{}' allows {} {}",
            self.plan,
            self.limit,
            self.metric.describe()
        )?;
        match self.resets_at {
            Some(at) => write!(
                f,
                "; the limit resets at {}",
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            None => f.write_str("; upgrade the plan to go beyond it"),
        }
    }
}

impl From<QuotaExceeded> for crate::ApiError {
    fn from(q: QuotaExceeded) -> Self {
        crate::ApiError::new(crate::ErrorCode::QuotaExceeded, q.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_usage_totals_sum_requests_and_take_the_busiest_hour() {
        let p = ProjectId::new_v7();
        let at = |h: u32, m: u32| Utc.with_ymd_and_hms(2026, 11, 30, h, m, 7).unwrap();
        assert_eq!(
            EdgeUsage::hour_of(at(9, 59)),
            Utc.with_ymd_and_hms(2026, 11, 30, 9, 0, 0).unwrap()
        );
        let row = |h: u32, requests, peak| EdgeUsage {
            project: p,
            hour: EdgeUsage::hour_of(at(h, 0)),
            requests,
            peak_connections: peak,
        };
        // Two processes at 9:00 (3 + 4 connections), one at 10:00 (5).
        let rows = [row(9, 10, 3), row(9, 1, 4), row(10, 100, 5)];
        assert_eq!(EdgeUsage::totals(&rows), (111, 7));
        assert_eq!(EdgeUsage::totals(&[]), (0, 0));
    }

    #[test]
    fn plan_ids() {
        assert_eq!(PlanId::parse("free").unwrap(), PlanId::free());
        assert!(PlanId::parse("pro-2026_b").is_ok());
        for bad in ["", "-x", "Free", "a.b", "a b", &"x".repeat(33)] {
            assert!(PlanId::parse(bad).is_err(), "{bad:?}");
        }
        let json = serde_json::to_string(&PlanId::free()).unwrap();
        assert_eq!(json, "\"free\"");
        assert!(serde_json::from_str::<PlanId>("\"a.b\"").is_err());
    }

    #[test]
    fn periods() {
        let p = Period::parse("2026-12").unwrap();
        assert_eq!(p.to_string(), "2026-12");
        assert_eq!(p.resets_at().to_rfc3339(), "2027-01-01T00:00:00+00:00");
        assert_eq!(Period::of(p.start()), p);
        assert_eq!(
            Period::of(p.resets_at() - chrono::Duration::milliseconds(1)),
            p
        );
        for bad in [
            "2026-13",
            "2026-00",
            "26-01",
            "2026/01",
            "２０26-01",
            "1999-12",
            "2026-1",
        ] {
            assert!(Period::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn seed_matches_the_product_description() {
        let plans = Plan::seed(Utc::now());
        let free = &plans[0];
        assert_eq!(free.limits.monthly_active_users, Some(100));
        assert_eq!(free.limits.messages_per_month, Some(1_000));
        assert_eq!(free.limits.projects_per_owner, Some(1));
        assert!(plans[2].has_feature("custom_branding"));
        assert_eq!(plans[3].limits, PlanLimits::default());
    }

    #[test]
    fn warning_thresholds() {
        assert_eq!(threshold_count(1000, 80), 800);
        assert_eq!(threshold_count(1000, 100), 1000);
        assert_eq!(threshold_count(3, 80), 3, "rounded up");
        assert_eq!(threshold_count(0, 80), 1);
        let m = QuotaMetric::MessagesPerMonth;
        let percents = |v: Vec<ThresholdCrossing>| v.iter().map(|c| c.percent).collect::<Vec<_>>();
        assert_eq!(
            percents(ThresholdCrossing::crossed(m, 1000, 799, 800)),
            [80]
        );
        assert_eq!(
            percents(ThresholdCrossing::crossed(m, 1000, 800, 801)),
            [] as [u8; 0]
        );
        assert_eq!(
            percents(ThresholdCrossing::crossed(m, 1000, 999, 1000)),
            [100]
        );
        assert_eq!(
            percents(ThresholdCrossing::crossed(m, 10, 0, 10)),
            [80, 100]
        );
        assert_eq!(
            percents(ThresholdCrossing::crossed(m, 10, 12, 12)),
            [] as [u8; 0]
        );
        assert_eq!(percents(ThresholdCrossing::reached(m, 1000, 850)), [80]);
        let limits = PlanLimits {
            monthly_active_users: Some(10),
            messages_per_month: Some(100),
            projects_per_owner: Some(1),
        };
        let at = |users, messages| UsageCounts {
            active_users: users,
            messages,
            ..UsageCounts::default()
        };
        let both = ThresholdCrossing::crossed_by(&limits, &at(7, 99), &at(8, 100));
        assert_eq!(
            both.iter()
                .map(|c| (c.metric, c.percent, c.used))
                .collect::<Vec<_>>(),
            [
                (QuotaMetric::MonthlyActiveUsers, 80, 8),
                (QuotaMetric::MessagesPerMonth, 100, 100)
            ]
        );
        assert_eq!(ThresholdCrossing::reached_by(&limits, &at(10, 0)).len(), 2);
        assert!(ThresholdCrossing::reached_by(&PlanLimits::default(), &at(9, 9)).is_empty());
        assert_eq!(
            ThresholdCrossing::crossed(m, 1000, 799, 800)[0].key(),
            "messages_per_month:80:1000"
        );
    }

    #[test]
    fn refusal_names_limit_and_reset() {
        let q = QuotaExceeded {
            metric: QuotaMetric::MessagesPerMonth,
            limit: 1000,
            plan: PlanId::free(),
            resets_at: Some(Period::parse("2026-11").unwrap().resets_at()),
        };
        assert_eq!(
            q.to_string(),
            "the plan 'free' allows 1000 messages per month; the limit resets at 2026-12-01T00:00:00Z"
        );
    }
}
