-- Version 2: per-conversation message sequence numbers.
--
-- Every message gets `seq`: 1, 2, 3, … in its conversation, without gaps, in id order; the
-- conversation keeps the newest one in `last_seq`. The single writer assigns both in the
-- transaction that stores the message, so no gap can ever be visible. Existing messages are
-- numbered in id order (their order until now).

ALTER TABLE messages ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN last_seq INTEGER NOT NULL DEFAULT 0;

UPDATE messages SET seq = numbered.n
FROM (
    SELECT project_id, conversation_id, id,
           row_number() OVER (PARTITION BY project_id, conversation_id ORDER BY id) AS n
    FROM messages
) AS numbered
WHERE messages.project_id = numbered.project_id
  AND messages.conversation_id = numbered.conversation_id
  AND messages.id = numbered.id;

UPDATE conversations SET last_seq = (
    SELECT count(*) FROM messages
    WHERE messages.project_id = conversations.project_id
      AND messages.conversation_id = conversations.id
);
