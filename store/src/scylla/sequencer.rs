//! The message sequencer: how an append gets its `seq` and id exactly once, whatever the
//! number of processes, their stalls and their clocks, and how readers repair a message whose
//! writer stopped half-way.
//!
//! # The commit point
//!
//! Each conversation has one partition in `conversation_sequencer`:
//!
//! | row | columns | written by |
//! |---|---|---|
//! | static | `head_seq`, `head_id`: the newest claimed message | every claim |
//! | `c:<client_msg_id>` | `seq`, `message_id`, `sender_kind`, `sender_id` (TTL [`SEQUENCER_TTL_SECS`]) | a claim with a `client_msg_id` |
//! | `s:<seq, 20 digits>` | the whole message (TTL [`SEQUENCER_TTL_SECS`]) | every claim |
//!
//! A send is ONE conditional batch (a Paxos round) on that partition:
//!
//! ```text
//! BEGIN BATCH
//!   UPDATE … SET head_seq = N+1, head_id = X IF head_seq = N;
//!   INSERT 'c:<client_msg_id>' … IF NOT EXISTS;
//!   INSERT 's:<N+1>' … ;
//! APPLY BATCH
//! ```
//!
//! Every condition holds or nothing is written. Applied: seq N+1 and id X are the message's,
//! for good; then the message row (plus its bucket index and the conversation's
//! `last_message_id`) is written with an ordinary logged batch, and only then the caller gets
//! its ack. Not applied because the `c:` row exists: the message was stored before (this is a
//! retry) and the original is returned, whichever process stored it and however long it
//! stalled. Not applied because the head moved: another writer took N+1; the failed round
//! returned the current head, and the claim is tried again above it. `X` is
//! [`MessageId::following`] the previous head's id, so ids strictly increase with `seq`
//! whatever the writers' clocks.
//!
//! Writes to this partition are lightweight transactions only (the conversation's head is
//! initialised by one too): plain writes carry client timestamps, and a process whose clock
//! runs ahead would shadow the Paxos writes that follow.
//!
//! # Holes
//!
//! A writer can die or stall after its claim and before its message row is written: seq k is
//! taken but invisible, while k+1 may already be visible. Readers never skip it:
//! [`list_messages`](crate::Store::list_messages) checks `seq` continuity of the rows it
//! returns (and, for a resume after a known message, from that message's `seq`); for a gap it
//! reads the `s:` rows and writes the message rows itself — the same key and the same content
//! the writer would write, so no fencing is needed — and returns them in order. A gap at the
//! tail (k claimed, nothing newer visible) needs nothing: k was not acknowledged yet, and the
//! next reader after k+1 repairs it. A retry of the same `client_msg_id` repairs too.
//!
//! If a hole is neither read nor retried for [`SEQUENCER_TTL_SECS`], its `s:` row expires and
//! the seq stays a permanent gap: the message was never acknowledged (its writer died before
//! writing it, and its sender never retried within the idempotency window), so nothing
//! promised is lost; readers log it and go on.

use std::collections::HashMap;

use scylla::statement::batch::{Batch, BatchType};
use scylla::value::{CqlTimestamp, CqlValue, Row};
use uuid::Uuid;

use larachat_core::event::DomainEvent;
use larachat_core::id::{ConversationId, MessageId, ProjectId};
use larachat_core::model::{self, Message, NewMessage};

use super::codec::{
    Values, corrupt, exec_error, from_ts, internal, json_text, parse_json, vi, vot, vt, vts, vu,
};
use super::{Consistency, ScyllaStore, head_timestamp, outbox};
use crate::{Appended, StoreError, StoreResult};

/// How long a `client_msg_id` is remembered (a retry within it returns the original), and how
/// long a claimed message stays repairable from its `s:` row: 7 days. Clients retry within
/// seconds or hours (an outbox survives reconnects, not weeks); the rows bound the partition
/// to a week of traffic, the same as one message bucket.
pub(crate) const SEQUENCER_TTL_SECS: i32 = 7 * 24 * 3600;

