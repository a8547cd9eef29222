-- Lara Chat embedded schema, version 1.
--
-- Ids are 16-byte big-endian UUID BLOBs: byte order is UUID order, and for UUIDv7 ids (messages,
-- conversations, projects) that is creation order. Timestamps are integer milliseconds since
-- the Unix epoch (UTC). JSON values are TEXT.
--
-- Every tenant table's primary key starts with project_id, like the CQL layout. Only
-- admin_users and projects are global; api_keys are found by their id (it is inside the
-- presented key) and carry project_id as an indexed column.

CREATE TABLE admin_users (
    id            BLOB PRIMARY KEY NOT NULL,
    email         TEXT NOT NULL,
    -- lower-cased email: uniqueness and lookups are case-insensitive
    email_norm    TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at    INTEGER NOT NULL
);

CREATE TABLE projects (
    id         BLOB PRIMARY KEY NOT NULL,
    name       TEXT NOT NULL,
    owner_id   BLOB NOT NULL,
    plan       TEXT NOT NULL,
    status     TEXT NOT NULL,
    settings   TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX projects_by_owner ON projects (owner_id, id);

CREATE TABLE api_keys (
    id           BLOB PRIMARY KEY NOT NULL,
    project_id   BLOB NOT NULL,
    name         TEXT NOT NULL,
    kind         TEXT NOT NULL,
    prefix       TEXT NOT NULL,
    scopes       TEXT NOT NULL,
    secret_hash  BLOB NOT NULL CHECK (length(secret_hash) = 32),
    last_used_at INTEGER,
    expires_at   INTEGER,
    revoked_at   INTEGER,
    created_at   INTEGER NOT NULL
);
CREATE INDEX api_keys_by_project ON api_keys (project_id, created_at, id);

CREATE TABLE end_users (
    project_id      BLOB NOT NULL,
    id              BLOB NOT NULL,
    user_identifier TEXT,
    name            TEXT,
    email           TEXT,
    avatar          TEXT,
    metadata        TEXT NOT NULL,
    is_anonymous    INTEGER NOT NULL,
    last_seen_at    INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (project_id, id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX end_users_by_identifier ON end_users (project_id, user_identifier)
    WHERE user_identifier IS NOT NULL;

CREATE TABLE conversations (
    project_id      BLOB NOT NULL,
    id              BLOB NOT NULL,
    subject         TEXT,
    status          TEXT NOT NULL,
    metadata        TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    last_message_id BLOB,
    PRIMARY KEY (project_id, id)
) WITHOUT ROWID;
CREATE INDEX conversations_by_status ON conversations (project_id, status, id);

CREATE TABLE conversation_members (
    project_id      BLOB NOT NULL,
    conversation_id BLOB NOT NULL,
    end_user_id     BLOB NOT NULL,
    PRIMARY KEY (project_id, conversation_id, end_user_id),
    FOREIGN KEY (project_id, conversation_id) REFERENCES conversations (project_id, id),
    FOREIGN KEY (project_id, end_user_id) REFERENCES end_users (project_id, id)
) WITHOUT ROWID;
CREATE INDEX conversation_members_by_user
    ON conversation_members (project_id, end_user_id, conversation_id);

CREATE TABLE messages (
    project_id      BLOB NOT NULL,
    conversation_id BLOB NOT NULL,
    id              BLOB NOT NULL,
    sender_kind     TEXT NOT NULL,
    sender_id       TEXT NOT NULL,
    sender_name     TEXT,
    text            TEXT NOT NULL,
    metadata        TEXT NOT NULL,
    client_msg_id   TEXT,
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (project_id, conversation_id, id),
    FOREIGN KEY (project_id, conversation_id) REFERENCES conversations (project_id, id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX messages_by_client_msg_id
    ON messages (project_id, conversation_id, client_msg_id)
    WHERE client_msg_id IS NOT NULL;

CREATE TABLE read_states (
    project_id           BLOB NOT NULL,
    conversation_id      BLOB NOT NULL,
    member_key           TEXT NOT NULL,
    reader_kind          TEXT NOT NULL,
    reader_id            TEXT NOT NULL,
    reader_name          TEXT,
    last_read_message_id BLOB NOT NULL,
    updated_at           INTEGER NOT NULL,
    PRIMARY KEY (project_id, conversation_id, member_key),
    FOREIGN KEY (project_id, conversation_id) REFERENCES conversations (project_id, id)
) WITHOUT ROWID;
-- delete_end_user removes the user's read markers in every conversation
CREATE INDEX read_states_by_member ON read_states (project_id, member_key);
