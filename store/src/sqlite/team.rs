//! The SQL of team members and invitations (migration 10). Writes run on the writer thread
//! inside a savepoint, so the last-owner check and its change are one transaction.

use chrono::{DateTime, Utc};
use rusqlite::types::{Type, ValueRef};
use rusqlite::{Connection, OptionalExtension, Row, params};

use larachat_core::id::{AdminUserId, InviteId, ProjectId};
use larachat_core::model::Project;
use larachat_core::team::{Invite, Member, ProjectRole};

use super::codec::{self, get_opt_time, get_time, get_uuid, ms, opt_ms, sql_error};
use super::queries::clamp_limit;
use crate::{Page, StoreError, StoreResult};

const MEMBER_COLS: &str = "project_id, admin_id, email, name, role, created_at";
const INVITE_COLS: &str =
    "project_id, id, email, role, invited_by, token_hash, created_at, expires_at, accepted_at";

/// The answer when a change would leave a project without an owner.
pub(crate) fn last_owner() -> StoreError {
    StoreError::Conflict("a project keeps at least one owner".into())
}

fn role(row: &Row<'_>, idx: usize) -> rusqlite::Result<ProjectRole> {
    let s: String = row.get(idx)?;
    s.parse().map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, "unknown project role".into())
    })
}

fn member_row(row: &Row<'_>) -> rusqlite::Result<Member> {
    Ok(Member {
        project_id: ProjectId::from_uuid(get_uuid(row, 0)?),
        admin_id: AdminUserId::from_uuid(get_uuid(row, 1)?),
        email: row.get(2)?,
        name: row.get(3)?,
        role: role(row, 4)?,
        created_at: get_time(row, 5)?,
    })
}

fn invite_row(row: &Row<'_>) -> rusqlite::Result<Invite> {
    let token_hash = match row.get_ref(5)? {
        ValueRef::Blob(b) => <[u8; 32]>::try_from(b).map_err(|_| {
            rusqlite::Error::FromSqlConversionFailure(5, Type::Blob, "invite token hash".into())
        })?,
        other => {
            return Err(rusqlite::Error::InvalidColumnType(
                5,
                "token_hash".into(),
                other.data_type(),
            ));
        }
    };
    Ok(Invite {
        project_id: ProjectId::from_uuid(get_uuid(row, 0)?),
        id: InviteId::from_uuid(get_uuid(row, 1)?),
        email: row.get(2)?,
        role: role(row, 3)?,
        invited_by: AdminUserId::from_uuid(get_uuid(row, 4)?),
        token_hash,
        created_at: get_time(row, 6)?,
        expires_at: get_time(row, 7)?,
        accepted_at: get_opt_time(row, 8)?,
    })
}

/// The owner membership of a new project (in `create_project`'s transaction).
pub(crate) fn add_owner_of_new_project(conn: &Connection, p: &Project) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO project_members (project_id, admin_id, email, name, role, created_at) \
         SELECT ?1, id, email_norm, email_norm, 'owner', ?2 FROM admin_users WHERE id = ?3",
    )
    .and_then(|mut s| {
        s.execute(params![
            p.id.as_uuid().as_bytes(),
            ms(p.created_at),
            p.owner_id.as_uuid().as_bytes()
        ])
    })
    .map_err(sql_error)?;
    Ok(())
}

/// Removes the team of a project being deleted.
pub(crate) fn delete_project_team(conn: &Connection, project: ProjectId) -> StoreResult<()> {
    for table in ["project_members", "project_invites"] {
        conn.prepare_cached(&format!("DELETE FROM {table} WHERE project_id = ?1"))
            .and_then(|mut s| s.execute([project.as_uuid().as_bytes()]))
            .map_err(sql_error)?;
    }
    Ok(())
}

pub(crate) fn member(
    conn: &Connection,
    project: ProjectId,
    admin: AdminUserId,
) -> StoreResult<Option<Member>> {
    let sql = format!(
        "SELECT {MEMBER_COLS} FROM project_members WHERE project_id = ?1 AND admin_id = ?2"
    );
    conn.prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_row(
                params![project.as_uuid().as_bytes(), admin.as_uuid().as_bytes()],
                member_row,
            )
            .optional()
        })
        .map_err(sql_error)
}

pub(crate) fn list_members(conn: &Connection, project: ProjectId) -> StoreResult<Vec<Member>> {
    let sql = format!(
        "SELECT {MEMBER_COLS} FROM project_members WHERE project_id = ?1 \
         ORDER BY created_at, admin_id"
    );
    conn.prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_map([project.as_uuid().as_bytes()], member_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(sql_error)
}

pub(crate) fn add_member(conn: &Connection, m: &Member) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO project_members (project_id, admin_id, email, name, role, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| {
        s.execute(params![
            m.project_id.as_uuid().as_bytes(),
            m.admin_id.as_uuid().as_bytes(),
            m.email,
            m.name,
            m.role.as_str(),
            ms(m.created_at)
        ])
    })
    .map_err(|e| match sql_error(e) {
        StoreError::Conflict(_) => StoreError::Conflict("already a member of this project".into()),
        other => other,
    })?;
    Ok(())
}

fn owners(conn: &Connection, project: ProjectId) -> StoreResult<u64> {
    let n: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM project_members WHERE project_id = ?1 AND role = 'owner'",
        )
        .and_then(|mut s| s.query_row([project.as_uuid().as_bytes()], |r| r.get(0)))
        .map_err(sql_error)?;
    Ok(n.max(0) as u64)
}