/// How long one append keeps claiming before it answers `Unavailable` (a retryable error; a
/// retry with the same `client_msg_id` is safe). Every failed claim means another writer won
/// — the conversation makes progress — but not fairly: a process with several sends queued
/// for one conversation claims back to back (its next claim leaves as soon as the last one
/// applied) and tends to win every tie against another process's retry, so a loser waits as
/// long as the other processes' backlog for that conversation lasts, not for a fixed number
/// of rounds. (Seen with two processes × ten senders into one conversation: 64 consecutive
/// losses in a failed CI run, up to 50 in instrumented local runs; a random back-off before
/// retrying made every local run reach 63.) A count limit failed there; a time budget bounds
/// the wait the caller sees instead.
const CLAIM_BUDGET: std::time::Duration = std::time::Duration::from_secs(5);

/// Gap rows repaired per read at most (a page needs at most its limit).
const MAX_REPAIR: i32 = 1001;

/// The newest claimed message of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) seq: u64,
    pub(crate) id: Option<Uuid>,
}

/// The head last seen through one stripe of `conversation_locks`: the next local append to
/// that conversation usually claims right the first time. One slot per stripe keeps it
/// bounded.
#[derive(Debug, Default)]
pub(crate) struct HeadCache(Option<(Uuid, Uuid, Head)>);

impl HeadCache {
    fn get(&self, p: Uuid, c: Uuid) -> Option<Head> {
        match self.0 {
            Some((cp, cc, h)) if cp == p && cc == c => Some(h),
            _ => None,
        }
    }

    fn set(&mut self, p: Uuid, c: Uuid, h: Head) {
        self.0 = Some((p, c, h));
    }

    fn clear(&mut self) {
        self.0 = None;
    }
}

/// What a claim found.
enum Claim {
    /// Seq and id are this message's.
    Applied,
    /// The `client_msg_id` was claimed before, with this seq and message id.
    Duplicate {
        seq: u64,
        message_id: Uuid,
        head: Option<Head>,
    },
    /// Another writer moved the head (`None`: the partition is gone).
    Moved(Option<Head>),
}

/// An `s:` row: (seq, message_id, sender_kind, sender_id, sender_name, text, metadata,
/// client_msg_id, created_at).
type ClaimRow = (
    Option<i64>,
    Option<Uuid>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<CqlTimestamp>,
);

/// A message row as the numbering reads it: (id, seq, sender_kind, sender_id).
type NumberedRow = (Uuid, Option<i64>, Option<String>, Option<String>);

const CLAIM_COLS_WHERE_RANGE: &str = "SELECT seq, message_id, sender_kind, sender_id, \
     sender_name, text, metadata, client_msg_id, created_at FROM conversation_sequencer \
     WHERE project_id = ? AND conversation_id = ? AND key >= ? AND key <= ? LIMIT ?";

pub(crate) fn seq_key(seq: u64) -> String {
    format!("s:{seq:020}")
}

pub(crate) fn cmid_key(client_msg_id: &str) -> String {
    format!("c:{client_msg_id}")
}

fn seq_value(seq: u64) -> Option<CqlValue> {
    vi(i64::try_from(seq).unwrap_or(i64::MAX))
}

fn head_of(seq: Option<i64>, id: Option<Uuid>) -> Option<Head> {
    seq.map(|s| Head {
        seq: u64::try_from(s).unwrap_or(0),
        id,
    })
}

