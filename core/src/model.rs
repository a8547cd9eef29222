//! Domain types shared by the store, the broker, the gateway and the control plane.
//!
//! These are the shapes that are stored and that appear on the wire (HTTP JSON and realtime
//! frames). Timestamps are UTC and serialize as RFC 3339.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::id::{AdminUserId, ApiKeyId, ConversationId, EndUserId, MessageId, ProjectId};
use crate::origin::Origin;

/// Current time, truncated to milliseconds so that stored and returned values compare equal
/// on every backend.
pub fn now() -> DateTime<Utc> {
    let t = Utc::now();
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

// ---------------------------------------------------------------------------------------------
// Admin users and projects
// ---------------------------------------------------------------------------------------------

/// A platform admin. `password_hash` is an argon2id PHC string and never leaves the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminUser {
    pub id: AdminUserId,
    pub email: String,
    pub password_hash: String,
    pub created_at: DateTime<Utc>,
}

/// A project's plan: the id of a [`Plan`](crate::plan::Plan) row (`"free"`, …).
pub use crate::plan::PlanId;

/// A project's lifecycle status. Only `Active` projects are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ProjectStatus {
    #[default]
    Active,
    Suspended,
    Cancelled,
}

/// A tenant's isolated workspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Project {
    pub id: ProjectId,
    pub name: String,
    pub owner_id: AdminUserId,
    pub plan: PlanId,
    pub status: ProjectStatus,
    /// Free-form JSON object (theme, widget config, …).
    pub settings: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Fields of a project that can be changed; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProjectPatch {
    pub name: Option<String>,
    pub plan: Option<PlanId>,
    pub status: Option<ProjectStatus>,
    pub settings: Option<serde_json::Value>,
}

impl ProjectPatch {
    /// Applies the patch and bumps `updated_at` (never backwards). Every store uses this, so
    /// they agree on what a patch means.
    pub fn apply(&self, p: &mut Project) {
        self.apply_at(p, now());
    }

    /// [`Self::apply`] at `now` (an injected clock's).
    pub fn apply_at(&self, p: &mut Project, now: DateTime<Utc>) {
        if let Some(name) = &self.name {
            p.name = name.clone();
        }
        if let Some(plan) = &self.plan {
            p.plan = plan.clone();
        }
        if let Some(status) = self.status {
            p.status = status;
        }
        if let Some(settings) = &self.settings {
            p.settings = settings.clone();
        }
        p.updated_at = now.max(p.updated_at);
    }
}

/// How strictly the widget checks that an identified user is who the page claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum IdentityVerification {
    /// Trust the page (anyone can claim any identifier from the browser console).
    Off,
    /// Accept, but log and count a missing or wrong proof (a migration aid).
    Report,
    /// Refuse a missing or wrong proof. The default of new projects.
    #[default]
    Enforce,
}

impl IdentityVerification {
    /// What a stored widget section without the field means: it was written when `off` was
    /// the default, so it keeps meaning `off` (existing projects keep their behaviour).
    pub fn stored_default() -> Self {
        Self::Off
    }
}

/// Widget configuration of a project, kept under `settings.widget`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct WidgetSettings {
    /// Origins (`scheme://host[:port]`, normalised, see [`Origin`]) the widget may run on.
    /// Stored entries are normalised again when read; one that no longer parses is dropped
    /// (no browser could send it).
    #[serde(deserialize_with = "lenient_origins")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub allowed_origins: Vec<Origin>,
    /// `enforce` for a project without widget settings; see
    /// [`IdentityVerification::stored_default`] for stored ones without this field.
    #[serde(default = "IdentityVerification::stored_default")]
    pub identity_verification: IdentityVerification,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub greeting: Option<String>,
    /// `light`, `dark` or `auto` (the visitor's `prefers-color-scheme`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub theme: Option<WidgetTheme>,
    /// `bottom-right` or `bottom-left`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<String>,
    /// `#rrggbb`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accent_color: Option<String>,
    /// Bumped to rotate the identity secret (see `keys::identity_secret`).
    pub identity_secret_generation: u32,
}

impl WidgetSettings {
    /// The widget settings of a project (defaults when absent or unreadable).
    pub fn of(project: &Project) -> Self {
        project
            .settings
            .get("widget")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    }

