-- Version 11: idempotency keys of conversation creations.
--
-- One row per key a caller gave when creating a conversation (`caller` names the principal:
-- `key:<api key id>`, `user:<end user id>`, …). Written in the creation's transaction; the
-- same key again returns `conversation_id` instead of creating. Deleted with the project.

CREATE TABLE conversation_keys (
    project_id      BLOB NOT NULL,
    caller          TEXT NOT NULL,
    key             TEXT NOT NULL,
    conversation_id BLOB NOT NULL,
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (project_id, caller, key)
) WITHOUT ROWID;
