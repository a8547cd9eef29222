#!/usr/bin/env python3
"""Event lag from commit to webhook receipt, and deliveries/s to one endpoint, under send load.

Starts a fresh `larachat serve` (LARACHAT_BIN, else target/release/larachat) on loopback with a
temp data dir, rate limits off and `webhooks.allow_insecure_targets` on (the receiver is
http on loopback). Creates a project and a secret key, registers one endpoint for
`message.sent` pointing at a receiver in this script, then runs the load tester
(`target/release/larachat-loadtest throughput --connections C --window 1 --duration-secs S`,
C=50 and S=10 unless CONNECTIONS / DURATION say otherwise) with that key. For every delivery
the receiver records receipt time minus the event's `timestamp` (the message's commit time,
millisecond precision, same machine clock). It waits until every acknowledged message has been
delivered (or 120 s), then prints: messages acknowledged, deliveries received (distinct
`webhook-id`s and duplicates), lag p50 / p90 / p99 / max, deliveries/s while the load ran and
overall, and how long the backlog took to drain after the load stopped.

The receiver answers 204 without verifying signatures (tests/webhooks.rs, tests/durability.rs
and webhooks/tests/receiver.rs verify them with the `standardwebhooks` package). RECEIVER=rust
(the default) uses `target/release/examples/webhook_receiver` (axum, in its own process);
RECEIVER=python the threading HTTP server in this script, which is slower than the worker (see
docs/webhooks.md for both measured alone: `webhook_receiver --flood`).

    cargo build --release -p larachat -p larachat-loadtest --examples
    python3 loadtest/webhook-lag.py

Distributed target: with GATEWAY_URL and ADMIN_URL set (e.g. from `deploy/local-cluster.sh
start`; its control plane must run with LARACHAT_WEBHOOKS__ALLOW_INSECURE_TARGETS=true and
LARACHAT_LIMITS__ENABLED=false, and its admin be LARACHAT_ADMIN_EMAIL / _PASSWORD, default
admin@example.com / change-me-please) no server is started: the load goes to the gateway, the
events go gateway → CQL outbox → JetStream → the control plane's (or a worker's) webhooks
consumer → the receiver (docs/events.md).
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BIN = os.environ.get("LARACHAT_BIN") or os.path.join(ROOT, "target", "release", "larachat")
LOADTEST = os.environ.get("LOADTEST_BIN") or os.path.join(
    ROOT, "target", "release", "larachat-loadtest")
CONNECTIONS = int(os.environ.get("CONNECTIONS", "50"))
DURATION = int(os.environ.get("DURATION", "10"))
RECEIVER = os.environ.get("RECEIVER", "rust")
RUST_RECEIVER = os.path.join(ROOT, "target", "release", "examples", "webhook_receiver")
ADMIN = ("lag@example.com", "lag-password-0123")

lock = threading.Lock()
received = []  # (receipt time, event timestamp, webhook-id)


def call(method, url, token=None, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read() or b"null")


class Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        now = time.time()
        event = json.loads(body)
        at = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
        with lock:
            received.append((now, at, self.headers["webhook-id"]))
        self.send_response(204)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def start_rust_receiver():
    """Starts the axum receiver; a thread reads its lines into `received`."""
    proc = subprocess.Popen([RUST_RECEIVER, "127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline().split()[1])

    def read():
        for line in proc.stdout:
            at_ms, ts_ms, wid = line.split()
            with lock:
                received.append((float(at_ms) / 1000, float(ts_ms) / 1000, wid))

    threading.Thread(target=read, daemon=True).start()
    return proc, port


class External:
    """A distributed cluster started elsewhere (GATEWAY_URL, ADMIN_URL)."""
    pid = None

    def terminate(self):
        pass

    def wait(self):
        pass


def main():
    if RECEIVER == "python":
        receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
        receiver.daemon_threads = True
        threading.Thread(target=receiver.serve_forever, daemon=True).start()
        port = receiver.server_address[1]
        stop_receiver = receiver.shutdown
    else:
        proc, port = start_rust_receiver()
        stop_receiver = proc.terminate
    data = tempfile.TemporaryDirectory()
    if os.environ.get("GATEWAY_URL"):
        return run(port, stop_receiver, data, External(), os.environ["GATEWAY_URL"],
                   os.environ["ADMIN_URL"],
                   (os.environ.get("LARACHAT_ADMIN_EMAIL", "admin@example.com"),
                    os.environ.get("LARACHAT_ADMIN_PASSWORD", "change-me-please")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LARACHAT_")}
    env.update(LARACHAT_ADMIN_EMAIL=ADMIN[0], LARACHAT_ADMIN_PASSWORD=ADMIN[1],
               LARACHAT_LOG="error", LARACHAT_DEMO__ENABLED="false",
               LARACHAT_LIMITS__ENABLED="false",
               LARACHAT_SERVER__MAX_CONNECTIONS_PER_IP="0",
               LARACHAT_WEBHOOKS__ALLOW_INSECURE_TARGETS="true")
    server = subprocess.Popen([BIN, "serve", "--listen", "127.0.0.1:0", "--data-dir", data.name],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True)
    base = re.search(r"(http://\S+)", server.stdout.readline()).group(1)
    run(port, stop_receiver, data, server, base, base, ADMIN)


def run(port, stop_receiver, data, server, base, admin_base, credentials):
    try:
        admin = call("POST", admin_base + "/api/admin/login",
                     body={"email": credentials[0], "password": credentials[1]})["token"]
        # Enterprise: the load goes beyond the Free plan's 1,000 messages a month (the
        # bootstrap admin is a platform admin, who may choose a project's plan).
        project = call("POST", admin_base + "/api/admin/projects", admin,
                       {"name": "lag", "plan": "enterprise"})
        key = call("POST", admin_base + f"/api/admin/projects/{project['id']}/api-keys", admin,
                   {"name": "load"})["key"]
        call("POST", base + "/api/v1/webhooks", key,
             {"url": f"http://127.0.0.1:{port}/hook",
              "events": ["message.sent"]})
        start = time.time()
        out = subprocess.run(
            [LOADTEST, "throughput", "--url", base, "--key", key, "--connections",
             str(CONNECTIONS), "--window", "1", "--duration-secs", str(DURATION), "--json",
             "--no-progress"] + (["--server-pid", str(server.pid)] if server.pid else [])
            + ["--out", os.path.join(data.name, "results")],
            check=True, capture_output=True, text=True)
        load_end = time.time()
        result = json.loads(out.stdout.strip().splitlines()[-1])
        acked = result["acked"]
        deadline = time.time() + 120
        while time.time() < deadline:
            with lock:
                if len({r[2] for r in received}) >= acked:
                    break
            time.sleep(0.05)
        with lock:
            rows = list(received)
        ids = {r[2] for r in rows}
        lags = [(now - at) * 1000 for now, at, _ in rows]
        during = [r for r in rows if r[0] <= load_end]
        last = max((r[0] for r in rows), default=load_end)
        print(f"receiver: {RECEIVER}")
        print(f"load: {CONNECTIONS} connections x window 1 for {DURATION} s, "
              f"{acked} messages acknowledged ({acked / (load_end - start):.0f} msg/s)")
        print(f"deliveries: {len(rows)} received, {len(ids)} distinct webhook-ids, "
              f"{len(rows) - len(ids)} duplicates, {acked - len(ids)} missing")
        print(f"lag commit -> receipt ms: p50 {pct(lags, 50):.1f}  p90 {pct(lags, 90):.1f}  "
              f"p99 {pct(lags, 99):.1f}  max {max(lags, default=float('nan')):.1f}")
        print(f"deliveries/s: {len(during) / (load_end - start):.0f} while the load ran, "
              f"{len(rows) / max(last - start, 1e-9):.0f} overall; backlog drained "
              f"{max(0.0, last - load_end):.1f} s after the load stopped")
        print(f"load average: {open('/proc/loadavg').read().strip()}")
        if acked - len(ids) > 0:
            sys.exit(1)
    finally:
        server.terminate()
        server.wait()
        stop_receiver()
        data.cleanup()


if __name__ == "__main__":
    main()