    /// A patch that stores these settings under `settings.widget` of `project`, keeping its
    /// other settings. The one place that knows where widget settings live, with [`Self::of`].
    pub fn patch_for(&self, project: &Project) -> ProjectPatch {
        let mut settings = project.settings.as_object().cloned().unwrap_or_default();
        settings.insert(
            "widget".into(),
            serde_json::to_value(self).unwrap_or_else(|_| empty_object()),
        );
        ProjectPatch {
            settings: Some(serde_json::Value::Object(settings)),
            ..ProjectPatch::default()
        }
    }

    /// Whether a request from `origin` (an `Origin` header) is allowed: its normalised form
    /// equals one of the allowed origins; `null` and anything that is not an origin never are.
    pub fn allows_origin(&self, origin: &str) -> bool {
        Origin::parse(origin).is_ok_and(|o| self.allowed_origins.contains(&o))
    }
}

/// The widget's colour scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum WidgetTheme {
    Light,
    Dark,
    /// Follows the visitor's `prefers-color-scheme`.
    Auto,
}

/// Stored allow-lists: each entry normalised; one that does not parse (written before
/// origins were parsed) is dropped rather than losing the project's whole widget section.
fn lenient_origins<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Origin>, D::Error> {
    let raw = Vec::<String>::deserialize(d)?;
    let mut out: Vec<Origin> = Vec::with_capacity(raw.len());
    for o in raw.iter().filter_map(|s| Origin::parse(s).ok()) {
        if !out.contains(&o) {
            out.push(o);
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// API keys
// ---------------------------------------------------------------------------------------------

/// Secret keys authenticate tenant backends; publishable keys only initialise the widget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    Secret,
    Publishable,
}

/// What a secret key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// GET endpoints only.
    Read,
    /// Create and change users, conversations, messages, reads, typing.
    Write,
    /// Project-level administration through the Client API (webhooks).
    Admin,
}

impl Scope {
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }
}

impl FromStr for Scope {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            "admin" => Ok(Scope::Admin),
            _ => Err(()),
        }
    }
}

/// A key as stored. `secret_hash` is the keyed hash of the secret part (see `keys`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: ApiKeyId,
    pub project_id: ProjectId,
    pub name: String,
    pub kind: KeyKind,
    /// Visible start of the key, e.g. `sk_live_AbC1`, so people can tell keys apart.
    pub prefix: String,
    pub scopes: BTreeSet<Scope>,
    pub secret_hash: [u8; 32],
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl ApiKeyRecord {
    /// Whether the key may be used at `at`: not revoked, not expired.
    pub fn is_usable_at(&self, at: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > at)
    }
}

// ---------------------------------------------------------------------------------------------
// End users
// ---------------------------------------------------------------------------------------------

/// A participant from the tenant's side: a visitor or an app user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EndUser {
    pub id: EndUserId,
    pub project_id: ProjectId,
    /// The tenant's own id for this user; unique per project when present.
    pub user_identifier: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
    pub avatar: Option<String>,
    pub metadata: serde_json::Value,
    pub is_anonymous: bool,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Fields of an end user that can be changed; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EndUserPatch {
    pub name: Option<Option<String>>,
    pub email: Option<Option<String>>,
    pub avatar: Option<Option<String>>,
    pub metadata: Option<serde_json::Value>,
    pub last_seen_at: Option<DateTime<Utc>>,
}

impl EndUserPatch {
    /// Whether the patch changes a profile field (anything but `last_seen_at`).
    pub fn has_profile_fields(&self) -> bool {
        self.name.is_some()
            || self.email.is_some()
            || self.avatar.is_some()
            || self.metadata.is_some()
    }

    /// Applies the patch. `updated_at` tracks profile changes, not presence: a patch with only
    /// `last_seen_at` (a heartbeat) leaves it alone.
    pub fn apply(&self, u: &mut EndUser) {
        self.apply_at(u, now());
    }

    /// [`Self::apply`] at `now` (an injected clock's).
    pub fn apply_at(&self, u: &mut EndUser, now: DateTime<Utc>) {
        let mut profile_changed = false;
        for (field, value) in [
            (&mut u.name, &self.name),
            (&mut u.email, &self.email),
            (&mut u.avatar, &self.avatar),
        ] {
            if let Some(v) = value {
                *field = v.clone();
                profile_changed = true;
            }
        }
        if let Some(metadata) = &self.metadata {
            u.metadata = metadata.clone();
            profile_changed = true;
        }
        if let Some(seen) = self.last_seen_at {
            u.last_seen_at = Some(seen);
        }
        if profile_changed {
            u.updated_at = now.max(u.updated_at);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Conversations
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ConversationStatus {
    #[default]
    Open,
    Closed,
}

impl ConversationStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
        }
    }
}

