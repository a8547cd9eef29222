//! Conversation search on CQL (see `larachat_core::search` for words and keys).
//!
//! `search_terms ((project_id, bucket, term), conversation_id DESC)`: one row per
//! conversation and key, `bucket` being the conversation's listing bucket (its id's time /
//! `listing_bucket`), so a partition holds at most the conversations created in one bucket
//! (30 days by default) that contain the word. The rows are written in the batch of the change
//! they come from (a message's in its message batch). A query walks the listing buckets
//! newest first (the `conversation_buckets` registry, as listings do), reads each query
//! word's partitions in the bucket, intersects them, and loads and filters the hits, until
//! the page is full: no scan of conversations or messages.
//!
//! `search_conversation_terms ((project_id, conversation_id), term)`: the keys of one
//! conversation, so deleting it (with its project) deletes its `search_terms` rows.
//!
//! The search backfill ([`ScyllaStore::backfill_search`]) writes the same rows, once, for what
//! was stored before schema 13, walking `conversations` and then `messages` by partition token
//! in pages, its cursor in `backfills`. A conversation deleted while the backfill indexes it
//! may keep index rows; searches load the hits, so it is never returned.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::stream::{self, StreamExt, TryStreamExt};
use scylla::statement::batch::BatchType;
use scylla::value::CqlTimestamp;
use uuid::Uuid;

use larachat_core::id::{ConversationId, EndUserId, ProjectId};
use larachat_core::model::{Conversation, EndUser};
use larachat_core::search::{self, SearchQuery};

use super::codec::{Values, ts, vi, vt, vu};
use super::{ScyllaStore, clamp};
use crate::{BackfillReport, ConversationQuery, Page, StoreResult};

const INSERT_TERM: &str =
    "INSERT INTO search_terms (project_id, bucket, term, conversation_id) VALUES (?, ?, ?, ?)";
const INSERT_CONVERSATION_TERM: &str =
    "INSERT INTO search_conversation_terms (project_id, conversation_id, term) VALUES (?, ?, ?)";

/// Conversations loaded per round while filtering hits.
const LOAD_CHUNK: usize = 100;

impl ScyllaStore {
    /// The statements that index `keys` for the conversation (idempotent upserts).
    pub(super) fn search_rows(
        &self,
        project: Uuid,
        conversation: Uuid,
        keys: &BTreeSet<String>,
    ) -> Vec<(&'static str, Values)> {
        let bucket = self.listing_bucket(&conversation);
        keys.iter()
            .flat_map(|k| {
                [
                    (
                        INSERT_TERM,
                        vec![vu(project), vi(bucket), vt(k), vu(conversation)],
                    ),
                    (
                        INSERT_CONVERSATION_TERM,
                        vec![vu(project), vu(conversation), vt(k)],
                    ),
                ]
            })
            .collect()
    }

    /// The keys of a subject and of these members' profiles (name, email, external id).
    pub(super) async fn conversation_keys(
        &self,
        project: ProjectId,
        subject: Option<&str>,
        members: &[EndUserId],
    ) -> StoreResult<BTreeSet<String>> {
        let mut users: Vec<EndUser> = Vec::with_capacity(members.len());
        for m in members {
            users.extend(self.load_end_user(project, *m.as_uuid()).await?);
        }
        Ok(search::field_keys(subject.into_iter().chain(
            users.iter().flat_map(|u| {
                [
                    u.name.as_deref(),
                    u.email.as_deref(),
                    u.user_identifier.as_deref(),
                ]
                .into_iter()
                .flatten()
            }),
        )))
    }

    /// Deletes a conversation's index rows (with the conversation).
    pub(super) async fn purge_search(&self, project: Uuid, conversation: Uuid) -> StoreResult<()> {
        let bucket = self.listing_bucket(&conversation);
        let terms: Vec<(String,)> = self
            .all_rows(
                "SELECT term FROM search_conversation_terms WHERE project_id = ? \
                 AND conversation_id = ?",
                (project, conversation),
            )
            .await?;
        for (term,) in terms {
            self.exec(
                "DELETE FROM search_terms WHERE project_id = ? AND bucket = ? AND term = ? \
                 AND conversation_id = ?",
                (project, bucket, term, conversation),
            )
            .await?;
        }
        self.exec(
            "DELETE FROM search_conversation_terms WHERE project_id = ? AND conversation_id = ?",
            (project, conversation),
        )
        .await?;
        Ok(())
    }

