//! The transport edge, against a real server on loopback: header and request timeouts,
//! connection caps, `Connection: close`, the in-flight limit, compression, the hashed widget,
//! request ids, metric HELP text and the admin listener. Raw TCP where a client library would
//! hide what is on the wire.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use common::Server;

/// The server's address from its base URL.
fn addr(base: &str) -> SocketAddr {
    base.trim_start_matches("http://").parse().expect("address")
}

/// A TCP connection to `to` from the loopback address `from` (all of 127/8 is local).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(from.parse().expect("ip"), 0))
        .expect("bind source address");
    socket.connect(to).await.expect("connect")
}

/// Waits until the server closes `tcp` (EOF or reset); returns how long that took, or `None`
/// if it is still open after `limit`. Whatever the server sends first is read and ignored.
async fn time_until_closed(tcp: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.checked_sub(started.elapsed())?;
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

/// One HTTP/1.1 response head read from `tcp`: status and lower-cased headers. Reads until
/// the blank line (the body, if any, stays unread).
async fn read_head(tcp: &mut TcpStream) -> (u16, HashMap<String, String>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(common::WAIT, tcp.read(&mut byte))
            .await
            .expect("response head in time")
            .expect("read");
        assert!(
            n == 1,
            "connection closed before a full response head: {head:?}"
        );
        head.push(byte[0]);
    }
    let text = String::from_utf8(head).expect("utf-8 head");
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers)
}

async fn server_with(tweak: impl FnOnce(&mut larachat::Config)) -> Server {
    Server::start_with(tweak).await
}

#[tokio::test]
async fn slowloris_socket_is_closed_within_the_header_timeout() {
    let s = server_with(|c| c.server.header_timeout_secs = 1).await;
    let mut tcp = TcpStream::connect(addr(&s.base)).await.unwrap();
    let head =
        b"GET /live HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let started = Instant::now();
    let mut closed_after = None;
    // One header byte every 100 ms, never finishing the head: each byte arrives well within
    // any per-read timeout, so only a deadline on the whole head can end this.
    for b in head.iter().chain(std::iter::repeat(&b'a')) {
        if tcp.write_all(&[*b]).await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(100), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed_after = Some(started.elapsed());
                break;
            }
            _ => {}
        }
        if started.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    let closed_after = closed_after.expect("a slowloris socket still open after 8 s");
    println!("slowloris socket closed after {closed_after:?} (header timeout 1 s)");
    assert!(closed_after < Duration::from_secs(4), "{closed_after:?}");
    s.stop().await;
}

