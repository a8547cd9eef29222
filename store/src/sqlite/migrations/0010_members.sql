-- Version 10 (0009 is another change's): project members with roles, and invitations.
--
-- A project's members are admins with a role (`owner`, `admin`, `agent`); a project always
-- keeps at least one owner (enforced by the writer). `email` and `name` are kept on the row so
-- a member list is one read. Invitations keep only the SHA-256 of their token.

CREATE TABLE project_members (
    project_id BLOB NOT NULL,
    admin_id   BLOB NOT NULL,
    email      TEXT NOT NULL,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (project_id, admin_id)
) WITHOUT ROWID;
-- "My projects": an admin's memberships, newest project first.
CREATE INDEX project_members_by_admin ON project_members (admin_id, project_id);

CREATE TABLE project_invites (
    project_id  BLOB NOT NULL,
    id          BLOB NOT NULL,
    email       TEXT NOT NULL,
    role        TEXT NOT NULL,
    invited_by  BLOB NOT NULL,
    token_hash  BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    accepted_at INTEGER,
    PRIMARY KEY (project_id, id)
) WITHOUT ROWID;

-- Every existing project's owner becomes its `owner` member (named by their email).
INSERT INTO project_members (project_id, admin_id, email, name, role, created_at)
SELECT p.id, p.owner_id, a.email_norm, a.email_norm, 'owner', p.created_at
FROM projects p JOIN admin_users a ON a.id = p.owner_id;
