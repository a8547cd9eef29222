-- Version 12: conversation search (see `larachat_core::search` and the README, "Search").
--
-- One row per conversation and index key (`w:<word>` or `p:<prefix>`), written in the same
-- transaction as the message, conversation or member change it comes from. A query reads the
-- rows of its keys (primary key ranges) and intersects them: never a scan of messages.
-- Conversations and messages stored before this version are not in the index.

CREATE TABLE search_terms (
    project_id BLOB NOT NULL,
    term TEXT NOT NULL,
    conversation_id BLOB NOT NULL,
    PRIMARY KEY (project_id, term, conversation_id)
) WITHOUT ROWID;
