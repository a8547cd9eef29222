//! The listener: one place that owns accept, connection limits, accept back-off, the HTTP/1.1
//! timeouts and the shutdown drain, in front of the axum router (the shape of mini-redis's
//! `server.rs`: a listener struct with the limits, one task per connection, shutdown by a
//! broadcast token, tasks tracked so the drain can wait for them).
//!
//! Order of defence, cheapest first:
//! 1. **Admission** right after `accept`, before a byte is read: a global cap
//!    ([`Limits::max_connections`]) and a per-IP cap ([`Limits::max_connections_per_ip`];
//!    IPv6 counted per /64, since one host owns a whole /64). A refused socket gets a fixed
//!    `503` written without waiting (best effort) and is closed at once: no parsing, no task.
//!    The permits travel inside the socket ([`Admitted`]), so a connection upgraded to a
//!    WebSocket keeps counting until that socket closes.
//! 2. **Accept errors**: per-connection errors (reset, aborted) are skipped; resource errors
//!    (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`) back off from 10 ms doubling to 1 s, logged at
//!    powers of two, so descriptor exhaustion neither spins a core nor ends the loop.
//! 3. **hyper's HTTP/1.1 header timer** ([`Limits::header_timeout`]): a request head must be
//!    complete within this time of the connection opening or of the previous response. It
//!    closes slowloris sockets (one header byte per second), silent sockets and idle keep-alive
//!    connections alike, and bounds the WebSocket handshake (the upgrade is a request head).
//!    After the upgrade the realtime auth deadline takes over.
//!
//! Request timeouts, the in-flight limit and response hygiene are HTTP middleware
//! ([`crate::edge`]). The drain: [`Shutdown::stop`] ends every accept loop (the listening
//! sockets close, so new connections are refused by the kernel) and asks every connection to
//! finish its in-flight request and close (`Connection: close`); whatever is still open when
//! the grace period ends is dropped by [`Shutdown::force`].

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use larachat_core::throttle::PowersOfTwo;

use crate::telemetry;

/// Written (without waiting) to a connection refused at admission, then the socket is closed.
static REFUSED: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let body = r#"{"error":{"code":"unavailable","message":"too many connections, try again later","retryable":true}}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 5\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
});
/// Largest request head (and connection read buffer) accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// First and longest pause after an accept error that is not about one connection.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Connection limits and timeouts of one listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `public` or `admin`: the `listener` label of the server metrics.
    pub name: &'static str,
    /// Open connections (WebSockets included) above which new ones are refused.
    pub max_connections: usize,
    /// Open connections per client IP (per /64 for IPv6); 0 = no per-IP cap.
    pub max_connections_per_ip: usize,
    /// Time to receive a complete request head, from the connection's start or the end of
    /// its previous response (so also the keep-alive idle timeout).
    pub header_timeout: Duration,
}

/// The drain signals shared by every listener of a process.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Stop accepting; ask open connections to finish their request and close.
    pub stop: CancellationToken,
    /// Close whatever is still open (after the grace period).
    pub force: CancellationToken,
    /// Every connection task of every listener.
    pub connections: TaskTracker,
}

impl Shutdown {
    /// Stops accepting and waits up to `grace` for open HTTP connections to finish; then
    /// closes the rest. Returns how many were force-closed.
    pub async fn drain(&self, grace: Duration) -> usize {
        self.stop.cancel();
        self.connections.close();
        if tokio::time::timeout(grace, self.connections.wait())
            .await
            .is_ok()
        {
            return 0;
        }
        let left = self.connections.len();
        tracing::warn!(
            connections = left,
            "closing connections still open after the grace period"
        );
        self.force.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.connections.wait()).await;
        left
    }
}

/// Counts open connections per client address. Bounded: an entry exists only while its
/// address holds a connection, and connections are bounded by the global cap.
struct PerIp {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection's share of the per-IP count; released on drop.
struct IpSlot {
    table: Arc<PerIp>,
    key: IpAddr,
}

/// An accepted socket with its admission permits: dropping it (wherever hyper or a WebSocket
/// task holds it) releases the global and per-IP slots and the gauge.
pub struct Admitted {
    tcp: TcpStream,
    _global: OwnedSemaphorePermit,
    _ip: Option<IpSlot>,
    _gauge: telemetry::OpenConnection,
}

/// Why a connection was refused at admission (the `reason` label).
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Global,
    PerIp,
}

impl PerIp {
    fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            counts: Mutex::new(HashMap::new()),
        })
    }

    fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let key = ip_key(ip);
        let mut counts = self.counts.lock();
        let n = counts.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            table: self.clone(),
            key,
        })
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.counts.lock().len()
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.table.counts.lock();
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::Global => "max_connections",
            Refusal::PerIp => "max_connections_per_ip",
        }
    }
}

/// The address a per-IP cap counts: IPv4 (IPv4-mapped IPv6 included) as is, IPv6 by its /64.
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The default global cap for a descriptor limit of `nofile`: the limit minus headroom for
/// the process's other descriptors (store files, NATS and CQL connections, the runtime, the
/// admin listener, and the sockets briefly open while being refused), at least 16.
pub fn default_max_connections(nofile: u64, admin_listener: bool) -> usize {
    let headroom = 64
        + nofile / 8
        + if admin_listener {
            ADMIN_MAX_CONNECTIONS
        } else {
            0
        } as u64;
    nofile
        .saturating_sub(headroom)
        .clamp(16, MAX_CONNECTIONS_LIMIT as u64) as usize
}

