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

use std::collections::BTreeSet;

use uuid::Uuid;

use larachat_core::id::{ConversationId, EndUserId, ProjectId};
use larachat_core::model::{Conversation, EndUser};
use larachat_core::search::{self, SearchQuery};

use super::codec::{Values, vi, vt, vu};
use super::{ScyllaStore, clamp};
use crate::{ConversationQuery, Page, StoreResult};

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
