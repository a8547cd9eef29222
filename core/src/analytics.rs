//! Analytics of a project: the time range asked for, the raw figures a store reads from its
//! rollups ([`AnalyticsData`]), and the answer computed from them ([`ProjectAnalytics`]).
//!
//! Stores keep **hourly** rollups (messages per hour and sender kind, conversations with a
//! message per hour) and one row per conversation with its times (created, first end-user
//! message, first answer, closed). Everything else — day buckets, zero filling, medians and
//! percentiles — is computed here, the same way for every backend, so a backend only has to
//! return the rows of the range.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

/// Most buckets one query may ask for (83 days by the hour, 5 years by the day).
pub const MAX_BUCKETS: i64 = 2000;

/// Size of the buckets of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// UTC hours.
    Hour,
    /// UTC days.
    Day,
}

impl Granularity {
    /// Parses `hour` or `day`.
    pub fn parse(s: &str) -> Result<Self, InvalidRange> {
        match s {
            "hour" => Ok(Self::Hour),
            "day" => Ok(Self::Day),
            _ => Err(InvalidRange("granularity must be 'hour' or 'day'".into())),
        }
    }

    /// The length of one bucket.
    pub fn step(self) -> TimeDelta {
        match self {
            Self::Hour => TimeDelta::hours(1),
            Self::Day => TimeDelta::days(1),
        }
    }

    /// The start of the bucket `at` falls in.
    pub fn floor(self, at: DateTime<Utc>) -> DateTime<Utc> {
        // Rounding to a whole hour or day of the Unix epoch (UTC) cannot overflow for
        // timestamps chrono represents; fall back to `at` rather than panic.
        at.duration_trunc(self.step()).unwrap_or(at)
    }
}

/// A range that cannot be asked for: empty, reversed, too many buckets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRange(pub String);

/// A range of whole buckets: `from` and `to` aligned to the granularity (UTC), `from < to`,
/// at most [`MAX_BUCKETS`] buckets. Built only by [`AnalyticsRange::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnalyticsRange {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    granularity: Granularity,
}

impl AnalyticsRange {
    /// The whole buckets covering `[from, to)`: `from` rounded down, `to` rounded up to the
    /// granularity.
    pub fn new(
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        granularity: Granularity,
    ) -> Result<Self, InvalidRange> {
        if from >= to {
            return Err(InvalidRange("'from' must be before 'to'".into()));
        }
        let step = granularity.step();
        let span = to.signed_duration_since(from);
        // Checked before rounding, so absurd spans never reach date arithmetic.
        if span > step * (MAX_BUCKETS as i32) {
            return Err(InvalidRange(format!(
                "at most {MAX_BUCKETS} buckets per query: narrow the range or use a coarser \
                 granularity"
            )));
        }
        let start = granularity.floor(from);
        let mut end = granularity.floor(to);
        if end < to {
            end = end
                .checked_add_signed(step)
                .ok_or_else(|| InvalidRange("'to' is out of range".into()))?;
        }
        let range = Self {
            from: start,
            to: end,
            granularity,
        };
        if range.buckets() > MAX_BUCKETS as usize {
            return Err(InvalidRange(format!(
                "at most {MAX_BUCKETS} buckets per query: narrow the range or use a coarser \
                 granularity"
            )));
        }
        Ok(range)
    }

    /// The first instant of the range (a bucket start).
    pub fn from(&self) -> DateTime<Utc> {
        self.from
    }

    /// The first instant after the range (a bucket start).
    pub fn to(&self) -> DateTime<Utc> {
        self.to
    }

    pub fn granularity(&self) -> Granularity {
        self.granularity
    }

    /// Whether `at` is in the range.
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.from <= at && at < self.to
    }

    /// How many buckets the range has.
    pub fn buckets(&self) -> usize {
        let step = self.granularity.step().num_milliseconds();
        let span = self.to.signed_duration_since(self.from).num_milliseconds();
        (span / step).max(0) as usize
    }

    /// The start of every bucket, in order.
    pub fn bucket_starts(&self) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        let step = self.granularity.step();
        (0..self.buckets() as i32).map(move |i| self.from + step * i)
    }

    /// The index of the bucket `at` falls in, `None` outside the range.
    pub fn bucket_of(&self, at: DateTime<Utc>) -> Option<usize> {
        if !self.contains(at) {
            return None;
        }
        let step = self.granularity.step().num_milliseconds();
        Some((at.signed_duration_since(self.from).num_milliseconds() / step) as usize)
    }
}

/// Messages of one rollup hour, by sender kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HourCounts {
    /// The start of the hour (UTC).
    pub hour: DateTime<Utc>,
    pub end_user: u64,
    pub agent: u64,
    pub bot: u64,
    pub system: u64,
}

