//! A trivial WebSocket echo server: the reference for the 1:1 latency floor (issue 10). Every
//! text or binary message on `GET /echo` comes back as it is. axum + tungstenite with a
//! small read buffer, as the 100-line program; nothing else (no auth, no store, no
//! bus). Not part of the product.
//!
//!   cargo run --release -p larachat-loadtest --example echo_server -- 127.0.0.1:0
//!
//! prints `listening on ADDR` once bound; then `larachat-loadtest echo --url http://ADDR`.

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;

async fn echo(ws: WebSocketUpgrade) -> Response {
    ws.read_buffer_size(4096)
        .write_buffer_size(0)
        .on_upgrade(serve)
}

async fn serve(mut socket: WebSocket) {
    while let Some(Ok(m)) = socket.recv().await {
        let reply = match m {
            Message::Text(_) | Message::Binary(_) => m,
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        if socket.send(reply).await.is_err() {
            break;
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8090".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    let app = Router::new().route("/echo", get(echo));
    axum::serve(listener, app).await
}
