//! Team members and invitations on CQL (schema 11).
//!
//! - `project_members ((project_id), admin_id)`: the members of a project, in one partition,
//!   written only with lightweight transactions. The last-owner rule is a conditional batch on
//!   that partition: demoting or removing an owner also asserts that another owner still is
//!   one (`UPDATE … SET role = 'owner' … IF role = 'owner'`), so two owners demoting each other
//!   at once cannot both win;
//! - `member_projects ((admin_id), project_id DESC)`: "my projects", written after the member
//!   row (the member row decides; a listing drops lookup rows whose membership is gone);
//! - `project_invites ((project_id), id DESC)`: invitations, written with lightweight
//!   transactions; using one is `IF accepted_at = null AND token_hash = ? AND expires_at > ?`
//!   (single use under concurrent accepts).

use chrono::{DateTime, Utc};
use scylla::statement::batch::{Batch, BatchType};
use scylla::value::{CqlTimestamp, CqlValue, Row};
use uuid::Uuid;

use larachat_core::id::{AdminUserId, InviteId, ProjectId};
use larachat_core::model::Project;
use larachat_core::team::{Invite, Member, ProjectRole};

use super::ScyllaStore;
use super::codec::{Values, corrupt, exec_error, from_opt_ts, from_ts, internal, ts, vt, vu};
use crate::{Page, StoreError, StoreResult};

/// How often a member change is retried when another change of the same project moved the
/// rows it was checked against.
const MEMBER_CHANGE_ATTEMPTS: usize = 8;

type MemberRow = (
    Uuid,
    Uuid,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<CqlTimestamp>,
);

type InviteRow = (
    Uuid,
    Uuid,
    Option<String>,
    Option<String>,
    Option<Uuid>,
    Option<Vec<u8>>,
    Option<CqlTimestamp>,
    Option<CqlTimestamp>,
    Option<CqlTimestamp>,
);

fn last_owner() -> StoreError {
    StoreError::Conflict("a project keeps at least one owner".into())
}

fn parse_role(s: Option<&str>) -> StoreResult<ProjectRole> {
    s.and_then(|s| s.parse().ok())
        .ok_or_else(|| corrupt("project member role"))
}

fn decode_member(r: MemberRow) -> StoreResult<Member> {
    let (project, admin, email, name, role, created_at) = r;
    Ok(Member {
        project_id: ProjectId::from_uuid(project),
        admin_id: AdminUserId::from_uuid(admin),
        email: email.unwrap_or_default(),
        name: name.unwrap_or_default(),
        role: parse_role(role.as_deref())?,
        created_at: from_ts(created_at.ok_or_else(|| corrupt("member created_at"))?)?,
    })
}

fn decode_invite(r: InviteRow) -> StoreResult<Invite> {
    let (project, id, email, role, invited_by, hash, created_at, expires_at, accepted_at) = r;
    let token_hash = hash
        .and_then(|h| <[u8; 32]>::try_from(h.as_slice()).ok())
        .ok_or_else(|| corrupt("invite token hash"))?;
    Ok(Invite {
        id: InviteId::from_uuid(id),
        project_id: ProjectId::from_uuid(project),
        email: email.unwrap_or_default(),
        role: parse_role(role.as_deref())?,
        invited_by: AdminUserId::from_uuid(invited_by.ok_or_else(|| corrupt("invited_by"))?),
        token_hash,
        created_at: from_ts(created_at.ok_or_else(|| corrupt("invite created_at"))?)?,
        expires_at: from_ts(expires_at.ok_or_else(|| corrupt("invite expires_at"))?)?,
        accepted_at: from_opt_ts(accepted_at)?,
    })
}

const MEMBER_COLS_SELECT: &str = "SELECT project_id, admin_id, email, name, role, created_at \
     FROM project_members WHERE project_id = ?";