#[tokio::test]
async fn silent_and_idle_keep_alive_sockets_are_closed() {
    let s = server_with(|c| c.server.header_timeout_secs = 1).await;
    let to = addr(&s.base);
    let mut silent = TcpStream::connect(to).await.unwrap();
    let mut idle = TcpStream::connect(to).await.unwrap();
    idle.write_all(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (status, headers) = read_head(&mut idle).await;
    assert_eq!(status, 200);
    assert_ne!(
        headers.get("connection").map(String::as_str),
        Some("close"),
        "a completed request keeps the connection"
    );
    let limit = Duration::from_secs(6);
    let silent_closed = time_until_closed(&mut silent, limit).await;
    let idle_closed = time_until_closed(&mut idle, limit).await;
    println!("silent socket closed after {silent_closed:?}, idle keep-alive after {idle_closed:?}");
    assert!(silent_closed.is_some(), "a silent socket is still open");
    assert!(
        idle_closed.is_some(),
        "an idle keep-alive connection is still open"
    );
    s.stop().await;
}

#[tokio::test]
async fn per_ip_cap_refuses_the_excess_while_another_ip_and_sessions_keep_working() {
    let s = server_with(|c| {
        c.server.max_connections_per_ip = 4;
        c.server.header_timeout_secs = 60;
    })
    .await;
    let to = addr(&s.base);
    // An established realtime session of the abusing address, opened before it fills its cap.
    let tenant = s.tenant("t").await;
    let conv = s.conversation(&tenant.key, &[]).await;
    let mut session = s.ws_auth(&tenant.key).await;
    session.subscribe(&conv, None).await;
    // Connections from 127.0.0.1 until one is refused: the harness's HTTP client and the
    // session already hold some of the 4 slots. Accepted ones stay silent (the header timeout
    // is 60 s); a refused one gets the fixed 503 and is closed at once, before any request.
    let mut held = Vec::new();
    let mut refused = None;
    for _ in 0..8 {
        let mut tcp = connect_from("127.0.0.1", to).await;
        let mut buf = [0u8; 12];
        match tokio::time::timeout(Duration::from_millis(300), tcp.read_exact(&mut buf)).await {
            Err(_) => held.push(tcp),
            Ok(r) => {
                refused = Some(r.map(|_| buf));
                break;
            }
        }
    }
    let refused = refused.expect("no connection over the per-IP cap was refused");
    assert_eq!(&refused.expect("the refusal"), b"HTTP/1.1 503");
    assert!(held.len() <= 3, "{} idle connections accepted", held.len());
    // Another address, and the probes, are unaffected.
    let other = reqwest::Client::builder()
        .local_address(Some("127.0.0.2".parse::<IpAddr>().unwrap()))
        .build()
        .unwrap();
    for path in ["/live", "/ready"] {
        let r = other.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path} from another address");
    }
    // The established session still works: a message sent over HTTP reaches it.
    let other_user = reqwest::Client::builder()
        .local_address(Some("127.0.0.3".parse::<IpAddr>().unwrap()))
        .build()
        .unwrap();
    let r = other_user
        .post(s.url(&format!("/api/v1/conversations/{conv}/messages")))
        .bearer_auth(&tenant.key)
        .json(&serde_json::json!({"text": "still there?", "sender": {"type": "agent", "id": "a"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let events = session.recv_until("message").await;
    assert_eq!(
        events.last().unwrap()["message"]["text"],
        "still there?",
        "{events:?}"
    );
    // A slot freed by the abuser is available again.
    drop(held.pop());
    // (The server learns of the close asynchronously: retry for a while.)
    let mut again = None;
    let deadline = Instant::now() + common::WAIT;
    while Instant::now() < deadline {
        let mut tcp = connect_from("127.0.0.1", to).await;
        tcp.write_all(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        if tcp.read_exact(&mut buf).await.is_ok() && &buf == b"HTTP/1.1 200" {
            again = Some(());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "a released per-IP slot was not reusable");
    s.stop().await;
}

#[tokio::test]
async fn early_refusals_before_the_body_say_connection_close() {
    let s = server_with(|_| {}).await;
    let to = addr(&s.base);
    // 401: the body is announced but never sent.
    let mut tcp = TcpStream::connect(to).await.unwrap();
    tcp.write_all(
        b"POST /api/v1/conversations HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n",
    )
    .await
    .unwrap();
    let (status, headers) = read_head(&mut tcp).await;
    assert_eq!(status, 401);
    assert_eq!(headers.get("connection").map(String::as_str), Some("close"));
    assert!(time_until_closed(&mut tcp, common::WAIT).await.is_some());
    // 431: a request head larger than the server buffers.
    let mut tcp = TcpStream::connect(to).await.unwrap();
    let huge = format!(
        "GET /live HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let _ = tcp.write_all(huge.as_bytes()).await;
    let (status, _) = read_head(&mut tcp).await;
    assert_eq!(status, 431, "an oversized head is refused");
    // 413: a declared body over the limit.
    let tenant = s.tenant("t").await;
    let mut tcp = TcpStream::connect(to).await.unwrap();
    let req = format!(
        "POST /api/v1/conversations HTTP/1.1\r\nHost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: 10000000\r\n\r\n",
        tenant.key
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let (status, headers) = read_head(&mut tcp).await;
    assert_eq!(status, 413);
    assert_eq!(headers.get("connection").map(String::as_str), Some("close"));
    // A request whose body was read keeps its connection: two requests on one socket.
    let mut tcp = TcpStream::connect(to).await.unwrap();
    for _ in 0..2 {
        let body = r#"{"subject":"x"}"#;
        let req = format!(
            "POST /api/v1/conversations HTTP/1.1\r\nHost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            tenant.key,
            body.len()
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let (status, headers) = read_head(&mut tcp).await;
        assert_eq!(status, 201);
        assert_ne!(headers.get("connection").map(String::as_str), Some("close"));
        let len: usize = headers["content-length"].parse().unwrap();
        let mut rest = vec![0u8; len];
        tcp.read_exact(&mut rest).await.unwrap();
    }
    s.stop().await;
}

#[tokio::test]
async fn slow_bodies_get_408_and_excess_requests_503_while_probes_answer() {
    let s = server_with(|c| {
        c.server.request_timeout_secs = 1;
        c.server.max_in_flight = 1;
    })
    .await;
    let to = addr(&s.base);
    let tenant = s.tenant("t").await;
    // Half a body: the handler waits for the rest, holding the only in-flight slot.
    let mut slow = TcpStream::connect(to).await.unwrap();
    let req = format!(
        "POST /api/v1/conversations HTTP/1.1\r\nHost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: 20\r\n\r\n{{\"subj",
        tenant.key
    );
    slow.write_all(req.as_bytes()).await.unwrap();
    // While it is in flight, another application request is shed at once; the probes are not.
    let mut shed = None;
    for _ in 0..100 {
        let r = s
            .http
            .get(s.url("/api/v1/conversations"))
            .bearer_auth(&tenant.key)
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
            shed = Some(r);
            break;
        }
        tokio::task::yield_now().await;
    }
    let shed = shed.expect("no request was shed while the slot was taken");
    assert_eq!(shed.headers()["retry-after"], "1");
    let body: serde_json::Value = shed.json().await.unwrap();
    common::assert_error(&body, "unavailable");
    let live = s.http.get(s.url("/live")).send().await.unwrap();
    assert_eq!(live.status(), StatusCode::OK, "/live is not limited");
    // The slow body is cut off by the request timeout: 408, and the connection closes.
    let (status, headers) = read_head(&mut slow).await;
    assert_eq!(status, 408);
    assert_eq!(headers.get("connection").map(String::as_str), Some("close"));
    let (st, _) = s.get("/api/v1/conversations", &tenant.key).await;
    assert_eq!(st, StatusCode::OK, "the slot is free again");
    s.stop().await;
}

#[tokio::test]
async fn responses_are_compressed_when_the_client_accepts_it() {
    let s = server_with(|_| {}).await;
    let get = |enc: &'static str| {
        let req = s.http.get(s.url("/openapi.json"));
        async move {
            let req = if enc.is_empty() {
                req
            } else {
                req.header("accept-encoding", enc)
            };
            let r = req.send().await.unwrap();
            let ce = r
                .headers()
                .get("content-encoding")
                .map(|v| v.to_str().unwrap().to_owned());
            (ce, r.bytes().await.unwrap().len())
        }
    };
    let (plain_enc, plain_len) = get("").await;
    let (gzip_enc, gzip_len) = get("gzip").await;
    let (br_enc, br_len) = get("br;q=1.0, gzip;q=0.5").await;
    println!("/openapi.json: {plain_len} B plain, {gzip_len} B gzip, {br_len} B brotli");
    assert_eq!(plain_enc, None);
    assert_eq!(gzip_enc.as_deref(), Some("gzip"));
    assert_eq!(br_enc.as_deref(), Some("br"));
    assert!(gzip_len * 3 < plain_len && br_len * 3 < plain_len);
    // The WebSocket handshake is never compressed (and still works).
    let _ws = s.ws().await;
    s.stop().await;
}

#[tokio::test]
async fn the_widget_has_a_hashed_immutable_url_with_etag_and_304() {
    let s = server_with(|_| {}).await;
    let loader = s.http.get(s.url("/widget/loader.js")).send().await.unwrap();
    assert_eq!(loader.status(), StatusCode::OK);
    assert_eq!(loader.headers()["cache-control"], "public, max-age=300");
    let loader_etag = loader.headers()["etag"].clone();
    let text = loader.text().await.unwrap();
    let start = 1 + text
        .find("'/widget/widget.")
        .expect("the loader names the widget");
    let path = &text[start..start + text[start..].find('\'').unwrap()];
    assert!(
        path.len() == "/widget/widget.0123456789abcdef.js".len() && path.ends_with(".js"),
        "{path}"
    );
    let widget = s
        .http
        .get(s.url(path))
        .header("accept-encoding", "br")
        .send()
        .await
        .unwrap();
    assert_eq!(widget.status(), StatusCode::OK);
    assert_eq!(
        widget.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(widget.headers()["content-encoding"], "br");
    let etag = widget.headers()["etag"].clone();
    assert!(etag.to_str().unwrap().starts_with('"'), "strong ETag");
    let wire = widget.bytes().await.unwrap().len();
    let plain = s.http.get(s.url(path)).send().await.unwrap();
    let raw = plain.bytes().await.unwrap().len();
    println!("widget: {raw} B uncompressed, {wire} B brotli on the wire");
    assert!(wire * 2 < raw);
    for (url, tag) in [
        (path.to_owned(), etag),
        ("/widget/loader.js".into(), loader_etag),
    ] {
        let r = s
            .http
            .get(s.url(&url))
            .header("if-none-match", tag.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{url}");
        assert_eq!(r.headers()["etag"], tag);
        assert!(r.bytes().await.unwrap().is_empty());
    }
    // Another version's hash is sent to the current file, not given it under its own name.
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirect
        .get(s.url("/widget/widget.0000000000000000.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(r.headers()["location"], path);
    let r = s.http.get(s.url("/widget/other.js")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    s.stop().await;
}

#[tokio::test]
async fn every_response_has_a_request_id() {
    let s = server_with(|_| {}).await;
    let id = |r: &reqwest::Response| r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let fresh = s.http.get(s.url("/live")).send().await.unwrap();
    let generated = id(&fresh);
    assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");
    let missing = s.http.get(s.url("/nowhere")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_ne!(id(&missing), generated, "one id per request");
    let kept = s
        .http
        .get(s.url("/live"))
        .header("x-request-id", "trace-42.a_b:c")
        .send()
        .await
        .unwrap();
    assert_eq!(
        id(&kept),
        "trace-42.a_b:c",
        "a sane client id is propagated"
    );
    let replaced = s
        .http
        .get(s.url("/live"))
        .header("x-request-id", "x".repeat(500))
        .send()
        .await
        .unwrap();
    assert!(
        uuid::Uuid::parse_str(&id(&replaced)).is_ok(),
        "an insane one is replaced"
    );
    s.stop().await;
}

/// Checks the text exposition strictly: every family has `# HELP` and `# TYPE` before its
/// samples, and every sample belongs to a declared family. Returns the family names.
fn check_exposition(text: &str) -> Vec<String> {
    let mut help = std::collections::HashSet::new();
    let mut families = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, doc) = rest.split_once(' ').expect("HELP has a text");
            assert!(!doc.trim().is_empty(), "empty HELP for {name}");
            help.insert(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap().to_owned();
            assert!(help.contains(&name), "{name} has no HELP text");
            families.push(name);
        } else {
            assert!(!line.starts_with('#'), "unexpected comment {line}");
            let name = line.split(['{', ' ']).next().unwrap();
            let family = families
                .iter()
                .rev()
                .find(|f| {
                    name == f.as_str()
                        || ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|sfx| name.strip_suffix(sfx) == Some(f.as_str()))
                })
                .unwrap_or_else(|| panic!("sample {name} of an undeclared family"));
            assert!(help.contains(family));
            let value = line.rsplit(' ').next().unwrap();
            assert!(
                value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
                "bad value in {line}"
            );
        }
    }
    families
}

#[tokio::test]
async fn metrics_have_help_text_process_metrics_and_build_info() {
    let s = server_with(|_| {}).await;
    // Traffic that touches the gateway, realtime, widget, admin and server families.
    let tenant = s.tenant("t").await;
    let conv = s.conversation(&tenant.key, &[]).await;
    s.send(&tenant.key, &conv, "hi").await;
    let mut ws = s.ws_auth(&tenant.key).await;
    ws.subscribe(&conv, None).await;
    let _ = s.http.get(s.url("/nowhere")).send().await.unwrap();
    let text = s
        .http
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let families = check_exposition(&text);
    for expected in [
        "larachat_http_requests_total",
        "larachat_http_request_duration_seconds",
        "larachat_gateway_messages_stored_total",
        "larachat_gateway_ws_connections",
        "larachat_admin_logins_total",
        "larachat_server_connections",
        "larachat_build_info",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        "process_cpu_seconds_total",
    ] {
        assert!(
            families.iter().any(|f| f == expected),
            "{expected} missing:\n{text}"
        );
    }
    // And Prometheus's own checker, where it is installed (scripts/test.sh installs it and
    // sets LARACHAT_PROMTOOL).
    match std::env::var("LARACHAT_PROMTOOL") {
        Ok(promtool) => {
            use std::io::Write;
            let mut child = std::process::Command::new(&promtool)
                .args(["check", "metrics"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {promtool}: {e}"));
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            println!("promtool check metrics: ok");
        }
        Err(_) => println!("promtool not run (LARACHAT_PROMTOOL unset); strict parser only"),
    }
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        text.lines()
            .any(|l| l == format!("larachat_build_info{{version=\"{version}\"}} 1")),
        "{text}"
    );
    s.stop().await;
}

#[tokio::test]
async fn the_admin_listener_serves_metrics_and_the_public_one_does_not() {
    let s = server_with(|c| c.server.admin_listen = "127.0.0.1:0".into()).await;
    let admin = s.admin_base.clone().expect("admin listener bound");
    for path in ["/metrics", "/ready", "/live"] {
        let r = s.http.get(format!("{admin}{path}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "admin {path}");
    }
    let text = s
        .http
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("larachat_build_info"));
    let r = s.http.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "/metrics left the public listener"
    );
    for path in ["/live", "/ready"] {
        let r = s.http.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "public {path}");
    }
    let r = s
        .http
        .get(format!("{admin}/api/v1/conversations"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "no API on the admin listener"
    );
    s.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_the_request_in_flight_and_closes_idle_connections() {
    let s = server_with(|c| c.server.header_timeout_secs = 60).await;
    let to = addr(&s.base);
    let tenant = s.tenant("t").await;
    let mut idle = TcpStream::connect(to).await.unwrap();
    idle.write_all(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (status, _) = read_head(&mut idle).await;
    assert_eq!(status, 200);
    let mut in_flight = TcpStream::connect(to).await.unwrap();
    let req = format!(
        "POST /api/v1/conversations HTTP/1.1\r\nHost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{{\"subj",
        tenant.key
    );
    in_flight.write_all(req.as_bytes()).await.unwrap();
    let stopping = tokio::spawn(s.stop());
    // The idle keep-alive connection is closed at once; the request in flight may finish.
    assert!(
        time_until_closed(&mut idle, Duration::from_secs(1))
            .await
            .is_some(),
        "idle connection kept open during the drain"
    );
    in_flight.write_all(b"ect\":\"x\"}").await.unwrap();
    let (status, headers) = read_head(&mut in_flight).await;
    assert_eq!(status, 201, "the request in flight was answered");
    assert_eq!(headers.get("connection").map(String::as_str), Some("close"));
    stopping.await.unwrap();
}
