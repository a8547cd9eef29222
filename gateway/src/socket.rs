//! The realtime endpoint's WebSocket layer (RFC 6455, server side): the upgrade handshake and
//! a [`Socket`] that reads client messages and writes server frames on the raw upgraded
//! connection.
//!
//! Hand-written on top of tungstenite's frame headers (parsing and formatting a header, the
//! fiddly part, stays in the maintained crate; so does the accept key of the handshake),
//! because the fan-out hot path needs what a general-purpose WebSocket stream does not give.
//! Measured with tungstenite behind axum (issue 10, `loadtest/README.md`): every poll of the
//! read side zero-filled the read buffer, each frame was written and flushed on its own, and
//! the read buffer (and the write buffer at its high-water mark) stayed allocated for the
//! connection's whole life. Here:
//! - **nothing buffered while idle**: the read buffer is allocated when bytes arrive and
//!   released once every complete frame in it has been taken; the write buffer once everything
//!   in it is written. An idle connection holds neither;
//! - **no zeroing**: reads go into uninitialised memory (a stack chunk, or spare capacity
//!   for a large frame);
//! - **one write for many frames**: the connection appends every frame it has (replies, all
//!   queued events, pongs) and then writes them with one syscall ([`Socket::poll_flush`]);
//! - **the read side is polled only when the socket said it is readable**: reads register a
//!   waker of their own that sets a flag, so waking the connection for an outbound event never
//!   touches the read path.
//!
//! Protocol rules enforced on client frames: masked; no reserved bits (no extension is ever
//! negotiated); no reserved opcodes; control frames final and at most 125 bytes; continuation
//! frames only inside a fragmented message and no new message inside one; a message (all its
//! fragments) at most `max_message` bytes, refused as soon as a header announces more; text
//! messages valid UTF-8; close frames empty or a valid code with a UTF-8 reason. Pings are
//! answered with pongs; a close frame is answered with a close frame echoing its code.

use std::io::{self, Cursor};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header, request::Parts};
use axum::response::Response;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::task::AtomicWaker;
use hyper::upgrade::OnUpgrade;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};

use larachat_core::{ApiError, ErrorCode};

/// Bytes asked for by one read (more when a frame's header announces a larger frame).
const READ_CHUNK: usize = 4096;
/// Largest payload of a control frame (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// What the peer sent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Message {
    /// A complete text message (valid UTF-8).
    Text(Bytes),
    /// A complete binary message.
    Binary(Bytes),
    /// A ping (its pong is queued) or a pong: the peer is alive.
    Control,
    /// A close frame, with its status code if it had one; the reply is queued.
    Close(Option<u16>),
}

