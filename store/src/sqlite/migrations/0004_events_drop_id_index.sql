-- Version 4: the outbox without the UNIQUE index on `events.id`.
--
-- No query looks an event up by id (consumers read by `position`, trimming by `occurred_at`
-- and `position`), and ids are fresh UUIDv7s generated once per event by its builder, so the
-- index only cost a second B-tree insert per change on the writer. SQLite cannot drop a
-- UNIQUE constraint, so the table is rebuilt; `position` values are kept, and so is the
-- AUTOINCREMENT high-water mark (positions of trimmed events are never reused: consumer
-- checkpoints refer to them).

CREATE TABLE events_v4 (
    position    INTEGER PRIMARY KEY AUTOINCREMENT,
    id          BLOB    NOT NULL,
    project_id  BLOB    NOT NULL,
    kind        TEXT    NOT NULL,
    occurred_at INTEGER NOT NULL,
    body        BLOB    NOT NULL
);
INSERT INTO events_v4 (position, id, project_id, kind, occurred_at, body)
    SELECT position, id, project_id, kind, occurred_at, body FROM events ORDER BY position;
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'events_v4', coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)
    WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'events_v4');
UPDATE sqlite_sequence
    SET seq = max(seq, coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0))
    WHERE name = 'events_v4';
DROP TABLE events;
ALTER TABLE events_v4 RENAME TO events;
