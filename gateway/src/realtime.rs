//! Realtime v1 over WebSocket: `GET /realtime/v1`.
//!
//! One task per connection ([`Connection::run`]) owns the socket ([`crate::socket`]). After
//! authentication it runs one poll loop ([`Connection::poll_step`]) over: the requests in
//! flight, the bounded outbound queue fed by the [`Hub`](larachat_broker::Hub), the socket's
//! read side, one timer (heartbeat, write deadline), and a kick (server shutdown, a
//! control-plane notice). `docs/protocol.md` is the specification.
//!
//! The loop is shaped by the fan-out hot path (issue 10, measured in `loadtest/README.md`):
//! - at each wake-up it takes **everything** queued (events, replies, pongs), appends the frames
//!   to one buffer and writes them with **one** syscall; each event's bytes are encoded once
//!   per process and shared by every local subscriber;
//! - the read side is polled only when the socket said it is readable, and the stop signals
//!   are flags (one atomic load each), so delivering an event touches neither;
//! - `send`s are **pipelined**: up to [`MAX_IN_FLIGHT`] requests run at once (so the store's
//!   group commit batches a busy connection's messages with everyone else's), while replies
//!   still go out in request order and sends to one conversation are stored in the order they
//!   were sent (each starts once the previous one to that conversation is done). Requests
//!   that change the connection itself (`subscribe`, `unsubscribe`, `read`, a second `auth`)
//!   wait until everything before them is answered, then run alone;
//! - an idle connection holds no buffers and no per-connection timer task: what it costs is
//!   its task, its socket, its session and one timer entry.

use std::collections::{HashMap, VecDeque};
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use futures::future::{BoxFuture, Either, Ready, ready};
use futures::stream::FuturesOrdered;
use futures::task::AtomicWaker;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::oneshot;
use tokio::time::Sleep;

use larachat_broker::{Interest, LocalSink, Outbox, Overflowed};
use larachat_core::http::ApiQuery;
use larachat_core::id::{AdminUserId, ApiKeyId, ConversationId, MessageId, ProjectId};
use larachat_core::model::{Actor, ActorKind};
use larachat_core::protocol::{
    ClientFrame, Encoding, Feed, Limits, PROTOCOL_VERSION, ServerFrame, SessionInfo, SharedFrame,
    TypingState, decode, encode,
};
use larachat_core::subject::Subject;
use larachat_core::{ApiError, ErrorCode};
use larachat_store::MessageRange;

use crate::Gateway;
use crate::auth::{KeyStatus, Principal, PrincipalKind};
use crate::service::SendInput;
use crate::socket::{Message, Socket, Upgrade, WsError};

/// Messages replayed per store query during resume.
const REPLAY_PAGE: u32 = 200;
/// The heartbeat's key re-check waits at most this long for the store (then: no verdict).
const KEY_RECHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// A socket write that takes longer than this means the peer is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests of one connection in progress at once (`send`, `typing`, `ping`, and errors
/// waiting for their turn). With that many unanswered, the server reads no further frames
/// from the socket until one is answered (TCP pushes back on the client).
pub const MAX_IN_FLIGHT: usize = 32;
/// Bytes appended to a socket's write buffer beyond which the connection takes no more
/// events from its queue until the peer has read some (the queue then fills: slow consumer).
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// How long a closing connection waits for its requests in flight to be answered.
const FINISH_TIMEOUT: Duration = Duration::from_secs(5);

/// The socket of a realtime connection.
type WsSocket = Socket<TokioIo<Upgraded>>;

/// Hot-path counters, registered once (`counter!` looks its key up in the recorder's registry
/// on every call). The recorder is installed before the first connection is served.
static EVENTS_SENT: LazyLock<metrics::Counter> =
    LazyLock::new(|| metrics::counter!("larachat_gateway_ws_events_sent_total"));
