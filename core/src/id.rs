//! Typed identifiers.
//!
//! Every public id is a UUID in its canonical hyphenated form. Each kind of id gets its own
//! type so that a conversation id can never be passed where a project id is expected, and
//! parsing is strict (hyphenated, 36 characters), which also guarantees that an id only
//! contains `[0-9a-f-]` and is therefore safe inside a bus subject.

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

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
    /// A message. Always UUIDv7 from [`MessageIdGenerator`], so id order is time order.
    MessageId
);

impl MessageId {
    /// The smallest possible id: everything sorts after it.
    pub const MIN: MessageId = MessageId(Uuid::nil());

    /// Milliseconds since the Unix epoch encoded in a v7 id.
    pub fn timestamp_ms(&self) -> u64 {
        let b = self.0.as_bytes();
        u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
    }
}

/// Generates UUIDv7 ids that strictly increase within one process, even when the clock stands
/// still or steps backwards.
///
/// Hand-written rather than `Uuid::now_v7()` alone because the guarantee we need is explicit:
/// every id is strictly greater than the previous one handed out by this generator. When the
/// clock has not advanced, the previous id is incremented by one in its random bits (the
/// 74 bits below the timestamp, keeping version and variant intact).
#[derive(Debug, Default)]
pub struct MessageIdGenerator {
    last: Mutex<u128>,
}

impl MessageIdGenerator {
    pub const fn new() -> Self {
        Self {
            last: Mutex::new(0),
        }
    }

    /// The next id, strictly greater than every id this generator returned before.
    pub fn next(&self) -> MessageId {
        self.next_after(None)
    }

    /// The next id, strictly greater than every id this generator returned before and than
    /// `floor` — the newest id already stored where this one goes, which may come from a
    /// process whose clock ran ahead (or stepped back across a restart). Stores use it so that
    /// a conversation's ids keep increasing whatever the clocks do.
    pub fn next_after(&self, floor: Option<MessageId>) -> MessageId {
        let candidate = Uuid::now_v7().as_u128();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let at_least = floor.map_or(*last, |f| f.0.as_u128().max(*last));
        let value = if candidate > at_least {
            candidate
        } else {
            bump_v7(at_least)
        };
        *last = value;
        MessageId(Uuid::from_u128(value))
    }
}

/// Adds one to the "random" part of a v7 UUID, carrying into the timestamp when it overflows.
/// Layout (RFC 9562): 48 bits ms | 4 bits version | 12 bits rand_a | 2 bits variant | 62 bits rand_b.
fn bump_v7(v: u128) -> u128 {
    let ts = v >> 80;
    let rand_a = (v >> 64) & 0xfff;
    let rand_b = v & ((1u128 << 62) - 1);
    let mut counter = (rand_a << 62) | rand_b; // 74-bit counter
    let mut ts = ts;
    counter += 1;
    if counter >> 74 != 0 {
        counter = 0;
        ts += 1;
    }
    let rand_a = counter >> 62;
    let rand_b = counter & ((1u128 << 62) - 1);
    (ts << 80) | (0x7u128 << 76) | (rand_a << 64) | (0b10u128 << 62) | rand_b
}

/// The process-wide generator for message ids.
pub static MESSAGE_IDS: MessageIdGenerator = MessageIdGenerator::new();

#[cfg(test)]
mod tests {
    use super::*;

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
    fn generator_is_strictly_monotonic() {
        let g = MessageIdGenerator::new();
        let mut prev = g.next();
        for _ in 0..100_000 {
            let next = g.next();
            assert!(next > prev, "{next:?} <= {prev:?}");
            assert_eq!(next.as_uuid().get_version_num(), 7);
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
        let bumped = Uuid::from_u128(bump_v7(max_counter));
        assert_eq!(bumped.get_version_num(), 7);
        assert_eq!(bumped.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(bumped.as_u128() >> 80, 0x0123_4567_89ac);
        assert!(bumped.as_u128() > max_counter);
    }

    #[test]
    fn ids_stay_ahead_of_a_floor_from_a_faster_clock() {
        let g = MessageIdGenerator::new();
        // A floor written by a process whose clock was a day ahead.
        let future = MessageId(Uuid::from_u128(
            g.next().0.as_u128() + (86_400_000u128 << 80),
        ));
        let a = g.next_after(Some(future));
        assert!(a > future);
        assert_eq!(a.as_uuid().get_version_num(), 7);
        assert!(
            g.next() > a,
            "the generator keeps its own order after a bump"
        );
        let past = g.next();
        assert!(g.next_after(Some(past)) > past);
    }

    #[test]
    fn timestamp_is_readable() {
        let id = MESSAGE_IDS.next();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(now.abs_diff(id.timestamp_ms()) < 5_000);
    }
}
