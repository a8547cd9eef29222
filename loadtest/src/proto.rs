//! The two wire protocols the load tester speaks, behind one small vocabulary: connect as
//! someone, subscribe to a room, publish a stamped message with a key, and read back
//! [`Event`]s (deliveries, replies, server pings).
//!
//! - **Lara Chat** Realtime v1 (`docs/protocol.md`): JSON text frames or MessagePack binary
//!   frames (§8). A room is a conversation id; a message's key is its `client_msg_id` and its
//!   send stamp travels in `metadata.lt_us`.
//! - **Centrifugo** bidirectional protocol v2, JSON: commands `{"id":N,"connect":{…}}`, replies
//!   with the same id, pushes `{"push":{"channel":…,"pub":{"data":…}}}`; one WebSocket frame may
//!   carry several replies separated by newlines; an empty object is a ping that the client
//!   answers with an empty object. A room is a channel `chat:<name>`; key and stamp travel in the
//!   publication's data (`k`, `lt_us`).
//!
//! Decoding reads only the fields the scenarios need into borrowed structs (every other field,
//! present or future, is ignored), because on a fan-out run the load generator decodes as many
//! frames as the server encodes and shares the same two cores.

use std::fmt;

use anyhow::{Context, Result, anyhow, bail};
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::ws::now_us;

/// How Lara Chat frames are encoded (`docs/protocol.md` §1 and §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Json,
    Msgpack,
}

impl Encoding {
    /// The WebSocket subprotocol that selects it.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Encoding::Json => "larachat.v1.json",
            Encoding::Msgpack => "larachat.v1.msgpack",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Msgpack => "msgpack",
        }
    }
}

/// Which protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Proto {
    Lara { encoding: Encoding },
    Centrifugo,
}

/// What a server frame meant to the load tester.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A published message reached this subscriber.
    Delivery { key: String, sent_us: Option<u64> },
    /// The answer to request `id`: `Ok(duplicate)` or the error text.
    Reply {
        id: u64,
        result: std::result::Result<bool, String>,
    },
    /// An error not tied to a request (undecodable frame...).
    Error(String),
    /// The server ends the connection (Centrifugo's disconnect push).
    Disconnect(String),
    /// Centrifugo's application-level ping: answer with [`Proto::pong`].
    Ping,
    /// Anything else (typing, read markers, unknown types...).
    Other,
    /// The connection ended (close code and reason, if the server sent a close frame).
    Closed(Option<(u16, String)>),
}

