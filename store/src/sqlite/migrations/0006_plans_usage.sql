-- Schema 5: plans as data, usage per project and month, and the monthly active end users.
--
-- projects.plan (TEXT since schema 1: 'free', 'starter', 'pro', 'enterprise') now names a row
-- of plans. A NULL limit is unlimited. The four rows are the seed's plans; platform admins
-- edit them through the Admin API.

CREATE TABLE plans (
    id                   TEXT PRIMARY KEY NOT NULL,
    name                 TEXT NOT NULL,
    monthly_active_users INTEGER,
    messages_per_month   INTEGER,
    projects_per_owner   INTEGER,
    -- JSON array of feature names, sorted
    features             TEXT NOT NULL,
    updated_at           INTEGER NOT NULL
);

INSERT INTO plans (id, name, monthly_active_users, messages_per_month, projects_per_owner,
                   features, updated_at)
VALUES ('free', 'Free', 100, 1000, 1, '[]', CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
       ('starter', 'Starter', 1000, 10000, 3, '[]', CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
       ('pro', 'Pro', 10000, 100000, 10, '["custom_branding"]',
        CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
       ('enterprise', 'Enterprise', NULL, NULL, NULL, '["custom_branding"]',
        CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));

-- One row per project and calendar month (UTC, 'YYYY-MM'), updated by the writer in the same
-- transaction as the change it counts and that change's outbox event.
CREATE TABLE usage (
    project_id    BLOB NOT NULL,
    period        TEXT NOT NULL,
    messages      INTEGER NOT NULL DEFAULT 0,
    conversations INTEGER NOT NULL DEFAULT 0,
    active_users  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (project_id, period)
) WITHOUT ROWID;

-- The end users counted in usage.active_users: a user counts once per month however often it
-- is active (the primary key is the idempotency).
CREATE TABLE usage_active_users (
    project_id  BLOB NOT NULL,
    period      TEXT NOT NULL,
    end_user_id BLOB NOT NULL,
    PRIMARY KEY (project_id, period, end_user_id)
) WITHOUT ROWID;
