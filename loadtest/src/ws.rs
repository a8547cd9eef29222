//! Realtime v1 client side: connect, authenticate, subscribe, read frames — every network
//! await bounded by a timeout.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{WebSocketStream, client_async};

use crate::api::Target;

pub type Ws = WebSocketStream<TcpStream>;

/// Microseconds since this process started measuring; senders put it in message metadata
/// (`lt_us`) so that receivers in the same process compute send→receive latency.
pub fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// The parts of a server frame the load tester looks at. Everything else is ignored.
#[derive(Debug, Deserialize)]
pub struct Frame {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub id: Option<u64>,
    /// A Message object for `ack` and `message`, a string for `error`.
    #[serde(default)]
    pub message: Option<Value>,
    #[serde(default)]
    pub code: Option<String>,
    /// `ack`: the `client_msg_id` had been seen before.
    #[serde(default)]
    pub duplicate: Option<bool>,
}

impl Frame {
    /// `message.client_msg_id`
    pub fn client_msg_id(&self) -> Option<&str> {
        self.message.as_ref()?.get("client_msg_id")?.as_str()
    }

    /// `message.metadata.lt_us`, the sender's [`now_us`] at send time.
    pub fn sent_us(&self) -> Option<u64> {
        self.message
            .as_ref()?
            .get("metadata")?
            .get("lt_us")?
            .as_u64()
    }

    /// `code: message` of an `error` frame.
    pub fn error_text(&self) -> String {
        let msg = self.message.as_ref().and_then(Value::as_str).unwrap_or("");
        format!("{}: {msg}", self.code.as_deref().unwrap_or("?"))
    }
}

/// What reading the socket produced.
#[derive(Debug)]
pub enum Incoming {
    Frame(Frame),
    /// The server closed the connection (code and reason, if any).
    Closed(Option<(u16, String)>),
}

/// Opens a WebSocket to the realtime endpoint (TCP_NODELAY on, JSON subprotocol).
pub async fn connect(target: &Target, limit: Duration) -> Result<Ws> {
    let fut = async {
        let tcp = TcpStream::connect(target.addr)
            .await
            .with_context(|| format!("connecting to {}", target.addr))?;
        tcp.set_nodelay(true)?;
        let (ws, _resp) = client_async(target.ws_url(), tcp)
            .await
            .context("websocket handshake")?;
        anyhow::Ok(ws)
    };
    timeout(limit, fut)
        .await
        .map_err(|_| anyhow!("websocket connect timed out after {limit:?}"))?
}

/// Sends one JSON frame and flushes.
pub async fn send(ws: &mut Ws, frame: &Value, limit: Duration) -> Result<()> {
    let text = serde_json::to_string(frame)?;
    timeout(limit, ws.send(WsMessage::text(text)))
        .await
        .map_err(|_| anyhow!("websocket write timed out"))?
        .context("websocket write")
}

/// Reads the next data frame (control frames are handled by tungstenite); fails if none
/// arrives within `limit`.
pub async fn recv<S>(ws: &mut S, limit: Duration) -> Result<Incoming>
where
    S: futures::Stream<Item = Result<WsMessage, WsError>> + Unpin,
{
    recv_until(ws, tokio::time::Instant::now() + limit)
        .await?
        .ok_or_else(|| anyhow!("no frame from the server within {limit:?}"))
}

/// Reads the next data frame; `None` if `deadline` passes first.
pub async fn recv_until<S>(ws: &mut S, deadline: tokio::time::Instant) -> Result<Option<Incoming>>
where
    S: futures::Stream<Item = Result<WsMessage, WsError>> + Unpin,
{
    loop {
        let Ok(next) = tokio::time::timeout_at(deadline, ws.next()).await else {
            return Ok(None);
        };
        let msg = match next {
            None => return Ok(Some(Incoming::Closed(None))),
            Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                return Ok(Some(Incoming::Closed(None)));
            }
            Some(Err(e)) => return Err(anyhow!(e).context("websocket read")),
            Some(Ok(m)) => m,
        };
        match msg {
            WsMessage::Text(t) => {
                let frame: Frame = serde_json::from_str(t.as_str())
                    .with_context(|| format!("undecodable server frame: {}", t.as_str()))?;
                return Ok(Some(Incoming::Frame(frame)));
            }
            WsMessage::Binary(_) => bail!("binary frame on a JSON connection"),
            WsMessage::Close(c) => {
                return Ok(Some(Incoming::Closed(c.map(
                    |CloseFrame { code, reason }| (u16::from(code), reason.to_string()),
                ))));
            }
            WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => {}
        }
    }
}