impl Proto {
    /// Path of the WebSocket endpoint.
    pub fn ws_path(self) -> &'static str {
        match self {
            Proto::Lara { .. } => "/realtime/v1",
            Proto::Centrifugo => "/connection/websocket",
        }
    }

    /// The subprotocol to ask for, if any.
    pub fn subprotocol(self) -> Option<&'static str> {
        match self {
            Proto::Lara { encoding } => Some(encoding.subprotocol()),
            Proto::Centrifugo => None,
        }
    }

    /// Short name for results: `lara-json`, `lara-msgpack`, `centrifugo`.
    pub fn name(self) -> String {
        match self {
            Proto::Lara { encoding } => format!("lara-{}", encoding.name()),
            Proto::Centrifugo => "centrifugo".into(),
        }
    }

    /// Wraps a client frame given as JSON into a WebSocket message of this protocol.
    pub fn frame(self, v: &Value) -> Result<WsMessage> {
        Ok(match self {
            Proto::Lara {
                encoding: Encoding::Msgpack,
            } => WsMessage::binary(rmp_serde::to_vec_named(v).context("encoding MessagePack")?),
            _ => WsMessage::text(serde_json::to_string(v)?),
        })
    }

    /// The authentication frame (request id 1). Lara: `token` is an end-user JWT or a secret
    /// key, `actor` names the agent of a secret-key connection. Centrifugo: `token` is a JWT.
    pub fn auth(self, token: &str, actor: Option<&str>) -> Result<WsMessage> {
        let v = match self {
            Proto::Lara { .. } => {
                let mut v = json!({ "type": "auth", "id": 1, "token": token });
                if let Some(a) = actor {
                    v["actor"] = json!({ "type": "agent", "id": a });
                }
                v
            }
            Proto::Centrifugo => {
                json!({ "id": 1, "connect": { "token": token, "name": "larachat-loadtest" } })
            }
        };
        self.frame(&v)
    }

    /// Subscribes to `room` (a conversation id or a channel), without replay or recovery.
    pub fn subscribe(self, id: u64, room: &str) -> Result<WsMessage> {
        let v = match self {
            Proto::Lara { .. } => {
                json!({ "type": "subscribe", "id": id, "conversation_id": room })
            }
            Proto::Centrifugo => json!({ "id": id, "subscribe": { "channel": room } }),
        };
        self.frame(&v)
    }

    /// Publishes `text` into `room` under `key`, stamped with the current [`now_us`].
    pub fn publish(self, id: u64, room: &str, key: &str, text: &str) -> Result<WsMessage> {
        let v = match self {
            Proto::Lara { .. } => json!({
                "type": "send",
                "id": id,
                "conversation_id": room,
                "client_msg_id": key,
                "text": text,
                "metadata": { "lt_us": now_us() },
            }),
            Proto::Centrifugo => json!({
                "id": id,
                "publish": {
                    "channel": room,
                    "data": { "text": text, "k": key, "lt_us": now_us() },
                },
            }),
        };
        self.frame(&v)
    }

    /// Centrifugo's answer to a ping (an empty command). Lara answers WebSocket pings itself.
    pub fn pong(self) -> Option<WsMessage> {
        match self {
            Proto::Lara { .. } => None,
            Proto::Centrifugo => Some(WsMessage::text("{}")),
        }
    }

    /// Decodes one WebSocket data message into events (Centrifugo may batch several replies
    /// into one frame). Control frames give nothing.
    pub fn decode(self, msg: &WsMessage, out: &mut Vec<Event>) -> Result<()> {
        match (self, msg) {
            (Proto::Lara { encoding }, WsMessage::Text(t)) => {
                if encoding != Encoding::Json {
                    bail!("text frame on a MessagePack connection");
                }
                let f: LaraFrame = serde_json::from_str(t.as_str())
                    .with_context(|| format!("undecodable server frame: {}", t.as_str()))?;
                out.push(f.into_event());
            }
            (Proto::Lara { encoding }, WsMessage::Binary(b)) => {
                if encoding != Encoding::Msgpack {
                    bail!("binary frame on a JSON connection");
                }
                let f: LaraFrame =
                    rmp_serde::from_slice(b).context("undecodable MessagePack server frame")?;
                out.push(f.into_event());
            }
            (Proto::Centrifugo, WsMessage::Text(t)) => {
                for line in t.as_str().split('\n').filter(|l| !l.trim().is_empty()) {
                    let r: CentReply = serde_json::from_str(line)
                        .with_context(|| format!("undecodable Centrifugo reply: {line}"))?;
                    out.push(r.into_event());
                }
            }
            (Proto::Centrifugo, WsMessage::Binary(_)) => {
                bail!("binary frame on a Centrifugo JSON connection")
            }
            _ => {}
        }
        Ok(())
    }
}

// ---- Lara Chat frames -------------------------------------------------------------------

/// The parts of a Lara server frame the load tester reads; everything else is ignored.
#[derive(Deserialize)]
struct LaraFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default)]
    id: Option<u64>,
    /// A Message object for `ack` and `message`, a string for `error`.
    #[serde(default)]
    message: Option<LaraMessageField>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    duplicate: Option<bool>,
}

impl LaraFrame<'_> {
    fn into_event(self) -> Event {
        let text = |m: Option<LaraMessageField>, code: Option<String>| {
            let msg = match m {
                Some(LaraMessageField::Text(t)) => t,
                _ => String::new(),
            };
            format!("{}: {msg}", code.as_deref().unwrap_or("?"))
        };
        match (&*self.kind, self.id) {
            ("message", _) => match self.message {
                Some(LaraMessageField::Message(m)) => match m.client_msg_id {
                    Some(key) => Event::Delivery {
                        key,
                        sent_us: m.metadata.and_then(|md| md.lt_us),
                    },
                    None => Event::Other,
                },
                _ => Event::Other,
            },
            ("error", Some(id)) => Event::Reply {
                id,
                result: Err(text(self.message, self.code)),
            },
            ("error", None) => Event::Error(text(self.message, self.code)),
            ("auth_ok" | "subscribed" | "unsubscribed" | "ack" | "ok" | "pong", Some(id)) => {
                Event::Reply {
                    id,
                    result: Ok(self.duplicate.unwrap_or(false)),
                }
            }
            _ => Event::Other,
        }
    }
}

/// `message` is a Message object in `ack`/`message` frames and a string in `error` frames.
enum LaraMessageField {
    Message(LaraMessage),
    Text(String),
}

#[derive(Deserialize)]
struct LaraMessage {
    #[serde(default)]
    client_msg_id: Option<String>,
    #[serde(default)]
    metadata: Option<Stamp>,
}

