//! Realtime protocol v1: frames and codecs.
//!
//! Every frame is an object with a `type` field. Clients send [`ClientFrame`]s, the server
//! sends [`ServerFrame`]s. The same structures are carried either as JSON text frames or as
//! MessagePack binary frames (maps with field names, so both encodings have one schema).
//! `docs/protocol.md` is the specification for SDK authors; this module is its source of truth.

use std::sync::OnceLock;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ErrorCode};
use crate::id::{ConversationId, EndUserId, MessageId, ProjectId};
use crate::model::{Actor, ActorKind, Conversation, Message};

/// Protocol version spoken by this crate.
pub const PROTOCOL_VERSION: u32 = 1;
/// WebSocket subprotocol for JSON text frames (the default).
pub const SUBPROTOCOL_JSON: &str = "larachat.v1.json";
/// WebSocket subprotocol for MessagePack binary frames.
pub const SUBPROTOCOL_MSGPACK: &str = "larachat.v1.msgpack";

/// How frames are encoded on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Json,
    MsgPack,
}

impl Encoding {
    /// Picks the encoding from the offered subprotocols or the `encoding` query value.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            SUBPROTOCOL_JSON | "json" => Some(Self::Json),
            SUBPROTOCOL_MSGPACK | "msgpack" => Some(Self::MsgPack),
            _ => None,
        }
    }
    pub const fn subprotocol(self) -> &'static str {
        match self {
            Self::Json => SUBPROTOCOL_JSON,
            Self::MsgPack => SUBPROTOCOL_MSGPACK,
        }
    }
}

/// Typing state carried by `typing` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TypingState {
    Start,
    Stop,
}

/// A feed a connection can watch (`watch` frame, protocol §3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Feed {
    /// An end user's own feed: their conversations created and changed, unread counts.
    User,
    /// The agents' feed of a whole project: new conversations, message previews, changes,
    /// presence of end users.
    Inbox,
}

/// Online or offline, in `presence` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    Online,
    Offline,
}

/// An end user online now (`online` reply, `GET /api/v1/presence`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OnlineUser {
    pub user_id: EndUserId,
    /// Since when this gateway has seen them online (its view; approximate across gateways).
    pub since: DateTime<Utc>,
}

/// An agent or bot identity chosen by a secret-key connection (end users cannot choose).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ActorInput {
    #[serde(rename = "type")]
    pub kind: ActorKind,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Frames a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Must be the first frame. `token` is an end-user JWT or a secret key.
    Auth {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        token: String,
        /// For secret keys only: who the agent is. Defaults to an agent named after the key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actor: Option<ActorInput>,
    },
    /// Start receiving a conversation's events. With `after`, first replays every stored
    /// message with a greater id.
    Subscribe {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        conversation_id: ConversationId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<MessageId>,
    },
    Unsubscribe {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        conversation_id: ConversationId,
    },
    /// Send a message. Acknowledged with `ack` once durable; idempotent on `client_msg_id`.
    Send {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        conversation_id: ConversationId,
        client_msg_id: String,
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        metadata: Option<serde_json::Value>,
    },
    /// Mark everything up to and including `message_id` as read.
    Read {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        conversation_id: ConversationId,
        message_id: MessageId,
    },
    /// Typing indicator; ephemeral, never stored, not acknowledged.
    Typing {
        conversation_id: ConversationId,
        state: TypingState,
    },
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Start receiving a feed: `user` (end users: their own feed) or `inbox` (agents: the
    /// project's inbox, presence included). Answered with `watching`.
    Watch {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        feed: Feed,
    },
    /// Who is online now (agents only). Answered with `online`.
    WhoIsOnline {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
}

impl ClientFrame {
    /// The request id, if the frame carries one.
    pub fn request_id(&self) -> Option<u64> {
        match self {
            Self::Auth { id, .. }
            | Self::Subscribe { id, .. }
            | Self::Unsubscribe { id, .. }
            | Self::Send { id, .. }
            | Self::Read { id, .. }
            | Self::Ping { id }
            | Self::Watch { id, .. }
            | Self::WhoIsOnline { id } => *id,
            Self::Typing { .. } => None,
        }
    }
}

/// Who the connection is, returned in `auth_ok`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionInfo {
    pub project_id: ProjectId,
    pub actor: Actor,
}

