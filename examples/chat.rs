//! A tiny realtime client for trying Lara Chat from a terminal.
//!
//! ```sh
//! cargo run -q --example chat -- ws://127.0.0.1:8080/realtime/v1 <token or sk_live key> <conversation id>
//! ```
//!
//! It authenticates, subscribes to the conversation, prints every frame it receives as one
//! JSON line, and sends each line typed on stdin as a message (with a fresh `client_msg_id`).
//! Lines starting with `/` are sent as raw frames, e.g. `/{"type":"ping","id":1}`.
//! Optional 4th argument: `after=<message id>` to resume. Exits when stdin ends and every
//! sent message is acknowledged, or when the server closes the connection; it then prints on
//! stderr the `after=` to resume with: its contiguous cursor (protocol §7), the newest message
//! below which it received every `seq`.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, token, conversation, rest @ ..] = args.as_slice() else {
        eprintln!("usage: chat <ws url> <token> <conversation id> [after=<message id>]");
        std::process::exit(2);
    };
    let after = rest.iter().find_map(|a| a.strip_prefix("after="));
    let (ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    let (mut tx, mut rx) = ws.split();
    let send = |v: Value| Message::Text(v.to_string().into());
    tx.send(send(json!({"type": "auth", "id": 0, "token": token})))
        .await?;
    let mut sub = json!({"type": "subscribe", "id": 1, "conversation_id": conversation});
    if let Some(a) = after {
        sub["after"] = json!(a);
    }
    tx.send(send(sub)).await?;

    let mut cursor = Cursor::default();
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let mut next_id = 2u64;
    let mut unacked = 0usize;
    let session = std::process::id();
    loop {
        if !stdin_open && unacked == 0 {
            // Give live events a moment to arrive before leaving.
            match tokio::time::timeout(Duration::from_millis(500), rx.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    println!("{t}");
                    cursor.frame(&serde_json::from_str(&t).unwrap_or(Value::Null));
                }
                Ok(Some(Ok(_))) => {}
                _ => break,
            }
            continue;
        }
        tokio::select! {
            line = stdin.next_line(), if stdin_open => match line? {
                Some(line) if line.starts_with('/') => {
                    tx.send(Message::Text(line[1..].to_owned().into())).await?;
                }
                Some(line) if !line.trim().is_empty() => {
                    let id = next_id;
                    next_id += 1;
                    unacked += 1;
                    tx.send(send(json!({"type": "send", "id": id, "conversation_id": conversation,
                        "client_msg_id": format!("cli-{session}-{id}"), "text": line}))).await?;
                }
                Some(_) => {}
                None => stdin_open = false,
            },
            frame = rx.next() => match frame {
                Some(Ok(Message::Text(t))) => {
                    println!("{t}");
                    let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                    cursor.frame(&v);
                    if v["type"] == "ack" || (v["type"] == "error" && v["id"].as_u64().unwrap_or(0) >= 2) {
                        unacked = unacked.saturating_sub(1);
                    }
                }
                Some(Ok(Message::Close(c))) => {
                    println!("{}", json!({"closed": c.map(|c| u16::from(c.code))}));
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => break,
            },
        }
    }
    if let Some((_, id)) = &cursor.at {
        eprintln!("resume with: after={id}");
    }
    Ok(())
}

/// The contiguous resume cursor of protocol §7 for one conversation.
#[derive(Default)]
struct Cursor {
    /// (seq, id) of the newest message with every seq below it received.
    at: Option<(u64, String)>,
    /// Messages received above the cursor, waiting for the gap below them: seq → id.
    ahead: BTreeMap<u64, String>,
}

impl Cursor {
    fn frame(&mut self, f: &Value) {
        let message = match f["type"].as_str() {
            Some("message") => &f["message"],
            Some("ack") => &f["message"],
            // The replay that `subscribe` (id 1, with or without `after`) started is complete:
            // the cursor jumps to the newest message held.
            Some("subscribed") if f["id"] == 1 => {
                if let Some((seq, id)) = self.ahead.pop_last() {
                    self.ahead.clear();
                    self.at = Some((seq, id));
                }
                return;
            }
            _ => return,
        };
        let (Some(seq), Some(id)) = (message["seq"].as_u64(), message["id"].as_str()) else {
            return;
        };
        match &self.at {
            Some((at, _)) if seq <= *at => return,
            // The first message starts the cursor (this client keeps no older history).
            None if self.ahead.is_empty() => self.at = Some((seq.saturating_sub(1), String::new())),
            _ => {}
        }
        self.ahead.insert(seq, id.to_owned());
        while let Some((at, _)) = &self.at {
            match self.ahead.remove(&(at + 1)) {
                Some(next) => self.at = Some((at + 1, next)),
                None => break,
            }
        }
    }
}