static FRAMES_RECEIVED: LazyLock<metrics::Counter> =
    LazyLock::new(|| metrics::counter!("larachat_gateway_ws_frames_received_total"));

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
    request: Request,
) -> Response {
    let (mut parts, _body) = request.into_parts();
    let origin = parts
        .headers
        .get(axum::http::header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_owned);
    if gw.shutdown_token().is_cancelled() {
        return ApiError::new(ErrorCode::ShuttingDown, "server is shutting down").into_response();
    }
    let upgrade = match Upgrade::from_parts(&mut parts) {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    // Encoding: the `encoding` query wins, then the first of our subprotocols the client
    // offers, then JSON.
    let encoding = match params.encoding.as_deref() {
        Some(name) => match Encoding::from_name(name) {
            Some(e) => e,
            None => {
                return ApiError::validation("encoding must be json or msgpack").into_response();
            }
        },
        None => upgrade
            .offered()
            .find_map(Encoding::from_name)
            .unwrap_or(Encoding::Json),
    };
    let response = upgrade.response(encoding.subprotocol());
    let max = gw.config().realtime.max_frame_bytes;
    let on_upgrade = upgrade.on_upgrade;
    let gw2 = gw.clone();
    gw.tasks().spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let socket = Socket::new(TokioIo::new(upgraded), max);
                Connection::run(gw2, socket, encoding, origin).await;
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    response
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
    /// The member a member's agent token was issued to.
    member: Option<AdminUserId>,
    kick: Arc<Kick>,
}

/// A request to close one connection with a code: a flag and a wake-up, so the connection's
/// loop checks it with one atomic load.
#[derive(Default)]
struct Kick {
    code: OnceLock<ErrorCode>,
    waker: AtomicWaker,
}

impl Kick {
    fn fire(&self, code: ErrorCode) {
        let _ = self.code.set(code);
        self.waker.wake();
    }
}

impl Registry {
    fn insert(&self, who: &Principal, kick: Arc<Kick>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            project: who.project,
            key: who.key_id(),
            member: who.member_id(),
            kick,
        };
        self.conns.lock().insert(id, entry);
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

    /// Closes every connection authenticated with an agent token issued to `member` of
    /// `project`.
    pub(crate) fn kick_member(
        &self,
        project: ProjectId,
        member: AdminUserId,
        code: ErrorCode,
    ) -> usize {
        self.kick_where(|e| e.project == project && e.member == Some(member), code)
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
    /// The peer sent a close frame: send the (queued) echo and go.
    PeerClosed,
    /// The peer vanished; nothing more to send.
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
    sock: WsSocket,
    encoding: Encoding,
    last_seen: Instant,
    /// The handshake's `Origin` header (browsers always send it).
    origin: Option<String>,
}

/// The answer to one request: its id, the outcome, and for a `send` its place in its
/// conversation's chain (see [`Session::chain`]).
type Reply = (
    Option<u64>,
    Result<Option<ServerFrame>, ApiError>,
    Option<(ConversationId, u64)>,
);

/// A request in flight: answered at once (a pong, an error) or by the service.
type InFlight = Either<Ready<Reply>, BoxFuture<'static, Reply>>;

/// A request that runs alone, once everything before it is answered.
enum Barrier {
    /// A second `auth`: a protocol violation (the connection closes after earlier replies).
    Auth,
    Subscribe {
        id: Option<u64>,
        conversation_id: ConversationId,
        after: Option<MessageId>,
    },
    Unsubscribe {
        id: Option<u64>,
        conversation_id: ConversationId,
    },
    Read {
        id: Option<u64>,
        conversation_id: ConversationId,
        message_id: MessageId,
    },
    Watch {
        id: Option<u64>,
        feed: Feed,
    },
}

/// What the poll loop hands to the async part of the connection.
enum Step {
    End(End),
    Barrier(Barrier),
    /// The timer fired (heartbeat or write deadline).
    Timer,
}

/// An authenticated connection's state.
struct Session {
    who: Arc<Principal>,
    actor: Actor,
    subs: HashMap<ConversationId, Sub>,
    /// Feeds watched (`watch`), with their registrations (an inbox has two: the bus subject
    /// and this gateway's presence events) and the presence view it keeps.
    feeds: Vec<(Feed, Vec<Interest>)>,
    presence_watch: Option<crate::presence::Watch>,
    /// An end user's connection counts for their presence while it lives.
    _online: Option<crate::presence::Connected>,
    sink: LocalSink<SharedFrame>,
    outbox: Outbox<SharedFrame>,
    kick: Arc<Kick>,
    rate: RateLimit,
    /// Last forwarded typing frame per conversation, to drop floods.
    typing: HashMap<ConversationId, Instant>,
    /// Events taken from the queue and not yet written (the queue's buffer and this one swap
    /// roles at each drain).
    events: VecDeque<Arc<SharedFrame>>,
    /// Requests in progress, answered in request order. `None` when there are none (an idle
    /// connection holds no allocation for it).
    in_flight: Option<FuturesOrdered<InFlight>>,
    /// The last `send` in flight per conversation (its number and a receiver that resolves
    /// when it is done): the next send to that conversation waits for it, so one connection's
    /// messages to a conversation are stored in the order they were sent. At most one entry
    /// per request in flight.
    chain: Vec<(ConversationId, u64, oneshot::Receiver<()>)>,
    sends: u64,
    /// A request waiting for the ones before it to be answered.
    barrier: Option<Barrier>,
    /// The key re-check started by the last heartbeat, running beside the connection's work
    /// (a store that hangs delays neither events nor pongs). Resolves to "refused".
    recheck: Option<BoxFuture<'static, bool>>,
    next_heartbeat: Instant,
    /// Since when the socket has not taken what the connection wrote.
    write_blocked_since: Option<Instant>,
}

impl Session {
    fn in_flight_len(&self) -> usize {
        self.in_flight.as_ref().map_or(0, FuturesOrdered::len)
    }

    fn push(&mut self, request: InFlight) {
        self.in_flight
            .get_or_insert_with(FuturesOrdered::new)
            .push_back(request);
    }

    /// Queues an answer that is already known, behind the requests in flight.
    fn push_ready(&mut self, id: Option<u64>, result: Result<Option<ServerFrame>, ApiError>) {
        self.push(Either::Left(ready((id, result, None))));
    }

    /// The moment the timer must fire next.
    fn deadline(&self) -> Instant {
        match self.write_blocked_since {
            Some(since) => self.next_heartbeat.min(since + WRITE_TIMEOUT),
            None => self.next_heartbeat,
        }
    }
}

impl Connection {
    async fn run(gw: Gateway, sock: WsSocket, encoding: Encoding, origin: Option<String>) {
        metrics::gauge!("larachat_gateway_ws_connections").increment(1.0);
        let mut conn = Connection {
            gw,
            sock,
            encoding,
            last_seen: Instant::now(),
            origin,
        };
        // Boxed: the handshake's futures (store lookups) are large and needed once; the
        // connection's own future stays small for its whole idle life.
        let end = match Box::pin(conn.authenticate()).await {
            Ok(session) => conn.serve(session).await,
            Err(end) => end,
        };
        let code = match &end {
            End::Close(code, _) => code.as_str(),
            End::PeerClosed | End::Gone => "gone",
        };
        metrics::counter!("larachat_gateway_ws_closed_total", "reason" => code).increment(1);
        match end {
            End::Close(code, reason) => Box::pin(conn.close(code, reason)).await,
            End::PeerClosed => {
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.sock.shutdown()).await;
            }
            End::Gone => {}
        }
        metrics::gauge!("larachat_gateway_ws_connections").decrement(1.0);
    }

    /// Waits for `auth` within the deadline and sets the connection up.
    async fn authenticate(&mut self) -> Result<Session, End> {
        let limits = self.gw.config().realtime.clone();
        let shutdown = self.gw.shutdown_token().clone();
        let first = tokio::select! {
            r = tokio::time::timeout(limits.auth_timeout, self.next_message()) => r,
            _ = shutdown.cancelled() => {
                return Err(End::Close(ErrorCode::ShuttingDown, "server is shutting down".into()));
            }
        };
        let frame = match first {
            Err(_) => {
                return Err(End::Close(
                    ErrorCode::AuthTimeout,
                    format!("authenticate within {} s", limits.auth_timeout.as_secs()),
                ));
            }
            Ok(Err(end)) => return Err(end),
            Ok(Ok(Err(e))) => {
                return Err(End::Close(ErrorCode::ProtocolViolation, e.message.into()));
            }
            Ok(Ok(Ok(f))) => f,
        };
        let ClientFrame::Auth { id, token, actor } = frame else {
            return Err(End::Close(
                ErrorCode::ProtocolViolation,
                "the first frame must be auth".into(),
            ));
        };
        let who = match self.gw.auth().authenticate(&token).await {
            Ok(p) => p,
            Err(e) => return Err(self.refuse(id, e).await),
        };
        // Widget sessions only work from the page origin they were issued to.
        if let Err(e) =
            crate::widget::socket_origin_ok(&self.gw, &who, self.origin.as_deref()).await
        {
            return Err(self.refuse(id, e).await);
        }
        let actor = match self.gw.resolve_actor(&who, actor.as_ref()).await {
            Ok(a) => a,
            Err(e) => return Err(self.refuse(id, e).await),
        };
        let (sink, outbox) = LocalSink::channel(limits.outbound_queue);
        let kick = Arc::new(Kick::default());
        let online = match who.end_user() {
            Some(user) => Some(self.gw.presence().connected(who.project, user).await),
            None => None,
        };
        let session = Session {
            who: Arc::new(who),
            actor,
            subs: HashMap::new(),
            feeds: Vec::new(),
            presence_watch: None,
            _online: online,
            sink,
            outbox,
            kick,
            rate: RateLimit::new(limits.max_frames_per_sec),
            typing: HashMap::new(),
            events: VecDeque::new(),
            in_flight: None,
            chain: Vec::new(),
            sends: 0,
            barrier: None,
            recheck: None,
            next_heartbeat: Instant::now() + limits.heartbeat,
            write_blocked_since: None,
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
        self.send_frame(&auth_ok).await?;
        Ok(session)
    }

    /// Answers a refused `auth` with an error frame and closes with its code.
    async fn refuse(&mut self, id: Option<u64>, e: ApiError) -> End {
        let _ = self.send_frame(&ServerFrame::error(id, &e)).await;
        End::close(e)
    }

    /// Reads the next data message before authentication. Outer `Err`: the connection is
    /// over. Inner `Err`: a frame that could not be decoded.
    async fn next_message(&mut self) -> Result<Result<ClientFrame, ApiError>, End> {
        poll_fn(|cx| {
            loop {
                // Pongs go out as they are queued.
                if let Poll::Ready(Err(_)) = self.sock.poll_flush(cx) {
                    return Poll::Ready(Err(End::Gone));
                }
                let message = match self.sock.poll_message(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(classify_ws_error(e))),
                    Poll::Ready(Ok(m)) => m,
                };
                self.last_seen = Instant::now();
                match self.payload(message) {
                    Err(end) => return Poll::Ready(Err(end)),
                    Ok(None) => continue,
                    Ok(Some(payload)) => {
                        FRAMES_RECEIVED.increment(1);
                        return Poll::Ready(Ok(
                            decode(&payload, self.encoding).map_err(ApiError::from)
                        ));
                    }
                }
            }
        })
        .await
    }

    /// The payload of a data message in the negotiated encoding; `None` for control frames.
    fn payload(&self, message: Message) -> Result<Option<bytes::Bytes>, End> {
        match (message, self.encoding) {
            (Message::Text(b), Encoding::Json) | (Message::Binary(b), Encoding::MsgPack) => {
                Ok(Some(b))
            }
            (Message::Text(_), Encoding::MsgPack) | (Message::Binary(_), Encoding::Json) => {
                Err(End::Close(
                    ErrorCode::ProtocolViolation,
                    "frame type does not match the negotiated encoding".into(),
                ))
            }
            (Message::Control, _) => Ok(None),
            (Message::Close(_), _) => Err(End::PeerClosed),
        }
    }

    /// Serves an authenticated connection until something ends it.
    async fn serve(&mut self, mut s: Session) -> End {
        let conn_id = self.gw.connections().insert(&s.who, s.kick.clone());
        let _registration = scopeguard(self.gw.clone(), conn_id, s.who.project);
        // `Gateway::shutdown` cancels the token, then kicks every registered connection: a
        // connection registered after that sees the token.
        if self.gw.shutdown_token().is_cancelled() {
            s.kick.fire(ErrorCode::ShuttingDown);
        }
        let timer = tokio::time::sleep_until(s.deadline().into());
        tokio::pin!(timer);
        let end = loop {
            match poll_fn(|cx| self.poll_step(&mut s, timer.as_mut(), cx)).await {
                Step::End(end) => break end,
                Step::Barrier(b) => {
                    // Boxed: subscribe and read await the store; the loop's future stays small.
                    if let Err(end) = Box::pin(self.barrier(&mut s, b)).await {
                        break end;
                    }
                }
                Step::Timer => {
                    if let Err(end) = self.on_timer(&mut s, timer.as_mut()) {
                        break end;
                    }
                }
            }
        };
        if s.in_flight.is_some() {
            // After the peer's close (whose echo is already queued) nothing more may be sent.
            let silent = matches!(end, End::Gone | End::PeerClosed);
            Box::pin(self.finish(&mut s, silent)).await;
        }
        end
    }

    /// One turn of the connection: everything that can make progress without waiting.
    fn poll_step(
        &mut self,
        s: &mut Session,
        mut timer: Pin<&mut Sleep>,
        cx: &mut Context<'_>,
    ) -> Poll<Step> {
        s.kick.waker.register(cx.waker());
        if let Some(code) = s.kick.code.get() {
            return Poll::Ready(Step::End(kicked(*code)));
        }
        if let Some(check) = s.recheck.as_mut() {
            if let Poll::Ready(refused) = check.as_mut().poll(cx) {
                s.recheck = None;
                if refused {
                    return Poll::Ready(Step::End(End::Close(
                        ErrorCode::Unauthorized,
                        "the API key or membership behind this connection is no longer valid"
                            .into(),
                    )));
                }
            }
        }
        loop {
            let mut progress = false;
            // 1. Answers of requests in flight, in request order.
            if let Some(in_flight) = s.in_flight.as_mut() {
                while let Poll::Ready(Some((id, result, chained))) = in_flight.poll_next_unpin(cx) {
                    progress = true;
                    if let Some((conv, n)) = chained {
                        s.chain.retain(|(c, m, _)| (*c, *m) != (conv, n));
                    }
                    match result {
                        Ok(Some(reply)) => self.push_frame(&reply),
                        Ok(None) => {}
                        Err(e) if e.code == ErrorCode::ProtocolViolation => {
                            return Poll::Ready(Step::End(End::close(e)));
                        }
                        Err(e) => self.push_frame(&ServerFrame::error(id, &e)),
                    }
                }
                if in_flight.is_empty() {
                    s.in_flight = None;
                    s.chain = Vec::new();
                }
            }
            // 2. Live events: everything queued, while the write buffer has room. With no room
            // (the peer is not reading), the queue fills up; the hub then marks it overflowed
            // and wakes us.
            loop {
                if self.sock.buffered() >= WRITE_HIGH_WATER {
                    if s.outbox.poll_overflow(cx).is_ready() {
                        return Poll::Ready(Step::End(slow_consumer()));
                    }
                    break;
                }
                if s.events.is_empty() {
                    match s.outbox.poll_drain(cx, &mut s.events) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(Overflowed)) => {
                            return Poll::Ready(Step::End(slow_consumer()));
                        }
                        Poll::Pending => break,
                    }
                }
                while let Some(event) = s.events.pop_front() {
                    self.deliver(s, &event);
                    if self.sock.buffered() >= WRITE_HIGH_WATER {
                        break;
                    }
                }
            }
            // 3. One write for all of the above.
            match self.sock.poll_flush(cx) {
                Poll::Ready(Ok(())) => s.write_blocked_since = None,
                Poll::Ready(Err(_)) => return Poll::Ready(Step::End(End::Gone)),
                Poll::Pending => {
                    if s.write_blocked_since.is_none() {
                        s.write_blocked_since = Some(Instant::now());
                        timer.as_mut().reset(s.deadline().into());
                    }
                }
            }
            // 4. A request that runs alone, once everything before it is answered.
            if s.in_flight.is_none() {
                if let Some(barrier) = s.barrier.take() {
                    return Poll::Ready(Step::Barrier(barrier));
                }
            }
            // 5. New requests, while there is room for them.
            if s.barrier.is_none() && s.in_flight_len() < MAX_IN_FLIGHT {
                match self.sock.poll_message(cx) {
                    Poll::Ready(Ok(message)) => {
                        self.last_seen = Instant::now();
                        match self.payload(message) {
                            Err(end) => return Poll::Ready(Step::End(end)),
                            Ok(None) => {}
                            Ok(Some(payload)) => {
                                FRAMES_RECEIVED.increment(1);
                                match decode::<ClientFrame>(&payload, self.encoding) {
                                    Ok(frame) => self.dispatch(s, frame),
                                    // Undecodable frame: answer (in order), keep serving.
                                    Err(e) => s.push_ready(None, Err(ApiError::from(e))),
                                }
                            }
                        }
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Step::End(classify_ws_error(e))),
                    Poll::Pending => {}
                }
            }
            if !progress {
                break;
            }
        }
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Step::Timer);
        }
        Poll::Pending
    }

    /// Starts a request: at once if it can run beside others, else as the barrier.
    fn dispatch(&mut self, s: &mut Session, frame: ClientFrame) {
        let id = frame.request_id();
        if !s.rate.allow() {
            metrics::counter!("larachat_gateway_ws_rate_limited_total").increment(1);
            let err = ApiError::new(ErrorCode::RateLimited, "too many frames; slow down");
            s.push_ready(id, Err(err));
            return;
        }
        match frame {
            ClientFrame::Auth { .. } => s.barrier = Some(Barrier::Auth),
            ClientFrame::Ping { id } => s.push_ready(id, Ok(Some(ServerFrame::Pong { id }))),
            ClientFrame::Watch { id, feed } => s.barrier = Some(Barrier::Watch { id, feed }),
            ClientFrame::WhoIsOnline { id } => {
                let (gw, who) = (self.gw.clone(), s.who.clone());
                s.push(Either::Right(Box::pin(async move {
                    (id, who_is_online(&gw, &who, id).await, None)
                })));
            }
            ClientFrame::Subscribe {
                id,
                conversation_id,
                after,
            } => {
                s.barrier = Some(Barrier::Subscribe {
                    id,
                    conversation_id,
                    after,
                });
            }
            ClientFrame::Unsubscribe {
                id,
                conversation_id,
            } => {
                s.barrier = Some(Barrier::Unsubscribe {
                    id,
                    conversation_id,
                });
            }
            ClientFrame::Read {
                id,
                conversation_id,
                message_id,
            } => {
                s.barrier = Some(Barrier::Read {
                    id,
                    conversation_id,
                    message_id,
                });
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
                s.sends += 1;
                let n = s.sends;
                let (done, done_rx) = oneshot::channel::<()>();
                let previous = match s.chain.iter().position(|(c, _, _)| *c == conversation_id) {
                    Some(i) => Some(s.chain.swap_remove(i).2),
                    None => None,
                };
                s.chain.push((conversation_id, n, done_rx));
                let (gw, who, actor) = (self.gw.clone(), s.who.clone(), s.actor.clone());
                s.push(Either::Right(Box::pin(async move {
                    if let Some(previous) = previous {
                        // Resolves when the previous send to this conversation is done
                        // (answered or failed).
                        let _ = previous.await;
                    }
                    let result = gw
                        .send_message(&who, conversation_id, actor, input)
                        .await
                        .map(|a| {
                            Some(ServerFrame::Ack {
                                id,
                                duplicate: !a.created,
                                message: a.message,
                            })
                        });
                    drop(done);
                    (id, result, Some((conversation_id, n)))
                })));
            }
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
                    return;
                }
                if s.typing.len() > 1000 {
                    s.typing.clear();
                }
                if state == TypingState::Start {
                    s.typing.insert(conversation_id, now);
                } else {
                    s.typing.remove(&conversation_id);
                }
                let (gw, who, actor) = (self.gw.clone(), s.who.clone(), s.actor.clone());
                s.push(Either::Right(Box::pin(async move {
                    let result = gw
                        .typing(&who, conversation_id, actor, state)
                        .await
                        .map(|_| None);
                    (None, result, None)
                })));
            }
        }
    }

    /// Runs a request that changes the connection itself; nothing else is in flight.
    async fn barrier(&mut self, s: &mut Session, barrier: Barrier) -> Result<(), End> {
        let (id, result) = match barrier {
            Barrier::Auth => (
                None,
                Err(ApiError::new(
                    ErrorCode::ProtocolViolation,
                    "already authenticated",
                )),
            ),
            Barrier::Subscribe {
                id,
                conversation_id,
                after,
            } => (id, self.subscribe(s, id, conversation_id, after).await),
            Barrier::Unsubscribe {
                id,
                conversation_id,
            } => {
                s.subs.remove(&conversation_id);
                (
                    id,
                    Ok(Some(ServerFrame::Unsubscribed {
                        id,
                        conversation_id,
                    })),
                )
            }
            Barrier::Watch { id, feed } => (id, self.watch(s, id, feed).await),
            Barrier::Read {
                id,
                conversation_id,
                message_id,
            } => (
                id,
                self.gw
                    .mark_read(&s.who, conversation_id, s.actor.clone(), message_id)
                    .await
                    .map(|_| Some(ServerFrame::Ok { id })),
            ),
        };
        match result {
            Ok(Some(reply)) => self.send_frame(&reply).await,
            Ok(None) => Ok(()),
            Err(e) if e.code == ErrorCode::ProtocolViolation => Err(End::close(e)),
            Err(e) => self.send_frame(&ServerFrame::error(id, &e)).await,
        }
    }

    /// The heartbeat (ping, silent-peer check, key re-check) and the write deadline.
    fn on_timer(&mut self, s: &mut Session, mut timer: Pin<&mut Sleep>) -> Result<(), End> {
        let now = Instant::now();
        if s.write_blocked_since
            .is_some_and(|since| now.duration_since(since) >= WRITE_TIMEOUT)
        {
            tracing::debug!("dropping a peer that stopped reading");
            return Err(End::Gone);
        }
        if now >= s.next_heartbeat {
            let heartbeat = self.gw.config().realtime.heartbeat;
            if self.last_seen.elapsed() > heartbeat * 2 {
                tracing::debug!("dropping a silent peer");
                return Err(End::Gone);
            }
            // Keys can expire (or their revocation notice can be lost) while a socket is
            // open: re-check on every heartbeat (a cached lookup), beside the connection's
            // work, so a store that hangs delays neither events nor the peer's pongs.
            // A member's agent token likewise re-checks the membership.
            if s.recheck.is_none() && !matches!(s.who.kind, PrincipalKind::EndUser { .. }) {
                let gw = self.gw.clone();
                let who = s.who.clone();
                s.recheck = Some(Box::pin(async move {
                    // Only the store's answer closes the socket; an outage (or a store that
                    // does not answer in time) is no verdict.
                    tokio::time::timeout(KEY_RECHECK_TIMEOUT, gw.auth().credential_status(&who))
                        .await
                        .is_ok_and(|status| status == Some(KeyStatus::Refused))
                }));
            }
            self.sock.push_ping();
            s.next_heartbeat = now + heartbeat;
        }
        timer.as_mut().reset(s.deadline().into());
        Ok(())
    }

    /// Lets the requests in flight finish (their messages are published even if the peer is
    /// gone), writing their answers unless `silent`.
    async fn finish(&mut self, s: &mut Session, silent: bool) {
        let Some(mut in_flight) = s.in_flight.take() else {
            return;
        };
        let _ = tokio::time::timeout(FINISH_TIMEOUT, async {
            while let Some((id, result, _)) = in_flight.next().await {
                if silent {
                    continue;
                }
                match result {
                    Ok(Some(reply)) => self.push_frame(&reply),
                    Ok(None) => {}
                    Err(e) => self.push_frame(&ServerFrame::error(id, &e)),
                }
            }
        })
        .await;
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
                    self.push_frame(&ServerFrame::Message {
                        conversation_id: conversation,
                        message,
                    });
                    // A write failure here means the peer is gone; the main loop notices on
                    // its next read.
                    if self.sock.buffered() >= WRITE_HIGH_WATER && self.flush().await.is_err() {
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

    /// Starts delivering a feed: the end user's own feed, or (agents) the project's inbox
    /// and its presence events. Watching a feed again answers `watching` again.
    async fn watch(
        &mut self,
        s: &mut Session,
        id: Option<u64>,
        feed: Feed,
    ) -> Result<Option<ServerFrame>, ApiError> {
        if s.feeds.iter().any(|(f, _)| *f == feed) {
            return Ok(Some(ServerFrame::Watching { id, feed }));
        }
        let unavailable = |e: larachat_broker::BusError| {
            tracing::warn!(error = %e, "bus subscribe failed");
            ApiError::unavailable()
        };
        let project = s.who.project;
        let interests = match (feed, s.who.end_user()) {
            (Feed::User, Some(user)) => vec![
                self.gw
                    .hub()
                    .subscribe(Subject::user(project, user), s.sink.clone())
                    .await
                    .map_err(unavailable)?,
            ],
            (Feed::User, None) => {
                return Err(ApiError::forbidden(
                    "the user feed is an end user's own; agents watch the inbox",
                ));
            }
            (Feed::Inbox, Some(_)) => {
                return Err(ApiError::forbidden(
                    "the inbox feed needs a secret key or an agent token",
                ));
            }
            (Feed::Inbox, None) => {
                s.who.require_read()?;
                let inbox = self
                    .gw
                    .hub()
                    .subscribe(Subject::inbox(project), s.sink.clone())
                    .await
                    .map_err(unavailable)?;
                let presence = self
                    .gw
                    .presence()
                    .events()
                    .subscribe(Subject::presence(project), s.sink.clone())
                    .await
                    .map_err(unavailable)?;
                s.presence_watch = Some(
                    self.gw
                        .presence()
                        .watch(project)
                        .await
                        .map_err(unavailable)?,
                );
                vec![inbox, presence]
            }
        };
        s.feeds.push((feed, interests));
        Ok(Some(ServerFrame::Watching { id, feed }))
    }

    /// Appends a live event unless it is for an unsubscribed conversation, already replayed,
    /// or this connection's own typing.
    fn deliver(&mut self, s: &Session, event: &SharedFrame) {
        let frame = event.frame();
        let Some(conv) = frame.event_conversation() else {
            // Feed events reach only connections that watch the feed (only they registered
            // for its subjects).
            if frame.is_feed_event() {
                EVENTS_SENT.increment(1);
                let bytes = event.encoded(self.encoding);
                match self.encoding {
                    Encoding::Json => self.sock.push_text(bytes),
                    Encoding::MsgPack => self.sock.push_binary(bytes),
                }
            }
            return;
        };
        let Some(sub) = s.subs.get(&conv) else {
            return;
        };
        if let (Some(id), Some(floor)) = (frame.message_id(), sub.floor) {
            if id <= floor {
                return;
            }
        }
        if let ServerFrame::Typing { actor, .. } = frame {
            if *actor == s.actor || (actor.kind == ActorKind::EndUser && actor.id == s.actor.id) {
                return;
            }
        }
        EVENTS_SENT.increment(1);
        let bytes = event.encoded(self.encoding);
        match self.encoding {
            Encoding::Json => self.sock.push_text(bytes),
            Encoding::MsgPack => self.sock.push_binary(bytes),
        }
    }

    /// Appends a frame (encoded for this connection).
    fn push_frame(&mut self, frame: &ServerFrame) {
        let bytes = encode(frame, self.encoding);
        match self.encoding {
            Encoding::Json => self.sock.push_text(&bytes),
            Encoding::MsgPack => self.sock.push_binary(&bytes),
        }
    }

    /// Appends a frame and writes everything buffered.
    async fn send_frame(&mut self, frame: &ServerFrame) -> Result<(), End> {
        self.push_frame(frame);
        self.flush().await
    }

    /// Writes everything buffered, within the write timeout.
    async fn flush(&mut self) -> Result<(), End> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.sock.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(End::Gone),
        }
    }

    async fn close(&mut self, code: ErrorCode, reason: String) {
        self.sock.push_close(code.close_code(), &reason);
        // A peer that stopped reading may never take the close frame; then dropping the
        // socket ends the connection (the client sees an abnormal close and reconnects).
        let _ = tokio::time::timeout(Duration::from_secs(2), self.sock.shutdown()).await;
    }
}

