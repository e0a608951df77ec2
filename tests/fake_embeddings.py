"""A small OpenAI-compatible /v1/embeddings server on 127.0.0.1 for provider tests.

Vectors are deterministic functions of the text. A script of HTTP statuses lets a test make
the server fail (429, 500, 401, ...) on chosen requests.
"""

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def fake_vector(text: str, dimensions: int) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [(digest[i % len(digest)] - 128) / 128 for i in range(dimensions)]


class FakeEmbeddingServer:
    def __init__(self, dimensions: int = 8, api_key: str = "sk-test-secret") -> None:
        self.dimensions = dimensions
        self.api_key = api_key
        self.script: list[int] = []  # statuses to answer before succeeding, consumed in order
        self.fail_after: int | None = None  # answer 500 for every request after this many
        self.requests = 0
        self.texts: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                server.requests += 1
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/embeddings":
                    return self._send(404, {"error": {"message": "no such route"}})
                if self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    return self._send(401, {"error": {"message": "bad key"}})
                if server.script:
                    status = server.script.pop(0)
                    return self._send(
                        status, {"error": {"message": f"scripted {status}"}}, retry_after="0"
                    )
                if server.fail_after is not None and server.requests > server.fail_after:
                    return self._send(500, {"error": {"message": "provider down"}})
                server.texts.extend(body["input"])
                data = [
                    {
                        "object": "embedding",
                        "index": i,
                        "embedding": fake_vector(t, server.dimensions),
                    }
                    for i, t in enumerate(body["input"])
                ]
                return self._send(200, {"object": "list", "data": data, "model": body["model"]})

            def _send(self, status, payload, retry_after=None):
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                if retry_after is not None:
                    self.send_header("Retry-After", retry_after)
                self.end_headers()
                self.wfile.write(raw)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
