//! Realtime v1 over WebSocket: `GET /realtime/v1`.
//!
//! One task per connection ([`Connection::run`]) owns the socket and selects over: inbound
//! frames, the bounded outbound queue fed by the [`Hub`](larachat_broker::Hub), the heartbeat
//! timer, and three ways to be told to stop (server shutdown, a control-plane kick, queue
//! overflow). Requests are handled in arrival order, so one client's messages are stored in
//! the order it sent them. `docs/protocol.md` is the specification.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use larachat_broker::{Interest, LocalSink};
use larachat_core::http::ApiQuery;
use larachat_core::id::{ApiKeyId, ConversationId, MessageId, ProjectId};
use larachat_core::model::{Actor, ActorKind};
use larachat_core::protocol::{
    ClientFrame, Encoding, Limits, PROTOCOL_VERSION, ServerFrame, SessionInfo, SharedFrame,
    TypingState, decode, encode,
};
use larachat_core::subject::Subject;
use larachat_core::{ApiError, ErrorCode};
use larachat_store::MessageRange;

use crate::Gateway;
use crate::auth::{KeyStatus, Principal};
use crate::service::SendInput;

/// Messages replayed per store query during resume.
const REPLAY_PAGE: u32 = 200;
/// The heartbeat's key re-check waits at most this long for the store (then: no verdict).
const KEY_RECHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// A socket write that takes longer than this means the peer is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Initial read buffer of a socket (grows for larger frames, up to `max_frame_bytes`).
const WS_READ_BUFFER: usize = 4 * 1024;
/// Bytes buffered before a write reaches the socket; `send` flushes every frame anyway.
const WS_WRITE_BUFFER: usize = 8 * 1024;

/// The realtime route.
pub fn router(gw: Gateway) -> Router {
    let limits = gw.limits().clone();
    Router::new()
        .route("/realtime/v1", get(upgrade))
        .layer(axum::middleware::from_fn_with_state(
            limits,
            larachat_limits::http::ip_limit,
        ))
        .with_state(gw)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
/// Query parameters of the upgrade request.
pub struct UpgradeParams {
    /// `json` or `msgpack`.
    pub encoding: Option<String>,
}

/// Opens a realtime v1 connection (WebSocket upgrade). Frames are specified in
/// `docs/protocol.md`; the first frame must be `auth`.
#[utoipa::path(get, path = "/realtime/v1", tag = "realtime",
    params(("encoding" = Option<String>, Query, description = "json (default) or msgpack; or negotiate with Sec-WebSocket-Protocol larachat.v1.json / larachat.v1.msgpack")),
    responses((status = 101, description = "switching to the WebSocket protocol"),
              (status = 400, description = "not a WebSocket upgrade", body = larachat_core::error::ErrorBody),
              (status = 503, description = "shutting down", body = larachat_core::error::ErrorBody)))]
pub async fn upgrade(
    State(gw): State<Gateway>,
    ApiQuery(params): ApiQuery<UpgradeParams>,
    headers: axum::http::HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let origin = headers
        .get(axum::http::header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_owned);
    if gw.shutdown_token().is_cancelled() {
        return ApiError::new(ErrorCode::ShuttingDown, "server is shutting down").into_response();
    }
    // Encoding: the `encoding` query wins, then the first of our subprotocols the client
    // offers, then JSON.
    let encoding = match params.encoding.as_deref() {
        Some(name) => match Encoding::from_name(name) {
            Some(e) => e,
            None => {
                return ApiError::validation("encoding must be json or msgpack").into_response();
            }
        },
        None => ws
            .requested_protocols()
            .filter_map(|p| p.to_str().ok())
            .find_map(Encoding::from_name)
            .unwrap_or(Encoding::Json),
    };
    let limits = &gw.config().realtime;
    let max = limits.max_frame_bytes;
    let gw2 = gw.clone();
    // Small buffers: tungstenite's defaults (128 KiB to read, 128 KiB to write) made every
    // socket, even one that never authenticates, cost ~128 KiB. Frames are small (and
    // bounded by `max_frame_bytes`); the read buffer grows for a large one, and each
    // outbound frame is flushed when sent, so nothing waits in a large write buffer.
    ws.protocols([encoding.subprotocol()])
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .max_message_size(max)
        .max_frame_size(max)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "websocket upgrade failed"))
        .on_upgrade(move |socket| {
            let tracker = gw2.tasks().clone();
            tracker
                .track_future(async move { Connection::run(gw2, socket, encoding, origin).await })
        })
        .into_response()
}