/// A conversation (the seed's "chat group").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Conversation {
    pub id: ConversationId,
    pub project_id: ProjectId,
    pub subject: Option<String>,
    pub status: ConversationStatus,
    /// End users taking part. Agents (secret keys) can reach every conversation of the project.
    pub members: Vec<EndUserId>,
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Id of the newest message, if any.
    pub last_message_id: Option<MessageId>,
    /// The agent the conversation is assigned to: the tenant's agent identifier (the `id` of
    /// an `agent` actor), or null when unassigned. Agents exist only as the tenant's
    /// identifiers, so any valid identifier may be assigned.
    #[serde(default)]
    pub assignee: Option<String>,
}

/// Fields of a conversation that can be changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConversationPatch {
    pub subject: Option<Option<String>>,
    pub status: Option<ConversationStatus>,
    pub metadata: Option<serde_json::Value>,
    /// `Some(Some(agent))` assigns, `Some(None)` unassigns, `None` leaves it.
    pub assignee: Option<Option<String>>,
    /// Members to add (ignored if already present).
    pub add_members: Vec<EndUserId>,
}

impl ConversationPatch {
    /// Applies subject, status, metadata and assignee and bumps `updated_at` (never backwards).
    /// `add_members` is left to the store, which must check the members exist.
    pub fn apply_fields(&self, c: &mut Conversation) {
        self.apply_fields_at(c, now());
    }

    /// [`Self::apply_fields`] at `now` (an injected clock's).
    pub fn apply_fields_at(&self, c: &mut Conversation, now: DateTime<Utc>) {
        if let Some(subject) = &self.subject {
            c.subject = subject.clone();
        }
        if let Some(status) = self.status {
            c.status = status;
        }
        if let Some(metadata) = &self.metadata {
            c.metadata = metadata.clone();
        }
        if let Some(assignee) = &self.assignee {
            c.assignee = assignee.clone();
        }
        c.updated_at = now.max(c.updated_at);
    }
}

// ---------------------------------------------------------------------------------------------
// Messages and reads
// ---------------------------------------------------------------------------------------------

/// Who sent a message or read a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    /// An end user (`id` is an [`EndUserId`]).
    EndUser,
    /// A human agent of the tenant (`id` is the tenant's agent identifier).
    Agent,
    /// An automated sender of the tenant.
    Bot,
    /// Lara Chat itself.
    System,
}

impl ActorKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::EndUser => "end_user",
            Self::Agent => "agent",
            Self::Bot => "bot",
            Self::System => "system",
        }
    }
}

impl FromStr for ActorKind {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "end_user" => Ok(Self::EndUser),
            "agent" => Ok(Self::Agent),
            "bot" => Ok(Self::Bot),
            "system" => Ok(Self::System),
            _ => Err(()),
        }
    }
}

/// A sender or reader: its kind, its id within the project, and a display name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Actor {
    #[serde(rename = "type")]
    pub kind: ActorKind,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Actor {
    pub fn end_user(id: EndUserId, name: Option<String>) -> Self {
        Self {
            kind: ActorKind::EndUser,
            id: id.to_string(),
            name,
        }
    }

    /// The key under which this actor's read state is stored: `<kind>:<id>`.
    pub fn member_key(&self) -> String {
        format!("{}:{}", self.kind.as_str(), self.id)
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.id)
    }
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Message {
    pub id: MessageId,
    /// Position in the conversation: 1, 2, 3, … without gaps, in id order. Assigned at commit
    /// together with the id; a client that has every `seq` up to n has every message up to n
    /// (the contiguous resume cursor, protocol §7). `0` only for a message written before the
    /// conversation had sequence numbers and never numbered since (see the migration notes).
    #[serde(default)]
    pub seq: u64,
    pub project_id: ProjectId,
    pub conversation_id: ConversationId,
    pub sender: Actor,
    pub text: String,
    #[serde(default = "empty_object")]
    pub metadata: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A message to append. The store assigns `id`, `seq` and `created_at` at commit, so that id
/// order is `seq` order within a conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    pub project_id: ProjectId,
    pub conversation_id: ConversationId,
    pub sender: Actor,
    pub text: String,
    pub metadata: serde_json::Value,
    pub client_msg_id: Option<String>,
}

/// Where a member has read up to in a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReadState {
    pub conversation_id: ConversationId,
    pub reader: Actor,
    pub last_read_message_id: MessageId,
    pub updated_at: DateTime<Utc>,
}

