//! Analytics rollups of the CQL store (see `docs/usage.md`, "Analytics").
//!
//! **Written with the change, idempotent by key.** A message's logged batch (written by its
//! sender, a retry or a repairer alike) adds its row to `analytics_messages ((project_id,
//! hour), sender_kind, id)` and its conversation's to `analytics_active ((project_id, hour),
//! conversation_id)`: writing them again changes nothing, and no counter is used. A
//! conversation's row in `analytics_conversations ((project_id, day), conversation_id)` gets
//! its creation and close times with the conversation's batches, and its first end-user
//! message and first answer from the message batches, written `USING TIMESTAMP i64::MAX −
//! seq`: of several writes the one of the smallest `seq` wins, whatever their order, so
//! "first" needs no read-modify-write. An agent's or bot's message reads that row first (one
//! key read): it is an answer only after an end-user message (smaller `seq`) is recorded.
//! Agents answer messages they have seen, which were written (at `LOCAL_QUORUM`) before
//! they were shown, so a causal answer always sees the question.
//!
//! **Sealed hours.** Counting an hour's `analytics_messages` is a scan of that hour; a query
//! does it once per hour: an hour that ended more than [`SEAL_AFTER`] ago is *sealed* into
//! `analytics_hours ((project_id, day), hour)` (four counts, an idempotent overwrite; any
//! reader may do it, no lease is needed since every sealer writes the same counts). The seal
//! is written `USING TIMESTAMP` of the moment its count began, and a message written into an
//! hour more than [`LATE_AFTER`] after the hour's time (a repair of a stalled append) deletes
//! the hour's seal in its batch: the later deletion wins over a seal counted before it, so
//! the hour is counted again. The current hour (and the last [`SEAL_AFTER`]) is counted
//! live on every query.
//!
//! **Active conversations** are a set, not a count: a range's distinct conversations with a
//! message. Each message's batch lists its conversation in its hour (`analytics_active`) and
//! its day (`analytics_active_days`); a query reads the days wholly inside its range from
//! the day partitions and only the hours at its edges from the hour partitions.
//!
//! Partitions: one project-hour (messages, active conversations), one project-day (sealed
//! hours: 24 rows; conversations created or active that day), `analytics_days` one row per
//! day.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt, TryStreamExt};
use scylla::value::CqlTimestamp;
use uuid::Uuid;

use larachat_core::analytics::{AnalyticsData, AnalyticsRange, ConversationTimes, HourCounts};
use larachat_core::id::ProjectId;
use larachat_core::model::{self, ActorKind, Conversation, ConversationStatus, Message};

use super::ScyllaStore;
use super::codec::{Values, from_opt_ts, vi, vots, vt, vts, vu};
use crate::StoreResult;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

/// An hour is sealed once it ended this long ago.
pub(crate) const SEAL_AFTER: Duration = Duration::from_secs(300);

/// A message written this long after its time invalidates its hour's seal.
pub(crate) const LATE_AFTER: Duration = Duration::from_secs(60);

/// Queries of one analytics read in flight at once.
const PARALLEL: usize = 32;

const KINDS: [ActorKind; 4] = [
    ActorKind::EndUser,
    ActorKind::Agent,
    ActorKind::Bot,
    ActorKind::System,
];

fn hour_of(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis().div_euclid(HOUR_MS) * HOUR_MS
}

fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS) * DAY_MS
}

/// The day partition of a conversation's row: the day of its id's time (UUIDv7).
pub(crate) fn conversation_day(id: &Uuid) -> i64 {
    let ms = id
        .get_timestamp()
        .map(|t| {
            let (secs, nanos) = t.to_unix();
            secs as i64 * 1000 + i64::from(nanos / 1_000_000)
        })
        .unwrap_or(0);
    day_of(ms)
}

/// The write timestamp of a "first" column: the smaller the seq, the later the timestamp.
fn first_wins(seq: u64) -> i64 {
    i64::MAX - i64::try_from(seq).unwrap_or(i64::MAX - 1).max(0) - 1
}

