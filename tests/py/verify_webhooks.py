"""A webhook receiver that verifies each request with the reference `standardwebhooks`
library (pip install standardwebhooks), independent of Relaycord's own signing code.

Prints "listening URL" once ready, then one JSON line per request:
{"ok": bool, "path": request path, "id": webhook-id, "envelope_id": body id, "error": str}.
Answers 204 when the
signature verifies and 401 otherwise.
"""

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--secret", required=True)
    args = parser.parse_args()
    hook = Webhook(args.secret)
    # The server answers on several threads; one line per request, never interleaved.
    out = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            headers = {k.lower(): v for k, v in self.headers.items()}
            result = {"path": self.path, "id": headers.get("webhook-id")}
            try:
                envelope = hook.verify(body, headers)
                result.update(ok=True, envelope_id=envelope.get("id"))
                status = 204
            except WebhookVerificationError as e:
                result.update(ok=False, error=str(e))
                status = 401
            with out:
                print(json.dumps(result), flush=True)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening http://127.0.0.1:{server.server_address[1]}/events", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
