"""A webhook receiver for the tests: verifies every delivery with the `standardwebhooks`
package from PyPI (an implementation independent of ours) and reports it on stdout.

Usage: receiver.py PORT SECRET [bodies]   (PORT 0 = any free port)
Prints `listening <port>` once, then per request `ok <webhook-id>` (answered 204) or
`bad <reason>` (answered 400), each line flushed. With `bodies`, a verified request prints
`ok <webhook-id> <body>` (the body is one line of JSON).
"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

PORT = int(sys.argv[1])
HOOK = Webhook(sys.argv[2])
BODIES = len(sys.argv) > 3 and sys.argv[3] == "bodies"


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            HOOK.verify(body, headers)
        except WebhookVerificationError as e:
            say("bad " + str(e).replace("\n", " "))
            self.send_response(400)
            self.end_headers()
            return
        if BODIES:
            say("ok " + headers["webhook-id"] + " " + body.decode("utf-8"))
        else:
            say("ok " + headers["webhook-id"])
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    # socketserver's default listen backlog is 5: the 32 attempts a worker runs at once
    # overflowed it, the dropped SYNs were retransmitted after 1 s, and attempts with a 1 s
    # timeout failed before this handler saw them.
    request_queue_size = 256


server = Server(("127.0.0.1", PORT), Handler)
say("listening %d" % server.server_address[1])
server.serve_forever()