/// The rows a message adds, in its logged batch. `answers`: whether it answers the
/// conversation's first end-user message (see the module docs).
pub(crate) fn message_rows(
    m: &Message,
    answers: bool,
    now: DateTime<Utc>,
) -> Vec<(&'static str, Values)> {
    let p = *m.project_id.as_uuid();
    let c = *m.conversation_id.as_uuid();
    let hour = hour_of(m.created_at);
    let cday = conversation_day(&c);
    let mut rows: Vec<(&'static str, Values)> = vec![
        (
            "INSERT INTO analytics_messages (project_id, hour, sender_kind, id) \
             VALUES (?, ?, ?, ?)",
            vec![
                vu(p),
                vi(hour),
                vt(m.sender.kind.as_str()),
                vu(*m.id.as_uuid()),
            ],
        ),
        (
            "INSERT INTO analytics_active (project_id, hour, conversation_id) VALUES (?, ?, ?)",
            vec![vu(p), vi(hour), vu(c)],
        ),
        (
            "INSERT INTO analytics_active_days (project_id, day, conversation_id) \
             VALUES (?, ?, ?)",
            vec![vu(p), vi(day_of(hour)), vu(c)],
        ),
        (
            "INSERT INTO analytics_days (project_id, day) VALUES (?, ?)",
            vec![vu(p), vi(day_of(hour))],
        ),
    ];
    if m.sender.kind == ActorKind::EndUser {
        rows.push((
            "UPDATE analytics_conversations USING TIMESTAMP ? SET first_user_message_at = ?, \
             first_user_message_seq = ? WHERE project_id = ? AND day = ? AND conversation_id = ?",
            vec![
                vi(first_wins(m.seq)),
                vts(m.created_at),
                vi(i64::try_from(m.seq).unwrap_or(i64::MAX)),
                vu(p),
                vi(cday),
                vu(c),
            ],
        ));
    }
    if answers {
        rows.push((
            "UPDATE analytics_conversations USING TIMESTAMP ? SET first_response_at = ? \
             WHERE project_id = ? AND day = ? AND conversation_id = ?",
            vec![
                vi(first_wins(m.seq)),
                vts(m.created_at),
                vu(p),
                vi(cday),
                vu(c),
            ],
        ));
    }
    let late = now
        .signed_duration_since(m.created_at)
        .to_std()
        .is_ok_and(|d| d > LATE_AFTER);
    if late {
        rows.push((
            "DELETE FROM analytics_hours WHERE project_id = ? AND day = ? AND hour = ?",
            vec![vu(p), vi(day_of(hour)), vi(hour)],
        ));
    }
    rows
}

/// The rows of a conversation created, in its batch.
pub(crate) fn conversation_rows(c: &Conversation) -> Vec<(&'static str, Values)> {
    let p = *c.project_id.as_uuid();
    let id = *c.id.as_uuid();
    let day = conversation_day(&id);
    let closed = (c.status == ConversationStatus::Closed).then_some(c.created_at);
    vec![
        (
            "UPDATE analytics_conversations SET created_at = ?, closed_at = ? \
             WHERE project_id = ? AND day = ? AND conversation_id = ?",
            vec![vts(c.created_at), vots(closed), vu(p), vi(day), vu(id)],
        ),
        (
            "INSERT INTO analytics_days (project_id, day) VALUES (?, ?)",
            vec![vu(p), vi(day)],
        ),
    ]
}

/// The rows of a status change of `c` (now in its new state), in its batch: closing sets
/// `closed_at`, reopening clears it.
pub(crate) fn status_rows(
    c: &Conversation,
    before: ConversationStatus,
) -> Vec<(&'static str, Values)> {
    if before == c.status {
        return Vec::new();
    }
    let closed = (c.status == ConversationStatus::Closed).then_some(c.updated_at);
    vec![(
        "UPDATE analytics_conversations SET created_at = ?, closed_at = ? \
         WHERE project_id = ? AND day = ? AND conversation_id = ?",
        vec![
            vts(c.created_at),
            vots(closed),
            vu(*c.project_id.as_uuid()),
            vi(conversation_day(c.id.as_uuid())),
            vu(*c.id.as_uuid()),
        ],
    )]
}

/// A sealed hour: its start and four counts.
type SealedRow = (i64, Option<i64>, Option<i64>, Option<i64>, Option<i64>);

type ConversationRow = (
    Option<CqlTimestamp>,
    Option<CqlTimestamp>,
    Option<CqlTimestamp>,
    Option<CqlTimestamp>,
);