/// Limits announced in `auth_ok` so clients can stay within them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Limits {
    pub max_frame_bytes: u32,
    pub max_subscriptions: u32,
    pub heartbeat_ms: u32,
}

/// Frames the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    AuthOk {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        protocol: u32,
        session: SessionInfo,
        limits: Limits,
    },
    /// Replay (if any) has been sent; live events follow.
    Subscribed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        conversation_id: ConversationId,
        /// How many stored messages were replayed before this frame.
        replayed: u32,
    },
    Unsubscribed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        conversation_id: ConversationId,
    },
    /// The message of a `send` is durable. `duplicate` is true when `client_msg_id` had been
    /// seen before and `message` is the original.
    Ack {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        message: Message,
        duplicate: bool,
    },
    /// A request without a payload of its own (e.g. `read`) succeeded.
    Ok {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// A request failed. The connection stays open unless a close frame follows.
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        code: ErrorCode,
        message: String,
        retryable: bool,
        /// `rate_limited` only: wait at least this long before retrying (added within v1).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// A new message in a subscribed conversation (live, or replayed from the store).
    Message {
        conversation_id: ConversationId,
        message: Message,
    },
    /// A participant read up to `message_id`.
    Read {
        conversation_id: ConversationId,
        reader: Actor,
        message_id: MessageId,
        at: DateTime<Utc>,
    },
    Typing {
        conversation_id: ConversationId,
        actor: Actor,
        state: TypingState,
    },
    /// The conversation changed (status, subject, members).
    Conversation { conversation: Conversation },
    /// A `watch` succeeded: the feed's events follow.
    Watching {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        feed: Feed,
    },
    /// Answer to `who_is_online`: end users online now, at most `limit` of them.
    Online {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        users: Vec<OnlineUser>,
        /// More users are online than listed.
        truncated: bool,
    },
    /// Feed event (user, inbox): a conversation was started.
    ConversationCreated { conversation: Conversation },
    /// Feed event (user, inbox): a conversation changed (status, subject, members, metadata).
    ConversationUpdated { conversation: Conversation },
    /// Feed event (user): the end user's unread count of one conversation:
    /// `unread = head_seq - read_seq`.
    Unread {
        conversation_id: ConversationId,
        /// `seq` of the newest message of the conversation.
        head_seq: u64,
        /// `seq` of the message the end user's read marker points at (0: none).
        read_seq: u64,
        unread: u64,
    },
    /// Feed event (inbox): a new message, previewed.
    MessagePreview {
        conversation_id: ConversationId,
        message_id: MessageId,
        seq: u64,
        sender: Actor,
        /// The first [`PREVIEW_CHARS`] characters of the text.
        text: String,
        /// `text` was cut.
        truncated: bool,
        created_at: DateTime<Utc>,
    },
    /// Feed event (inbox): an end user came online or went offline.
    Presence {
        user_id: EndUserId,
        status: PresenceStatus,
        at: DateTime<Utc>,
    },
}

/// Characters of a message kept in a `message_preview`.
pub const PREVIEW_CHARS: usize = 140;

impl ServerFrame {
    /// An `error` frame for a failed request.
    pub fn error(id: Option<u64>, err: &ApiError) -> Self {
        Self::Error {
            id,
            code: err.code,
            message: err.message.to_string(),
            retryable: err.code.retryable(),
            retry_after_ms: err.rate_limit.as_ref().map(|r| r.retry_after_ms()),
        }
    }

    /// The conversation an event frame belongs to, if it is an event.
    pub fn event_conversation(&self) -> Option<ConversationId> {
        match self {
            Self::Message {
                conversation_id, ..
            }
            | Self::Read {
                conversation_id, ..
            }
            | Self::Typing {
                conversation_id, ..
            } => Some(*conversation_id),
            Self::Conversation { conversation } => Some(conversation.id),
            _ => None,
        }
    }

