-- Version 7: analytics rollups (see docs/usage.md, "Analytics").
--
-- Kept by the writer in the transaction of the change they describe (a message appended, a
-- conversation created or closed), like `usage`: a rollup exists exactly when its change does,
-- and a retried send (known client_msg_id) returns before touching them. Reads never scan
-- messages: a 30-day query reads at most 720 rows of analytics_hours.
--
-- `hour` is the start of a UTC hour in milliseconds since the epoch.

-- Messages per project and hour, by sender kind.
CREATE TABLE analytics_hours (
    project_id BLOB NOT NULL,
    hour       INTEGER NOT NULL,
    end_user   INTEGER NOT NULL DEFAULT 0,
    agent      INTEGER NOT NULL DEFAULT 0,
    bot        INTEGER NOT NULL DEFAULT 0,
    system     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (project_id, hour)
) WITHOUT ROWID;

-- The conversations with at least one message in an hour (distinct active conversations of a
-- range): one row per conversation and hour it was active in, never per message.
CREATE TABLE analytics_active (
    project_id      BLOB NOT NULL,
    hour            INTEGER NOT NULL,
    conversation_id BLOB NOT NULL,
    PRIMARY KEY (project_id, hour, conversation_id)
) WITHOUT ROWID;

-- One row per conversation: its first end-user message, the first agent or bot message after
-- it, and when it was closed (NULL while open).
CREATE TABLE analytics_conversations (
    project_id            BLOB NOT NULL,
    conversation_id       BLOB NOT NULL,
    created_at            INTEGER NOT NULL,
    first_user_message_at INTEGER,
    first_response_at     INTEGER,
    closed_at             INTEGER,
    PRIMARY KEY (project_id, conversation_id)
) WITHOUT ROWID;
-- Covering: a range query reads the index only.
CREATE INDEX analytics_conversations_by_created ON analytics_conversations
    (project_id, created_at, first_user_message_at, first_response_at, closed_at);

-- Backfill from what exists (one scan, once).
INSERT INTO analytics_hours (project_id, hour, end_user, agent, bot, system)
SELECT project_id, (created_at / 3600000) * 3600000 AS h,
       sum(sender_kind = 'end_user'), sum(sender_kind = 'agent'), sum(sender_kind = 'bot'),
       sum(sender_kind = 'system')
FROM messages GROUP BY project_id, h;

INSERT INTO analytics_active (project_id, hour, conversation_id)
SELECT DISTINCT project_id, (created_at / 3600000) * 3600000, conversation_id FROM messages;

-- A conversation closed before this version has no recorded closing time: its last update
-- (an upper bound) stands in for it.
INSERT INTO analytics_conversations (project_id, conversation_id, created_at,
                                     first_user_message_at, first_response_at, closed_at)
SELECT c.project_id, c.id, c.created_at,
       (SELECT m.created_at FROM messages m
        WHERE m.project_id = c.project_id AND m.conversation_id = c.id
          AND m.sender_kind = 'end_user' ORDER BY m.seq LIMIT 1),
       (SELECT r.created_at FROM messages r
        WHERE r.project_id = c.project_id AND r.conversation_id = c.id
          AND r.sender_kind IN ('agent', 'bot')
          AND r.seq > (SELECT min(u.seq) FROM messages u
                       WHERE u.project_id = c.project_id AND u.conversation_id = c.id
                         AND u.sender_kind = 'end_user')
        ORDER BY r.seq LIMIT 1),
       CASE WHEN c.status = 'closed' THEN c.updated_at END
FROM conversations c;
