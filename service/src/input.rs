//! Typed input values: parsed once at the edge, then trusted.
//!
//! Every service operation takes these types, never raw strings or JSON, so no transport can
//! skip a rule or apply it twice. Each is built by `parse` (with the field name used in the
//! error, e.g. `user.name` for the widget) or `TryFrom` (the default field name), and
//! deserializes through the same rule (`#[serde(try_from)]`), so a request body may hold
//! them directly. The rules themselves are in [`larachat_core::validate`].

use std::fmt;

use serde::{Deserialize, Serialize};

use larachat_core::ApiError;
use larachat_core::id::EndUserId;
use larachat_core::model;
use larachat_core::validate;
use larachat_store::AssigneeFilter;

macro_rules! text_value {
    ($(#[$doc:meta])* $name:ident, $field:literal, |$v:ident, $f:ident| $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses `value`; errors name `field`.
            pub fn parse(value: String, field: &'static str) -> Result<Self, ApiError> {
                let check = |$v: &str, $f: &'static str| -> Result<(), ApiError> { $check };
                check(&value, field)?;
                Ok(Self(value))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
            pub fn into_inner(self) -> String {
                self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ApiError;
            fn try_from(value: String) -> Result<Self, ApiError> {
                Self::parse(value, $field)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

text_value!(
    /// A message text: non-empty after trimming, at most 16 KiB.
    MessageText, "text", |v, _f| validate::message_text(v)
);
text_value!(
    /// A client-chosen idempotency key: 1–64 chars of `[A-Za-z0-9_:-]`.
    ClientMsgId, "client_msg_id", |v, _f| validate::client_msg_id(v)
);
text_value!(
    /// A display name or title (a user's name, a conversation's subject): 1–200 chars, no
    /// control characters.
    Name, "name", |v, f| validate::name(v, f)
);
text_value!(
    /// An e-mail address (loosely checked).
    Email, "email", |v, _f| validate::email(v)
);
text_value!(
    /// An `http(s)` URL (an avatar).
    Url, "avatar", |v, f| validate::url(v, f)
);
text_value!(
    /// A tenant's own identifier (`user_identifier`, an agent id).
    Identifier, "user_identifier", |v, f| validate::identifier(v, f)
);

text_value!(
    /// An agent's identifier (the tenant's own, as in an `agent` actor's `id`) to assign a
    /// conversation to: an [`Identifier`], except `none`, which the listing filter
    /// `?assignee=none` reserves for "unassigned".
    AgentId, "assignee", |v, f| {
        validate::identifier(v, f)?;
        if v == UNASSIGNED {
            return Err(ApiError::validation(format!(
                "{f} must not be \"{UNASSIGNED}\" (reserved: it filters unassigned conversations)"
            )));
        }
        Ok(())
    }
);

/// The `assignee` filter value that selects unassigned conversations.
pub const UNASSIGNED: &str = "none";

/// Parses a listing's `assignee` filter: `none` for unassigned conversations, otherwise an
/// [`AgentId`].
pub fn parse_assignee_filter(value: String) -> Result<AssigneeFilter, ApiError> {
    if value == UNASSIGNED {
        Ok(AssigneeFilter::Unassigned)
    } else {
        AgentId::parse(value, "assignee").map(|a| AssigneeFilter::Agent(a.into_inner()))
    }
}

/// A `metadata` value: a JSON object of at most 8 KiB serialized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value", into = "serde_json::Value")]
pub struct Metadata(serde_json::Value);

impl Metadata {
    /// `{}`.
    pub fn empty() -> Self {
        Self(model::empty_object())
    }
    pub fn parse(value: serde_json::Value) -> Result<Self, ApiError> {
        validate::metadata(&value)?;
        Ok(Self(value))
    }
    /// `None` becomes `{}`.
    pub fn parse_opt(value: Option<serde_json::Value>) -> Result<Self, ApiError> {
        value.map_or_else(|| Ok(Self::empty()), Self::parse)
    }
    pub fn as_value(&self) -> &serde_json::Value {
        &self.0
    }
    pub fn into_value(self) -> serde_json::Value {
        self.0
    }
}

impl Default for Metadata {
    fn default() -> Self {
        Self::empty()
    }
}

impl TryFrom<serde_json::Value> for Metadata {
    type Error = ApiError;
    fn try_from(value: serde_json::Value) -> Result<Self, ApiError> {
        Self::parse(value)
    }
}

impl From<Metadata> for serde_json::Value {
    fn from(m: Metadata) -> Self {
        m.0
    }
}

/// Conversation members: deduplicated, in id order, at most
/// [`validate::MAX_CONVERSATION_MEMBERS`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "Vec<EndUserId>", into = "Vec<EndUserId>")]
pub struct MemberList(Vec<EndUserId>);

impl MemberList {
    pub fn parse(mut members: Vec<EndUserId>) -> Result<Self, ApiError> {
        members.sort();
        members.dedup();
        if members.len() > validate::MAX_CONVERSATION_MEMBERS {
            return Err(ApiError::validation(format!(
                "at most {} members",
                validate::MAX_CONVERSATION_MEMBERS
            )));
        }
        Ok(Self(members))
    }
    /// Exactly one member.
    pub fn one(member: EndUserId) -> Self {
        Self(vec![member])
    }
    pub fn as_slice(&self) -> &[EndUserId] {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn into_vec(self) -> Vec<EndUserId> {
        self.0
    }
}

impl TryFrom<Vec<EndUserId>> for MemberList {
    type Error = ApiError;
    fn try_from(v: Vec<EndUserId>) -> Result<Self, ApiError> {
        Self::parse(v)
    }
}

impl From<MemberList> for Vec<EndUserId> {
    fn from(m: MemberList) -> Self {
        m.0
    }
}

/// A change to an optional field: leave it, clear it, or set it.
pub type Change<T> = Option<Option<T>>;

/// Parses an optional-field change (`None`: unchanged, `Some(None)`: cleared).
pub fn parse_change<T>(
    value: Option<Option<String>>,
    parse: impl FnOnce(String) -> Result<T, ApiError>,
) -> Result<Change<T>, ApiError> {
    match value {
        None => Ok(None),
        Some(None) => Ok(Some(None)),
        Some(Some(v)) => parse(v).map(|v| Some(Some(v))),
    }
}

/// Parses an optional value.
pub fn parse_opt<T>(
    value: Option<String>,
    parse: impl FnOnce(String) -> Result<T, ApiError>,
) -> Result<Option<T>, ApiError> {
    value.map(parse).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use larachat_core::ErrorCode;

    #[test]
    fn values_are_checked_once_on_every_path() {
        assert!(MessageText::try_from("hi".to_owned()).is_ok());
        let e = MessageText::try_from("  ".to_owned()).unwrap_err();
        assert_eq!(e.code, ErrorCode::ValidationFailed);
        assert!(serde_json::from_str::<MessageText>("\" \"").is_err());
        assert!(serde_json::from_str::<MessageText>("\"x\"").is_ok());
        assert!(ClientMsgId::try_from("a b".to_owned()).is_err());
        let e = Name::parse("\u{7}".into(), "user.name").unwrap_err();
        assert!(e.message.contains("user.name"), "{e}");
        assert!(Email::try_from("nope".to_owned()).is_err());
        assert!(Url::try_from("ftp://x".to_owned()).is_err());
        assert!(Metadata::parse(serde_json::json!([1])).is_err());
        assert!(serde_json::from_str::<Metadata>("{\"a\":1}").is_ok());
        let big = serde_json::json!({"a": "x".repeat(9000)});
        assert!(Metadata::parse(big).is_err());
    }

    #[test]
    fn assignees_are_identifiers_and_none_means_unassigned() {
        assert_eq!(
            AgentId::try_from("ana@acme.com".to_owned())
                .unwrap()
                .as_str(),
            "ana@acme.com"
        );
        for bad in ["", "a b", "none", "a.b*", &"x".repeat(500)] {
            let e = AgentId::try_from(bad.to_owned()).unwrap_err();
            assert_eq!(e.code, ErrorCode::ValidationFailed, "{bad:?}");
            assert!(e.message.contains("assignee"), "{e}");
        }
        assert_eq!(
            parse_assignee_filter("none".into()).unwrap(),
            AssigneeFilter::Unassigned
        );
        assert_eq!(
            parse_assignee_filter("agent-7".into()).unwrap(),
            AssigneeFilter::Agent("agent-7".into())
        );
        assert!(parse_assignee_filter("a b".into()).is_err());
    }

    #[test]
    fn member_lists_are_deduplicated_and_capped() {
        let a = EndUserId::new_v7();
        let b = EndUserId::new_v7();
        let m = MemberList::parse(vec![b, a, b]).unwrap();
        let mut want = vec![a, b];
        want.sort();
        assert_eq!(m.as_slice(), want.as_slice());
        let many: Vec<EndUserId> = (0..=validate::MAX_CONVERSATION_MEMBERS)
            .map(|_| EndUserId::new_v7())
            .collect();
        assert!(MemberList::parse(many).is_err());
    }
}