    /// Whether this is a feed event (delivered to connections watching a feed, not tied to a
    /// conversation subscription).
    pub fn is_feed_event(&self) -> bool {
        matches!(
            self,
            Self::ConversationCreated { .. }
                | Self::ConversationUpdated { .. }
                | Self::Unread { .. }
                | Self::MessagePreview { .. }
                | Self::Presence { .. }
        )
    }

    /// A `message_preview` of `message`: its text cut to [`PREVIEW_CHARS`] characters.
    pub fn preview(message: &Message) -> Self {
        let (text, truncated) = match message.text.char_indices().nth(PREVIEW_CHARS) {
            Some((at, _)) => (message.text[..at].to_owned(), true),
            None => (message.text.clone(), false),
        };
        Self::MessagePreview {
            conversation_id: message.conversation_id,
            message_id: message.id,
            seq: message.seq,
            sender: message.sender.clone(),
            text,
            truncated,
            created_at: message.created_at,
        }
    }

    /// The message id of a `message` event.
    pub fn message_id(&self) -> Option<MessageId> {
        match self {
            Self::Message { message, .. } => Some(message.id),
            _ => None,
        }
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

impl From<DecodeError> for ApiError {
    fn from(e: DecodeError) -> Self {
        ApiError::invalid(e.0)
    }
}

/// Encodes a frame (server or client) in `encoding`.
pub fn encode<T: Serialize>(frame: &T, encoding: Encoding) -> Bytes {
    match encoding {
        // Serializing our own frame types cannot fail: all keys are strings and all values
        // are plain data.
        Encoding::Json => Bytes::from(serde_json::to_vec(frame).unwrap_or_default()),
        Encoding::MsgPack => Bytes::from(rmp_serde::to_vec_named(frame).unwrap_or_default()),
    }
}

/// Decodes a frame (server or client) from `encoding`.
pub fn decode<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    encoding: Encoding,
) -> Result<T, DecodeError> {
    match encoding {
        Encoding::Json => serde_json::from_slice(bytes).map_err(|e| DecodeError(json_error(&e))),
        Encoding::MsgPack => {
            rmp_serde::from_slice(bytes).map_err(|e| DecodeError(format!("invalid frame: {e}")))
        }
    }
}

fn json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof => format!("malformed JSON: {e}"),
        Category::Data => format!("invalid frame: {e}"),
        Category::Io => "unreadable frame".to_owned(),
    }
}

/// A server frame shared by every local subscriber of one process: parsed once, encoded at
/// most once per encoding, and the bytes reference-counted among connections.
#[derive(Debug)]
pub struct SharedFrame {
    frame: ServerFrame,
    json: OnceLock<Bytes>,
    msgpack: OnceLock<Bytes>,
}

impl SharedFrame {
    pub fn new(frame: ServerFrame) -> Self {
        Self {
            frame,
            json: OnceLock::new(),
            msgpack: OnceLock::new(),
        }
    }

    /// Builds from JSON bytes received from the bus, keeping those bytes as the JSON encoding.
    pub fn from_json(bytes: Bytes) -> Result<Self, DecodeError> {
        let frame = decode(&bytes, Encoding::Json)?;
        let s = Self::new(frame);
        let _ = s.json.set(bytes);
        Ok(s)
    }

    pub fn frame(&self) -> &ServerFrame {
        &self.frame
    }

    /// The encoded bytes for `encoding`, computed on first use.
    pub fn bytes(&self, encoding: Encoding) -> Bytes {
        self.encoded_bytes(encoding).clone()
    }

    /// The encoded bytes for `encoding` (computed on first use), borrowed: delivering a shared
    /// frame to many connections touches no reference count.
    pub fn encoded(&self, encoding: Encoding) -> &[u8] {
        self.encoded_bytes(encoding)
    }