/// The times of one conversation that analytics needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversationTimes {
    pub created_at: DateTime<Utc>,
    /// The first message of an end user, if any.
    pub first_user_message_at: Option<DateTime<Utc>>,
    /// The first message of an agent or a bot after `first_user_message_at`, if any.
    pub first_response_at: Option<DateTime<Utc>>,
    /// When it was closed, if it is closed now.
    pub closed_at: Option<DateTime<Utc>>,
}

/// What a store reads for an [`AnalyticsRange`], from its rollups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnalyticsData {
    /// The rollup hours of the range that have messages, in any order (hours without a row
    /// had none).
    pub hours: Vec<HourCounts>,
    /// Distinct conversations with at least one message in the range.
    pub active_conversations: u64,
    /// The conversations created in the range, in any order.
    pub conversations: Vec<ConversationTimes>,
    /// Conversations of the project open now.
    pub open: u64,
    /// Conversations of the project closed now.
    pub closed: u64,
}

/// Messages of one bucket, in total and by sender kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MessageBucket {
    /// The start of the bucket (UTC).
    pub start: DateTime<Utc>,
    pub count: u64,
    pub end_user: u64,
    pub agent: u64,
    pub bot: u64,
    pub system: u64,
}

/// A count of one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CountBucket {
    /// The start of the bucket (UTC).
    pub start: DateTime<Utc>,
    pub count: u64,
}

/// Median and 90th percentile of durations, in seconds (nearest-rank: the smallest value
/// with at least 50 % / 90 % of the sample at or below it). `null` without a sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DurationStats {
    /// Size of the sample.
    pub count: u64,
    pub median_seconds: Option<f64>,
    pub p90_seconds: Option<f64>,
}

impl DurationStats {
    /// The statistics of durations in milliseconds (any order).
    pub fn of_millis(mut sample: Vec<i64>) -> Self {
        sample.sort_unstable();
        let rank = |p: u64| -> Option<f64> {
            let n = sample.len() as u64;
            if n == 0 {
                return None;
            }
            // Nearest rank: ceil(p/100 · n), 1-based.
            let k = (p * n).div_ceil(100).max(1);
            Some(sample[(k - 1) as usize] as f64 / 1000.0)
        };
        Self {
            count: sample.len() as u64,
            median_seconds: rank(50),
            p90_seconds: rank(90),
        }
    }
}

/// The analytics of a project over a range.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectAnalytics {
    pub range: AnalyticsRange,
    /// One bucket per step of the range, zeros included.
    pub messages: Vec<MessageBucket>,
    /// Conversations created, one bucket per step of the range.
    pub conversations_created: Vec<CountBucket>,
    pub open: u64,
    pub closed: u64,
    pub active_conversations: u64,
    /// First end-user message → first agent or bot message after it, over the conversations
    /// created in the range that have both.
    pub first_response: DurationStats,
    /// Creation → closed, over the conversations created in the range that are closed.
    pub resolution: DurationStats,
}

