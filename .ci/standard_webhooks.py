"""Standard Webhooks checks with the `standardwebhooks` package (PyPI), an
implementation independent of flowline's. Run by .ci/standard-webhooks.

  receive PORT SECRET LOG   verify every POST with the package; one line a
                            message: "ok <webhook-id> <type>" or "bad ..."
  send URL SECRET           sign messages with the package and check what a
                            flowline receiver answers
  vector                    the specification's published test vector
"""
import base64
import http.server
import json
import sys
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def receive(port, secret, log_path):
    hook = Webhook(secret)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            headers = {k: v for k, v in self.headers.items()}
            try:
                message = hook.verify(body, headers)
                line = f"ok {headers.get('webhook-id') or headers.get('Webhook-Id')} {message['type']}"
                status = 204
            except WebhookVerificationError as err:
                line = f"bad {err}"
                status = 401
            with open(log_path, "a") as log:
                log.write(line + "\n")
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args):
            pass

    http.server.HTTPServer(("127.0.0.1", int(port)), Handler).serve_forever()


def post(url, headers, body):
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def send(url, secret):
    hook = Webhook(secret)
    body = json.dumps({"type": "order.created", "data": {"orderId": "py-1"}}).encode()
    now = datetime.now(tz=timezone.utc)

    def headers(msg_id, at, payload):
        return {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": hook.sign(msg_id, at, payload),
        }

    checks = [
        ("signed by the package", post(url, headers("msg_py_1", now, body), body), 204),
        ("the same id again", post(url, headers("msg_py_1", now, body), body), 200),
        ("a tampered body", post(url, headers("msg_py_2", now, body), body + b" "), 401),
        ("ten minutes old", post(url, headers("msg_py_3", now - timedelta(minutes=10), body), body), 401),
    ]
    failed = [f"{what}: {got}, wanted {wanted}" for what, got, wanted in checks if got != wanted]
    for line in failed:
        print("FAILED", line)
    if failed:
        sys.exit(1)
    print("the receiver answered all", len(checks), "messages as it should")


def vector():
    # https://github.com/standard-webhooks/standard-webhooks (spec test vector)
    hook = Webhook("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    at = datetime.fromtimestamp(1614265330, tz=timezone.utc)
    got = hook.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", at, b'{"test": 2432232314}')
    wanted = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    if got != wanted:
        print("FAILED the test vector:", got)
        sys.exit(1)
    print("the package signs the test vector as flowline's doctest does")


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "receive":
        receive(*sys.argv[2:5])
    elif command == "send":
        send(*sys.argv[2:4])
    elif command == "vector":
        vector()
    else:
        sys.exit(f"unknown command {command}")