    fn encoded_bytes(&self, encoding: Encoding) -> &Bytes {
        let cell = match encoding {
            Encoding::Json => &self.json,
            Encoding::MsgPack => &self.msgpack,
        };
        cell.get_or_init(|| encode(&self.frame, encoding))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ActorKind;
    use proptest::prelude::*;
    use serde_json::json;

    fn sample_message(text: String) -> Message {
        Message {
            id: MessageId::following(None),
            seq: 1,
            project_id: ProjectId::new_v7(),
            conversation_id: ConversationId::new_v7(),
            sender: Actor {
                kind: ActorKind::Agent,
                id: "agent-1".into(),
                name: Some("Ana".into()),
            },
            text,
            metadata: json!({"k": [1, 2, {"x": null}]}),
            client_msg_id: Some("c-1".into()),
            created_at: crate::model::now(),
        }
    }

    #[test]
    fn client_frames_have_the_documented_json_shape() {
        let c = ConversationId::new_v7();
        let f: ClientFrame = serde_json::from_value(json!({
            "type": "send", "id": 7, "conversation_id": c.to_string(),
            "client_msg_id": "abc", "text": "hi"
        }))
        .unwrap();
        assert_eq!(
            f,
            ClientFrame::Send {
                id: Some(7),
                conversation_id: c,
                client_msg_id: "abc".into(),
                text: "hi".into(),
                metadata: None
            }
        );
    }

    #[test]
    fn unknown_fields_and_types_are_rejected_with_clear_errors() {
        let e = decode::<ClientFrame>(br#"{"type":"ping","bogus":1}"#, Encoding::Json).unwrap_err();
        assert!(e.0.contains("bogus"), "{e}");
        let e = decode::<ClientFrame>(br#"{"type":"launch"}"#, Encoding::Json).unwrap_err();
        assert!(e.0.contains("launch"), "{e}");
        let e = decode::<ClientFrame>(br#"{"type":"ping""#, Encoding::Json).unwrap_err();
        assert!(e.0.starts_with("malformed JSON"), "{e}");
        let e = decode::<ClientFrame>(
            br#"{"type":"subscribe","conversation_id":"lc.v1.*"}"#,
            Encoding::Json,
        )
        .unwrap_err();
        assert!(e.0.contains("valid id"), "{e}");
        let e =
            decode::<ClientFrame>(br#"{"type":"ping","id":"seven"}"#, Encoding::Json).unwrap_err();
        assert!(e.0.contains("invalid type"), "{e}");
    }

    #[test]
    fn msgpack_and_json_carry_the_same_frame() {
        let frame = ServerFrame::Message {
            conversation_id: ConversationId::new_v7(),
            message: sample_message("héllo 👋".into()),
        };
        for enc in [Encoding::Json, Encoding::MsgPack] {
            let bytes = encode(&frame, enc);
            let back: ServerFrame = decode(&bytes, enc).unwrap();
            assert_eq!(back, frame);
        }
        // The MessagePack form is a map with named fields, like the JSON one.
        let mp = encode(&ServerFrame::Pong { id: Some(1) }, Encoding::MsgPack);
        let v: serde_json::Value = rmp_serde::from_slice(&mp).unwrap();
        assert_eq!(v, json!({"type": "pong", "id": 1}));
    }

    #[test]
    fn feed_frames_have_one_schema_in_both_encodings() {
        let message = sample_message("a".repeat(200));
        let preview = ServerFrame::preview(&message);
        match &preview {
            ServerFrame::MessagePreview {
                text, truncated, ..
            } => {
                assert_eq!(text.chars().count(), PREVIEW_CHARS);
                assert!(*truncated);
            }
            other => panic!("{other:?}"),
        }
        let short = ServerFrame::preview(&sample_message("héllo".into()));
        assert!(
            matches!(short, ServerFrame::MessagePreview { truncated: false, ref text, .. } if text == "héllo")
        );
        let frames = [
            preview,
            ServerFrame::Unread {
                conversation_id: ConversationId::new_v7(),
                head_seq: 9,
                read_seq: 4,
                unread: 5,
            },
            ServerFrame::Presence {
                user_id: EndUserId::new_v7(),
                status: PresenceStatus::Online,
                at: crate::model::now(),
            },
            ServerFrame::Watching {
                id: Some(3),
                feed: Feed::Inbox,
            },
            ServerFrame::Online {
                id: None,
                users: vec![OnlineUser {
                    user_id: EndUserId::new_v7(),
                    since: crate::model::now(),
                }],
                truncated: false,
            },
        ];
        for frame in frames {
            assert!(frame.event_conversation().is_none());
            for enc in [Encoding::Json, Encoding::MsgPack] {
                let back: ServerFrame = decode(&encode(&frame, enc), enc).unwrap();
                assert_eq!(back, frame);
            }
        }
        let f: ClientFrame =
            decode(br#"{"type":"watch","id":1,"feed":"user"}"#, Encoding::Json).unwrap();
        assert_eq!(
            f,
            ClientFrame::Watch {
                id: Some(1),
                feed: Feed::User
            }
        );
        assert!(
            decode::<ClientFrame>(br#"{"type":"watch","feed":"all"}"#, Encoding::Json).is_err()
        );
        let v = serde_json::to_value(&ServerFrame::Unread {
            conversation_id: ConversationId::new_v7(),
            head_seq: 2,
            read_seq: 1,
            unread: 1,
        })
        .unwrap();
        assert_eq!(v["type"], "unread");
    }

    #[test]
    fn shared_frame_reuses_bus_bytes() {
        let frame = ServerFrame::Pong { id: None };
        let json = encode(&frame, Encoding::Json);
        let shared = SharedFrame::from_json(json.clone()).unwrap();
        assert_eq!(shared.bytes(Encoding::Json).as_ptr(), json.as_ptr());
        let mp1 = shared.bytes(Encoding::MsgPack);
        let mp2 = shared.bytes(Encoding::MsgPack);
        assert_eq!(mp1.as_ptr(), mp2.as_ptr(), "encoded once");
        assert_eq!(shared.encoded(Encoding::MsgPack).as_ptr(), mp1.as_ptr());
        assert_eq!(shared.encoded(Encoding::Json).as_ptr(), json.as_ptr());
    }

    fn arb_client_frame() -> impl Strategy<Value = ClientFrame> {
        let conv = any::<u128>().prop_map(|u| ConversationId::from_uuid(uuid::Uuid::from_u128(u)));
        let mid = any::<u128>().prop_map(|u| MessageId::from_uuid(uuid::Uuid::from_u128(u)));
        prop_oneof![
            (any::<Option<u64>>(), ".{0,40}").prop_map(|(id, token)| ClientFrame::Auth {
                id,
                token,
                actor: None
            }),
            (
                any::<Option<u64>>(),
                conv.clone(),
                proptest::option::of(mid.clone())
            )
                .prop_map(|(id, conversation_id, after)| ClientFrame::Subscribe {
                    id,
                    conversation_id,
                    after
                }),
            (
                any::<Option<u64>>(),
                conv.clone(),
                "[a-z0-9]{1,10}",
                any::<String>()
            )
                .prop_map(|(id, conversation_id, client_msg_id, text)| {
                    ClientFrame::Send {
                        id,
                        conversation_id,
                        client_msg_id,
                        text,
                        metadata: Some(json!({"n": 1})),
                    }
                }),
            (any::<Option<u64>>(), conv.clone(), mid).prop_map(
                |(id, conversation_id, message_id)| {
                    ClientFrame::Read {
                        id,
                        conversation_id,
                        message_id,
                    }
                }
            ),
            (conv, any::<bool>()).prop_map(|(conversation_id, s)| ClientFrame::Typing {
                conversation_id,
                state: if s {
                    TypingState::Start
                } else {
                    TypingState::Stop
                }
            }),
            any::<Option<u64>>().prop_map(|id| ClientFrame::Ping { id }),
        ]
    }

    proptest! {
        #[test]
        fn client_frames_round_trip(frame in arb_client_frame()) {
            for enc in [Encoding::Json, Encoding::MsgPack] {
                let bytes = encode(&frame, enc);
                let back: ClientFrame = decode(&bytes, enc).unwrap();
                prop_assert_eq!(&back, &frame);
            }
        }

        #[test]
        fn message_frames_round_trip(text in any::<String>(), id in any::<Option<u64>>()) {
            let frame = ServerFrame::Ack { id, message: sample_message(text), duplicate: false };
            for enc in [Encoding::Json, Encoding::MsgPack] {
                let back: ServerFrame = decode(&encode(&frame, enc), enc).unwrap();
                prop_assert_eq!(&back, &frame);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<ClientFrame>(&bytes, Encoding::Json);
            let _ = decode::<ClientFrame>(&bytes, Encoding::MsgPack);
        }
    }
}