    /// The conversations of `bucket` (below `below`, if given) with every group's keys,
    /// newest first.
    async fn bucket_hits(
        &self,
        project: Uuid,
        bucket: i64,
        below: Option<Uuid>,
        search: &SearchQuery,
    ) -> StoreResult<Vec<Uuid>> {
        let mut hits: Option<BTreeSet<Uuid>> = None;
        for group in search.groups() {
            let mut ids = BTreeSet::new();
            for key in group {
                let rows: Vec<(Uuid,)> = match below {
                    Some(c) => {
                        self.all_rows(
                            "SELECT conversation_id FROM search_terms WHERE project_id = ? \
                             AND bucket = ? AND term = ? AND conversation_id < ?",
                            (project, bucket, key.as_str(), c),
                        )
                        .await?
                    }
                    None => {
                        self.all_rows(
                            "SELECT conversation_id FROM search_terms WHERE project_id = ? \
                             AND bucket = ? AND term = ?",
                            (project, bucket, key.as_str()),
                        )
                        .await?
                    }
                };
                ids.extend(rows.into_iter().map(|(id,)| id));
            }
            let next: BTreeSet<Uuid> = match hits {
                None => ids,
                Some(h) => h.intersection(&ids).copied().collect(),
            };
            if next.is_empty() {
                return Ok(Vec::new());
            }
            hits = Some(next);
        }
        Ok(hits.unwrap_or_default().into_iter().rev().collect())
    }

    pub(super) async fn search(
        &self,
        project: ProjectId,
        search: &SearchQuery,
        q: &ConversationQuery,
    ) -> StoreResult<Page<Conversation>> {
        let limit = clamp(q.limit);
        let want = limit + 1;
        let p = *project.as_uuid();
        let buckets: Vec<(i64,)> = self
            .all_rows(
                "SELECT bucket FROM conversation_buckets WHERE project_id = ?",
                (p,),
            )
            .await?;
        let cursor = q.cursor.map(|c: ConversationId| *c.as_uuid());
        let cursor_bucket = cursor.map(|c| self.listing_bucket(&c));
        let mut out: Vec<Conversation> = Vec::new();
        'buckets: for (b,) in buckets {
            if cursor_bucket.is_some_and(|cb| b > cb) {
                continue;
            }
            let below = cursor.filter(|_| cursor_bucket == Some(b));
            let hits = self.bucket_hits(p, b, below, search).await?;
            for chunk in hits.chunks(LOAD_CHUNK) {
                for c in self.load_conversations(project, chunk).await? {
                    let keep = q.status.is_none_or(|s| c.status == s)
                        && q.assignee
                            .as_ref()
                            .is_none_or(|a| a.matches(c.assignee.as_deref()))
                        && q.member.is_none_or(|m| c.members.contains(&m));
                    if keep {
                        out.push(c);
                        if out.len() >= want {
                            break 'buckets;
                        }
                    }
                }
            }
        }
        let has_more = out.len() > limit;
        out.truncate(limit);
        Ok(Page {
            items: out,
            has_more,
        })
    }
}

/// The search backfill's row in `backfills`.
const BACKFILL: &str = "search";
/// Conversations indexed per backfill step (the `LIMIT` below).
const BACKFILL_CONVERSATIONS: usize = 200;
/// Messages indexed per backfill step (the `LIMIT`s below).
const BACKFILL_MESSAGES: usize = 300;
/// Index batches (one per conversation or message) in flight during the backfill.
const BACKFILL_PARALLEL: usize = 16;

/// Phases of the search backfill: conversations (subject, members' profiles), then messages.
const PHASE_CONVERSATIONS: i32 = 0;
const PHASE_MESSAGES: i32 = 1;

/// Where the search backfill is: `token` is the partition token walked up to (inclusive),
/// `partition` a `messages` partition only partly read (its key and the last id read).
#[derive(Debug, Clone, Copy, PartialEq)]
struct BackfillCursor {
    phase: i32,
    token: i64,
    partition: Option<(Uuid, Uuid, i64, Uuid)>,
}

