"""A reference receiver for loopwatch webhooks: verifies the Standard Webhooks signature
with the official `standardwebhooks` package, ignores redeliveries of an event it has
already handled (by `webhook-id`), and prints one line per event.

Usage:

    pip install standardwebhooks
    export WEBHOOK_SECRET=whsec_...            # the sink's secret_env / secret_file value
    python examples/receiver.py --port 8000    # then: url = "http://HOST:8000/hooks/loops"

It answers 204 once an event is handled (a redelivery too: loopwatch delivers at least
once, so the same `webhook-id` may come again) and 401 when the signature does not
verify (wrong secret, tampered body, or a timestamp more than 5 minutes off). During a
key rotation either secret verifies: loopwatch signs with both.

Works with every body format: `standard`, `cloudevents` (structured and binary) and
`template` (a body without `type` and `data.uri` prints as `?`). Replace `handle()` with
what should happen (deploy, notify, enqueue); keep it quick, or hand the event to a queue
and answer at once.
"""

import argparse
import json
import os
import sys
import threading
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook

SEEN_MAX = 10_000  # webhook-ids remembered for de-duplication (oldest forgotten first)


class Seen:
    """A bounded set of recently handled webhook-ids."""

    def __init__(self, limit):
        self.limit = limit
        self.ids = OrderedDict()
        self.lock = threading.Lock()

    def add(self, msg_id):
        """True when msg_id is new."""
        with self.lock:
            if msg_id in self.ids:
                self.ids.move_to_end(msg_id)
                return False
            self.ids[msg_id] = None
            if len(self.ids) > self.limit:
                self.ids.popitem(last=False)
            return True


def describe(body, headers):
    """(type, checkpoint URI) from any of loopwatch's formats."""
    if "ce-type" in headers:  # CloudEvents, binary mode: attributes in headers
        return headers["ce-type"], headers.get("ce-subject", "?")
    try:
        doc = json.loads(body)
    except ValueError:
        return "?", "?"
    if not isinstance(doc, dict):
        return "?", "?"
    if "specversion" in doc:  # CloudEvents, structured mode
        return doc.get("type", "?"), doc.get("subject", "?")
    data = doc.get("data")
    uri = data.get("uri", "?") if isinstance(data, dict) else "?"
    return doc.get("type", "?"), uri


OUTPUT = threading.Lock()  # requests are handled on several threads: whole lines only


def say(line, file=sys.stdout):
    with OUTPUT:
        print(line, file=file, flush=True)


def handle(msg_id, body, headers):
    kind, uri = describe(body, headers)
    say(f"{msg_id}  {kind:<34} {uri}")


def make_handler(webhook, seen):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            pass

        def answer(self, code):
            self.send_response(code)
            if code != 204:
                self.send_header("content-length", "0")
            self.end_headers()

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                # Verifies the signature over the exact bytes and the timestamp (+-5 min).
                webhook.verify(body, headers, json_parse=False)
            except Exception as e:
                say(f"rejected {headers.get('webhook-id', '?')}: {e}", file=sys.stderr)
                return self.answer(401)
            msg_id = headers["webhook-id"]
            if seen.add(msg_id):
                handle(msg_id, body, headers)
            else:
                say(f"duplicate {msg_id} acknowledged", file=sys.stderr)
            self.answer(204)

    return Handler


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    args = p.parse_args()
    secret = os.environ.get("WEBHOOK_SECRET")
    if not secret:
        sys.exit("set WEBHOOK_SECRET to the sink's whsec_ secret")
    server = ThreadingHTTPServer((args.host, args.port), make_handler(Webhook(secret), Seen(SEEN_MAX)))
    print(f"listening on http://{args.host}:{server.server_address[1]}/", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