impl ScyllaStore {
    /// Whether `m` (an agent's or bot's) answers its conversation's first end-user message.
    pub(super) async fn answers(&self, m: &Message) -> StoreResult<bool> {
        if !matches!(m.sender.kind, ActorKind::Agent | ActorKind::Bot) {
            return Ok(false);
        }
        let c = *m.conversation_id.as_uuid();
        let row: Option<(Option<i64>, Option<CqlTimestamp>)> = self
            .row(
                "SELECT first_user_message_seq, first_response_at FROM analytics_conversations \
                 WHERE project_id = ? AND day = ? AND conversation_id = ?",
                (*m.project_id.as_uuid(), conversation_day(&c), c),
            )
            .await?;
        let seq = i64::try_from(m.seq).unwrap_or(i64::MAX);
        Ok(match row {
            // Answered already: only a smaller seq (a repair of an older answer) would win.
            Some((Some(asked), _)) => asked < seq,
            _ => false,
        })
    }

    /// The counts of one hour: sealed, or counted now (and sealed if it is over).
    async fn hour_counts(&self, p: Uuid, hour: i64, now: DateTime<Utc>) -> StoreResult<HourCounts> {
        let started = model::now();
        let mut counts = [0u64; 4];
        for (i, kind) in KINDS.iter().enumerate() {
            let n: Option<(i64,)> = self
                .row(
                    "SELECT COUNT(*) FROM analytics_messages WHERE project_id = ? AND hour = ? \
                     AND sender_kind = ?",
                    (p, hour, kind.as_str()),
                )
                .await?;
            counts[i] = n.map_or(0, |(n,)| n.max(0) as u64);
        }
        let end = hour + HOUR_MS;
        let sealable = now.timestamp_millis() - end > SEAL_AFTER.as_millis() as i64;
        if sealable {
            let c = |i: usize| i64::try_from(counts[i]).unwrap_or(i64::MAX);
            self.exec(
                "INSERT INTO analytics_hours (project_id, day, hour, end_user, agent, bot, \
                 system) VALUES (?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
                (
                    p,
                    day_of(hour),
                    hour,
                    c(0),
                    c(1),
                    c(2),
                    c(3),
                    started.timestamp_micros(),
                ),
            )
            .await?;
            // Listed for deletion like every day with rows.
            self.exec(
                "INSERT INTO analytics_days (project_id, day) VALUES (?, ?)",
                (p, day_of(hour)),
            )
            .await?;
        }
        Ok(HourCounts {
            hour: DateTime::from_timestamp_millis(hour).unwrap_or(started),
            end_user: counts[0],
            agent: counts[1],
            bot: counts[2],
            system: counts[3],
        })
    }