/// `{}` — the default for metadata fields.
pub fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_usability() {
        let t = now();
        let mut k = ApiKeyRecord {
            id: ApiKeyId::new_v7(),
            project_id: ProjectId::new_v7(),
            name: "k".into(),
            kind: KeyKind::Secret,
            prefix: "sk_live_x".into(),
            scopes: [Scope::Read].into(),
            secret_hash: [0; 32],
            last_used_at: None,
            expires_at: None,
            revoked_at: None,
            created_at: t,
        };
        assert!(k.is_usable_at(t));
        k.expires_at = Some(t);
        assert!(!k.is_usable_at(t), "expiry is exclusive");
        k.expires_at = Some(t + chrono::Duration::seconds(1));
        assert!(k.is_usable_at(t));
        k.revoked_at = Some(t);
        assert!(!k.is_usable_at(t));
    }

    #[test]
    fn end_user_heartbeats_do_not_touch_updated_at() {
        let t0 = DateTime::from_timestamp_millis(0).unwrap();
        let mut u = EndUser {
            id: EndUserId::new_v7(),
            project_id: ProjectId::new_v7(),
            user_identifier: None,
            name: Some("a".into()),
            email: None,
            avatar: None,
            metadata: empty_object(),
            is_anonymous: true,
            last_seen_at: None,
            created_at: t0,
            updated_at: t0,
        };
        EndUserPatch {
            last_seen_at: Some(now()),
            ..Default::default()
        }
        .apply(&mut u);
        assert!(u.last_seen_at.is_some());
        assert_eq!(u.updated_at, t0);
        EndUserPatch {
            name: Some(None),
            ..Default::default()
        }
        .apply(&mut u);
        assert_eq!(u.name, None, "Some(None) clears");
        assert!(u.updated_at > t0);
    }

    #[test]
    fn actor_wire_shape() {
        let a = Actor {
            kind: ActorKind::Agent,
            id: "agent-7".into(),
            name: Some("Ana".into()),
        };
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"agent","id":"agent-7","name":"Ana"})
        );
        assert_eq!(a.member_key(), "agent:agent-7");
    }

    #[test]
    fn identity_verification_is_enforced_unless_stored_otherwise() {
        let t = now();
        let mut p = Project {
            id: ProjectId::new_v7(),
            name: "p".into(),
            owner_id: AdminUserId::new_v7(),
            plan: PlanId::free(),
            status: ProjectStatus::Active,
            settings: empty_object(),
            created_at: t,
            updated_at: t,
        };
        assert_eq!(
            WidgetSettings::of(&p).identity_verification,
            IdentityVerification::Enforce,
            "a new project"
        );
        // Written before enforce was the default: off stays off.
        p.settings = serde_json::json!({"widget": {"allowed_origins": ["https://a.example"]}});
        assert_eq!(
            WidgetSettings::of(&p).identity_verification,
            IdentityVerification::Off
        );
        let mut w = WidgetSettings::of(&p);
        w.identity_verification = IdentityVerification::Report;
        p.settings = w.patch_for(&p).settings.unwrap();
        assert_eq!(
            WidgetSettings::of(&p).identity_verification,
            IdentityVerification::Report
        );
    }

    #[test]
    fn stored_origins_are_normalised_and_requests_compared_normalised() {
        let t = now();
        let p = Project {
            id: ProjectId::new_v7(),
            name: "p".into(),
            owner_id: AdminUserId::new_v7(),
            plan: PlanId::free(),
            status: ProjectStatus::Active,
            // As stored before origins were parsed: a default port, a duplicate after
            // normalisation, and an entry no browser could send.
            settings: serde_json::json!({"widget": {
                "allowed_origins": ["https://acme.com:443", "https://acme.com", "*", "http://[::1]:8080"],
                "title": "kept", "theme": "dark"}}),
            created_at: t,
            updated_at: t,
        };
        let w = WidgetSettings::of(&p);
        let listed: Vec<&str> = w.allowed_origins.iter().map(Origin::as_str).collect();
        assert_eq!(listed, ["https://acme.com", "http://[::1]:8080"]);
        assert_eq!(
            w.title.as_deref(),
            Some("kept"),
            "the rest of the section survives"
        );
        assert_eq!(w.theme, Some(WidgetTheme::Dark));
        assert!(w.allows_origin("https://acme.com"));
        assert!(w.allows_origin("https://acme.com:443"));
        assert!(w.allows_origin("http://[::1]:8080"));
        for no in [
            "null",
            "",
            "https://acme.com.evil.com",
            "https://acme.com:8443",
            "http://acme.com",
        ] {
            assert!(!w.allows_origin(no), "{no}");
        }
    }
}