impl BackfillCursor {
    const START: BackfillCursor = BackfillCursor {
        phase: PHASE_CONVERSATIONS,
        // Murmur3 never gives `i64::MIN`: `token > MIN` is every partition.
        token: i64::MIN,
        partition: None,
    };
}

type BackfillRow = (
    Option<i32>,
    Option<i64>,
    Option<Uuid>,
    Option<Uuid>,
    Option<i64>,
    Option<Uuid>,
    Option<CqlTimestamp>,
);

impl ScyllaStore {
    /// Runs the search index backfill to its end: index rows for the conversations and
    /// messages stored before schema 13, exactly the rows live writes add. It walks the
    /// `conversations` and then the `messages` table by partition token, in pages of
    /// [`BACKFILL_CONVERSATIONS`] / [`BACKFILL_MESSAGES`], and records its cursor in
    /// `backfills` after each page, so a killed process resumes there; the rows are upserts,
    /// so a page done twice, or beside a live write, changes nothing more. Once finished
    /// (`done_at`), a run writes nothing. Returns what this run did.
    pub async fn backfill_search(&self) -> StoreResult<BackfillReport> {
        let mut report = BackfillReport::default();
        while !self.backfill_search_step(&mut report).await? {}
        Ok(report)
    }

    /// Runs [`ScyllaStore::backfill_search`] in the background (a no-op once it has
    /// finished); the task does not keep the store alive, and a failure is logged (the next
    /// start resumes from the last recorded page).
    pub fn spawn_search_backfill(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut report = BackfillReport::default();
            loop {
                let Some(store) = weak.upgrade() else { return };
                match store.backfill_search_step(&mut report).await {
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(
                            error = %e,
                            "search backfill stopped; it resumes at the next start"
                        );
                        return;
                    }
                }
            }
        })
    }

    /// One page of the search backfill, added to `report`; `true` once it is finished.
    async fn backfill_search_step(&self, report: &mut BackfillReport) -> StoreResult<bool> {
        let row: Option<BackfillRow> = self
            .row(
                "SELECT phase, walked, project_id, conversation_id, bucket, after, done_at \
                 FROM backfills WHERE name = ?",
                (BACKFILL,),
            )
            .await?;
        let cursor = match row {
            None => BackfillCursor::START,
            Some((_, _, _, _, _, _, Some(_))) => {
                report.already_done = report.batches == 0;
                return Ok(true);
            }
            Some((phase, token, p, c, b, after, None)) => BackfillCursor {
                phase: phase.unwrap_or(PHASE_CONVERSATIONS),
                token: token.unwrap_or(i64::MIN),
                partition: match (p, c, b, after) {
                    (Some(p), Some(c), Some(b), Some(a)) => Some((p, c, b, a)),
                    _ => None,
                },
            },
        };
        let next = if cursor.phase == PHASE_CONVERSATIONS {
            let (n, next) = self.backfill_conversations(cursor.token).await?;
            report.conversations += n;
            next
        } else {
            let (n, next) = self.backfill_messages(cursor).await?;
            report.messages += n;
            next
        };
        report.batches += 1;
        let done = next.is_none();
        let next = next.unwrap_or(BackfillCursor {
            phase: PHASE_MESSAGES,
            token: i64::MAX,
            partition: None,
        });
        let (p, c, b, a) = match next.partition {
            Some((p, c, b, a)) => (Some(p), Some(c), Some(b), Some(a)),
            None => (None, None, None, None),
        };
        self.exec(
            "INSERT INTO backfills (name, phase, walked, project_id, conversation_id, bucket, \
             after, done_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                BACKFILL,
                next.phase,
                next.token,
                p,
                c,
                b,
                a,
                done.then(|| ts(self.config.clock.now())),
            ),
        )
        .await?;
        report.log_batch(done);
        Ok(done)
    }

    /// Indexes the conversations of the partitions after `token`; returns how many and the
    /// cursor after them.
    async fn backfill_conversations(
        &self,
        token: i64,
    ) -> StoreResult<(u64, Option<BackfillCursor>)> {
        let rows: Vec<(i64, Uuid, Uuid)> = self
            .rows(
                "SELECT token(project_id, id), project_id, id FROM conversations \
                 WHERE token(project_id, id) > ? LIMIT 200",
                (token,),
            )
            .await?;
        let mut by_project: BTreeMap<Uuid, Vec<Uuid>> = BTreeMap::new();
        for (_, p, c) in &rows {
            by_project.entry(*p).or_default().push(*c);
        }
        let mut conversations = Vec::with_capacity(rows.len());
        for (p, ids) in by_project {
            conversations.extend(
                self.load_conversations(ProjectId::from_uuid(p), &ids)
                    .await?,
            );
        }
        let n = conversations.len() as u64;
        stream::iter(conversations)
            .map(|c| async move {
                let keys = self
                    .conversation_keys(c.project_id, c.subject.as_deref(), &c.members)
                    .await?;
                let rows = self.search_rows(*c.project_id.as_uuid(), *c.id.as_uuid(), &keys);
                self.batch_of(BatchType::Unlogged, rows).await
            })
            .buffer_unordered(BACKFILL_PARALLEL)
            .try_collect::<Vec<()>>()
            .await?;
        let next = match rows.last() {
            Some((t, _, _)) if rows.len() == BACKFILL_CONVERSATIONS => BackfillCursor {
                phase: PHASE_CONVERSATIONS,
                token: *t,
                partition: None,
            },
            _ => BackfillCursor {
                phase: PHASE_MESSAGES,
                ..BackfillCursor::START
            },
        };
        Ok((n, Some(next)))
    }

    /// Indexes the next page of messages: the rest of a partly read partition, or the
    /// partitions after the cursor's token. Returns how many and the cursor after them
    /// (`None`: finished).
    async fn backfill_messages(
        &self,
        cursor: BackfillCursor,
    ) -> StoreResult<(u64, Option<BackfillCursor>)> {
        let (rows, next): (Vec<(Uuid, Uuid, String)>, Option<BackfillCursor>) = match cursor
            .partition
        {
            Some((p, c, b, after)) => {
                let rows: Vec<(Uuid, Option<String>)> = self
                    .rows(
                        "SELECT id, text FROM messages WHERE project_id = ? AND \
                             conversation_id = ? AND bucket = ? AND id > ? LIMIT 300",
                        (p, c, b, after),
                    )
                    .await?;
                let partition = match rows.last() {
                    Some((last, _)) if rows.len() == BACKFILL_MESSAGES => Some((p, c, b, *last)),
                    _ => None,
                };
                let rows = rows
                    .into_iter()
                    .map(|(_, text)| (p, c, text.unwrap_or_default()))
                    .collect();
                let next = BackfillCursor {
                    partition,
                    ..cursor
                };
                (rows, Some(next))
            }
            None => {
                let rows: Vec<(i64, Uuid, Uuid, i64, Uuid, Option<String>)> = self
                    .rows(
                        "SELECT token(project_id, conversation_id, bucket), project_id, \
                             conversation_id, bucket, id, text FROM messages \
                             WHERE token(project_id, conversation_id, bucket) > ? LIMIT 300",
                        (cursor.token,),
                    )
                    .await?;
                // A full page may end inside a partition: continue there first.
                let next = match rows.last() {
                    Some((t, p, c, b, id, _)) if rows.len() == BACKFILL_MESSAGES => {
                        Some(BackfillCursor {
                            phase: PHASE_MESSAGES,
                            token: *t,
                            partition: Some((*p, *c, *b, *id)),
                        })
                    }
                    _ => None,
                };
                let rows = rows
                    .into_iter()
                    .map(|(_, p, c, _, _, text)| (p, c, text.unwrap_or_default()))
                    .collect();
                (rows, next)
            }
        };
        let n = rows.len() as u64;
        stream::iter(rows)
            .map(|(p, c, text)| async move {
                let rows = self.search_rows(p, c, &search::message_keys(&text));
                self.batch_of(BatchType::Unlogged, rows).await
            })
            .buffer_unordered(BACKFILL_PARALLEL)
            .try_collect::<Vec<()>>()
            .await?;
        Ok((n, next))
    }
}