    /// What analytics needs of `project` over `range` (see [`crate::Store::analytics`]).
    pub(super) async fn read_analytics(
        &self,
        project: ProjectId,
        range: &AnalyticsRange,
    ) -> StoreResult<AnalyticsData> {
        let p = *project.as_uuid();
        let now = self.now();
        let (from, to) = (
            range.from().timestamp_millis(),
            range.to().timestamp_millis(),
        );
        let hours: Vec<i64> = (0..)
            .map(|i| from + i * HOUR_MS)
            .take_while(|h| *h < to)
            .collect();
        let days: Vec<i64> = {
            let mut d: Vec<i64> = hours.iter().map(|h| day_of(*h)).collect();
            d.dedup();
            d
        };

        // Sealed hours, one partition per day.
        let sealed: Vec<Vec<SealedRow>> = stream::iter(days.iter().copied())
            .map(|day| async move {
                self.all_rows::<SealedRow>(
                    "SELECT hour, end_user, agent, bot, system FROM analytics_hours \
                     WHERE project_id = ? AND day = ?",
                    (p, day),
                )
                .await
            })
            .buffer_unordered(PARALLEL)
            .try_collect()
            .await?;
        let mut counts: Vec<HourCounts> = Vec::new();
        let mut done = HashSet::new();
        for (hour, end_user, agent, bot, system) in sealed.into_iter().flatten() {
            if hour < from || hour >= to {
                continue;
            }
            done.insert(hour);
            let n = |v: Option<i64>| v.unwrap_or(0).max(0) as u64;
            if n(end_user) + n(agent) + n(bot) + n(system) == 0 {
                continue;
            }
            counts.push(HourCounts {
                hour: DateTime::from_timestamp_millis(hour).unwrap_or(now),
                end_user: n(end_user),
                agent: n(agent),
                bot: n(bot),
                system: n(system),
            });
        }
        // The others (the future has nothing: not counted).
        let open: Vec<i64> = hours
            .iter()
            .copied()
            .filter(|h| !done.contains(h) && *h <= now.timestamp_millis())
            .collect();
        let live: Vec<HourCounts> = stream::iter(open)
            .map(|h| self.hour_counts(p, h, now))
            .buffer_unordered(PARALLEL)
            .try_collect()
            .await?;
        counts.extend(
            live.into_iter()
                .filter(|c| c.end_user + c.agent + c.bot + c.system > 0),
        );

        // Distinct active conversations: the days wholly in the range from their day
        // partition, the hours at the range's edges from their hour partitions.
        let whole_days: HashSet<i64> = days
            .iter()
            .copied()
            .filter(|d| *d >= from && d + DAY_MS <= to && *d <= now.timestamp_millis())
            .collect();
        let mut partitions: Vec<(bool, i64)> = whole_days.iter().map(|d| (true, *d)).collect();
        partitions.extend(
            hours
                .iter()
                .filter(|h| **h <= now.timestamp_millis() && !whole_days.contains(&day_of(**h)))
                .map(|h| (false, *h)),
        );
        let active: Vec<Vec<(Uuid,)>> = stream::iter(partitions)
            .map(|(whole_day, t)| async move {
                if whole_day {
                    self.all_rows::<(Uuid,)>(
                        "SELECT conversation_id FROM analytics_active_days \
                         WHERE project_id = ? AND day = ?",
                        (p, t),
                    )
                    .await
                } else {
                    self.all_rows::<(Uuid,)>(
                        "SELECT conversation_id FROM analytics_active \
                         WHERE project_id = ? AND hour = ?",
                        (p, t),
                    )
                    .await
                }
            })
            .buffer_unordered(PARALLEL)
            .try_collect()
            .await?;
        let active: HashSet<Uuid> = active.into_iter().flatten().map(|(c,)| c).collect();

        // Conversations created in the range: the partitions of their ids' days (a day of
        // margin either side: the id is made a moment before `created_at`).
        let first_day = day_of(from) - DAY_MS;
        let conv_days: Vec<i64> = (0..)
            .map(|i| first_day + i * DAY_MS)
            .take_while(|d| {
                *d <= day_of(to) + DAY_MS && *d <= day_of(now.timestamp_millis()) + DAY_MS
            })
            .collect();
        let rows: Vec<Vec<ConversationRow>> = stream::iter(conv_days)
            .map(|day| async move {
                self.all_rows::<ConversationRow>(
                    "SELECT created_at, first_user_message_at, first_response_at, closed_at \
                     FROM analytics_conversations WHERE project_id = ? AND day = ?",
                    (p, day),
                )
                .await
            })
            .buffer_unordered(PARALLEL)
            .try_collect()
            .await?;
        let mut conversations = Vec::new();
        for (created, asked, answered, closed) in rows.into_iter().flatten() {
            // A row without a creation time belongs to a conversation created before
            // analytics existed.
            let Some(created_at) = from_opt_ts(created)? else {
                continue;
            };
            if !range.contains(created_at) {
                continue;
            }
            conversations.push(ConversationTimes {
                created_at,
                first_user_message_at: from_opt_ts(asked)?,
                first_response_at: from_opt_ts(answered)?,
                closed_at: from_opt_ts(closed)?,
            });
        }

        let (open_now, closed_now) = futures::try_join!(
            self.count_by_status(p, ConversationStatus::Open),
            self.count_by_status(p, ConversationStatus::Closed),
        )?;
        Ok(AnalyticsData {
            hours: counts,
            active_conversations: active.len() as u64,
            conversations,
            open: open_now,
            closed: closed_now,
        })
    }

