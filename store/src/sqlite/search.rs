//! Conversation search on SQLite: the `search_terms` rows (see `larachat_core::search`),
//! written inside the transaction of the change they come from, and the query that
//! intersects them.

use std::collections::BTreeSet;

use rusqlite::{Connection, params};

use larachat_core::id::{ConversationId, EndUserId, ProjectId};
use larachat_core::model::{Conversation, EndUser};
use larachat_core::search::{self, SearchQuery};

use super::codec::sql_error;
use super::queries::{self, SqlArgs, clamp_limit};
use crate::{ConversationQuery, Page, StoreResult};

/// Adds `keys` to the conversation's index rows (existing ones stay).
pub(crate) fn index(
    conn: &Connection,
    project: ProjectId,
    conversation: ConversationId,
    keys: &BTreeSet<String>,
) -> StoreResult<()> {
    let mut s = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO search_terms (project_id, term, conversation_id) \
             VALUES (?1, ?2, ?3)",
        )
        .map_err(sql_error)?;
    for key in keys {
        s.execute(params![
            project.as_uuid().as_bytes(),
            key,
            conversation.as_uuid().as_bytes()
        ])
        .map_err(sql_error)?;
    }
    Ok(())
}

/// The keys of a conversation's subject and of these members' profiles.
pub(crate) fn conversation_keys(
    conn: &Connection,
    project: ProjectId,
    subject: Option<&str>,
    members: &[EndUserId],
) -> StoreResult<BTreeSet<String>> {
    let mut users: Vec<EndUser> = Vec::with_capacity(members.len());
    for m in members {
        users.extend(queries::end_user(conn, project, *m)?);
    }
    Ok(search::field_keys(
        subject
            .into_iter()
            .chain(users.iter().flat_map(profile_fields)),
    ))
}

/// What an end user is looked up by: name, email and external id.
pub(crate) fn profile_fields(u: &EndUser) -> impl Iterator<Item = &str> {
    [
        u.name.as_deref(),
        u.email.as_deref(),
        u.user_identifier.as_deref(),
    ]
    .into_iter()
    .flatten()
}

/// The project's conversations matching every group of the search and the filters, newest
/// first. Each group is a primary-key range of `search_terms`; the intersection is joined to
/// the conversations for the filters.
pub(crate) fn search_conversations(
    conn: &Connection,
    project: ProjectId,
    search: &SearchQuery,
    q: &ConversationQuery,
) -> StoreResult<Page<Conversation>> {
    let limit = clamp_limit(q.limit);
    let cols = queries::joined_conversation_cols();
    let mut args: SqlArgs = vec![Box::new(project.as_uuid().as_bytes().to_vec())];
    let cursor = q.cursor.map(|c| {
        args.push(Box::new(c.as_uuid().as_bytes().to_vec()));
        args.len()
    });
    let mut selects = Vec::new();
    for group in search.groups() {
        let mut marks = Vec::new();
        for key in group {
            args.push(Box::new(key.clone()));
            marks.push(format!("?{}", args.len()));
        }
        let mut select = format!(
            "SELECT DISTINCT conversation_id FROM search_terms WHERE project_id = ?1 AND term IN ({})",
            marks.join(", ")
        );
        if let Some(i) = cursor {
            select.push_str(&format!(" AND conversation_id < ?{i}"));
        }
        selects.push(select);
    }
    let mut sql = format!(
        "WITH hits(id) AS ({}) SELECT {cols} FROM hits \
         JOIN conversations c ON c.project_id = ?1 AND c.id = hits.id WHERE 1",
        selects.join(" INTERSECT ")
    );
    if let Some(member) = q.member {
        args.push(Box::new(member.as_uuid().as_bytes().to_vec()));
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM conversation_members m WHERE m.project_id = ?1 \
             AND m.conversation_id = c.id AND m.end_user_id = ?{})",
            args.len()
        ));
    }
    queries::push_conversation_filters(&mut sql, &mut args, q);
    sql.push_str(&format!(" ORDER BY c.id DESC LIMIT {}", limit + 1));
    // Not cached: the text depends on the number of words and keys.
    let mut statement = conn.prepare(&sql).map_err(sql_error)?;
    queries::conversation_page(conn, project, &mut statement, &args, limit)
}