impl ProjectAnalytics {
    /// Buckets and summarises what a store read for `range`. Rows outside the range are
    /// ignored.
    pub fn compute(range: AnalyticsRange, data: AnalyticsData) -> Self {
        let mut messages: Vec<MessageBucket> = range
            .bucket_starts()
            .map(|start| MessageBucket {
                start,
                count: 0,
                end_user: 0,
                agent: 0,
                bot: 0,
                system: 0,
            })
            .collect();
        for h in &data.hours {
            if let Some(b) = range.bucket_of(h.hour).and_then(|i| messages.get_mut(i)) {
                b.end_user += h.end_user;
                b.agent += h.agent;
                b.bot += h.bot;
                b.system += h.system;
                b.count += h.end_user + h.agent + h.bot + h.system;
            }
        }
        let mut created: Vec<CountBucket> = range
            .bucket_starts()
            .map(|start| CountBucket { start, count: 0 })
            .collect();
        let mut responses = Vec::new();
        let mut resolutions = Vec::new();
        for c in &data.conversations {
            let Some(b) = range
                .bucket_of(c.created_at)
                .and_then(|i| created.get_mut(i))
            else {
                continue;
            };
            b.count += 1;
            if let (Some(asked), Some(answered)) = (c.first_user_message_at, c.first_response_at) {
                responses.push(
                    answered
                        .signed_duration_since(asked)
                        .num_milliseconds()
                        .max(0),
                );
            }
            if let Some(closed) = c.closed_at {
                resolutions.push(
                    closed
                        .signed_duration_since(c.created_at)
                        .num_milliseconds()
                        .max(0),
                );
            }
        }
        Self {
            range,
            messages,
            conversations_created: created,
            open: data.open,
            closed: data.closed,
            active_conversations: data.active_conversations,
            first_response: DurationStats::of_millis(responses),
            resolution: DurationStats::of_millis(resolutions),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn ranges_are_whole_buckets() {
        let r = AnalyticsRange::new(
            t("2026-11-01T10:30:00Z"),
            t("2026-11-01T12:00:01Z"),
            Granularity::Hour,
        )
        .unwrap();
        assert_eq!(r.from(), t("2026-11-01T10:00:00Z"));
        assert_eq!(r.to(), t("2026-11-01T13:00:00Z"));
        assert_eq!(r.buckets(), 3);
        assert_eq!(r.bucket_of(t("2026-11-01T12:59:59Z")), Some(2));
        assert_eq!(r.bucket_of(t("2026-11-01T13:00:00Z")), None);
        let d = AnalyticsRange::new(
            t("2026-11-01T10:30:00Z"),
            t("2026-11-03T00:00:00Z"),
            Granularity::Day,
        )
        .unwrap();
        assert_eq!((d.from(), d.to()), (t("2026-11-01T00:00:00Z"), d.to()));
        assert_eq!(d.buckets(), 2);
    }

    #[test]
    fn bad_ranges_are_refused() {
        let a = t("2026-11-01T10:00:00Z");
        assert!(AnalyticsRange::new(a, a, Granularity::Hour).is_err());
        assert!(AnalyticsRange::new(a, a - TimeDelta::hours(1), Granularity::Day).is_err());
        assert!(AnalyticsRange::new(a, a + TimeDelta::hours(2000), Granularity::Hour).is_ok());
        assert!(AnalyticsRange::new(a, a + TimeDelta::hours(2001), Granularity::Hour).is_err());
        // Not aligned: 2000 hours from half past spans 2001 buckets.
        let b = a + TimeDelta::minutes(30);
        assert!(AnalyticsRange::new(b, b + TimeDelta::hours(2000), Granularity::Hour).is_err());
        assert!(
            AnalyticsRange::new(
                DateTime::<Utc>::MIN_UTC,
                DateTime::<Utc>::MAX_UTC,
                Granularity::Day
            )
            .is_err()
        );
        assert!(Granularity::parse("week").is_err());
    }

    #[test]
    fn nearest_rank_percentiles() {
        let s = DurationStats::of_millis((1..=10).rev().map(|s| s * 1000).collect());
        assert_eq!(s.count, 10);
        assert_eq!(s.median_seconds, Some(5.0));
        assert_eq!(s.p90_seconds, Some(9.0));
        let one = DurationStats::of_millis(vec![1500]);
        assert_eq!(
            (one.median_seconds, one.p90_seconds),
            (Some(1.5), Some(1.5))
        );
        let none = DurationStats::of_millis(Vec::new());
        assert_eq!((none.count, none.median_seconds), (0, None));
    }

    #[test]
    fn compute_buckets_by_day_and_fills_zeros() {
        let r = AnalyticsRange::new(
            t("2026-11-01T00:00:00Z"),
            t("2026-11-04T00:00:00Z"),
            Granularity::Day,
        )
        .unwrap();
        let hour = |s: &str, end_user, agent| HourCounts {
            hour: t(s),
            end_user,
            agent,
            ..HourCounts::default()
        };
        let data = AnalyticsData {
            hours: vec![
                hour("2026-11-01T03:00:00Z", 2, 1),
                hour("2026-11-01T23:00:00Z", 1, 0),
                hour("2026-11-03T00:00:00Z", 0, 4),
                hour("2026-11-04T00:00:00Z", 9, 9),
            ],
            active_conversations: 2,
            conversations: vec![ConversationTimes {
                created_at: t("2026-11-03T01:00:00Z"),
                first_user_message_at: Some(t("2026-11-03T01:00:10Z")),
                first_response_at: Some(t("2026-11-03T01:01:10Z")),
                closed_at: Some(t("2026-11-03T02:00:00Z")),
            }],
            open: 3,
            closed: 1,
        };
        let a = ProjectAnalytics::compute(r, data);
        let counts: Vec<u64> = a.messages.iter().map(|b| b.count).collect();
        assert_eq!(counts, vec![4, 0, 4]);
        assert_eq!(a.messages[0].end_user, 3);
        let created: Vec<u64> = a.conversations_created.iter().map(|b| b.count).collect();
        assert_eq!(created, vec![0, 0, 1]);
        assert_eq!(a.first_response.median_seconds, Some(60.0));
        assert_eq!(a.resolution.p90_seconds, Some(3600.0));
    }
}
