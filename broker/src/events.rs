//! Subjects of durable events (the kinds are [`larachat_core::event::EventKind`]): what goes to the event stream (JetStream `LARACHAT_EVENTS` in
//! distributed mode) for webhook delivery and usage metering.
//!
//! A durable subject is `lc.v1.events.<project>.<kind>`, built only from a typed
//! [`ProjectId`] and an [`EventKind`], like every [`Subject`](crate::Subject): no raw input
//! reaches it. `events` is never a project id, so durable subjects cannot collide with live
//! ones (`lc.v1.<project>.…`), and live subjects never land in the stream.
//!
//! Backend-neutral on purpose (no feature gate): the single-node event table will use the same
//! names.

use std::fmt;

use larachat_core::id::ProjectId;

pub use larachat_core::event::EventKind;

/// The subject of a durable event, e.g. `lc.v1.events.<project>.message_sent`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DurableSubject(String);

impl DurableSubject {
    /// Prefix of every durable subject; the event stream captures `lc.v1.events.>`.
    pub const PREFIX: &'static str = "lc.v1.events";

    /// The subject of `kind` events of `project`.
    pub fn new(project: ProjectId, kind: EventKind) -> Self {
        Self(format!("{}.{project}.{}", Self::PREFIX, kind.token()))
    }

    /// The subject as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses a subject produced by [`DurableSubject::new`] (e.g. read back from the stream by a
    /// consumer). Returns `None` for anything else.
    pub fn parse(s: &str) -> Option<(ProjectId, EventKind)> {
        let rest = s.strip_prefix(Self::PREFIX)?.strip_prefix('.')?;
        let (project, kind) = rest.split_once('.')?;
        Some((project.parse().ok()?, EventKind::from_token(kind)?))
    }
}

impl fmt::Display for DurableSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DurableSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DurableSubject({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use larachat_core::subject::Subject;

    use super::*;

    #[test]
    fn durable_subjects_have_the_documented_shape_and_parse_back() {
        let p = ProjectId::new_v7();
        for kind in EventKind::ALL {
            let s = DurableSubject::new(p, kind);
            assert_eq!(s.as_str(), format!("lc.v1.events.{p}.{}", kind.token()));
            assert_eq!(DurableSubject::parse(s.as_str()), Some((p, kind)));
            for token in s.as_str().split('.') {
                assert!(!token.is_empty());
                assert!(
                    token
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                    "unsafe token {token:?}"
                );
            }
        }
        assert_eq!(EventKind::MessageSent.to_string(), "message.sent");
    }

    #[test]
    fn durable_and_live_subjects_never_overlap() {
        let p = ProjectId::new_v7();
        let durable = DurableSubject::new(p, EventKind::MessageSent);
        assert!(Subject::parse(durable.as_str()).is_none());
        assert!(DurableSubject::parse(Subject::inbox(p).as_str()).is_none());
        assert!(DurableSubject::parse(Subject::control().as_str()).is_none());
        assert!(DurableSubject::parse(&format!("lc.v1.events.{p}.message_sent.x")).is_none());
        assert!(DurableSubject::parse("lc.v1.events.*.message_sent").is_none());
        assert!(DurableSubject::parse(&format!("lc.v1.events.{p}.>")).is_none());
    }
}
