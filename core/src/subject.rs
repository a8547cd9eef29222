//! Bus subject names.
//!
//! Subjects are built only from typed ids ([`ProjectId`], [`ConversationId`], [`EndUserId`]),
//! whose string form is a hyphenated UUID (`[0-9a-f-]`). Raw client input can therefore never
//! put `.`, `*`, `>` or whitespace into a subject: there is no constructor that takes a string.

use std::fmt;

use crate::id::{ConversationId, EndUserId, ProjectId};

/// A validated bus subject, e.g. `lc.v1.<project>.conv.<conversation>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subject(String);

/// What a subject addresses. Used by backends that need to tell subjects apart without
/// parsing strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubjectKind {
    Conversation(ProjectId, ConversationId),
    User(ProjectId, EndUserId),
    Inbox(ProjectId),
    Presence(ProjectId),
    Control,
}

impl Subject {
    /// Root of every Lara Chat subject, protocol version included.
    pub const ROOT: &'static str = "lc.v1";

    /// Messages, reads, typing and changes of one conversation.
    pub fn conversation(project: ProjectId, conversation: ConversationId) -> Self {
        Self(format!("{}.{project}.conv.{conversation}", Self::ROOT))
    }

    /// One end user's own feed (new conversation, unread counts).
    pub fn user(project: ProjectId, user: EndUserId) -> Self {
        Self(format!("{}.{project}.user.{user}", Self::ROOT))
    }

    /// The agents' feed for a whole project.
    pub fn inbox(project: ProjectId) -> Self {
        Self(format!("{}.{project}.inbox", Self::ROOT))
    }

    /// Online/offline notices of a project.
    pub fn presence(project: ProjectId) -> Self {
        Self(format!("{}.{project}.presence", Self::ROOT))
    }

    /// Control-plane notices that every gateway obeys (key revoked, project changed).
    pub fn control() -> Self {
        Self(format!("{}.ctl.events", Self::ROOT))
    }

    /// The subject as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses a subject produced by this module (e.g. received from NATS). Returns `None` for
    /// anything else.
    pub fn parse(s: &str) -> Option<(Subject, SubjectKind)> {
        let rest = s.strip_prefix("lc.v1.")?;
        if rest == "ctl.events" {
            return Some((Self::control(), SubjectKind::Control));
        }
        let mut parts = rest.split('.');
        let project: ProjectId = parts.next()?.parse().ok()?;
        let kind = match (parts.next()?, parts.next(), parts.next()) {
            ("conv", Some(c), None) => SubjectKind::Conversation(project, c.parse().ok()?),
            ("user", Some(u), None) => SubjectKind::User(project, u.parse().ok()?),
            ("inbox", None, None) => SubjectKind::Inbox(project),
            ("presence", None, None) => SubjectKind::Presence(project),
            _ => return None,
        };
        Some((Self(s.to_owned()), kind))
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Subject({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_have_the_documented_shape_and_parse_back() {
        let p = ProjectId::new_v7();
        let c = ConversationId::new_v7();
        let u = EndUserId::new_v7();
        let s = Subject::conversation(p, c);
        assert_eq!(s.as_str(), format!("lc.v1.{p}.conv.{c}"));
        assert_eq!(
            Subject::parse(s.as_str()).unwrap().1,
            SubjectKind::Conversation(p, c)
        );
        assert_eq!(
            Subject::parse(Subject::user(p, u).as_str()).unwrap().1,
            SubjectKind::User(p, u)
        );
        assert_eq!(
            Subject::parse(Subject::inbox(p).as_str()).unwrap().1,
            SubjectKind::Inbox(p)
        );
        assert_eq!(
            Subject::parse(Subject::control().as_str()).unwrap().1,
            SubjectKind::Control
        );
    }

    #[test]
    fn only_safe_characters_reach_a_subject() {
        let s = Subject::conversation(ProjectId::new_v7(), ConversationId::new_v7());
        for token in s.as_str().split('.') {
            assert!(!token.is_empty());
            assert!(
                token
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
            );
        }
        assert!(Subject::parse("lc.v1.*.conv.>").is_none());
        assert!(Subject::parse("lc.v1.x.y").is_none());
    }
}
