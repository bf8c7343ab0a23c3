"""A small HTTP server that misbehaves on cue, for testing the LLM client over real loopback HTTP.

Each request is captured (method, path, headers, body bytes, arrival time) and answered by the
next behaviour in a script, or by the default behaviour once the script is used up. A behaviour
is a :class:`Reply` or a function of the captured request returning one, so a test can say
"429 with Retry-After: 1, then a completion" or "always answer with min(n, 2) choices"::

    with FaultServer() as server:
        server.script(Reply(429, headers={"Retry-After": "1"}), chat_reply(["hi"]))
        client = LLMClient(LLMConfig(server.url, "m"))
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Mapping, Sequence, Union


@dataclass(frozen=True)
class Captured:
    """One request as the server saw it. ``headers`` keys are lower-case."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    arrived: float  # time.monotonic() when the request line arrived

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    """An answer: status, body (bytes, text, or JSON-able object), headers, and a delay.

    ``delay`` seconds are slept before answering: longer than the client's read timeout, it is
    a hanging server. ``drip`` seconds are slept between the body's bytes, each sent alone:
    shorter than the read timeout, it is a server that never times out but never finishes.
    """

    status: int = 200
    body: bytes | str | Mapping[str, Any] | list[Any] = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drip: float = 0.0

    def encoded(self) -> tuple[bytes, str]:
        if isinstance(self.body, bytes):
            return self.body, "application/json"
        if isinstance(self.body, str):
            return self.body.encode("utf-8"), "text/plain; charset=utf-8"
        return json.dumps(self.body).encode("utf-8"), "application/json"


Behaviour = Union[Reply, Callable[[Captured], Reply]]


def chat_body(texts: Sequence[str], *, model: str = "fault-test-model",
              system_fingerprint: str | None = None) -> dict[str, Any]:
    """An OpenAI-shaped chat completion with one choice per text."""
    body: dict[str, Any] = {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
            for i, t in enumerate(texts)
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": len(texts),
                  "total_tokens": 1 + len(texts)},
    }
    if system_fingerprint is not None:
        body["system_fingerprint"] = system_fingerprint
    return body


def chat_reply(texts: Sequence[str], **kwargs: Any) -> Reply:
    """A 200 answer carrying :func:`chat_body`."""
    return Reply(200, chat_body(texts, **kwargs))


def error_reply(status: int, message: str, headers: Mapping[str, str] | None = None) -> Reply:
    """An OpenAI-style error answer."""
    return Reply(status, {"error": {"message": message, "type": "test_error"}}, headers or {})


class FaultServer:
    """A ThreadingHTTPServer on 127.0.0.1 (free port) in a background thread.

    Args:
        default: The behaviour once the script is used up (default: HTTP 500 "script exhausted").
    """

    def __init__(self, default: Behaviour | None = None) -> None:
        self.default = default
        self.captured: list[Captured] = []
        self._script: deque[Behaviour] = deque()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def script(self, *behaviours: Behaviour) -> FaultServer:
        """Queue behaviours for the next requests, in order."""
        with self._lock:
            self._script.extend(behaviours)
        return self

    @property
    def hits(self) -> int:
        return len(self.captured)

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """Base URL, ending in /v1 like real OpenAI-compatible servers."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FaultServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True  # no delayed-ACK stall between headers and body

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                self._handle()

            def do_GET(self) -> None:  # noqa: N802
                self._handle()

            def _handle(self) -> None:
                arrived = time.monotonic()
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                captured = Captured(self.command, self.path,
                                    {k.lower(): v for k, v in self.headers.items()}, body, arrived)
                reply = server._next(captured)
                payload, content_type = reply.encoded()
                if reply.delay:
                    time.sleep(reply.delay)
                try:
                    self.send_response(reply.status)
                    headers = {"Content-Type": content_type, **reply.headers}
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if not reply.drip:
                        self.wfile.write(payload)
                    for i in range(len(payload) if reply.drip else 0):
                        self.wfile.write(payload[i:i + 1])
                        self.wfile.flush()
                        time.sleep(reply.drip)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout) before we answered

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,),
                                        name="fault-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _next(self, captured: Captured) -> Reply:
        with self._lock:
            self.captured.append(captured)
            behaviour = self._script.popleft() if self._script else self.default
        if behaviour is None:
            return Reply(500, {"error": {"message": "fault server: script exhausted"}})
        return behaviour(captured) if callable(behaviour) else behaviour

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port() -> int:
    """A loopback port with nothing listening on it (bound, read, released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