impl ScyllaStore {
    /// Runs a conditional batch on one partition; `true` when it was applied.
    async fn conditional(&self, items: Vec<(&'static str, Values)>) -> StoreResult<bool> {
        let mut batch = Batch::new(BatchType::Logged);
        let mut values = Vec::with_capacity(items.len());
        for (cql, v) in items {
            batch.append_statement(self.stmt(cql).await?);
            values.push(v);
        }
        batch.set_is_idempotent(false);
        let result = self
            .session
            .batch(&batch, values)
            .await
            .map_err(exec_error)?
            .into_rows_result()
            .map_err(internal)?;
        let at = result
            .column_specs()
            .get_by_name("[applied]")
            .map(|(i, _)| i)
            .ok_or_else(|| corrupt("[applied]"))?;
        let mut applied = false;
        for row in result.rows::<Row>().map_err(internal)? {
            let row = row.map_err(internal)?;
            if let Some(Some(CqlValue::Boolean(a))) = row.columns.get(at) {
                applied |= *a;
            }
        }
        Ok(applied)
    }

    pub(super) async fn team_member(
        &self,
        project: ProjectId,
        admin: AdminUserId,
    ) -> StoreResult<Option<Member>> {
        let row: Option<MemberRow> = self
            .row(
                "SELECT project_id, admin_id, email, name, role, created_at \
                 FROM project_members WHERE project_id = ? AND admin_id = ?",
                (project.as_uuid(), admin.as_uuid()),
            )
            .await?;
        row.map(decode_member).transpose()
    }

    pub(super) async fn team_members(&self, project: ProjectId) -> StoreResult<Vec<Member>> {
        let rows: Vec<MemberRow> = self
            .all_rows(MEMBER_COLS_SELECT, (project.as_uuid(),))
            .await?;
        let mut members = rows
            .into_iter()
            .map(decode_member)
            .collect::<StoreResult<Vec<_>>>()?;
        members.sort_by_key(|m| (m.created_at, m.admin_id));
        Ok(members)
    }

    async fn write_lookup(&self, m: &Member) -> StoreResult<()> {
        self.exec(
            "INSERT INTO member_projects (admin_id, project_id, role) VALUES (?, ?, ?)",
            (
                m.admin_id.as_uuid(),
                m.project_id.as_uuid(),
                m.role.as_str(),
            ),
        )
        .await?;
        Ok(())
    }

    pub(super) async fn team_add_member(&self, m: &Member) -> StoreResult<()> {
        let applied = self
            .lwt(
                "INSERT INTO project_members (project_id, admin_id, email, name, role, created_at) \
                 VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS",
                (
                    m.project_id.as_uuid(),
                    m.admin_id.as_uuid(),
                    &m.email,
                    &m.name,
                    m.role.as_str(),
                    ts(m.created_at),
                ),
            )
            .await?;
        if !applied {
            return Err(StoreError::Conflict(
                "already a member of this project".into(),
            ));
        }
        self.write_lookup(m).await
    }

    /// The owner membership of a new project, if its owner exists (idempotent: an existing
    /// membership is left as it is).
    pub(super) async fn team_add_owner(&self, p: &Project) -> StoreResult<()> {
        let Some(owner) = crate::Store::admin_user(self, p.owner_id).await? else {
            return Ok(());
        };
        let email = owner.email.to_lowercase();
        let member = Member {
            project_id: p.id,
            admin_id: owner.id,
            email: email.clone(),
            name: email,
            role: ProjectRole::Owner,
            created_at: p.created_at,
        };
        match self.team_add_member(&member).await {
            Ok(()) => Ok(()),
            Err(StoreError::Conflict(_)) => {
                // A repeated run (migration, retried create): make sure the lookup exists.
                match self.team_member(p.id, owner.id).await? {
                    Some(m) => self.write_lookup(&m).await,
                    None => Ok(()),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Schema 11's data step: every project's owner becomes its `owner` member.
    pub(super) async fn backfill_owners(&self) -> StoreResult<()> {
        let buckets: Vec<(i64,)> = self
            .all_rows(
                "SELECT bucket FROM project_buckets WHERE scope = ?",
                (super::PROJECT_SCOPE,),
            )
            .await?;
        for (b,) in buckets {
            let ids: Vec<(Uuid,)> = self
                .all_rows("SELECT id FROM projects_by_bucket WHERE bucket = ?", (b,))
                .await?;
            let ids: Vec<Uuid> = ids.into_iter().map(|(id,)| id).collect();
            for chunk in ids.chunks(100) {
                for p in self.load_projects(chunk).await? {
                    self.team_add_owner(&p).await?;
                }
            }
        }
        Ok(())
    }

    pub(super) async fn team_set_role(
        &self,
        project: ProjectId,
        admin: AdminUserId,
        role: ProjectRole,
    ) -> StoreResult<Option<Member>> {
        let (p, a) = (*project.as_uuid(), *admin.as_uuid());
        for _ in 0..MEMBER_CHANGE_ATTEMPTS {
            let members = self.team_members(project).await?;
            let Some(mut m) = members.iter().find(|m| m.admin_id == admin).cloned() else {
                return Ok(None);
            };
            if m.role == role {
                return Ok(Some(m));
            }
            let applied = if m.role == ProjectRole::Owner {
                let Some(other) = members
                    .iter()
                    .find(|o| o.role == ProjectRole::Owner && o.admin_id != admin)
                else {
                    return Err(last_owner());
                };
                self.conditional(vec![
                    (
                        "UPDATE project_members SET role = ? WHERE project_id = ? \
                         AND admin_id = ? IF role = 'owner'",
                        vec![vt(role.as_str()), vu(p), vu(a)],
                    ),
                    (
                        "UPDATE project_members SET role = 'owner' WHERE project_id = ? \
                         AND admin_id = ? IF role = 'owner'",
                        vec![vu(p), vu(*other.admin_id.as_uuid())],
                    ),
                ])
                .await?
            } else {
                self.lwt(
                    "UPDATE project_members SET role = ? WHERE project_id = ? AND admin_id = ? \
                     IF role = ?",
                    (role.as_str(), p, a, m.role.as_str()),
                )
                .await?
            };
            if applied {
                m.role = role;
                self.write_lookup(&m).await?;
                return Ok(Some(m));
            }
        }
        Err(StoreError::Unavailable(
            "the project's members kept changing; try again".into(),
        ))
    }

    pub(super) async fn team_remove(
        &self,
        project: ProjectId,
        admin: AdminUserId,
    ) -> StoreResult<bool> {
        let (p, a) = (*project.as_uuid(), *admin.as_uuid());
        for _ in 0..MEMBER_CHANGE_ATTEMPTS {
            let members = self.team_members(project).await?;
            let Some(m) = members.iter().find(|m| m.admin_id == admin) else {
                // Gone already; its lookup row may remain from a failure part-way.
                self.exec(
                    "DELETE FROM member_projects WHERE admin_id = ? AND project_id = ?",
                    (a, p),
                )
                .await?;
                return Ok(false);
            };
            let applied = if m.role == ProjectRole::Owner {
                let Some(other) = members
                    .iter()
                    .find(|o| o.role == ProjectRole::Owner && o.admin_id != admin)
                else {
                    return Err(last_owner());
                };
                self.conditional(vec![
                    (
                        "DELETE FROM project_members WHERE project_id = ? AND admin_id = ? \
                         IF role = 'owner'",
                        vec![vu(p), vu(a)],
                    ),
                    (
                        "UPDATE project_members SET role = 'owner' WHERE project_id = ? \
                         AND admin_id = ? IF role = 'owner'",
                        vec![vu(p), vu(*other.admin_id.as_uuid())],
                    ),
                ])
                .await?
            } else {
                self.lwt(
                    "DELETE FROM project_members WHERE project_id = ? AND admin_id = ? IF role = ?",
                    (p, a, m.role.as_str()),
                )
                .await?
            };
            if applied {
                self.exec(
                    "DELETE FROM member_projects WHERE admin_id = ? AND project_id = ?",
                    (a, p),
                )
                .await?;
                return Ok(true);
            }
        }
        Err(StoreError::Unavailable(
            "the project's members kept changing; try again".into(),
        ))
    }

    pub(super) async fn team_member_projects(
        &self,
        admin: AdminUserId,
        cursor: Option<ProjectId>,
        limit: u32,
    ) -> StoreResult<Page<(Project, ProjectRole)>> {
        let limit = super::clamp(limit);
        let want = i32::try_from(limit + 1).unwrap_or(i32::MAX);
        let ids: Vec<(Uuid,)> = match cursor {
            Some(c) => {
                self.rows(
                    "SELECT project_id FROM member_projects WHERE admin_id = ? \
                     AND project_id < ? LIMIT ?",
                    (admin.as_uuid(), c.as_uuid(), want),
                )
                .await?
            }
            None => {
                self.rows(
                    "SELECT project_id FROM member_projects WHERE admin_id = ? LIMIT ?",
                    (admin.as_uuid(), want),
                )
                .await?
            }
        };
        let has_more = ids.len() > limit;
        let ids: Vec<Uuid> = ids.into_iter().take(limit).map(|(id,)| id).collect();
        if ids.is_empty() {
            return Ok(Page {
                items: Vec::new(),
                has_more,
            });
        }
        // The member rows decide (the lookup may hold a row whose membership is gone).
        let roles: Vec<(Uuid, Option<String>)> = self
            .rows(
                "SELECT project_id, role FROM project_members WHERE project_id IN ? \
                 AND admin_id = ?",
                (ids.clone(), admin.as_uuid()),
            )
            .await?;
        let mut by_project = std::collections::HashMap::new();
        for (p, role) in roles {
            by_project.insert(p, parse_role(role.as_deref())?);
        }
        let items = self
            .load_projects(&ids)
            .await?
            .into_iter()
            .filter_map(|p| by_project.get(p.id.as_uuid()).map(|r| (p, *r)))
            .collect();
        Ok(Page { items, has_more })
    }

    /// Removes a deleted project's team (members, their lookups, invitations).
    pub(super) async fn team_delete_project(&self, project: ProjectId) -> StoreResult<()> {
        let p = *project.as_uuid();
        for m in self.team_members(project).await? {
            self.exec(
                "DELETE FROM member_projects WHERE admin_id = ? AND project_id = ?",
                (m.admin_id.as_uuid(), p),
            )
            .await?;
        }
        self.exec("DELETE FROM project_members WHERE project_id = ?", (p,))
            .await?;
        self.exec("DELETE FROM project_invites WHERE project_id = ?", (p,))
            .await?;
        Ok(())
    }

    pub(super) async fn team_create_invite(&self, i: &Invite) -> StoreResult<()> {
        let applied = self
            .lwt(
                "INSERT INTO project_invites (project_id, id, email, role, invited_by, \
                 token_hash, created_at, expires_at, accepted_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS",
                (
                    i.project_id.as_uuid(),
                    i.id.as_uuid(),
                    &i.email,
                    i.role.as_str(),
                    i.invited_by.as_uuid(),
                    i.token_hash.to_vec(),
                    ts(i.created_at),
                    ts(i.expires_at),
                    i.accepted_at.map(ts),
                ),
            )
            .await?;
        if applied {
            Ok(())
        } else {
            Err(StoreError::Conflict(
                "an invite with this id already exists".into(),
            ))
        }
    }

    pub(super) async fn team_invite(
        &self,
        project: ProjectId,
        id: InviteId,
    ) -> StoreResult<Option<Invite>> {
        let row: Option<InviteRow> = self
            .row(
                "SELECT project_id, id, email, role, invited_by, token_hash, created_at, \
                 expires_at, accepted_at FROM project_invites WHERE project_id = ? AND id = ?",
                (project.as_uuid(), id.as_uuid()),
            )
            .await?;
        row.map(decode_invite).transpose()
    }

    pub(super) async fn team_invites(&self, project: ProjectId) -> StoreResult<Vec<Invite>> {
        let rows: Vec<InviteRow> = self
            .all_rows(
                "SELECT project_id, id, email, role, invited_by, token_hash, created_at, \
                 expires_at, accepted_at FROM project_invites WHERE project_id = ?",
                (project.as_uuid(),),
            )
            .await?;
        rows.into_iter().map(decode_invite).collect()
    }

    pub(super) async fn team_delete_invite(
        &self,
        project: ProjectId,
        id: InviteId,
    ) -> StoreResult<bool> {
        self.lwt(
            "DELETE FROM project_invites WHERE project_id = ? AND id = ? IF EXISTS",
            (project.as_uuid(), id.as_uuid()),
        )
        .await
    }

    pub(super) async fn team_claim_invite(
        &self,
        project: ProjectId,
        id: InviteId,
        token_hash: &[u8; 32],
        at: DateTime<Utc>,
    ) -> StoreResult<Option<Invite>> {
        let applied = self
            .lwt(
                "UPDATE project_invites SET accepted_at = ? WHERE project_id = ? AND id = ? \
                 IF accepted_at = null AND token_hash = ? AND expires_at > ?",
                (
                    ts(at),
                    project.as_uuid(),
                    id.as_uuid(),
                    token_hash.to_vec(),
                    ts(at),
                ),
            )
            .await?;
        if !applied {
            return Ok(None);
        }
        self.team_invite(project, id).await
    }
}
