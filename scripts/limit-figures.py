#!/usr/bin/env python3
"""Prints the closing figures of the rate limits with the DEFAULT configuration: how many
requests pass before the first 429 per API key and per client address, wrong logins before
throttling, widget inits and widget messages out of a burst. Each scenario gets a fresh
`larachat serve` (LARACHAT_BIN, else target/debug/larachat) on 127.0.0.1:0 with a temp data
dir; requests are sequential, from this machine only.

    python3 scripts/limit-figures.py
"""
import json
import os
import re
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

BIN = os.environ.get("LARACHAT_BIN") or os.path.join(
    os.path.dirname(__file__), "..", "target", "debug", "larachat")
ADMIN = ("figures@example.com", "figures-password")


def call(method, url, token=None, body=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, r.headers, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read() or b"null")


class Server:
    def __enter__(self):
        self.dir = tempfile.TemporaryDirectory()
        env = {k: v for k, v in os.environ.items() if not k.startswith("LARACHAT_")}
        env.update(LARACHAT_ADMIN_EMAIL=ADMIN[0], LARACHAT_ADMIN_PASSWORD=ADMIN[1],
                   LARACHAT_LOG="error", LARACHAT_DEMO__ENABLED="false")
        self.proc = subprocess.Popen(
            [BIN, "serve", "--listen", "127.0.0.1:0", "--data-dir", self.dir.name],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        self.base = re.search(r"(http://\S+)", line).group(1)
        return self

    def __exit__(self, *_):
        self.proc.terminate()
        self.proc.wait()
        self.dir.cleanup()

    def setup(self, widget_origin=None):
        """Admin token, a project with a secret key (and a publishable key + widget origin)."""
        _, _, login = call("POST", self.base + "/api/admin/login",
                           body={"email": ADMIN[0], "password": ADMIN[1]})
        admin = login["token"]
        _, _, p = call("POST", self.base + "/api/admin/projects", admin, {"name": "figures"})
        keys = self.base + f"/api/admin/projects/{p['id']}/api-keys"
        _, _, k = call("POST", keys, admin, {"name": "k"})
        pk = None
        if widget_origin:
            _, _, pk = call("POST", keys, admin, {"name": "w", "kind": "publishable"})
            call("PUT", self.base + f"/api/admin/projects/{p['id']}/widget", admin,
                 {"allowed_origins": [widget_origin]})
            pk = pk["key"]
        return admin, k["key"], pk


def until_429(send, limit=5000):
    for n in range(limit):
        status, headers, body = send(n)
        if status == 429:
            return n, headers
    return None, None


def main():
    with Server() as s:
        _, key, _ = s.setup()
        n, h = until_429(lambda _: call("GET", s.base + "/api/v1/conversations", key))
        print(f"per API key: {n} requests passed, then 429 (Retry-After {h.get('Retry-After')} s, "
              f"RateLimit-Limit {h.get('RateLimit-Limit')}, RateLimit-Reset {h.get('RateLimit-Reset')} s)")
    with Server() as s:
        n, h = until_429(lambda _: call("GET", s.base + "/api/v1/conversations", "sk_live_x"))
        print(f"per client address (unauthenticated): {n} requests passed, then 429 "
              f"(Retry-After {h.get('Retry-After')} s, RateLimit-Limit {h.get('RateLimit-Limit')})")
    with Server() as s:
        n, h = until_429(lambda _: call("POST", s.base + "/api/admin/login",
                                        body={"email": ADMIN[0], "password": "wrong password"}))
        print(f"login: {n} wrong passwords answered 401, then 429 (Retry-After {h.get('Retry-After')} s)")
    origin = "https://shop.example.com"
    with Server() as s:
        _, _, pk = s.setup(origin)
        codes = [call("POST", s.base + f"/widget/v1/init?key={pk}", body={},
                      headers={"origin": origin})[0] for _ in range(300)]
        print(f"widget init: 300 anonymous inits → {codes.count(200)} × 200, {codes.count(429)} × 429")
    with Server() as s:
        _, _, pk = s.setup(origin)
        _, _, init = call("POST", s.base + f"/widget/v1/init?key={pk}", body={},
                          headers={"origin": origin})
        token = init["session"]["token"]
        start, codes = time.monotonic(), []
        while time.monotonic() - start < 1.0:
            codes.append(call("POST", s.base + f"/widget/v1/messages?key={pk}", token,
                              {"text": "spam", "client_msg_id": f"m{len(codes)}"},
                              {"origin": origin})[0])
        print(f"widget messages: {len(codes)} sent in 1 s by one visitor → "
              f"{codes.count(201)} × 201, {codes.count(429)} × 429")


if __name__ == "__main__":
    main()