/// Open connections, so that control notices can reach them.
#[derive(Default)]
pub(crate) struct Registry {
    next: AtomicU64,
    conns: Mutex<HashMap<u64, Entry>>,
}

struct Entry {
    project: ProjectId,
    key: Option<ApiKeyId>,
    kick: Arc<Kick>,
}

/// A request to close one connection with a code.
#[derive(Default)]
struct Kick {
    token: CancellationToken,
    code: OnceLock<ErrorCode>,
}

impl Kick {
    fn fire(&self, code: ErrorCode) {
        let _ = self.code.set(code);
        self.token.cancel();
    }
}

impl Registry {
    fn insert(&self, project: ProjectId, key: Option<ApiKeyId>, kick: Arc<Kick>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.conns.lock().insert(id, Entry { project, key, kick });
        id
    }

    fn remove(&self, id: u64) {
        self.conns.lock().remove(&id);
    }

    pub(crate) fn len(&self) -> usize {
        self.conns.lock().len()
    }

    /// Closes every connection authenticated with `key`.
    pub(crate) fn kick_key(&self, key: ApiKeyId, code: ErrorCode) -> usize {
        self.kick_where(|e| e.key == Some(key), code)
    }

    /// Closes every connection of `project`.
    pub(crate) fn kick_project(&self, project: ProjectId, code: ErrorCode) -> usize {
        self.kick_where(|e| e.project == project, code)
    }

    /// Closes every connection.
    pub(crate) fn kick_all(&self, code: ErrorCode) -> usize {
        self.kick_where(|_| true, code)
    }

    fn kick_where(&self, pred: impl Fn(&Entry) -> bool, code: ErrorCode) -> usize {
        let conns = self.conns.lock();
        let mut n = 0;
        for e in conns.values().filter(|e| pred(e)) {
            e.kick.fire(code);
            n += 1;
        }
        n
    }
}

/// Why a connection ends.
enum End {
    /// Close with a catalog code and reason.
    Close(ErrorCode, String),
    /// The peer closed or vanished; nothing more to send.
    Gone,
}

impl End {
    fn close(err: ApiError) -> Self {
        Self::Close(err.code, err.message.into_owned())
    }
}

/// State of one subscription.
struct Sub {
    _interest: Interest,
    /// Live `message` events with an id at or below this were already replayed.
    floor: Option<MessageId>,
}

/// A token bucket for inbound frames.
struct RateLimit {
    tokens: f64,
    per_sec: f64,
    burst: f64,
    last: Instant,
}