/// The largest accepted value of any connection cap.
pub const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;

/// Connections the admin listener accepts (Prometheus, probes, an operator's curl).
pub const ADMIN_MAX_CONNECTIONS: usize = 32;

/// Raises the soft descriptor limit to the hard one (as the Go runtime does at start: the
/// soft default of 1024 is a relic of `select`, which nothing here uses) and returns the limit
/// in force (`u64::MAX` when unlimited).
pub fn raise_nofile_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    // `None` is "unlimited".
    let Some(current) = limit.current else {
        return u64::MAX;
    };
    let max = limit.maximum.unwrap_or(current);
    if max > current {
        let raised = rustix::process::Rlimit {
            current: Some(max),
            maximum: Some(max),
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            tracing::debug!(from = current, to = max, "raised the descriptor limit");
            return max;
        }
    }
    current
}

/// Accepts on `listener` until `shutdown.stop`, serving each admitted connection with
/// `router` over HTTP/1.1 (with upgrades).
pub async fn serve(listener: TcpListener, router: Router, limits: Limits, shutdown: Shutdown) {
    let global = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip = PerIp::new(limits.max_connections_per_ip);
    let errors = PowersOfTwo::default();
    let mut backoff = BACKOFF_MIN;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // hyper's default read buffer may grow to ~400 KiB per connection while a head
        // arrives; every head this server needs fits in 64 KiB (larger ones get 431), so a
        // flood of huge heads costs about 64 KiB per admitted connection.
        .max_buf_size(MAX_HEAD_BYTES)
        .max_header_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.stop.cancelled() => break,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => {
                backoff = BACKOFF_MIN;
                a
            }
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                telemetry::accept_error(limits.name);
                if let Some(n) = errors.add(1) {
                    tracing::warn!(error = %e, total = n, pause_ms = backoff.as_millis() as u64,
                        listener = limits.name, "accept failed; backing off");
                }
                tokio::select! {
                    _ = shutdown.stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let admitted = match admit(tcp, peer.ip(), &global, &per_ip, limits.name) {
            Ok(a) => a,
            Err((tcp, why)) => {
                refuse(tcp, why, limits.name);
                continue;
            }
        };
        let conn = http.clone();
        let router = router.clone();
        let shutdown2 = shutdown.clone();
        shutdown.connections.spawn(async move {
            serve_connection(conn, admitted, peer, router, shutdown2).await;
        });
    }
    tracing::debug!(listener = limits.name, "stopped accepting");
}

/// Takes the global and per-IP slots for a new connection, or gives the socket back.
fn admit(
    tcp: TcpStream,
    ip: IpAddr,
    global: &Arc<Semaphore>,
    per_ip: &Arc<PerIp>,
    listener: &'static str,
) -> Result<Admitted, (TcpStream, Refusal)> {
    let Ok(permit) = global.clone().try_acquire_owned() else {
        return Err((tcp, Refusal::Global));
    };
    let slot = if per_ip.max == 0 {
        None
    } else {
        match per_ip.acquire(ip) {
            Some(s) => Some(s),
            None => return Err((tcp, Refusal::PerIp)),
        }
    };
    // Small frames (acks, events) go out at once: without TCP_NODELAY, Nagle's algorithm
    // and the peer's delayed ACK hold some of them back for tens of milliseconds.
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    Ok(Admitted {
        tcp,
        _global: permit,
        _ip: slot,
        _gauge: telemetry::OpenConnection::new(listener),
    })
}

/// Writes the fixed 503 if the socket takes it now, and closes it.
fn refuse(tcp: TcpStream, why: Refusal, listener: &'static str) {
    telemetry::connection_refused(listener, why.label());
    let _ = tcp.try_write(&REFUSED);
    drop(tcp);
}

async fn serve_connection(
    http: hyper::server::conn::http1::Builder,
    io: Admitted,
    peer: SocketAddr,
    router: Router,
    shutdown: Shutdown,
) {
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(req.map(axum::body::Body::new))
    });
    let conn = http
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.stop.cancelled() => {
            // Finish the request in flight (answered with `Connection: close`), close an
            // idle connection now.
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.force.cancelled() => return,
            }
        }
    };
    if let Err(e) = result {
        // Timeouts, resets and malformed requests: the client's problem, not the server's.
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
}

/// Errors about one incoming connection: take the next one at once.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_is_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(ip_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn per_ip_slots_are_capped_and_forgotten_when_released() {
        let table = PerIp::new(2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = table.acquire(ip).unwrap();
        let s2 = table.acquire(ip).unwrap();
        assert!(
            table.acquire(ip).is_none(),
            "third from one address refused"
        );
        let o = table.acquire(other).unwrap();
        drop(s1);
        let s3 = table.acquire(ip).expect("a released slot is reusable");
        drop((s2, s3, o));
        assert_eq!(table.tracked(), 0, "no entry outlives its connections");
    }

    #[test]
    fn default_cap_leaves_headroom() {
        assert_eq!(default_max_connections(256, false), 256 - 64 - 32);
        assert_eq!(default_max_connections(1024, true), 1024 - 64 - 128 - 32);
        assert_eq!(default_max_connections(10, false), 16, "never below 16");
        assert!(default_max_connections(1 << 20, false) > 900_000);
        assert_eq!(
            default_max_connections(u64::MAX, false),
            MAX_CONNECTIONS_LIMIT
        );
    }

    #[test]
    fn the_refusal_is_a_complete_http_response() {
        let text = std::str::from_utf8(&REFUSED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), len);
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "unavailable");
    }
}
