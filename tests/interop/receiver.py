"""Interop receiver for tests/interop.rs: verifies every request loopwatch sends with
the receivers' own libraries and records what each of them said.

    python tests/interop/receiver.py CONFIG.json

CONFIG maps a sink name (the last path segment of /hook/<sink>) to what to check:

    {"standard": {"format": "standard", "secrets": ["whsec_..."], "public_key": null}, ...}

- every secret, each on its own: standardwebhooks.Webhook(secret).verify(body, headers)
  and svix.webhooks.Webhook(secret).verify(body, headers)
- public_key (whpk_...): the v1a ed25519 signature, with `cryptography`
- format cloudevents / cloudevents-binary: the CloudEvents SDK parses the request
  (cloudevents.core.bindings.http.from_http and the v1 API cloudevents.v1.http.from_http)
  and its id/type/source/subject/data must match the Standard Webhooks id and the data

Answers 204 when every check passed, 401 otherwise. Prints "listening PORT" first, then
serves GET /results: every request so far with the outcome of each check, as JSON.
"""

import base64
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

import standardwebhooks
import svix.webhooks
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.v1 import http as ce_v1_http
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

TOLERANCE_S = 5 * 60

CONFIG = {}
RESULTS = []
LOCK = threading.Lock()


def run_check(checks, name, f):
    try:
        f()
        checks[name] = "ok"
    except Exception as e:  # every failure is recorded, not raised
        checks[name] = f"error: {type(e).__name__}: {e}"


def verify_v1a(public_key, body, headers):
    if not public_key.startswith("whpk_"):
        raise ValueError("public key is not whpk_")
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key[5:]))
    msg_id = headers["webhook-id"]
    ts = headers["webhook-timestamp"]
    if abs(time.time() - int(ts)) > TOLERANCE_S:
        raise ValueError("timestamp outside the tolerance")
    content = f"{msg_id}.{ts}.".encode() + body
    for sig in headers["webhook-signature"].split(" "):
        version, _, b64 = sig.partition(",")
        if version != "v1a":
            continue
        try:
            key.verify(base64.b64decode(b64), content)
            return
        except Exception:
            continue
    raise ValueError("no valid v1a signature")


def check_cloudevent(fmt, body, headers):
    """Parse with both SDK APIs; return the attributes and data (both must agree)."""
    has_ce_headers = any(k.startswith("ce-") for k in headers)
    if fmt == "cloudevents":
        assert not has_ce_headers, "structured mode must not send ce- headers"
        assert headers.get("content-type") == "application/cloudevents+json", headers.get(
            "content-type"
        )
    else:
        assert has_ce_headers, "binary mode must send ce- headers"
    core = ce_http.from_http(ce_http.HTTPMessage(headers=headers, body=body), JSONFormat())
    legacy = ce_v1_http.from_http(headers, body)
    attrs = {
        "specversion": core.get_specversion(),
        "id": core.get_id(),
        "type": core.get_type(),
        "source": core.get_source(),
        "subject": core.get_subject(),
        "time": core.get_time().isoformat() if core.get_time() else None,
        "datacontenttype": core.get_datacontenttype(),
    }
    data = core.get_data()
    for k in ["specversion", "id", "type", "source", "subject"]:
        got = str(legacy[k])
        if fmt == "cloudevents-binary":
            # The v1 API predates the binding's percent-decoding of header values.
            got = unquote(got)
        assert got == str(attrs[k]), f"the two SDK APIs disagree on {k}: {got!r} {attrs[k]!r}"
    assert legacy.data == data, "the two SDK APIs disagree on data"
    assert attrs["specversion"] == "1.0", attrs
    assert attrs["id"] == headers["webhook-id"], "ce id is not the webhook-id"
    assert attrs["type"].startswith("loopwatch.checkpoint."), attrs["type"]
    assert isinstance(data, dict), f"data is {type(data).__name__}, not an object"
    assert data["event_id"] == attrs["id"], "data.event_id is not the ce id"
    assert attrs["subject"] == data["uri"], "subject is not data.uri"
    assert attrs["source"] == "bt://loops:" + data["checkpoint"]["run_id"], attrs["source"]
    assert attrs["time"], "no time"
    return {"attributes": attrs, "data": data}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def reply(self, code, body=b"", content_type="application/json"):
        self.send_response(code)
        if code != 204:
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path != "/results":
            return self.reply(404)
        with LOCK:
            out = json.dumps(RESULTS).encode()
        self.reply(200, out)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        sink = self.path.rsplit("/", 1)[-1]
        cfg = CONFIG.get(sink)
        record = {"sink": sink, "headers": headers, "body": body.decode("utf-8", "replace")}
        checks = {}
        cloudevent = None
        if cfg is None:
            checks["config"] = f"error: no sink {sink!r} in the receiver's config"
        else:
            for i, secret in enumerate(cfg.get("secrets", [])):
                run_check(
                    checks,
                    f"standardwebhooks[{i}]",
                    lambda s=secret: standardwebhooks.Webhook(s).verify(body, headers),
                )
                run_check(
                    checks,
                    f"svix[{i}]",
                    lambda s=secret: svix.webhooks.Webhook(s).verify(body, headers),
                )
            if cfg.get("public_key"):
                run_check(checks, "v1a", lambda: verify_v1a(cfg["public_key"], body, headers))
            if not checks:
                checks["config"] = "error: nothing to verify with"
            if cfg["format"] in ("cloudevents", "cloudevents-binary"):
                out = {}

                def ce():
                    out.update(check_cloudevent(cfg["format"], body, headers))

                run_check(checks, "cloudevents", ce)
                cloudevent = out or None
        record["checks"] = checks
        record["cloudevent"] = cloudevent
        record["ok"] = all(v == "ok" for v in checks.values())
        with LOCK:
            RESULTS.append(record)
        self.reply(204 if record["ok"] else 401)


def main():
    with open(sys.argv[1]) as f:
        CONFIG.update(json.load(f))
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