impl RateLimit {
    fn new(per_sec: u32) -> Self {
        let per_sec = f64::from(per_sec.max(1));
        Self {
            tokens: per_sec * 2.0,
            per_sec,
            burst: per_sec * 2.0,
            last: Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.per_sec)
            .min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Connection {
    gw: Gateway,
    socket: WebSocket,
    encoding: Encoding,
    last_seen: Instant,
    /// Cancelled by the hub when the outbound queue overflows; also interrupts a write that
    /// is stuck on a peer that stopped reading.
    overflow: CancellationToken,
    /// The handshake's `Origin` header (browsers always send it).
    origin: Option<String>,
}

/// An authenticated connection's state.
struct Session {
    who: Principal,
    actor: Actor,
    subs: HashMap<ConversationId, Sub>,
    sink: LocalSink<SharedFrame>,
    rate: RateLimit,
    /// Last forwarded typing frame per conversation, to drop floods.
    typing: HashMap<ConversationId, Instant>,
}

impl Connection {
    async fn run(gw: Gateway, socket: WebSocket, encoding: Encoding, origin: Option<String>) {
        metrics::gauge!("larachat_gateway_ws_connections").increment(1.0);
        let mut conn = Connection {
            gw,
            socket,
            encoding,
            last_seen: Instant::now(),
            overflow: CancellationToken::new(),
            origin,
        };
        let end = conn.serve().await;
        let code = match &end {
            End::Close(code, _) => code.as_str(),
            End::Gone => "gone",
        };
        metrics::counter!("larachat_gateway_ws_closed_total", "reason" => code).increment(1);
        if let End::Close(code, reason) = end {
            conn.close(code, reason).await;
        }
        metrics::gauge!("larachat_gateway_ws_connections").decrement(1.0);
    }

    async fn serve(&mut self) -> End {
        let limits = self.gw.config().realtime.clone();
        // 1. Authenticate within the deadline.
        let shutdown = self.gw.shutdown_token().clone();
        let first = tokio::select! {
            r = tokio::time::timeout(limits.auth_timeout, self.recv()) => r,
            _ = shutdown.cancelled() => {
                return End::Close(ErrorCode::ShuttingDown, "server is shutting down".into());
            }
        };
        let frame = match first {
            Err(_) => {
                return End::Close(
                    ErrorCode::AuthTimeout,
                    format!("authenticate within {} s", limits.auth_timeout.as_secs()),
                );
            }
            Ok(Err(end)) => return end,
            Ok(Ok(Err(e))) => return End::Close(ErrorCode::ProtocolViolation, e.message.into()),
            Ok(Ok(Ok(f))) => f,
        };
        let ClientFrame::Auth { id, token, actor } = frame else {
            return End::Close(
                ErrorCode::ProtocolViolation,
                "the first frame must be auth".into(),
            );
        };
        let who = match self.gw.auth().authenticate(&token).await {
            Ok(p) => p,
            Err(e) => {
                let _ = self.send_frame(&ServerFrame::error(id, &e)).await;
                return End::close(e);
            }
        };
        // Widget sessions only work from the page origin they were issued to.
        if let Err(e) =
            crate::widget::socket_origin_ok(&self.gw, &who, self.origin.as_deref()).await
        {
            let _ = self.send_frame(&ServerFrame::error(id, &e)).await;
            return End::close(e);
        }
        let actor = match self.gw.resolve_actor(&who, actor.as_ref()).await {
            Ok(a) => a,
            Err(e) => {
                let _ = self.send_frame(&ServerFrame::error(id, &e)).await;
                return End::close(e);
            }
        };
        let (tx, mut rx) = mpsc::channel(limits.outbound_queue.max(1));
        let overflow = self.overflow.clone();
        let kick = Arc::new(Kick::default());
        let conn_id = self
            .gw
            .connections()
            .insert(who.project, who.key_id(), kick.clone());
        let _registration = scopeguard(self.gw.clone(), conn_id);
        let mut session = Session {
            who,
            actor,
            subs: HashMap::new(),
            sink: LocalSink {
                tx,
                overflow: overflow.clone(),
            },
            rate: RateLimit::new(limits.max_frames_per_sec),
            typing: HashMap::new(),
        };
        let auth_ok = ServerFrame::AuthOk {
            id,
            protocol: PROTOCOL_VERSION,
            session: SessionInfo {
                project_id: session.who.project,
                actor: session.actor.clone(),
            },
            limits: Limits {
                max_frame_bytes: u32::try_from(limits.max_frame_bytes).unwrap_or(u32::MAX),
                max_subscriptions: u32::try_from(limits.max_subscriptions).unwrap_or(u32::MAX),
                heartbeat_ms: u32::try_from(limits.heartbeat.as_millis()).unwrap_or(u32::MAX),
            },
        };
        if let Err(end) = self.send_frame(&auth_ok).await {
            return end;
        }

        // 2. Serve until something ends the connection.
        let mut heartbeat = tokio::time::interval(limits.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await; // the first tick is immediate
        let mut recheck: Option<Pin<Box<dyn Future<Output = KeyStatus> + Send>>> = None;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    return End::Close(ErrorCode::ShuttingDown, "server is shutting down; reconnect".into());
                }
                _ = kick.token.cancelled() => {
                    let code = kick.code.get().copied().unwrap_or(ErrorCode::Unauthorized);
                    let reason = match code {
                        ErrorCode::Unauthorized => "credentials revoked",
                        ErrorCode::ProjectSuspended => "project is not active",
                        ErrorCode::Unavailable => "live delivery was interrupted; reconnect and resume",
                        _ => "closed by the server",
                    };
                    return End::Close(code, reason.into());
                }
                _ = overflow.cancelled() => return slow_consumer(),
                inbound = self.recv() => {
                    match inbound {
                        Err(end) => return end,
                        Ok(Err(e)) => {
                            // Undecodable frame: answer, keep serving.
                            if let Err(end) = self.send_frame(&ServerFrame::error(None, &e)).await {
                                return end;
                            }
                        }
                        Ok(Ok(frame)) => {
                            if let Err(end) = self.handle(&mut session, frame).await {
                                return end;
                            }
                        }
                    }
                }
                Some(event) = rx.recv() => {
                    if let Err(end) = self.deliver(&session, &event).await {
                        return end;
                    }
                }
                status = async { recheck.as_mut().expect("guarded by is_some").await }, if recheck.is_some() => {
                    recheck = None;
                    if status == KeyStatus::Refused {
                        return End::Close(ErrorCode::Unauthorized, "API key is no longer valid".into());
                    }
                }
                _ = heartbeat.tick() => {
                    if self.last_seen.elapsed() > limits.heartbeat * 2 {
                        tracing::debug!("dropping a silent peer");
                        return End::Gone;
                    }
                    // Keys can expire (or their revocation notice can be lost) while a
                    // socket is open: re-check on every heartbeat (a cached lookup). Only the
                    // store's answer closes the socket; an outage is not a verdict. The check
                    // runs beside the connection's work, so a store that hangs delays neither
                    // events nor the peer's pongs.
                    if let (Some(key), None) = (session.who.key_id(), &recheck) {
                        let gw = self.gw.clone();
                        recheck = Some(Box::pin(async move {
                            tokio::time::timeout(KEY_RECHECK_TIMEOUT, gw.auth().key_status(key))
                                .await
                                .unwrap_or(KeyStatus::Unknown)
                        }));
                    }
                    if let Err(end) = self.send_raw(WsMessage::Ping(Bytes::new())).await {
                        return end;
                    }
                }
            }
        }
    }