pub(crate) fn set_member_role(
    conn: &Connection,
    project: ProjectId,
    admin: AdminUserId,
    role: ProjectRole,
) -> StoreResult<Option<Member>> {
    let Some(mut m) = member(conn, project, admin)? else {
        return Ok(None);
    };
    if m.role == role {
        return Ok(Some(m));
    }
    if m.role == ProjectRole::Owner && owners(conn, project)? <= 1 {
        return Err(last_owner());
    }
    conn.prepare_cached(
        "UPDATE project_members SET role = ?3 WHERE project_id = ?1 AND admin_id = ?2",
    )
    .and_then(|mut s| {
        s.execute(params![
            project.as_uuid().as_bytes(),
            admin.as_uuid().as_bytes(),
            role.as_str()
        ])
    })
    .map_err(sql_error)?;
    m.role = role;
    Ok(Some(m))
}

pub(crate) fn remove_member(
    conn: &Connection,
    project: ProjectId,
    admin: AdminUserId,
) -> StoreResult<bool> {
    let Some(m) = member(conn, project, admin)? else {
        return Ok(false);
    };
    if m.role == ProjectRole::Owner && owners(conn, project)? <= 1 {
        return Err(last_owner());
    }
    let n = conn
        .prepare_cached("DELETE FROM project_members WHERE project_id = ?1 AND admin_id = ?2")
        .and_then(|mut s| {
            s.execute(params![
                project.as_uuid().as_bytes(),
                admin.as_uuid().as_bytes()
            ])
        })
        .map_err(sql_error)?;
    Ok(n > 0)
}

pub(crate) fn member_projects(
    conn: &Connection,
    admin: AdminUserId,
    cursor: Option<ProjectId>,
    limit: u32,
) -> StoreResult<Page<(Project, ProjectRole)>> {
    let limit = clamp_limit(limit);
    let cols = codec::PROJECT_COLS
        .split(", ")
        .map(|c| format!("p.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    // The cursor bound is the largest id when absent (ids are 16 bytes; 0xff… sorts last).
    let sql = format!(
        "SELECT {cols}, m.role FROM project_members m JOIN projects p ON p.id = m.project_id \
         WHERE m.admin_id = ?1 AND m.project_id < ?2 ORDER BY m.project_id DESC LIMIT {}",
        limit + 1
    );
    let upper: Vec<u8> = cursor.map_or_else(|| vec![0xff; 17], |c| c.as_uuid().as_bytes().to_vec());
    let mut items = conn
        .prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_map(params![admin.as_uuid().as_bytes(), upper], |r| {
                Ok((codec::project(r)?, role(r, 8)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(sql_error)?;
    let has_more = items.len() > limit;
    items.truncate(limit);
    Ok(Page { items, has_more })
}

pub(crate) fn create_invite(conn: &Connection, i: &Invite) -> StoreResult<()> {
    conn.prepare_cached(&format!(
        "INSERT INTO project_invites ({INVITE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
    ))
    .and_then(|mut s| {
        s.execute(params![
            i.project_id.as_uuid().as_bytes(),
            i.id.as_uuid().as_bytes(),
            i.email,
            i.role.as_str(),
            i.invited_by.as_uuid().as_bytes(),
            &i.token_hash[..],
            ms(i.created_at),
            ms(i.expires_at),
            opt_ms(i.accepted_at)
        ])
    })
    .map_err(|e| match sql_error(e) {
        StoreError::Conflict(_) => {
            StoreError::Conflict("an invite with this id already exists".into())
        }
        other => other,
    })?;
    Ok(())
}

pub(crate) fn invite(
    conn: &Connection,
    project: ProjectId,
    id: InviteId,
) -> StoreResult<Option<Invite>> {
    let sql =
        format!("SELECT {INVITE_COLS} FROM project_invites WHERE project_id = ?1 AND id = ?2");
    conn.prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_row(
                params![project.as_uuid().as_bytes(), id.as_uuid().as_bytes()],
                invite_row,
            )
            .optional()
        })
        .map_err(sql_error)
}

pub(crate) fn list_invites(conn: &Connection, project: ProjectId) -> StoreResult<Vec<Invite>> {
    let sql =
        format!("SELECT {INVITE_COLS} FROM project_invites WHERE project_id = ?1 ORDER BY id DESC");
    conn.prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_map([project.as_uuid().as_bytes()], invite_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(sql_error)
}

pub(crate) fn delete_invite(
    conn: &Connection,
    project: ProjectId,
    id: InviteId,
) -> StoreResult<bool> {
    let n = conn
        .prepare_cached("DELETE FROM project_invites WHERE project_id = ?1 AND id = ?2")
        .and_then(|mut s| {
            s.execute(params![
                project.as_uuid().as_bytes(),
                id.as_uuid().as_bytes()
            ])
        })
        .map_err(sql_error)?;
    Ok(n > 0)
}

pub(crate) fn claim_invite(
    conn: &Connection,
    project: ProjectId,
    id: InviteId,
    token_hash: &[u8; 32],
    at: DateTime<Utc>,
) -> StoreResult<Option<Invite>> {
    // One statement on the single writer: of two claims, the second finds accepted_at set.
    let n = conn
        .prepare_cached(
            "UPDATE project_invites SET accepted_at = ?4 \
             WHERE project_id = ?1 AND id = ?2 AND token_hash = ?3 \
               AND accepted_at IS NULL AND expires_at > ?4",
        )
        .and_then(|mut s| {
            s.execute(params![
                project.as_uuid().as_bytes(),
                id.as_uuid().as_bytes(),
                &token_hash[..],
                ms(at)
            ])
        })
        .map_err(sql_error)?;
    if n == 0 {
        return Ok(None);
    }
    invite(conn, project, id)
}