/// Why reading failed. After an error the socket must not be read again.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WsError {
    #[error("connection lost: {0}")]
    Io(#[from] io::Error),
    #[error("the peer closed the connection without a close frame")]
    Eof,
    #[error("invalid frame: {0}")]
    Protocol(&'static str),
    #[error("message larger than {max} bytes")]
    TooLarge { max: usize },
    #[error("text message is not valid UTF-8")]
    Utf8,
}

/// Sets the "socket may be readable" flag, then wakes the connection's task.
#[derive(Default)]
struct Readable {
    flag: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Readable {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.flag.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// A message split over several frames, being reassembled.
struct Fragmented {
    text: bool,
    bytes: Vec<u8>,
}

/// A server-side WebSocket on an upgraded connection. Reading and writing are independent:
/// the caller appends frames (`push_*`) and writes them with [`Socket::poll_flush`], and takes
/// client messages with [`Socket::poll_message`].
pub(crate) struct Socket<S> {
    io: S,
    max_message: usize,
    /// Bytes read and not yet taken as frames. Empty (no allocation) between messages.
    rbuf: BytesMut,
    /// Bytes `rbuf` must hold before the frame at its start is complete.
    need: usize,
    fragmented: Option<Fragmented>,
    /// Frames not yet written. Empty (no allocation) once written.
    wbuf: BytesMut,
    readable: Arc<Readable>,
    read_waker: Waker,
    /// A close frame arrived; nothing more is read.
    close_received: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Socket<S> {
    /// A socket on `io` (the connection after the 101 response) accepting messages of up to
    /// `max_message` bytes.
    pub(crate) fn new(io: S, max_message: usize) -> Self {
        let readable = Arc::new(Readable {
            // Data may already be waiting.
            flag: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Self {
            io,
            max_message,
            rbuf: BytesMut::new(),
            need: 0,
            fragmented: None,
            wbuf: BytesMut::new(),
            read_waker: Waker::from(readable.clone()),
            readable,
            close_received: false,
        }
    }

    /// The next message. Reads the socket only if it may have data: after it said so, or
    /// while it keeps returning data.
    pub(crate) fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<Message, WsError>> {
        loop {
            if self.close_received {
                return Poll::Ready(Err(WsError::Eof));
            }
            if let Some(message) = self.parse()? {
                return Poll::Ready(Ok(message));
            }
            // Registered before the flag is read, so a wake-up in between is never lost.
            self.readable.task.register(cx.waker());
            if !self.readable.flag.swap(false, Ordering::AcqRel) {
                return Poll::Pending;
            }
            let mut read_cx = Context::from_waker(&self.read_waker);
            let want = self.need.saturating_sub(self.rbuf.len());
            let read = if want <= READ_CHUNK {
                // Into a stack buffer, then appended: the read that finds nothing (the last of
                // every burst, and the one an idle connection waits in) allocates nothing.
                // Reserving in `rbuf` first kept 4 KiB per idle connection.
                let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
                let mut buf = ReadBuf::uninit(&mut chunk);
                Pin::new(&mut self.io)
                    .poll_read(&mut read_cx, &mut buf)
                    .map_ok(|()| {
                        self.rbuf.extend_from_slice(buf.filled());
                        buf.filled().len()
                    })
            } else {
                // A frame announced more: read straight into its reserved space.
                self.rbuf.reserve(want);
                tokio_util::io::poll_read_buf(Pin::new(&mut self.io), &mut read_cx, &mut self.rbuf)
            };
            match read {
                // The IO keeps `read_waker`, which sets the flag when data comes.
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(WsError::Eof)),
                // There may be more: read again (until the IO says it would block).
                Poll::Ready(Ok(_)) => self.readable.flag.store(true, Ordering::Release),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(WsError::Io(e))),
            }
        }
    }

    /// Takes the next complete message out of `rbuf`, answering control frames on the way.
    fn parse(&mut self) -> Result<Option<Message>, WsError> {
        loop {
            if self.rbuf.is_empty() {
                // Release the allocation: an idle connection holds no read buffer.
                self.rbuf = BytesMut::new();
                self.need = 0;
                return Ok(None);
            }
            let mut cursor = Cursor::new(&self.rbuf[..]);
            let parsed = FrameHeader::parse(&mut cursor)
                .map_err(|_| WsError::Protocol("reserved opcode"))?;
            let Some((header, length)) = parsed else {
                self.need = self.rbuf.len() + 1;
                return Ok(None);
            };
            let header_len = cursor.position() as usize;
            if header.rsv1 || header.rsv2 || header.rsv3 {
                return Err(WsError::Protocol("reserved bits set"));
            }
            let Some(mask) = header.mask else {
                return Err(WsError::Protocol("client frames must be masked"));
            };
            match header.opcode {
                OpCode::Control(_) => {
                    if !header.is_final || length > MAX_CONTROL_PAYLOAD {
                        return Err(WsError::Protocol("control frames must be final and short"));
                    }
                }
                OpCode::Data(_) => {
                    let before = self.fragmented.as_ref().map_or(0, |f| f.bytes.len());
                    if length > (self.max_message - before.min(self.max_message)) as u64 {
                        return Err(WsError::TooLarge {
                            max: self.max_message,
                        });
                    }
                }
            }
            // `length` is at most `max_message` (data) or 125 (control) here.
            let total = header_len + length as usize;
            if self.rbuf.len() < total {
                self.need = total;
                return Ok(None);
            }
            self.need = 0;
            self.rbuf.advance(header_len);
            let mut payload = self.rbuf.split_to(length as usize);
            unmask(&mut payload, mask);
            match header.opcode {
                OpCode::Control(Control::Ping) => {
                    self.push(OpCode::Control(Control::Pong), &payload);
                    return Ok(Some(Message::Control));
                }
                OpCode::Control(Control::Pong) => return Ok(Some(Message::Control)),
                OpCode::Control(Control::Close) => {
                    let code = close_code(&payload)?;
                    self.close_received = true;
                    self.rbuf = BytesMut::new();
                    // Echo the peer's status code (RFC 6455 §5.5.1).
                    match code {
                        Some(code) => {
                            self.push(OpCode::Control(Control::Close), &code.to_be_bytes())
                        }
                        None => self.push(OpCode::Control(Control::Close), &[]),
                    }
                    return Ok(Some(Message::Close(code)));
                }
                OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                    return Err(WsError::Protocol("reserved opcode"));
                }
                OpCode::Data(Data::Continue) => {
                    let Some(fragmented) = self.fragmented.as_mut() else {
                        return Err(WsError::Protocol("continuation outside a message"));
                    };
                    fragmented.bytes.extend_from_slice(&payload);
                    if header.is_final {
                        if let Some(Fragmented { text, bytes }) = self.fragmented.take() {
                            return message(text, Bytes::from(bytes)).map(Some);
                        }
                    }
                }
                OpCode::Data(data @ (Data::Text | Data::Binary)) => {
                    if self.fragmented.is_some() {
                        return Err(WsError::Protocol("a new message inside a fragmented one"));
                    }
                    let text = data == Data::Text;
                    if header.is_final {
                        return message(text, payload.freeze()).map(Some);
                    }
                    self.fragmented = Some(Fragmented {
                        text,
                        bytes: payload.to_vec(),
                    });
                }
            }
        }
    }

    /// Appends a text frame.
    pub(crate) fn push_text(&mut self, payload: &[u8]) {
        self.push(OpCode::Data(Data::Text), payload);
    }

    /// Appends a binary frame.
    pub(crate) fn push_binary(&mut self, payload: &[u8]) {
        self.push(OpCode::Data(Data::Binary), payload);
    }

    /// Appends an empty ping.
    pub(crate) fn push_ping(&mut self) {
        self.push(OpCode::Control(Control::Ping), &[]);
    }

    /// Appends a close frame with `code` and as much of `reason` as fits (123 bytes, cut at a
    /// character boundary).
    pub(crate) fn push_close(&mut self, code: u16, reason: &str) {
        let mut end = reason.len().min(MAX_CONTROL_PAYLOAD as usize - 2);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let mut payload = [0u8; MAX_CONTROL_PAYLOAD as usize];
        payload[..2].copy_from_slice(&code.to_be_bytes());
        payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
        self.push(OpCode::Control(Control::Close), &payload[..2 + end]);
    }

    fn push(&mut self, opcode: OpCode, payload: &[u8]) {
        let header = FrameHeader {
            is_final: true,
            rsv1: false,
            rsv2: false,
            rsv3: false,
            opcode,
            mask: None,
        };
        let length = payload.len() as u64;
        self.wbuf.reserve(header.len(length) + payload.len());
        // Writing into memory cannot fail.
        let _ = header.format(length, &mut (&mut self.wbuf).writer());
        self.wbuf.extend_from_slice(payload);
    }

    /// Bytes appended and not yet written.
    pub(crate) fn buffered(&self) -> usize {
        self.wbuf.len()
    }

    /// Writes everything appended so far. `Pending` while the peer does not take it.
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.wbuf.is_empty() {
            return Poll::Ready(Ok(()));
        }
        while !self.wbuf.is_empty() {
            match Pin::new(&mut self.io).poll_write(cx, &self.wbuf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.wbuf.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        // Release the allocation: an idle connection holds no write buffer.
        self.wbuf = BytesMut::new();
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Writes everything appended so far.
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Ends the write side (TCP FIN) after what is buffered.
    pub(crate) async fn shutdown(&mut self) -> io::Result<()> {
        self.flush().await?;
        std::future::poll_fn(|cx| Pin::new(&mut self.io).poll_shutdown(cx)).await
    }
}

/// A complete data message, its text checked.
fn message(text: bool, payload: Bytes) -> Result<Message, WsError> {
    if !text {
        return Ok(Message::Binary(payload));
    }
    if std::str::from_utf8(&payload).is_err() {
        return Err(WsError::Utf8);
    }
    Ok(Message::Text(payload))
}

/// The status code of a close frame's payload (none when empty).
fn close_code(payload: &[u8]) -> Result<Option<u16>, WsError> {
    match payload {
        [] => Ok(None),
        [_] => Err(WsError::Protocol("close frame with a one-byte payload")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !CloseCode::from(code).is_allowed() {
                return Err(WsError::Protocol("invalid close code"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(WsError::Protocol("close reason is not valid UTF-8"));
            }
            Ok(Some(code))
        }
    }
}

/// XORs `buf` with the frame's mask (eight bytes at a time).
fn unmask(buf: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// A checked upgrade request: what the 101 response and the connection need.
pub(crate) struct Upgrade {
    pub(crate) on_upgrade: OnUpgrade,
    key: HeaderValue,
    /// Subprotocols the client offered (`Sec-WebSocket-Protocol`), trimmed.
    offered: Vec<String>,
}

impl Upgrade {
    /// Checks the handshake of RFC 6455 §4.2.1 (HTTP/1.1) and takes the connection's upgrade
    /// handle out of the request.
    pub(crate) fn from_parts(parts: &mut Parts) -> Result<Self, ApiError> {
        let not_ws = |what: &str| {
            ApiError::new(
                ErrorCode::ProtocolViolation,
                format!("not a WebSocket upgrade: {what}"),
            )
        };
        if parts.method != Method::GET || parts.version > Version::HTTP_11 {
            return Err(not_ws("use GET over HTTP/1.1"));
        }
        if !header_has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(not_ws("Connection must include upgrade"));
        }
        if !header_has_token(&parts.headers, header::UPGRADE, "websocket") {
            return Err(not_ws("Upgrade must be websocket"));
        }
        if parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            return Err(not_ws("Sec-WebSocket-Version must be 13"));
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or_else(|| not_ws("Sec-WebSocket-Key is missing"))?;
        let offered = parts
            .headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .take(16)
            .collect();
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or_else(|| not_ws("the connection cannot be upgraded"))?;
        Ok(Self {
            on_upgrade,
            key,
            offered,
        })
    }

    /// The subprotocols the client offered, in its order.
    pub(crate) fn offered(&self) -> impl Iterator<Item = &str> {
        self.offered.iter().map(String::as_str)
    }

    /// The `101 Switching Protocols` response, naming `protocol` if the client offered it.
    pub(crate) fn response(&self, protocol: &'static str) -> Response {
        let accept = tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        let mut response = Response::new(axum::body::Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(v) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        if self.offered().any(|p| p == protocol) {
            headers.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(protocol),
            );
        }
        response
    }
}

/// Whether a comma-separated header holds `token` (case-insensitive).
fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use futures::{SinkExt, StreamExt};
    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_tungstenite::WebSocketStream;
    use tungstenite::protocol::Role;
    use tungstenite::protocol::frame::Frame;
    use tungstenite::{Message as TMessage, protocol::CloseFrame};

    use super::*;

    const MAX: usize = 64 * 1024;

    /// Our server socket and a tungstenite client on the two ends of an in-memory pipe.
    async fn pair() -> (Socket<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (a, b) = tokio::io::duplex(256 * 1024);
        let client = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
        (Socket::new(a, MAX), client)
    }

    async fn next(sock: &mut Socket<DuplexStream>) -> Result<Message, WsError> {
        poll_fn(|cx| {
            // Pongs and close replies go out as they are queued.
            let _ = sock.poll_flush(cx);
            sock.poll_message(cx)
        })
        .await
    }

    /// A masked client frame, formatted by tungstenite.
    fn client_frame(opcode: OpCode, is_final: bool, payload: &[u8]) -> Vec<u8> {
        let header = FrameHeader {
            is_final,
            rsv1: false,
            rsv2: false,
            rsv3: false,
            opcode,
            mask: Some([0x37, 0xfa, 0x21, 0x3d]),
        };
        // `format` masks the payload.
        let mut out = Vec::new();
        Frame::from_payload(header, Bytes::copy_from_slice(payload))
            .format(&mut out)
            .unwrap();
        out
    }

    /// Raw bytes into the server socket; returns the server's read error, if any.
    async fn feed_raw(
        bytes: &[u8],
    ) -> (Socket<DuplexStream>, DuplexStream, Result<Message, WsError>) {
        let (a, mut b) = tokio::io::duplex(256 * 1024);
        let mut sock = Socket::new(a, MAX);
        b.write_all(bytes).await.unwrap();
        let got = next(&mut sock).await;
        (sock, b, got)
    }

    #[tokio::test]
    async fn a_socket_waiting_for_data_holds_no_read_buffer() {
        let (mut sock, mut client) = pair().await;
        client.send(TMessage::text("hello")).await.unwrap();
        assert_eq!(
            next(&mut sock).await.unwrap(),
            Message::Text(Bytes::from("hello"))
        );
        // The socket just returned data, so it reads again and finds nothing: the state an
        // idle connection waits in.
        let pending = poll_fn(|cx| Poll::Ready(sock.poll_message(cx).is_pending())).await;
        assert!(pending, "nothing more was sent");
        assert_eq!(
            sock.rbuf.capacity(),
            0,
            "an idle socket keeps no read buffer"
        );
    }

    #[tokio::test]
    async fn messages_of_a_tungstenite_client_arrive_whole_and_in_order() {
        let (mut sock, mut client) = pair().await;
        client.send(TMessage::text("hello")).await.unwrap();
        client
            .send(TMessage::binary(vec![0u8, 1, 2, 255]))
            .await
            .unwrap();
        let big = "é".repeat(20_000); // 40,000 bytes: a 64-bit length, several reads
        client.send(TMessage::text(big.clone())).await.unwrap();
        assert_eq!(
            next(&mut sock).await.unwrap(),
            Message::Text(Bytes::from("hello"))
        );
        assert_eq!(
            next(&mut sock).await.unwrap(),
            Message::Binary(Bytes::from(vec![0u8, 1, 2, 255]))
        );
        assert_eq!(
            next(&mut sock).await.unwrap(),
            Message::Text(Bytes::from(big))
        );
        assert_eq!(
            sock.rbuf.capacity(),
            0,
            "no read buffer kept between messages"
        );
    }

    #[tokio::test]
    async fn frames_written_together_reach_a_tungstenite_client() {
        let (mut sock, mut client) = pair().await;
        sock.push_text(b"{\"a\":1}");
        sock.push_binary(&[9u8; 300]);
        sock.push_text("x".repeat(70_000).as_bytes());
        sock.push_ping();
        sock.flush().await.unwrap();
        assert_eq!(sock.wbuf.capacity(), 0, "no write buffer kept once written");
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            TMessage::text("{\"a\":1}")
        );
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            TMessage::binary(vec![9u8; 300])
        );
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            TMessage::text("x".repeat(70_000))
        );
        assert!(matches!(
            client.next().await.unwrap().unwrap(),
            TMessage::Ping(_)
        ));
    }

    #[tokio::test]
    async fn pings_are_answered_and_a_close_is_echoed() {
        let (mut sock, mut client) = pair().await;
        client
            .send(TMessage::Ping(Bytes::from_static(b"hb")))
            .await
            .unwrap();
        assert_eq!(next(&mut sock).await.unwrap(), Message::Control);
        sock.flush().await.unwrap();
        client
            .send(TMessage::Close(Some(CloseFrame {
                code: tungstenite::protocol::frame::coding::CloseCode::Away,
                reason: "bye".into(),
            })))
            .await
            .unwrap();
        assert_eq!(next(&mut sock).await.unwrap(), Message::Close(Some(1001)));
        sock.flush().await.unwrap();
        // tungstenite answers our pong silently; then it sees the echoed close.
        match client.next().await.unwrap().unwrap() {
            TMessage::Pong(p) => {
                assert_eq!(&p[..], b"hb");
                match client.next().await.unwrap().unwrap() {
                    TMessage::Close(Some(f)) => assert_eq!(u16::from(f.code), 1001),
                    other => panic!("expected the close echo, got {other:?}"),
                }
            }
            TMessage::Close(Some(f)) => assert_eq!(u16::from(f.code), 1001),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn fragmented_messages_are_reassembled_with_control_frames_between() {
        let mut bytes = client_frame(OpCode::Data(Data::Text), false, b"hel");
        bytes.extend(client_frame(OpCode::Control(Control::Ping), true, b""));
        bytes.extend(client_frame(OpCode::Data(Data::Continue), false, b"lo "));
        bytes.extend(client_frame(
            OpCode::Data(Data::Continue),
            true,
            "wörld".as_bytes(),
        ));
        let (mut sock, _peer, first) = feed_raw(&bytes).await;
        assert_eq!(first.unwrap(), Message::Control);
        assert_eq!(
            next(&mut sock).await.unwrap(),
            Message::Text(Bytes::from("hello wörld"))
        );
    }

    #[tokio::test]
    async fn protocol_errors_are_reported() {
        let unmasked = {
            let mut out = Vec::new();
            Frame::message(Bytes::from_static(b"hi"), OpCode::Data(Data::Text), true)
                .format(&mut out)
                .unwrap();
            out
        };
        let mut rsv = client_frame(OpCode::Data(Data::Text), true, b"hi");
        rsv[0] |= 0x40;
        let mut reserved_op = client_frame(OpCode::Data(Data::Text), true, b"hi");
        reserved_op[0] = (reserved_op[0] & 0xf0) | 0x3;
        let long_ping = client_frame(OpCode::Control(Control::Ping), true, &[0u8; 126]);
        let split_ping = client_frame(OpCode::Control(Control::Ping), false, b"");
        let stray = client_frame(OpCode::Data(Data::Continue), true, b"x");
        let mut nested = client_frame(OpCode::Data(Data::Text), false, b"a");
        nested.extend(client_frame(OpCode::Data(Data::Text), true, b"b"));
        let bad_close = client_frame(OpCode::Control(Control::Close), true, &[0x03, 0xed]); // 1005
        let one_byte_close = client_frame(OpCode::Control(Control::Close), true, &[0x03]);
        for (what, bytes) in [
            ("unmasked", unmasked),
            ("reserved bit", rsv),
            ("reserved opcode", reserved_op),
            ("long ping", long_ping),
            ("fragmented ping", split_ping),
            ("stray continuation", stray),
            ("nested message", nested),
            ("close code 1005", bad_close),
            ("one-byte close", one_byte_close),
        ] {
            let (_, _, got) = feed_raw(&bytes).await;
            assert!(matches!(got, Err(WsError::Protocol(_))), "{what}: {got:?}");
        }
        let (_, _, got) =
            feed_raw(&client_frame(OpCode::Data(Data::Text), true, &[0xff, 0xfe])).await;
        assert!(matches!(got, Err(WsError::Utf8)), "{got:?}");
    }

    #[tokio::test]
    async fn an_oversize_message_is_refused_from_its_header() {
        // Only the header of a 1 MiB frame is sent: the limit applies before the payload.
        let header = client_frame(OpCode::Data(Data::Binary), true, &vec![0u8; 1 << 20]);
        let (_, _, got) = feed_raw(&header[..14]).await;
        assert!(
            matches!(got, Err(WsError::TooLarge { max: MAX })),
            "{got:?}"
        );
        // Fragments add up.
        let mut bytes = client_frame(OpCode::Data(Data::Binary), false, &vec![0u8; MAX - 10]);
        bytes.extend(client_frame(OpCode::Data(Data::Continue), true, &[0u8; 11]));
        let (_, _, got) = feed_raw(&bytes).await;
        assert!(matches!(got, Err(WsError::TooLarge { .. })), "{got:?}");
        // Exactly the limit is fine.
        let (_, _, got) = feed_raw(&client_frame(
            OpCode::Data(Data::Binary),
            true,
            &vec![7u8; MAX],
        ))
        .await;
        assert_eq!(got.unwrap(), Message::Binary(Bytes::from(vec![7u8; MAX])));
    }

    #[tokio::test]
    async fn the_peer_leaving_is_eof() {
        let (a, b) = tokio::io::duplex(1024);
        let mut sock = Socket::new(a, MAX);
        drop(b);
        assert!(matches!(next(&mut sock).await, Err(WsError::Eof)));
    }

    #[tokio::test]
    async fn close_reasons_are_cut_at_a_character_boundary() {
        let (mut sock, mut client) = pair().await;
        sock.push_close(4100, &"é".repeat(100));
        sock.flush().await.unwrap();
        match client.next().await.unwrap().unwrap() {
            TMessage::Close(Some(f)) => {
                assert_eq!(u16::from(f.code), 4100);
                assert!(f.reason.len() <= 123 && f.reason.chars().all(|c| c == 'é'));
            }
            other => panic!("{other:?}"),
        }
        // The raw bytes: a close frame of at most 125 bytes.
        let (a, mut b) = tokio::io::duplex(1024);
        let mut sock = Socket::new(a, MAX);
        sock.push_close(1000, "");
        sock.flush().await.unwrap();
        let mut buf = [0u8; 4];
        b.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, [0x88, 0x02, 0x03, 0xe8]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any sequence of messages, cut into fragments and delivered in arbitrary chunks,
        /// arrives whole and in order.
        #[test]
        fn messages_survive_any_fragmentation_and_chunking(
            messages in proptest::collection::vec(
                (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..3000), 1usize..4),
                1..8,
            ),
            chunk in 1usize..700,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let mut bytes = Vec::new();
                let mut expected = Vec::new();
                for (text, raw, parts) in &messages {
                    let payload: Vec<u8> = if *text {
                        String::from_utf8_lossy(raw).into_owned().into_bytes()
                    } else {
                        raw.clone()
                    };
                    let step = payload.len().div_ceil(*parts).max(1);
                    let pieces: Vec<&[u8]> = if payload.is_empty() {
                        vec![&[][..]]
                    } else {
                        payload.chunks(step).collect()
                    };
                    for (i, piece) in pieces.iter().enumerate() {
                        let opcode = if i > 0 {
                            OpCode::Data(Data::Continue)
                        } else if *text {
                            OpCode::Data(Data::Text)
                        } else {
                            OpCode::Data(Data::Binary)
                        };
                        bytes.extend(client_frame(opcode, i + 1 == pieces.len(), piece));
                    }
                    let b = Bytes::from(payload);
                    expected.push(if *text { Message::Text(b) } else { Message::Binary(b) });
                }
                let (a, mut b) = tokio::io::duplex(1 << 20);
                let mut sock = Socket::new(a, MAX);
                let writer = tokio::spawn(async move {
                    for piece in bytes.chunks(chunk) {
                        b.write_all(piece).await.unwrap();
                        tokio::task::yield_now().await;
                    }
                    b
                });
                for want in expected {
                    let got = next(&mut sock).await.unwrap();
                    assert_eq!(got, want);
                }
                drop(writer.await.unwrap());
            });
        }
    }

    #[test]
    fn unmask_matches_the_bytewise_definition() {
        let mask = [1u8, 2, 3, 250];
        for len in 0..40 {
            let data: Vec<u8> = (0..len as u8).collect();
            let mut fast = data.clone();
            unmask(&mut fast, mask);
            let slow: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(fast, slow, "length {len}");
        }
    }
}