    /// Reads the next data frame. Outer `Err`: the connection is over. Inner `Err`: a frame
    /// that could not be decoded (answer and continue).
    async fn recv(&mut self) -> Result<Result<ClientFrame, ApiError>, End> {
        loop {
            let msg = match self.socket.recv().await {
                None => return Err(End::Gone),
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(classify_ws_error(e)),
            };
            self.last_seen = Instant::now();
            metrics::counter!("larachat_gateway_ws_frames_received_total").increment(1);
            let decoded = match (msg, self.encoding) {
                (WsMessage::Text(t), Encoding::Json) => decode(t.as_bytes(), Encoding::Json),
                (WsMessage::Binary(b), Encoding::MsgPack) => decode(&b, Encoding::MsgPack),
                (WsMessage::Text(_), Encoding::MsgPack)
                | (WsMessage::Binary(_), Encoding::Json) => {
                    return Err(End::Close(
                        ErrorCode::ProtocolViolation,
                        "frame type does not match the negotiated encoding".into(),
                    ));
                }
                (WsMessage::Ping(_) | WsMessage::Pong(_), _) => continue,
                (WsMessage::Close(_), _) => return Err(End::Gone),
            };
            return Ok(decoded.map_err(ApiError::from));
        }
    }

    /// Handles one request frame after authentication.
    async fn handle(&mut self, s: &mut Session, frame: ClientFrame) -> Result<(), End> {
        let id = frame.request_id();
        if !s.rate.allow() {
            metrics::counter!("larachat_gateway_ws_rate_limited_total").increment(1);
            let err = ApiError::new(ErrorCode::RateLimited, "too many frames; slow down");
            return self.send_frame(&ServerFrame::error(id, &err)).await;
        }
        let result = match frame {
            ClientFrame::Auth { .. } => Err(ApiError::new(
                ErrorCode::ProtocolViolation,
                "already authenticated",
            )),
            ClientFrame::Ping { id } => Ok(Some(ServerFrame::Pong { id })),
            ClientFrame::Subscribe {
                id,
                conversation_id,
                after,
            } => self.subscribe(s, id, conversation_id, after).await,
            ClientFrame::Unsubscribe {
                id,
                conversation_id,
            } => {
                s.subs.remove(&conversation_id);
                Ok(Some(ServerFrame::Unsubscribed {
                    id,
                    conversation_id,
                }))
            }
            ClientFrame::Send {
                id,
                conversation_id,
                client_msg_id,
                text,
                metadata,
            } => {
                let input = SendInput {
                    text,
                    client_msg_id: Some(client_msg_id),
                    metadata,
                    transport: "ws",
                };
                self.gw
                    .send_message(&s.who, conversation_id, s.actor.clone(), input)
                    .await
                    .map(|a| {
                        Some(ServerFrame::Ack {
                            id,
                            duplicate: !a.created,
                            message: a.message,
                        })
                    })
            }
            ClientFrame::Read {
                id,
                conversation_id,
                message_id,
            } => self
                .gw
                .mark_read(&s.who, conversation_id, s.actor.clone(), message_id)
                .await
                .map(|_| Some(ServerFrame::Ok { id })),
            ClientFrame::Typing {
                conversation_id,
                state,
            } => {
                // Repeated `start`s within a second are dropped (clients send one per
                // keystroke); `stop` always goes through so indicators never stick.
                let now = Instant::now();
                let recent = state == TypingState::Start
                    && s.typing
                        .get(&conversation_id)
                        .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(1));
                if recent {
                    Ok(None)
                } else {
                    if s.typing.len() > 1000 {
                        s.typing.clear();
                    }
                    if state == TypingState::Start {
                        s.typing.insert(conversation_id, now);
                    } else {
                        s.typing.remove(&conversation_id);
                    }
                    self.gw
                        .typing(&s.who, conversation_id, s.actor.clone(), state)
                        .await
                        .map(|_| None)
                }
            }
        };
        match result {
            Ok(Some(reply)) => self.send_frame(&reply).await,
            Ok(None) => Ok(()),
            Err(e) if e.code == ErrorCode::ProtocolViolation => Err(End::close(e)),
            Err(e) => self.send_frame(&ServerFrame::error(id, &e)).await,
        }
    }

    /// Subscribes: live first, then replay from the store, then `subscribed`.
    async fn subscribe(
        &mut self,
        s: &mut Session,
        id: Option<u64>,
        conversation: ConversationId,
        after: Option<MessageId>,
    ) -> Result<Option<ServerFrame>, ApiError> {
        s.who.require_read()?;
        let already = s.subs.contains_key(&conversation);
        if !already && s.subs.len() >= self.gw.config().realtime.max_subscriptions {
            return Err(ApiError::validation(format!(
                "at most {} subscriptions per connection",
                self.gw.config().realtime.max_subscriptions
            )));
        }
        self.gw.conversation_for(&s.who, conversation).await?;
        if !already {
            let interest = self
                .gw
                .hub()
                .subscribe(
                    Subject::conversation(s.who.project, conversation),
                    s.sink.clone(),
                )
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "bus subscribe failed");
                    ApiError::unavailable()
                })?;
            s.subs.insert(
                conversation,
                Sub {
                    _interest: interest,
                    floor: None,
                },
            );
        }
        let mut replayed = 0u32;
        if let Some(mut cursor) = after {
            loop {
                let page = self
                    .gw
                    .store()
                    .list_messages(
                        s.who.project,
                        conversation,
                        MessageRange::After(cursor),
                        REPLAY_PAGE,
                    )
                    .await?;
                for message in page.items {
                    cursor = message.id;
                    replayed += 1;
                    let frame = ServerFrame::Message {
                        conversation_id: conversation,
                        message,
                    };
                    // A write failure here means the peer is gone; the main loop notices on
                    // its next read.
                    if self.send_frame(&frame).await.is_err() {
                        return Ok(None);
                    }
                }
                if !page.has_more {
                    break;
                }
            }
            if let Some(sub) = s.subs.get_mut(&conversation) {
                sub.floor = Some(sub.floor.map_or(cursor, |f| f.max(cursor)));
            }
        }
        Ok(Some(ServerFrame::Subscribed {
            id,
            conversation_id: conversation,
            replayed,
        }))
    }

    /// Writes a live event unless it is for an unsubscribed conversation, already replayed,
    /// or this connection's own typing.
    async fn deliver(&mut self, s: &Session, event: &SharedFrame) -> Result<(), End> {
        let frame = event.frame();
        let Some(conv) = frame.event_conversation() else {
            return Ok(());
        };
        let Some(sub) = s.subs.get(&conv) else {
            return Ok(());
        };
        if let (Some(id), Some(floor)) = (frame.message_id(), sub.floor) {
            if id <= floor {
                return Ok(());
            }
        }
        if let ServerFrame::Typing { actor, .. } = frame {
            if *actor == s.actor || (actor.kind == ActorKind::EndUser && actor.id == s.actor.id) {
                return Ok(());
            }
        }
        metrics::counter!("larachat_gateway_ws_events_sent_total").increment(1);
        self.send_bytes(event.bytes(self.encoding)).await
    }

    async fn send_frame(&mut self, frame: &ServerFrame) -> Result<(), End> {
        self.send_bytes(encode(frame, self.encoding)).await
    }

    async fn send_bytes(&mut self, bytes: Bytes) -> Result<(), End> {
        let msg = match self.encoding {
            Encoding::Json => match Utf8Bytes::try_from(bytes) {
                Ok(t) => WsMessage::Text(t),
                Err(_) => return Ok(()), // our JSON is always UTF-8
            },
            Encoding::MsgPack => WsMessage::Binary(bytes),
        };
        self.send_raw(msg).await
    }

    async fn send_raw(&mut self, msg: WsMessage) -> Result<(), End> {
        tokio::select! {
            r = tokio::time::timeout(WRITE_TIMEOUT, self.socket.send(msg)) => match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) | Err(_) => Err(End::Gone),
            },
            // The peer stopped reading and events piled up behind this write.
            _ = self.overflow.cancelled() => Err(slow_consumer()),
        }
    }

    async fn close(&mut self, code: ErrorCode, reason: String) {
        // Close reasons are limited to 123 bytes by RFC 6455.
        let mut reason = reason;
        while reason.len() > 120 {
            reason.pop();
        }
        let frame = CloseFrame {
            code: code.close_code(),
            reason: Utf8Bytes::from(reason),
        };
        // A peer that stopped reading may never take the close frame; then dropping the
        // socket ends the connection (the client sees an abnormal close and reconnects).
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.socket.send(WsMessage::Close(Some(frame))),
        )
        .await;
    }
}

/// The end of a connection whose outbound queue overflowed.
fn slow_consumer() -> End {
    metrics::counter!("larachat_gateway_ws_slow_consumers_total").increment(1);
    End::Close(
        ErrorCode::SlowConsumer,
        "outbound queue full; reconnect and resume".into(),
    )
}

/// Maps a socket error to how the connection ends.
fn classify_ws_error(e: axum::Error) -> End {
    let inner = e.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => End::Close(
            ErrorCode::PayloadTooLarge,
            "frame exceeds the size limit".into(),
        ),
        Some(tungstenite::Error::Protocol(_)) | Some(tungstenite::Error::Utf8(_)) => End::Close(
            ErrorCode::ProtocolViolation,
            "invalid websocket frame".into(),
        ),
        _ => End::Gone,
    }
}

/// Removes the connection from the registry when it ends, however it ends.
struct Registration {
    gw: Gateway,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.gw.connections().remove(self.id);
    }
}

fn scopeguard(gw: Gateway, id: u64) -> Registration {
    Registration { gw, id }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("encoding", &self.encoding)
            .finish_non_exhaustive()
    }
}
