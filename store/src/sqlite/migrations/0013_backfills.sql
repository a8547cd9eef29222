-- Version 13: resumable one-off backfills, and the search index backfill (see
-- `sqlite::backfill` and the README, "Search").
--
-- One row per backfill: where it has got to (`phase`, and the primary key of the last row it
-- handled in `after`), and when it finished (`done_at`, NULL while running). Each batch of the
-- backfill moves the cursor in the same transaction as the rows it writes, so a killed process
-- resumes after the last committed batch.
--
-- `search`: the index rows of the conversations and messages stored before version 12
-- (phase 0 walks conversations, phase 1 messages). Rows are set-like, so indexing a
-- conversation that already has its rows changes nothing.

CREATE TABLE backfills (
    name TEXT PRIMARY KEY,
    phase INTEGER NOT NULL,
    after BLOB,
    done_at INTEGER
) WITHOUT ROWID;

INSERT INTO backfills (name, phase, after, done_at) VALUES ('search', 0, NULL, NULL);
