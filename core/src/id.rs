//! Typed identifiers.
//!
//! Every public id is a UUID in its canonical hyphenated form. Each kind of id gets its own
//! type so that a conversation id can never be passed where a project id is expected, and
//! parsing is strict (hyphenated, 36 characters), which also guarantees that an id only
//! contains `[0-9a-f-]` and is therefore safe inside a bus subject.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// A fresh UUIDv7 with the timestamp `at` (milliseconds; before 1970, the epoch).
pub fn v7_at(at: chrono::DateTime<chrono::Utc>) -> Uuid {
    let ms = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        ms / 1000,
        (ms % 1000) as u32 * 1_000_000,
    ))
}

/// Why a string is not an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid id: expected a hyphenated UUID")]
pub struct InvalidId;

/// Parses the canonical hyphenated UUID form only (no braces, no URN, no simple form).
pub fn parse_uuid(s: &str) -> Result<Uuid, InvalidId> {
    if s.len() != 36 {
        return Err(InvalidId);
    }
    Uuid::try_parse(s).map_err(|_| InvalidId)
}

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Uuid);

        impl $name {
            /// Wraps a UUID. Use only with ids that came from the store or a generator.
            pub const fn from_uuid(u: Uuid) -> Self {
                Self(u)
            }
            /// The inner UUID.
            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
            /// A fresh, time-ordered (UUIDv7) id.
            pub fn new_v7() -> Self {
                Self(Uuid::now_v7())
            }
            /// A fresh UUIDv7 id whose timestamp is `at` (an injected clock's now), random
            /// bits as in [`Self::new_v7`].
            pub fn new_v7_at(at: chrono::DateTime<chrono::Utc>) -> Self {
                Self(v7_at(at))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.hyphenated())
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_uuid(s).map(Self)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                // Always the string form, also in MessagePack, so that both encodings carry
                // the same value.
                let mut buf = Uuid::encode_buffer();
                s.serialize_str(self.0.hyphenated().encode_lower(&mut buf))
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
                    .into()
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

define_id!(
    /// A tenant's project. Every stored row and every subject starts with it.
    ProjectId
);
define_id!(
    /// A platform admin (a human who logs into the Admin API).
    AdminUserId
);
define_id!(
    /// An API key's public id; it is embedded in the key string itself.
    ApiKeyId
);
define_id!(
    /// An end user of a tenant (a visitor or app user).
    EndUserId
);
define_id!(
    /// A conversation inside a project.
    ConversationId
);
define_id!(
    /// An invitation of someone (by email) to join a project's team.
    InviteId
);
define_id!(
    /// A domain event (UUIDv7): generated once, when the change it describes is committed, and
    /// carried unchanged by every redelivery (webhook `id`, JetStream `Nats-Msg-Id`).
    EventId
);
define_id!(
    /// A message. Always UUIDv7 from [`MessageId::following`]: within a conversation, id order
    /// is `seq` order (and roughly time order).
    MessageId
);

impl EventId {
    /// The id of the `message.sent` event of message `m`: a UUIDv7 with the message id's
    /// timestamp and random bits XOR-ed with a fixed mask (version and variant kept). The same
    /// for every writer of the message, different from the message id itself.
    pub fn of_message(m: MessageId) -> Self {
        // "message.sent" in the spare bits; bytes 6 and 8 keep their version / variant bits.
        Self::derived(
            m.as_uuid(),
            [
                0, 0, 0, 0, 0, 0, 0x0e, 0x5a, 0x3f, 0x73, 0x65, 0x6e, 0x74, 0x2e, 0x6d, 0x73,
            ],
        )
    }

    /// The id of the `user.created` event of end user `u`, derived like
    /// [`EventId::of_message`] (another mask): every writer of a claimed identification — its
    /// own writer, a retry repairing it — builds the same event.
    pub fn of_user_created(u: EndUserId) -> Self {
        // "user.created" in the spare bits.
        Self::derived(
            u.as_uuid(),
            [
                0, 0, 0, 0, 0, 0, 0x05, 0x73, 0x25, 0x72, 0x2e, 0x63, 0x72, 0x65, 0x61, 0x74,
            ],
        )
    }

    /// The id of the `conversation.created` event of conversation `c`, derived like
    /// [`EventId::of_message`] (another mask): every writer of an idempotent creation builds
    /// the same event.
    pub fn of_conversation_created(c: ConversationId) -> Self {
        // "conv.created" in the spare bits.
        Self::derived(
            c.as_uuid(),
            [
                0, 0, 0, 0, 0, 0, 0x0c, 0x6f, 0x2e, 0x76, 0x2e, 0x63, 0x72, 0x65, 0x61, 0x74,
            ],
        )
    }

    /// `id` XOR-ed with `mask`; the mask leaves the timestamp (bytes 0-5), the version (high
    /// nibble of byte 6) and the variant (top two bits of byte 8) alone.
    fn derived(id: &Uuid, mask: [u8; 16]) -> Self {
        let mut bytes = *id.as_bytes();
        for (b, k) in bytes.iter_mut().zip(mask) {
            *b ^= k;
        }
        Self(Uuid::from_bytes(bytes))
    }
}

impl MessageId {
    /// The smallest possible id: everything sorts after it.
    pub const MIN: MessageId = MessageId(Uuid::nil());

    /// Milliseconds since the Unix epoch encoded in a v7 id.
    pub fn timestamp_ms(&self) -> u64 {
        let b = self.0.as_bytes();
        u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
    }
}

impl MessageId {
    /// The id of the message that follows `prev` in its conversation:
    /// `max(now_v7(), prev + δ)`, with δ a random increment of 1 to 2³² in the 74 bits below
    /// the timestamp (version and variant intact, carrying into the timestamp).
    ///
    /// Stores call this with the id of the conversation's newest message, read from the same
    /// place that decides the message's sequence number (the SQLite writer, the CQL sequencer
    /// partition), so a conversation's ids strictly increase with its `seq`, whatever the clocks
    /// of the processes that write it: a process whose clock is behind continues above the
    /// newest id, one whose clock is ahead only moves the ids forward.
    ///
    /// Uniqueness across conversations comes from the random bits: a fresh `now_v7()` id has 74
    /// of them, and a bumped id is its predecessor (itself random) plus a random δ, so two
    /// conversations bumping from ids that happen to be equal still diverge. The chance that two
    /// of a billion ids share a 74-bit value within one millisecond is below 10⁻⁴; within one
    /// conversation ids never repeat at all, because they strictly increase.
    ///
    /// Hand-written rather than `Uuid::now_v7()` alone because the rule it implements (above
    /// the predecessor, not only above this process's last id) is the product's ordering rule.
    pub fn following(prev: Option<MessageId>) -> MessageId {
        Self::following_at(prev, crate::model::now())
    }

    /// [`MessageId::following`] with "now" given (an injected clock's).
    pub fn following_at(prev: Option<MessageId>, now: chrono::DateTime<chrono::Utc>) -> MessageId {
        let candidate = v7_at(now).as_u128();
        let Some(prev) = prev else {
            return MessageId(Uuid::from_u128(candidate));
        };
        let prev = prev.0.as_u128();
        if candidate > prev {
            return MessageId(Uuid::from_u128(candidate));
        }
        let delta = 1 + (Uuid::new_v4().as_u128() & 0xffff_ffff);
        MessageId(Uuid::from_u128(bump_v7(prev, delta)))
    }
}

/// Adds `delta` to the "random" part of a v7 UUID, carrying into the timestamp when it
/// overflows. Layout (RFC 9562): 48 bits ms | 4 bits version | 12 bits rand_a | 2 bits variant |
/// 62 bits rand_b. Whatever `v` holds in the version and variant bits, the result is a v7 UUID.
fn bump_v7(v: u128, delta: u128) -> u128 {
    let mut ts = v >> 80;
    let rand_a = (v >> 64) & 0xfff;
    let rand_b = v & ((1u128 << 62) - 1);
    let mut counter = ((rand_a << 62) | rand_b) + delta; // 74-bit counter
    if counter >> 74 != 0 {
        counter &= (1u128 << 74) - 1;
        ts += 1;
    }
    let rand_a = counter >> 62;
    let rand_b = counter & ((1u128 << 62) - 1);
    ((ts & 0xffff_ffff_ffff) << 80) | (0x7u128 << 76) | (rand_a << 64) | (0b10u128 << 62) | rand_b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_at_a_given_time_carry_it() {
        let at = chrono::DateTime::from_timestamp_millis(1_700_000_123_456).unwrap();
        let id = EndUserId::new_v7_at(at);
        assert_eq!(id.as_uuid().get_version_num(), 7);
        assert_eq!(
            MessageId::from_uuid(*id.as_uuid()).timestamp_ms(),
            1_700_000_123_456
        );
        assert_ne!(EndUserId::new_v7_at(at), id, "random bits differ");
        let m = MessageId::following_at(None, at);
        assert_eq!(m.timestamp_ms(), 1_700_000_123_456);
        // Behind the predecessor: still above it.
        let later = MessageId::following_at(None, at + chrono::TimeDelta::seconds(5));
        assert!(MessageId::following_at(Some(later), at) > later);
    }

    #[test]
    fn derived_event_ids_are_stable_v7_and_distinct() {
        let u = Uuid::now_v7();
        let user = EventId::of_user_created(EndUserId::from_uuid(u));
        let conv = EventId::of_conversation_created(ConversationId::from_uuid(u));
        let msg = EventId::of_message(MessageId::from_uuid(u));
        assert_eq!(user, EventId::of_user_created(EndUserId::from_uuid(u)));
        for e in [user, conv, msg] {
            assert_eq!(e.as_uuid().get_version_num(), 7);
            assert_eq!(e.as_uuid().get_variant(), uuid::Variant::RFC4122);
            assert_eq!(
                e.as_uuid().as_bytes()[..6],
                u.as_bytes()[..6],
                "same timestamp"
            );
            assert_ne!(*e.as_uuid(), u);
        }
        assert!(user != conv && conv != msg && user != msg);
    }

    #[test]
    fn ids_parse_only_canonical_form() {
        let id = ProjectId::new_v7();
        let s = id.to_string();
        assert_eq!(s.parse::<ProjectId>().unwrap(), id);
        assert!("".parse::<ProjectId>().is_err());
        assert!(s.replace('-', "").parse::<ProjectId>().is_err());
        assert!(format!("{{{s}}}").parse::<ProjectId>().is_err());
        assert!("a.b.c".parse::<ProjectId>().is_err());
        assert!(
            "0193e2c4-1111-7aaa-8bbb-ccccccccccc*"
                .parse::<ProjectId>()
                .is_err()
        );
    }

    #[test]
    fn following_ids_strictly_increase() {
        let mut prev = MessageId::following(None);
        for _ in 0..100_000 {
            let next = MessageId::following(Some(prev));
            assert!(next > prev, "{next:?} <= {prev:?}");
            assert_eq!(next.as_uuid().get_version_num(), 7);
            assert_eq!(next.as_uuid().get_variant(), uuid::Variant::RFC4122);
            prev = next;
        }
    }

    #[test]
    fn bump_keeps_version_and_variant_and_carries() {
        let max_counter = (0x0123_4567_89abu128 << 80)
            | (0x7u128 << 76)
            | (0xfffu128 << 64)
            | (0b10u128 << 62)
            | ((1u128 << 62) - 1);
        let bumped = Uuid::from_u128(bump_v7(max_counter, 1));
        assert_eq!(bumped.get_version_num(), 7);
        assert_eq!(bumped.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(bumped.as_u128() >> 80, 0x0123_4567_89ac);
        assert!(bumped.as_u128() > max_counter);
        let big = Uuid::from_u128(bump_v7(max_counter - 5, 1 << 32));
        assert!(big.as_u128() > max_counter);
        assert_eq!(big.get_version_num(), 7);
    }

    #[test]
    fn ids_follow_a_predecessor_from_a_faster_clock() {
        let now = MessageId::following(None);
        // The newest id was written by a process whose clock was a day ahead.
        let future = MessageId(Uuid::from_u128(now.0.as_u128() + (86_400_000u128 << 80)));
        let a = MessageId::following(Some(future));
        assert!(a > future);
        assert_eq!(
            a.timestamp_ms(),
            future.timestamp_ms(),
            "a small step above it"
        );
        // A predecessor from a slower clock: the id comes from this clock.
        let past = MessageId(Uuid::from_u128(now.0.as_u128() - (10_000u128 << 80)));
        let b = MessageId::following(Some(past));
        assert!(b.timestamp_ms() >= now.timestamp_ms());
    }

    #[test]
    fn bumps_from_one_predecessor_diverge() {
        // Two conversations whose newest ids are equal (or two writers racing from one head):
        // the random step makes their next ids differ.
        let future = MessageId(Uuid::from_u128(
            MessageId::following(None).0.as_u128() + (60_000u128 << 80),
        ));
        let ids: std::collections::HashSet<MessageId> = (0..1000)
            .map(|_| MessageId::following(Some(future)))
            .collect();
        assert!(ids.len() >= 999, "{} distinct of 1000", ids.len());
    }

    #[test]
    fn timestamp_is_readable() {
        let id = MessageId::following(None);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(now.abs_diff(id.timestamp_ms()) < 5_000);
    }
}