/// The answer to `who_is_online` (agents only).
async fn who_is_online(
    gw: &Gateway,
    who: &Principal,
    id: Option<u64>,
) -> Result<Option<ServerFrame>, ApiError> {
    if who.end_user().is_some() {
        return Err(ApiError::forbidden(
            "presence needs a secret key or an agent token",
        ));
    }
    who.require_read()?;
    let (users, truncated) = gw.presence().online(who.project).await.map_err(|e| {
        tracing::warn!(error = %e, "presence query failed");
        ApiError::unavailable()
    })?;
    Ok(Some(ServerFrame::Online {
        id,
        users,
        truncated,
    }))
}

/// How a kicked connection ends.
fn kicked(code: ErrorCode) -> End {
    let reason = match code {
        ErrorCode::Unauthorized => "credentials revoked",
        ErrorCode::ProjectSuspended => "project is not active",
        ErrorCode::Unavailable => "live delivery was interrupted; reconnect and resume",
        ErrorCode::ShuttingDown => "server is shutting down; reconnect",
        _ => "closed by the server",
    };
    End::Close(code, reason.into())
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
fn classify_ws_error(e: WsError) -> End {
    match e {
        WsError::TooLarge { .. } => End::Close(
            ErrorCode::PayloadTooLarge,
            "frame exceeds the size limit".into(),
        ),
        WsError::Protocol(_) | WsError::Utf8 => End::Close(
            ErrorCode::ProtocolViolation,
            "invalid websocket frame".into(),
        ),
        WsError::Io(_) | WsError::Eof => End::Gone,
    }
}

/// Counts the connection in its project's metered connections while it is registered, and
/// removes it from the registry when it ends, however it ends.
struct Registration {
    gw: Gateway,
    id: u64,
    project: ProjectId,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.gw.connections().remove(self.id);
        self.gw.meter().disconnected(self.project);
    }
}

fn scopeguard(gw: Gateway, id: u64, project: ProjectId) -> Registration {
    gw.meter().connected(project);
    Registration { gw, id, project }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("encoding", &self.encoding)
            .finish_non_exhaustive()
    }
}
