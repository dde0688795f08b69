"""A loopback OpenAI-compatible chat server for tests (threaded ``http.server``, no network).

``responder(body) -> str | tuple[int, str]`` decides each reply: a string is returned as the
assistant message content; ``(status, text)`` as a raw HTTP reply. Every request is recorded
(headers and JSON body) in ``server.requests``.
"""
from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StubServer:
    def __init__(self, responder):
        self.responder = responder
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                stub.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                reply = stub.responder(body)
                if isinstance(reply, tuple):
                    status, text = reply
                    payload = text.encode()
                else:
                    status = 200
                    payload = json.dumps({"id": "stub", "object": "chat.completion", "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> "StubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def requested_objects(body: dict) -> list[str]:
    """The object names a layout request asks for (from the last user message that lists them)."""
    for message in reversed(body["messages"]):
        if message["role"] == "user" and "Objects:" in str(message["content"]):
            return re.findall(r'- name "([^"]+)"', message["content"])
    return []


def good_layout(names: list[str], canvas: int = 512, scene: str = "lawn") -> str:
    """A valid layout reply: boxes side by side on the ground, the first object largest."""
    n = max(1, len(names))
    width = canvas // n
    objects = []
    for i, name in enumerate(names):
        height = int(canvas * (0.6 if i == 0 else 0.4))
        x0 = i * width + 4
        objects.append({"name": name, "size_ratio": 1.0 if i == 0 else 0.5,
                        "box": [x0, canvas - 8 - height, x0 + width - 8, canvas - 8]})
    return json.dumps({"scene": {"name": scene, "prompt": "a sunny lawn in a park"}, "objects": objects})
