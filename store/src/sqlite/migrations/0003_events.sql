-- Version 3: the event outbox and the durable checkpoints of its consumers.
--
-- Every change that has a domain event inserts it here in the SAME transaction (the writer's
-- savepoint of that change), so an event exists exactly when its change was committed.
-- `position` is assigned by the single writer in commit order; a reader only ever sees a
-- committed prefix of it. `body` is the event's JSON wire form (core::event), written once:
-- its `id` never changes.

CREATE TABLE events (
    position    INTEGER PRIMARY KEY AUTOINCREMENT,
    id          BLOB    NOT NULL UNIQUE,
    project_id  BLOB    NOT NULL,
    kind        TEXT    NOT NULL,
    occurred_at INTEGER NOT NULL,
    body        BLOB    NOT NULL
);

-- A consumer has handled every event up to and including `checkpoint`.
CREATE TABLE event_consumers (
    name       TEXT    PRIMARY KEY,
    checkpoint INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
