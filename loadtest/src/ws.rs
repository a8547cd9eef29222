//! WebSocket client side for both servers: connect (optionally from a chosen loopback source
//! address), authenticate, subscribe, and read [`Event`]s — every network await bounded by a
//! timeout.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

use crate::proto::{Event, Proto, refused};

pub type Ws = WebSocketStream<TcpStream>;

/// The client's read buffer. tungstenite's default (128 KiB) would cost 2.5 GB for 20,000
/// idle connections and zero-fills that much on every read; server frames here are small.
const CLIENT_READ_BUFFER: usize = 8 * 1024;

/// Microseconds since this process started measuring; senders put it in the message (Lara:
/// `metadata.lt_us`, Centrifugo: `data.lt_us`) so that receivers in the same process compute
/// send→receive latency.
pub fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Where and how to open a WebSocket.
#[derive(Debug, Clone)]
pub struct Dial {
    pub addr: SocketAddr,
    pub proto: Proto,
    /// Loopback source address to bind before connecting (each source address has its own
    /// ephemeral ports); `None` lets the kernel choose.
    pub source: Option<IpAddr>,
}

/// Opens a WebSocket (TCP_NODELAY on, the protocol's subprotocol, a small read buffer).
pub async fn connect(d: &Dial, limit: Duration) -> Result<Ws> {
    let fut = async {
        let socket = if d.addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(src) = d.source {
            socket
                .bind(SocketAddr::new(src, 0))
                .with_context(|| format!("binding source address {src}"))?;
        }
        let tcp = socket
            .connect(d.addr)
            .await
            .with_context(|| format!("connecting to {}", d.addr))?;
        tcp.set_nodelay(true)?;
        let mut req = format!("ws://{}{}", d.addr, d.proto.ws_path()).into_client_request()?;
        if let Some(p) = d.proto.subprotocol() {
            req.headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(p));
        }
        let config = WebSocketConfig::default().read_buffer_size(CLIENT_READ_BUFFER);
        let (ws, _resp) = client_async_with_config(req, tcp, Some(config))
            .await
            .context("websocket handshake")?;
        anyhow::Ok(ws)
    };
    timeout(limit, fut)
        .await
        .map_err(|_| anyhow!("websocket connect timed out after {limit:?}"))?
}

/// One client connection of either protocol.
pub struct Conn {
    pub ws: Ws,
    pub proto: Proto,
    /// Events decoded but not yet returned (a Centrifugo frame may hold several).
    pending: VecDeque<Event>,
    scratch: Vec<Event>,
    limit: Duration,
}

impl Conn {
    /// Connects, authenticates (`token`, and for Lara secret keys the agent `actor`) and
    /// subscribes to `rooms` (request ids 2, 3, …), waiting for each answer.
    pub async fn open(
        d: &Dial,
        token: &str,
        actor: Option<&str>,
        rooms: &[String],
        limit: Duration,
    ) -> Result<Self> {
        let ws = connect(d, limit).await?;
        let mut c = Conn {
            ws,
            proto: d.proto,
            pending: VecDeque::new(),
            scratch: Vec::new(),
            limit,
        };
        c.send(d.proto.auth(token, actor)?).await?;
        c.expect_reply(1, "authentication").await?;
        for (i, room) in rooms.iter().enumerate() {
            let id = 2 + i as u64;
            c.send(d.proto.subscribe(id, room)?).await?;
            c.expect_reply(id, "subscribe").await?;
        }
        Ok(c)
    }

    /// Sends one frame and flushes.
    pub async fn send(&mut self, m: WsMessage) -> Result<()> {
        timeout(self.limit, self.ws.send(m))
            .await
            .map_err(|_| anyhow!("websocket write timed out"))?
            .context("websocket write")
    }

    /// Queues one frame without flushing (see [`Conn::flush`]).
    pub async fn feed(&mut self, m: WsMessage) -> Result<()> {
        timeout(self.limit, self.ws.feed(m))
            .await
            .map_err(|_| anyhow!("websocket write timed out"))?
            .context("websocket write")
    }

    pub async fn flush(&mut self) -> Result<()> {
        timeout(self.limit, self.ws.flush())
            .await
            .map_err(|_| anyhow!("websocket write timed out"))?
            .context("websocket write")
    }

    /// The next event, or `None` once `deadline` passes. Centrifugo's pings are answered here
    /// and not returned. After [`Event::Closed`] the connection is done.
    pub async fn next_event(&mut self, deadline: tokio::time::Instant) -> Result<Option<Event>> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                if e == Event::Ping {
                    if let Some(p) = self.proto.pong() {
                        self.send(p).await?;
                    }
                    continue;
                }
                return Ok(Some(e));
            }
            let Ok(next) = tokio::time::timeout_at(deadline, self.ws.next()).await else {
                return Ok(None);
            };
            let msg = match next {
                None | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    return Ok(Some(Event::Closed(None)));
                }
                Some(Err(e)) => return Err(anyhow!(e).context("websocket read")),
                Some(Ok(m)) => m,
            };
            match msg {
                WsMessage::Close(c) => {
                    return Ok(Some(Event::Closed(c.map(|CloseFrame { code, reason }| {
                        (u16::from(code), reason.to_string())
                    }))));
                }
                WsMessage::Text(_) | WsMessage::Binary(_) => {
                    self.proto.decode(&msg, &mut self.scratch)?;
                    self.pending.extend(self.scratch.drain(..));
                }
                WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => {}
            }
        }
    }

    /// Reads until the reply to request `id`; fails on an error reply, a close or the timeout.
    /// Deliveries that arrive meanwhile are dropped.
    pub async fn expect_reply(&mut self, id: u64, what: &str) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + self.limit;
        loop {
            match self.next_event(deadline).await? {
                None => bail!("{what}: no answer within {:?}", self.limit),
                Some(Event::Reply { id: rid, result }) if rid == id => {
                    return result.map_err(|t| anyhow!("{what} refused: {t}"));
                }
                Some(e @ (Event::Closed(_) | Event::Disconnect(_))) => {
                    return Err(refused(what, &e));
                }
                Some(Event::Error(t)) => bail!("{what}: server error {t}"),
                Some(_) => {}
            }
        }
    }

    /// Closes politely and waits (briefly) until the server has closed too, so that the
    /// server has released the connection when this returns.
    pub async fn close(mut self) {
        let _ = timeout(Duration::from_secs(2), self.ws.close(None)).await;
        let drain = async { while let Some(Ok(_)) = self.ws.next().await {} };
        let _ = timeout(Duration::from_secs(2), drain).await;
    }
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
    fn payload_has_the_requested_size() {
        assert_eq!(payload(100).len(), 100);
        assert_eq!(payload(0), "L");
        assert!(payload(5000).len() == 5000);
    }
}