impl ScyllaStore {
    /// `append_message`: claim, then write the row, then answer (see the module docs).
    pub(super) async fn append(&self, m: &NewMessage) -> StoreResult<Appended> {
        let p = *m.project_id.as_uuid();
        let c = *m.conversation_id.as_uuid();
        // Local appends to one conversation take turns (they would only make each other's
        // claims fail); the lock is held for the claim, not for the row write.
        let mut cache = self.conversation_locks.of((p, c)).lock().await;
        let mut head = match cache.get(p, c) {
            Some(h) => h,
            None => match self.read_head(p, c).await? {
                Some(h) => h,
                None => self.init_sequencer(m.project_id, m.conversation_id).await?,
            },
        };
        let deadline = tokio::time::Instant::now() + CLAIM_BUDGET;
        let mut claims = 0u32;
        loop {
            claims += 1;
            let now = self.now();
            let message = Message {
                id: MessageId::following_at(head.id.map(MessageId::from_uuid), now),
                seq: head.seq + 1,
                project_id: m.project_id,
                conversation_id: m.conversation_id,
                sender: m.sender.clone(),
                text: m.text.clone(),
                metadata: if m.metadata.is_null() {
                    model::empty_object()
                } else {
                    m.metadata.clone()
                },
                client_msg_id: m.client_msg_id.clone(),
                created_at: now,
            };
            let outcome = match self.claim(head, &message).await {
                Ok(outcome) => outcome,
                Err(e) => {
                    // A timeout or a lost connection: the round may or may not have been
                    // applied. A serial read of seq's `s:` row decides (it completes any round
                    // still in flight).
                    cache.clear();
                    tracing::debug!(error = %e, "claim outcome unknown; reading it back");
                    match self.claimed(p, c, message.seq).await? {
                        Some(id) if id == *message.id.as_uuid() => Claim::Applied,
                        Some(_) => Claim::Moved(self.read_head(p, c).await?),
                        None => Claim::Moved(Some(head)),
                    }
                }
            };
            match outcome {
                Claim::Applied => {
                    cache.set(
                        p,
                        c,
                        Head {
                            seq: message.seq,
                            id: Some(*message.id.as_uuid()),
                        },
                    );
                    drop(cache);
                    #[cfg(feature = "fault-injection")]
                    if self.faults.take_crash() {
                        return Err(StoreError::Unavailable(
                            "injected fault: stopped after the claim".into(),
                        ));
                    }
                    self.write_message_row(&message).await?;
                    return Ok(Appended {
                        message,
                        created: true,
                    });
                }
                Claim::Duplicate {
                    seq,
                    message_id,
                    head,
                } => {
                    match head {
                        Some(h) => cache.set(p, c, h),
                        None => cache.clear(),
                    }
                    drop(cache);
                    let original = self
                        .original(m.project_id, m.conversation_id, seq, message_id)
                        .await?;
                    return Ok(Appended {
                        message: original,
                        created: false,
                    });
                }
                Claim::Moved(Some(h)) => head = h,
                Claim::Moved(None) => {
                    cache.clear();
                    head = self.init_sequencer(m.project_id, m.conversation_id).await?;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        cache.clear();
        Err(StoreError::Unavailable(format!(
            "{claims} claims in {CLAIM_BUDGET:?} lost to concurrent writers in one conversation"
        )))
    }

    /// One conditional batch: head N → N+1, the `client_msg_id` row if new, the `s:` row.
    async fn claim(&self, head: Head, m: &Message) -> StoreResult<Claim> {
        let p = *m.project_id.as_uuid();
        let c = *m.conversation_id.as_uuid();
        let id = *m.id.as_uuid();
        let ttl = Some(CqlValue::Int(SEQUENCER_TTL_SECS));
        let mut items: Vec<(&'static str, Values)> = vec![(
            "UPDATE conversation_sequencer SET head_seq = ?, head_id = ? \
             WHERE project_id = ? AND conversation_id = ? IF head_seq = ?",
            vec![seq_value(m.seq), vu(id), vu(p), vu(c), seq_value(head.seq)],
        )];
        let cmid = m.client_msg_id.as_deref().map(cmid_key);
        if let Some(key) = &cmid {
            items.push((
                "INSERT INTO conversation_sequencer (project_id, conversation_id, key, seq, \
                 message_id, sender_kind, sender_id) VALUES (?, ?, ?, ?, ?, ?, ?) \
                 IF NOT EXISTS USING TTL ?",
                vec![
                    vu(p),
                    vu(c),
                    vt(key),
                    seq_value(m.seq),
                    vu(id),
                    vt(m.sender.kind.as_str()),
                    vt(&m.sender.id),
                    ttl.clone(),
                ],
            ));
        }
        items.push((
            "INSERT INTO conversation_sequencer (project_id, conversation_id, key, seq, \
             message_id, sender_kind, sender_id, sender_name, text, metadata, client_msg_id, \
             created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?",
            vec![
                vu(p),
                vu(c),
                vt(&seq_key(m.seq)),
                seq_value(m.seq),
                vu(id),
                vt(m.sender.kind.as_str()),
                vt(&m.sender.id),
                vot(m.sender.name.as_deref()),
                vt(&m.text),
                vt(&json_text(&m.metadata)),
                vot(m.client_msg_id.as_deref()),
                vts(m.created_at),
                ttl,
            ],
        ));
        let rows = self.conditional_batch(items).await?;
        if rows.applied {
            return Ok(Claim::Applied);
        }
        if let Some(key) = &cmid {
            if let Some(r) = rows.rows.iter().find(|r| r.key.as_deref() == Some(key)) {
                if let (Some(seq), Some(message_id)) = (r.seq, r.message_id) {
                    return Ok(Claim::Duplicate {
                        seq: u64::try_from(seq).unwrap_or(0),
                        message_id,
                        head: rows.head(),
                    });
                }
            }
        }
        Ok(Claim::Moved(rows.head()))
    }

    /// Runs a conditional batch (one partition) and returns `[applied]` and the current rows
    /// the conditions were checked against.
    async fn conditional_batch(&self, items: Vec<(&'static str, Values)>) -> StoreResult<LwtRows> {
        let mut batch = Batch::new(BatchType::Logged);
        let mut values = Vec::with_capacity(items.len());
        for (cql, v) in items {
            batch.append_statement(self.stmt(cql).await?);
            values.push(v);
        }
        // Never retried blindly by the driver: an unknown outcome is resolved by `claimed`.
        batch.set_is_idempotent(false);
        let result = self
            .session
            .batch(&batch, values)
            .await
            .map_err(exec_error)?;
        LwtRows::parse(result)
    }

    /// Which message claimed `seq`, read at `LOCAL_SERIAL` (which first completes any round
    /// still in flight, so the answer is final).
    async fn claimed(&self, p: Uuid, c: Uuid, seq: u64) -> StoreResult<Option<Uuid>> {
        let mut stmt = self
            .stmt(
                "SELECT message_id FROM conversation_sequencer WHERE project_id = ? \
                 AND conversation_id = ? AND key = ?",
            )
            .await?;
        stmt.set_consistency(Consistency::LocalSerial);
        let result = self
            .session
            .execute_unpaged(&stmt, (p, c, seq_key(seq)))
            .await
            .map_err(exec_error)?
            .into_rows_result()
            .map_err(internal)?;
        let row: Option<(Option<Uuid>,)> = result.maybe_first_row().map_err(internal)?;
        Ok(row.and_then(|(id,)| id))
    }

    /// The head as stored (`None` if the conversation has no sequencer yet). `DISTINCT` reads
    /// the static row only, not the partition's rows.
    pub(super) async fn read_head(&self, p: Uuid, c: Uuid) -> StoreResult<Option<Head>> {
        let row: Option<(Uuid, Uuid, Option<i64>, Option<Uuid>)> = self
            .row(
                "SELECT DISTINCT project_id, conversation_id, head_seq, head_id \
                 FROM conversation_sequencer WHERE project_id = ? AND conversation_id = ?",
                (p, c),
            )
            .await?;
        Ok(row.and_then(|(_, _, seq, id)| head_of(seq, id)))
    }

    /// Writes the head of a conversation that has none yet (a lightweight transaction, like
    /// every write to the sequencer); returns the head in place afterwards.
    pub(super) async fn set_initial_head(&self, p: Uuid, c: Uuid, head: Head) -> StoreResult<Head> {
        let rows = self
            .conditional_batch(vec![(
                "UPDATE conversation_sequencer SET head_seq = ?, head_id = ? \
                 WHERE project_id = ? AND conversation_id = ? IF head_seq = null",
                vec![seq_value(head.seq), head.id.and_then(vu), vu(p), vu(c)],
            )])
            .await?;
        if rows.applied {
            Ok(head)
        } else {
            rows.head()
                .ok_or_else(|| corrupt("sequencer head not applied and not present"))
        }
    }

    /// The message row, its bucket index and the conversation's newest id: what a writer
    /// writes after its claim, and a repairer for a hole. Idempotent: same key, same content.
    ///
    /// With the message's `message.sent` outbox row, as one **logged** batch: the message
    /// becomes visible if and only if its event is in the outbox (an unlogged batch could
    /// leave a visible message without its event, which no reader would notice: readers
    /// repair missing rows, not missing events). The claim remains the commit point; if the
    /// batch does not land before the writer dies, the message was never acknowledged, and a
    /// reader that finds its seq missing below a newer message writes all of it again.
    pub(super) async fn write_message_row(&self, m: &Message) -> StoreResult<()> {
        let p = *m.project_id.as_uuid();
        let c = *m.conversation_id.as_uuid();
        let uid = *m.id.as_uuid();
        let bucket = self.message_bucket(&uid);
        // Its event's id comes from the message id: the writer, a repairer and a retry all
        // write the same event (at most in two outbox buckets; JetStream's de-duplication
        // window and the consumers' de-duplication by id absorb the second publish).
        let (event, entry) = outbox::insert(&DomainEvent::message_sent_derived(m), self.now());
        let answers = self.answers(m).await?;
        self.batch_of(BatchType::Logged, vec![
            (
                "INSERT INTO messages (project_id, conversation_id, bucket, id, sender_kind, \
                 sender_id, sender_name, text, metadata, client_msg_id, created_at, seq) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                vec![
                    vu(p),
                    vu(c),
                    vi(bucket),
                    vu(uid),
                    vt(m.sender.kind.as_str()),
                    vt(&m.sender.id),
                    vot(m.sender.name.as_deref()),
                    vt(&m.text),
                    vt(&json_text(&m.metadata)),
                    vot(m.client_msg_id.as_deref()),
                    vts(m.created_at),
                    seq_value(m.seq),
                ],
            ),
            (
                "INSERT INTO message_buckets (project_id, conversation_id, bucket) \
                 VALUES (?, ?, ?)",
                vec![vu(p), vu(c), vi(bucket)],
            ),
            // Write time from the id: whoever writes last, the greatest id wins the head.
            (
                "UPDATE conversations USING TIMESTAMP ? SET last_message_id = ?, updated_at = ? \
                 WHERE project_id = ? AND id = ?",
                vec![
                    vi(head_timestamp(&uid)),
                    vu(uid),
                    vts(m.created_at),
                    vu(p),
                    vu(c),
                ],
            ),
            event,
        ]
        .into_iter()
        .chain(super::usage::message_rows(m))
        .chain(super::analytics::message_rows(m, answers, self.now()))
        .chain(self.search_rows(p, c, &larachat_core::search::message_keys(&m.text)))
        .collect())
        .await?;
        self.enqueue(vec![entry]);
        Ok(())
    }

    /// The message stored earlier under `m`'s `client_msg_id`, if any (for a retry that
    /// would otherwise be refused by a quota).
    pub(super) async fn previous_append(&self, m: &NewMessage) -> StoreResult<Option<Message>> {
        let Some(cmid) = m.client_msg_id.as_deref() else {
            return Ok(None);
        };
        let row: Option<(Option<i64>, Option<Uuid>)> = self
            .row(
                "SELECT seq, message_id FROM conversation_sequencer WHERE project_id = ? \
                 AND conversation_id = ? AND key = ?",
                (
                    *m.project_id.as_uuid(),
                    *m.conversation_id.as_uuid(),
                    cmid_key(cmid),
                ),
            )
            .await?;
        match row {
            Some((Some(seq), Some(id))) => self
                .original(
                    m.project_id,
                    m.conversation_id,
                    u64::try_from(seq).unwrap_or(0),
                    id,
                )
                .await
                .map(Some),
            _ => Ok(None),
        }
    }

    /// The message a repeated `client_msg_id` names, written again in full (from its row, or
    /// from its `s:` row if its writer never wrote it).
    async fn original(
        &self,
        project: ProjectId,
        conversation: ConversationId,
        seq: u64,
        id: Uuid,
    ) -> StoreResult<Message> {
        if let Some(m) = self.load_message(project, conversation, id).await? {
            // The first attempt may have failed after writing only the row (its batch is
            // unlogged): write all of it again, so the retry's ack means "listed" too.
            self.write_message_row(&m).await?;
            return Ok(m);
        }
        self.repair(project, conversation, seq, seq)
            .await?
            .into_iter()
            .find(|m| *m.id.as_uuid() == id)
            .ok_or_else(|| {
                StoreError::Internal(format!(
                    "message seq {seq} was claimed but its repair record has expired"
                ))
            })
    }

    /// Writes the message rows of claimed seqs `from..=to` from their `s:` rows; returns them.
    pub(super) async fn repair(
        &self,
        project: ProjectId,
        conversation: ConversationId,
        from: u64,
        to: u64,
    ) -> StoreResult<Vec<Message>> {
        let p = *project.as_uuid();
        let c = *conversation.as_uuid();
        let rows: Vec<ClaimRow> = self
            .rows(
                CLAIM_COLS_WHERE_RANGE,
                (p, c, seq_key(from), seq_key(to), MAX_REPAIR),
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let m = decode_claim(project, conversation, r)?;
            self.write_message_row(&m).await?;
            out.push(m);
        }
        let wanted = usize::try_from(to - from + 1).unwrap_or(usize::MAX);
        if out.len() < wanted.min(MAX_REPAIR as usize) {
            tracing::warn!(
                %project, %conversation, from, to, repaired = out.len(),
                "claimed messages without a row and without a repair record (never acknowledged; \
                 their senders did not retry within the idempotency window)"
            );
        }
        if !out.is_empty() {
            tracing::info!(%conversation, from, to, repaired = out.len(), "repaired claimed messages a writer did not write");
        }
        Ok(out)
    }

    /// Repairs every gap in `seq` between consecutive messages of `items` (ascending id order),
    /// and between the message with seq `anchor` (the resume point) and the first of them.
    /// Keeps `items` in ascending id order.
    pub(super) async fn fill_holes(
        &self,
        project: ProjectId,
        conversation: ConversationId,
        anchor: Option<u64>,
        items: &mut Vec<Message>,
    ) -> StoreResult<()> {
        let mut gaps = Vec::new();
        let mut prev = anchor.filter(|s| *s > 0);
        for m in items.iter() {
            if m.seq == 0 {
                // Written by a schema-1 process after the migration: not numbered.
                prev = None;
                continue;
            }
            if let Some(p) = prev {
                if m.seq > p + 1 {
                    gaps.push((p + 1, m.seq - 1));
                }
            }
            prev = Some(m.seq);
        }
        if gaps.is_empty() {
            return Ok(());
        }
        for (from, to) in gaps {
            let repaired = self.repair(project, conversation, from, to).await?;
            items.extend(repaired);
        }
        items.sort_by_key(|m| m.id);
        items.dedup_by_key(|m| m.id);
        Ok(())
    }

    /// Gives a conversation without a sequencer head one: numbers its existing messages in id
    /// order, carries their `client_msg_id`s over from the schema-1 index, and writes the head.
    /// Used by the migration to schema 2 and, lazily, by the first append to a conversation
    /// created by a schema-1 process. Safe to run concurrently and to repeat: the numbering is
    /// the same every time and only one head is written. `NotFound("conversation")` if the
    /// conversation does not exist.
    pub(super) async fn init_sequencer(
        &self,
        project: ProjectId,
        conversation: ConversationId,
    ) -> StoreResult<Head> {
        let p = *project.as_uuid();
        let c = *conversation.as_uuid();
        // Schema-1 columns only: the migration to schema 2 runs this before later migrations
        // add theirs. A row without status or creation time is a partial one (cells written
        // by a racing append after a delete), not a conversation, as in `decode_conversation`.
        let row: Option<(Option<String>, Option<CqlTimestamp>)> = self
            .row(
                "SELECT status, created_at FROM conversations WHERE project_id = ? AND id = ?",
                (p, c),
            )
            .await?;
        if !matches!(row, Some((Some(_), Some(_)))) {
            return Err(StoreError::NotFound("conversation"));
        }
        // client_msg_id rows of schema 1, by message id, with their remaining lifetime.
        let client_ids: Vec<(String, Option<Uuid>, Option<i32>)> = self
            .all_rows(
                "SELECT client_msg_id, message_id, TTL(message_id) FROM message_client_ids \
                 WHERE project_id = ? AND conversation_id = ?",
                (p, c),
            )
            .await?;
        let mut by_message: HashMap<Uuid, (String, i32)> = client_ids
            .into_iter()
            .filter_map(|(cmid, id, ttl)| {
                Some((
                    id?,
                    (
                        cmid,
                        ttl.unwrap_or(SEQUENCER_TTL_SECS)
                            .clamp(1, SEQUENCER_TTL_SECS),
                    ),
                ))
            })
            .collect();
        let mut buckets = self.message_buckets(p, c).await?;
        buckets.reverse(); // oldest first
        let mut seq = 0u64;
        let mut last = None;
        for b in buckets {
            let rows: Vec<NumberedRow> = self
                .all_rows(
                    "SELECT id, seq, sender_kind, sender_id FROM messages WHERE project_id = ? \
                     AND conversation_id = ? AND bucket = ?",
                    (p, c, b),
                )
                .await?;
            for (id, stored, kind, sender) in rows {
                seq += 1;
                last = Some(id);
                if stored != i64::try_from(seq).ok() {
                    self.exec(
                        "UPDATE messages SET seq = ? WHERE project_id = ? AND conversation_id = ? \
                         AND bucket = ? AND id = ?",
                        (i64::try_from(seq).unwrap_or(i64::MAX), p, c, b, id),
                    )
                    .await?;
                }
                if let Some((cmid, ttl)) = by_message.remove(&id) {
                    // Plain writes are safe here: no head exists yet, so no claim can race
                    // them, and claims only ever add `c:` rows with IF NOT EXISTS.
                    self.exec(
                        "INSERT INTO conversation_sequencer (project_id, conversation_id, key, \
                         seq, message_id, sender_kind, sender_id) VALUES (?, ?, ?, ?, ?, ?, ?) \
                         USING TTL ?",
                        (
                            p,
                            c,
                            cmid_key(&cmid),
                            i64::try_from(seq).unwrap_or(i64::MAX),
                            id,
                            kind.as_deref(),
                            sender.as_deref(),
                            ttl,
                        ),
                    )
                    .await?;
                }
            }
        }
        self.set_initial_head(p, c, Head { seq, id: last }).await
    }
}

/// `[applied]` and the rows a conditional statement returned.
struct LwtRows {
    applied: bool,
    rows: Vec<LwtRow>,
}

struct LwtRow {
    key: Option<String>,
    head_seq: Option<i64>,
    head_id: Option<Uuid>,
    seq: Option<i64>,
    message_id: Option<Uuid>,
}

impl LwtRows {
    /// Reads the columns by name: which ones a failed condition returns, and in which order,
    /// is the server's choice.
    fn parse(result: scylla::response::query_result::QueryResult) -> StoreResult<Self> {
        let result = result.into_rows_result().map_err(internal)?;
        let specs = result.column_specs();
        let col = |name: &str| specs.get_by_name(name).map(|(i, _)| i);
        let applied_at = col("[applied]").ok_or_else(|| corrupt("[applied]"))?;
        let (key_at, head_seq_at, head_id_at, seq_at, message_id_at) = (
            col("key"),
            col("head_seq"),
            col("head_id"),
            col("seq"),
            col("message_id"),
        );
        let mut applied = false;
        let mut rows = Vec::new();
        for row in result.rows::<Row>().map_err(internal)? {
            let row = row.map_err(internal)?;
            let get = |i: Option<usize>| i.and_then(|i| row.columns.get(i).cloned().flatten());
            if let Some(CqlValue::Boolean(a)) = get(Some(applied_at)) {
                applied |= a;
            }
            rows.push(LwtRow {
                key: match get(key_at) {
                    Some(CqlValue::Text(k)) => Some(k),
                    _ => None,
                },
                head_seq: match get(head_seq_at) {
                    Some(CqlValue::BigInt(s)) => Some(s),
                    _ => None,
                },
                head_id: match get(head_id_at) {
                    Some(CqlValue::Uuid(u)) => Some(u),
                    _ => None,
                },
                seq: match get(seq_at) {
                    Some(CqlValue::BigInt(s)) => Some(s),
                    _ => None,
                },
                message_id: match get(message_id_at) {
                    Some(CqlValue::Uuid(u)) => Some(u),
                    _ => None,
                },
            });
        }
        Ok(Self { applied, rows })
    }

    /// The head in the returned static columns.
    fn head(&self) -> Option<Head> {
        self.rows
            .iter()
            .find_map(|r| head_of(r.head_seq, r.head_id))
    }
}

fn decode_claim(
    project: ProjectId,
    conversation: ConversationId,
    r: ClaimRow,
) -> StoreResult<Message> {
    let (seq, id, kind, sender_id, sender_name, text, metadata, client_msg_id, created_at) = r;
    Ok(Message {
        id: MessageId::from_uuid(id.ok_or_else(|| corrupt("claim message_id"))?),
        seq: seq
            .and_then(|s| u64::try_from(s).ok())
            .ok_or_else(|| corrupt("claim seq"))?,
        project_id: project,
        conversation_id: conversation,
        sender: larachat_core::model::Actor {
            kind: kind
                .as_deref()
                .and_then(|k| k.parse().ok())
                .ok_or_else(|| corrupt("claim sender kind"))?,
            id: sender_id.ok_or_else(|| corrupt("claim sender id"))?,
            name: sender_name,
        },
        text: text.unwrap_or_default(),
        metadata: parse_json(metadata.as_deref())?,
        client_msg_id,
        created_at: from_ts(created_at.ok_or_else(|| corrupt("claim created_at"))?)?,
    })
}

/// Test-only faults (cargo feature `fault-injection`, enabled for this crate's own tests):
/// make appends stop where a crashed process would.
#[cfg(feature = "fault-injection")]
#[derive(Debug, Default)]
pub(crate) struct Faults {
    crash_after_claim: std::sync::atomic::AtomicU32,
}

#[cfg(feature = "fault-injection")]
impl Faults {
    fn take_crash(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.crash_after_claim
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

#[cfg(feature = "fault-injection")]
impl ScyllaStore {
    /// The next `n` appends of this store claim their seq and then fail as if the process had
    /// died before writing the message row: the hole a reader or a retry must repair.
    pub fn crash_after_next_claims(&self, n: u32) {
        self.faults
            .crash_after_claim
            .store(n, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_seq() {
        assert!(seq_key(9) < seq_key(10));
        assert!(seq_key(99_999) < seq_key(100_000));
        assert_eq!(seq_key(1).len(), seq_key(u64::MAX).len());
        // `c:` rows sort before every `s:` row.
        assert!(cmid_key("zzzz") < seq_key(0));
    }

    #[test]
    fn head_cache_is_per_conversation() {
        let (p, c, other) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let mut cache = HeadCache::default();
        let h = Head { seq: 3, id: None };
        cache.set(p, c, h);
        assert_eq!(cache.get(p, c), Some(h));
        assert_eq!(cache.get(p, other), None);
        cache.clear();
        assert_eq!(cache.get(p, c), None);
    }
}