/// Reads until a reply with request id `id` arrives; returns it if it has type `want`.
/// Events that arrive meanwhile are skipped.
pub async fn expect_reply(ws: &mut Ws, id: u64, want: &str, limit: Duration) -> Result<Frame> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match recv(ws, left).await? {
            Incoming::Closed(c) => bail!("connection closed while waiting for {want}: {c:?}"),
            Incoming::Frame(f) if f.id == Some(id) && f.kind == want => return Ok(f),
            Incoming::Frame(f) if f.id == Some(id) && f.kind == "error" => {
                bail!("{want} refused: {}", f.error_text())
            }
            Incoming::Frame(_) => {}
        }
    }
}

/// Connects and authenticates; `actor_id` names the agent for secret-key connections.
pub async fn connect_auth(
    target: &Target,
    token: &str,
    actor_id: Option<&str>,
    limit: Duration,
) -> Result<Ws> {
    let mut ws = connect(target, limit).await?;
    let mut auth = json!({ "type": "auth", "id": 0, "token": token });
    if let Some(a) = actor_id {
        auth["actor"] = json!({ "type": "agent", "id": a });
    }
    send(&mut ws, &auth, limit).await?;
    expect_reply(&mut ws, 0, "auth_ok", limit).await?;
    Ok(ws)
}

/// Subscribes (without replay) and waits for `subscribed`.
pub async fn subscribe(ws: &mut Ws, id: u64, conversation: &str, limit: Duration) -> Result<()> {
    let frame = json!({ "type": "subscribe", "id": id, "conversation_id": conversation });
    send(ws, &frame, limit).await?;
    expect_reply(ws, id, "subscribed", limit).await?;
    Ok(())
}

/// A `send` frame. With `stamp`, metadata carries the send time for latency measurement.
pub fn send_frame(
    id: u64,
    conversation: &str,
    client_msg_id: &str,
    text: &str,
    stamp: bool,
) -> Value {
    let mut f = json!({
        "type": "send",
        "id": id,
        "conversation_id": conversation,
        "client_msg_id": client_msg_id,
        "text": text,
    });
    if stamp {
        f["metadata"] = json!({ "lt_us": now_us() });
    }
    f
}

/// Closes politely, without waiting long.
pub async fn close(ws: &mut Ws) {
    let _ = timeout(Duration::from_secs(2), ws.close(None)).await;
}

/// A message text of about `size` bytes.
pub fn payload(size: usize) -> String {
    let base = "Lara Chat load test message. ";
    let mut s = String::with_capacity(size.max(1));
    while s.len() < size.max(1) {
        s.push_str(base);
    }
    s.truncate(size.max(1));
    if s.trim().is_empty() {
        s = "x".into();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_expose_what_the_scenarios_need() {
        let f: Frame = serde_json::from_str(
            r#"{"type":"ack","id":3,"duplicate":false,"message":{"id":"x","client_msg_id":"c-1","metadata":{"lt_us":42}}}"#,
        )
        .unwrap();
        assert_eq!((f.kind.as_str(), f.id), ("ack", Some(3)));
        assert_eq!(f.client_msg_id(), Some("c-1"));
        assert_eq!(f.sent_us(), Some(42));
        let e: Frame = serde_json::from_str(
            r#"{"type":"error","id":4,"code":"rate_limited","message":"slow down","retryable":true}"#,
        )
        .unwrap();
        assert_eq!(e.error_text(), "rate_limited: slow down");
        assert_eq!(e.client_msg_id(), None);
    }

    #[test]
    fn payload_has_the_requested_size() {
        assert_eq!(payload(100).len(), 100);
        assert_eq!(payload(0), "L");
        assert!(payload(5000).len() == 5000);
    }
}