/// The load tester's stamp inside a message's metadata or a publication's data.
#[derive(Deserialize)]
struct Stamp {
    #[serde(default)]
    lt_us: Option<u64>,
}

impl<'de> Deserialize<'de> for LaraMessageField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LaraMessageField;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a Message object or an error text")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Self::Value, E> {
                Ok(LaraMessageField::Text(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                LaraMessage::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(LaraMessageField::Message)
            }
        }
        d.deserialize_any(V)
    }
}

// ---- Centrifugo replies -----------------------------------------------------------------

#[derive(Deserialize)]
struct CentReply {
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    error: Option<CentError>,
    #[serde(default)]
    push: Option<CentPush>,
    #[serde(default)]
    connect: Option<IgnoredAny>,
    #[serde(default)]
    subscribe: Option<IgnoredAny>,
    #[serde(default)]
    publish: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct CentError {
    #[serde(default)]
    code: u32,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct CentPush {
    #[serde(default, rename = "pub")]
    publication: Option<CentPub>,
    #[serde(default)]
    disconnect: Option<CentDisconnect>,
}

#[derive(Deserialize)]
struct CentPub {
    #[serde(default)]
    data: Option<CentData>,
}

#[derive(Deserialize)]
struct CentData {
    #[serde(default)]
    k: Option<String>,
    #[serde(default)]
    lt_us: Option<u64>,
}

#[derive(Deserialize)]
struct CentDisconnect {
    #[serde(default)]
    code: u32,
    #[serde(default)]
    reason: String,
}

impl CentReply {
    fn into_event(self) -> Event {
        let id = self.id.filter(|&i| i > 0);
        if let Some(e) = self.error {
            let text = format!("{}: {}", e.code, e.message);
            return match id {
                Some(id) => Event::Reply {
                    id,
                    result: Err(text),
                },
                None => Event::Error(text),
            };
        }
        if let Some(id) = id {
            return Event::Reply {
                id,
                result: Ok(false),
            };
        }
        if let Some(p) = self.push {
            if let Some(d) = p.disconnect {
                return Event::Disconnect(format!("{}: {}", d.code, d.reason));
            }
            return match p.publication.and_then(|p| p.data) {
                Some(CentData {
                    k: Some(key),
                    lt_us,
                }) => Event::Delivery {
                    key,
                    sent_us: lt_us,
                },
                _ => Event::Other,
            };
        }
        if self.connect.is_none() && self.subscribe.is_none() && self.publish.is_none() {
            return Event::Ping;
        }
        Event::Other
    }
}

/// The error when a server refuses a setup step.
pub fn refused(what: &str, e: &Event) -> anyhow::Error {
    match e {
        Event::Reply { result: Err(t), .. } | Event::Error(t) | Event::Disconnect(t) => {
            anyhow!("{what} refused: {t}")
        }
        Event::Closed(c) => anyhow!("{what}: the server closed the connection ({c:?})"),
        other => anyhow!("{what}: unexpected {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: Proto = Proto::Lara {
        encoding: Encoding::Json,
    };
    const MSGPACK: Proto = Proto::Lara {
        encoding: Encoding::Msgpack,
    };

    fn events(p: Proto, m: WsMessage) -> Vec<Event> {
        let mut out = Vec::new();
        p.decode(&m, &mut out).unwrap();
        out
    }

    fn text_of(m: WsMessage) -> Value {
        serde_json::from_str(m.to_text().unwrap()).unwrap()
    }

    #[test]
    fn lara_client_frames() {
        let a = text_of(JSON.auth("sk_live_x", Some("lt-1")).unwrap());
        assert_eq!(
            a,
            json!({"type":"auth","id":1,"token":"sk_live_x","actor":{"type":"agent","id":"lt-1"}})
        );
        let s = text_of(JSON.subscribe(2, "c1").unwrap());
        assert_eq!(s, json!({"type":"subscribe","id":2,"conversation_id":"c1"}));
        let before = now_us();
        let p = text_of(JSON.publish(3, "c1", "k-1", "hi").unwrap());
        assert_eq!(p["client_msg_id"], "k-1");
        assert_eq!(p["text"], "hi");
        assert!(p["metadata"]["lt_us"].as_u64().unwrap() >= before);
        assert_eq!(JSON.pong(), None);
        // MessagePack: a binary map with the same field names.
        let WsMessage::Binary(b) = MSGPACK.subscribe(2, "c1").unwrap() else {
            panic!("msgpack frames are binary");
        };
        let back: Value = rmp_serde::from_slice(&b).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn lara_server_frames_in_both_encodings() {
        let frames = [
            json!({"type":"auth_ok","id":1,"protocol":1,"session":{},"limits":{}}),
            json!({"type":"message","conversation_id":"c","message":{"id":"m","client_msg_id":"k-7","seq":12,"metadata":{"lt_us":42,"x":1},"text":"t"}}),
            json!({"type":"ack","id":9,"duplicate":true,"message":{"id":"m","client_msg_id":"k-7"}}),
            json!({"type":"error","id":4,"code":"rate_limited","message":"slow down","retryable":true}),
            json!({"type":"error","code":"invalid_payload","message":"bad"}),
            json!({"type":"typing","conversation_id":"c","actor":{"type":"agent","id":"a"},"state":"start"}),
            json!({"type":"message","message":{"id":"m"}}),
            json!({"type":"some_future_frame","id":3}),
        ];
        let want = vec![
            Event::Reply {
                id: 1,
                result: Ok(false),
            },
            Event::Delivery {
                key: "k-7".into(),
                sent_us: Some(42),
            },
            Event::Reply {
                id: 9,
                result: Ok(true),
            },
            Event::Reply {
                id: 4,
                result: Err("rate_limited: slow down".into()),
            },
            Event::Error("invalid_payload: bad".into()),
            Event::Other,
            Event::Other,
            Event::Other,
        ];
        let json: Vec<Event> = frames
            .iter()
            .flat_map(|f| events(JSON, WsMessage::text(f.to_string())))
            .collect();
        assert_eq!(json, want);
        let mp: Vec<Event> = frames
            .iter()
            .flat_map(|f| {
                events(
                    MSGPACK,
                    WsMessage::binary(rmp_serde::to_vec_named(f).unwrap()),
                )
            })
            .collect();
        assert_eq!(mp, want);
        // The wrong frame kind for the encoding is an error, as on the server.
        let mut out = Vec::new();
        assert!(
            JSON.decode(&WsMessage::binary(vec![0x80]), &mut out)
                .is_err()
        );
        assert!(MSGPACK.decode(&WsMessage::text("{}"), &mut out).is_err());
        assert!(JSON.decode(&WsMessage::text("not json"), &mut out).is_err());
    }

    #[test]
    fn centrifugo_client_frames() {
        let p = Proto::Centrifugo;
        assert_eq!(
            text_of(p.auth("eyJ", None).unwrap()),
            json!({"id":1,"connect":{"token":"eyJ","name":"larachat-loadtest"}})
        );
        assert_eq!(
            text_of(p.subscribe(2, "chat:x").unwrap()),
            json!({"id":2,"subscribe":{"channel":"chat:x"}})
        );
        let v = text_of(p.publish(3, "chat:x", "k-1", "hello").unwrap());
        assert_eq!(v["publish"]["channel"], "chat:x");
        assert_eq!(v["publish"]["data"]["k"], "k-1");
        assert_eq!(v["publish"]["data"]["text"], "hello");
        assert!(v["publish"]["data"]["lt_us"].is_u64());
        assert_eq!(p.pong(), Some(WsMessage::text("{}")));
    }

    #[test]
    fn centrifugo_replies_batched_in_one_frame() {
        let frame = concat!(
            r#"{"id":1,"connect":{"client":"c1","version":"6.9.1","ping":25,"pong":true}}"#,
            "\n",
            r#"{"id":2,"subscribe":{}}"#,
            "\n",
            r#"{"push":{"channel":"chat:x","pub":{"data":{"text":"hi","k":"k-1","lt_us":7},"offset":3}}}"#,
            "\n",
            r#"{"id":3,"publish":{}}"#,
            "\n",
            r#"{"id":4,"error":{"code":103,"message":"permission denied"}}"#,
            "\n",
            "{}",
            "\n",
            r#"{"push":{"disconnect":{"code":3501,"reason":"bad request"}}}"#,
            "\n",
            r#"{"push":{"channel":"chat:x","join":{"info":{}}}}"#,
        );
        let got = events(Proto::Centrifugo, WsMessage::text(frame));
        assert_eq!(
            got,
            vec![
                Event::Reply {
                    id: 1,
                    result: Ok(false)
                },
                Event::Reply {
                    id: 2,
                    result: Ok(false)
                },
                Event::Delivery {
                    key: "k-1".into(),
                    sent_us: Some(7)
                },
                Event::Reply {
                    id: 3,
                    result: Ok(false)
                },
                Event::Reply {
                    id: 4,
                    result: Err("103: permission denied".into())
                },
                Event::Ping,
                Event::Disconnect("3501: bad request".into()),
                Event::Other,
            ]
        );
    }
}