    /// The project's conversations with `status` now (the status index, bucket by bucket).
    async fn count_by_status(&self, p: Uuid, status: ConversationStatus) -> StoreResult<u64> {
        let buckets: Vec<(i64,)> = self
            .all_rows(
                "SELECT bucket FROM conversation_buckets WHERE project_id = ?",
                (p,),
            )
            .await?;
        let counts: Vec<Option<(i64,)>> = stream::iter(buckets)
            .map(|(b,)| async move {
                self.row::<(i64,)>(
                    "SELECT COUNT(*) FROM conversations_by_status WHERE project_id = ? \
                     AND status = ? AND bucket = ?",
                    (p, status.as_str(), b),
                )
                .await
            })
            .buffer_unordered(PARALLEL)
            .try_collect()
            .await?;
        Ok(counts
            .into_iter()
            .map(|r| r.map_or(0, |(n,)| n.max(0) as u64))
            .sum())
    }

    /// Schema 10: every (project, hour, conversation) of `analytics_active` also in its day
    /// of `analytics_active_days` (idempotent: run again, it writes the same rows).
    pub(super) async fn backfill_active_days(&self) -> StoreResult<()> {
        use scylla::response::{PagingState, PagingStateResponse};
        let started = std::time::Instant::now();
        let scan = self
            .stmt("SELECT project_id, hour, conversation_id FROM analytics_active")
            .await?;
        let mut state = PagingState::start();
        let mut copied = 0u64;
        // Page by page: the table holds a row per conversation and hour of every project.
        loop {
            let (result, next) = self
                .session
                .execute_single_page(&scan, (), state)
                .await
                .map_err(super::codec::exec_error)?;
            let rows: Vec<(Uuid, i64, Uuid)> = result
                .into_rows_result()
                .map_err(super::codec::internal)?
                .rows::<(Uuid, i64, Uuid)>()
                .map_err(super::codec::internal)?
                .collect::<Result<_, _>>()
                .map_err(super::codec::internal)?;
            copied += rows.len() as u64;
            stream::iter(rows)
                .map(|(p, hour, c)| async move {
                    self.exec(
                        "INSERT INTO analytics_active_days (project_id, day, conversation_id) \
                         VALUES (?, ?, ?)",
                        (p, day_of(hour), c),
                    )
                    .await
                })
                .buffer_unordered(PARALLEL)
                .try_collect::<Vec<_>>()
                .await?;
            match next {
                PagingStateResponse::HasMorePages { state: s } => state = s,
                PagingStateResponse::NoMorePages => break,
            }
        }
        tracing::info!(
            copied,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "analytics active conversations listed by day"
        );
        Ok(())
    }

    /// Deletes every analytics row of the project (part of `delete_project`). The
    /// conversation rows carry write timestamps up to `i64::MAX − 1` (the "first" columns),
    /// so their partitions are deleted at `i64::MAX`: the project never comes back.
    pub(super) async fn delete_analytics(&self, project: ProjectId) -> StoreResult<()> {
        let p = *project.as_uuid();
        let days: Vec<(i64,)> = self
            .all_rows("SELECT day FROM analytics_days WHERE project_id = ?", (p,))
            .await?;
        stream::iter(days)
            .map(|(day,)| async move {
                self.exec(
                    "DELETE FROM analytics_hours WHERE project_id = ? AND day = ?",
                    (p, day),
                )
                .await?;
                self.exec(
                    "DELETE FROM analytics_active_days WHERE project_id = ? AND day = ?",
                    (p, day),
                )
                .await?;
                self.exec(
                    "DELETE FROM analytics_conversations USING TIMESTAMP ? \
                     WHERE project_id = ? AND day = ?",
                    (i64::MAX, p, day),
                )
                .await?;
                for h in 0..24 {
                    let hour = day + h * HOUR_MS;
                    self.exec(
                        "DELETE FROM analytics_messages WHERE project_id = ? AND hour = ?",
                        (p, hour),
                    )
                    .await?;
                    self.exec(
                        "DELETE FROM analytics_active WHERE project_id = ? AND hour = ?",
                        (p, hour),
                    )
                    .await?;
                }
                Ok::<_, crate::StoreError>(())
            })
            .buffer_unordered(PARALLEL)
            .try_collect::<Vec<()>>()
            .await?;
        self.exec("DELETE FROM analytics_days WHERE project_id = ?", (p,))
            .await?;
        Ok(())
    }
}
