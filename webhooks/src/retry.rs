//! When to try a delivery again, and what a response means.
//!
//! The schedule is anchored to the event's first attempt, not to the previous attempt, so
//! slow or timed-out attempts do not stretch it: with `R = attempts - 1` retries over a
//! horizon `H` (3 days by default), the nominal time of retry `k` is
//! `T_k = H · (2^k − 1) / (2^R − 1)` (exponential, `T_R = H`), and the retry fires at
//! `T_k + U(0, T_k − T_{k−1})` — full jitter over the width of its own gap, added after the
//! nominal time. So retries never overlap (`T_k + gap_k ≤ T_{k+1}`), the last one is never
//! earlier than the horizon, and thousands of endpoints failing together do not retry in
//! step. With the default 15 attempts the first retry comes after 16–32 s and the last
//! after 3 to about 4.5 days.
//!
//! A `Retry-After` header moves the next attempt later (never earlier), capped at
//! [`RetryPolicy::max_retry_after`] so a receiver cannot park a delivery for a year.
//!
//! This is hand-written rather than `backon` because `backon` sleeps between attempts of one
//! future; here an attempt is a row in the store, picked up by whichever worker is free when
//! it is due, possibly after a restart.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

/// The retry rules (from `[webhooks]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub attempts: u32,
    /// The time from the first attempt to the last retry's nominal time.
    pub horizon: Duration,
    /// The longest `Retry-After` honoured.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 15,
            horizon: Duration::from_secs(3 * 24 * 3600),
            max_retry_after: Duration::from_secs(3600),
        }
    }
}

impl RetryPolicy {
    /// Nominal offset of retry `k` (1-based) from the first attempt.
    fn nominal(&self, k: u32) -> Duration {
        let retries = self.attempts.saturating_sub(1).min(62);
        if k == 0 || retries == 0 {
            return Duration::ZERO;
        }
        let k = k.min(retries);
        let num = (1u128 << k) - 1;
        let den = (1u128 << retries) - 1;
        let nanos = self.horizon.as_nanos() * num / den;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// When attempt `next` (2 = first retry) is due, for an event first tried at `first`;
    /// `None` once every attempt has been spent. `jitter` is a sample of `U[0,1)`.
    pub fn due_at(&self, first: DateTime<Utc>, next: u32, jitter: f64) -> Option<DateTime<Utc>> {
        if next < 2 || next > self.attempts {
            return None;
        }
        let k = next - 1;
        let at = self.nominal(k);
        let gap = at - self.nominal(k - 1);
        let offset = at + gap.mul_f64(jitter.clamp(0.0, 1.0));
        Some(first + chrono::Duration::from_std(offset).ok()?)
    }

    /// The next attempt's time after attempt `done` failed at `now`, honouring a capped
    /// `Retry-After`; `None` when no attempt is left (the delivery becomes a dead letter).
    pub fn next_after_failure(
        &self,
        first: DateTime<Utc>,
        done: u32,
        now: DateTime<Utc>,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Option<DateTime<Utc>> {
        let scheduled = self.due_at(first, done + 1, rng.r#gen::<f64>())?;
        let asked = retry_after
            .map(|d| d.min(self.max_retry_after))
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .map(|d| now + d);
        Some(match asked {
            Some(a) if a > scheduled => a,
            _ => scheduled.max(now),
        })
    }
}

/// What one attempt's outcome means for the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: delivered.
    Delivered,
    /// 410 Gone: the receiver asks to stop; the endpoint is disabled.
    Gone,
    /// Anything else (3xx — redirects are not followed —, 4xx, 5xx, timeouts, refused
    /// targets, connection errors): try again on the schedule.
    Retry,
}

impl Verdict {
    pub fn of_status(status: Option<u16>) -> Self {
        match status {
            Some(200..=299) => Verdict::Delivered,
            Some(410) => Verdict::Gone,
            _ => Verdict::Retry,
        }
    }
}

/// Parses `Retry-After` (delay-seconds or an HTTP date) into a delay from `now`.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
    (at - now).to_std().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn t0() -> DateTime<Utc> {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn the_schedule_covers_three_days_without_overlap() {
        let p = RetryPolicy::default();
        let three_days = chrono::Duration::days(3);
        for jitter in [0.0, 0.5, 0.999_999] {
            let times: Vec<_> = (2..=p.attempts)
                .map(|n| p.due_at(t0(), n, jitter).unwrap())
                .collect();
            assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
            let last = *times.last().unwrap() - t0();
            assert!(last >= three_days, "last retry after {last}");
            assert!(
                last <= chrono::Duration::hours(109),
                "last retry after {last}"
            );
        }
        let first = p.due_at(t0(), 2, 0.0).unwrap() - t0();
        assert!(
            first.num_seconds() >= 10 && first.num_seconds() <= 20,
            "{first}"
        );
        assert_eq!(p.due_at(t0(), p.attempts + 1, 0.0), None, "attempts spent");
        assert_eq!(p.due_at(t0(), 1, 0.0), None);
    }

    #[test]
    fn few_attempts_still_reach_the_horizon() {
        // The seed's WEBHOOK_RETRY_ATTEMPTS=3: two retries, the last after 3 days.
        let p = RetryPolicy {
            attempts: 3,
            ..RetryPolicy::default()
        };
        assert_eq!(
            p.due_at(t0(), 2, 0.0).unwrap() - t0(),
            chrono::Duration::days(1)
        );
        assert_eq!(
            p.due_at(t0(), 3, 0.0).unwrap() - t0(),
            chrono::Duration::days(3)
        );
        let one = RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        };
        assert_eq!(one.due_at(t0(), 2, 0.0), None);
    }

    #[test]
    fn jitter_spreads_retries() {
        let p = RetryPolicy::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let seen: std::collections::BTreeSet<_> = (0..50)
            .map(|_| p.next_after_failure(t0(), 3, t0(), None, &mut rng).unwrap())
            .collect();
        assert!(seen.len() > 40, "full jitter gives distinct times");
    }

    #[test]
    fn retry_after_moves_later_and_is_capped() {
        let p = RetryPolicy::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let now = t0() + chrono::Duration::seconds(1);
        let later = p
            .next_after_failure(t0(), 1, now, Some(Duration::from_secs(600)), &mut rng)
            .unwrap();
        assert_eq!(later, now + chrono::Duration::seconds(600));
        let capped = p
            .next_after_failure(
                t0(),
                1,
                now,
                Some(Duration::from_secs(86400 * 365)),
                &mut rng,
            )
            .unwrap();
        assert_eq!(capped, now + chrono::Duration::hours(1));
        let short = p
            .next_after_failure(t0(), 1, now, Some(Duration::from_secs(1)), &mut rng)
            .unwrap();
        assert!(
            short - t0() >= chrono::Duration::seconds(15),
            "never earlier than the schedule"
        );
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 2026 00:01:01 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn verdicts() {
        assert_eq!(Verdict::of_status(Some(204)), Verdict::Delivered);
        assert_eq!(Verdict::of_status(Some(410)), Verdict::Gone);
        for s in [Some(301), Some(404), Some(429), Some(500), None] {
            assert_eq!(Verdict::of_status(s), Verdict::Retry);
        }
    }
}
