"""An OpenAI-compatible HTTP server in front of the offline SIMULATOR (not a language model).

:class:`OfflineLLMServer` serves a member of the family of simulated LLMs
(:mod:`hydrahead.offline.family`; by default :class:`~hydrahead.offline.simulator.SimulatedLLM`)
on loopback so that hydrahead's real HTTP client can be tested, and demoed, without any LLM:

* ``POST /v1/chat/completions``: an OpenAI chat completion (``n`` choices); a body that is not
  a valid request gets ``400`` with an OpenAI-style ``{"error": {...}}``. A body whose
  ``model`` is ``sim:<name>`` (``"sim:majority"``) is answered by that member of the family, so
  one server serves the whole family to concurrent evaluations; any other model name is
  answered by the server's own member.
* ``GET /v1/models``: one model, ``hydrahead-offline-simulator`` (its entry names the server's
  member and lists the others).

Every request it receives is kept, in arrival order, as a :class:`CapturedRequest` holding the
exact body bytes (and the headers, without ``Authorization``), so tests can check what would
have left the device. With ``capture_path`` the captures are also appended to a JSONL file.

:func:`llm_endpoint` serves it for the duration of a command that was asked to work offline
(every ``--offline``, the demo, the quality evaluation). ``serve_forever()`` runs it in the
foreground (``hydrahead llm serve-offline``)::

    with OfflineLLMServer() as server:
        client = LLMClient(LLMConfig(base_url=server.url, model="any"))
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from hydrahead.runtime.errors import InvalidInputError, LLMError
from .family import (DEFAULT_MEMBER, MODEL_PREFIX, check_member, get_member, member_names,
                     member_of_model)
from .simulator import SIMULATOR_MODEL, SIMULATOR_NOTE, SimulatedLLM

MAX_BODY_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class CapturedRequest:
    """One request the server received.

    Attributes:
        path: Request path, e.g. ``/v1/chat/completions``.
        headers: Request headers, ``Authorization`` removed.
        body: The body bytes exactly as received.
    """

    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


class OfflineLLMServer:
    """The offline simulator served over HTTP on a background (daemon) thread.

    Args:
        host: Interface to listen on (loopback by default).
        port: TCP port; 0 picks a free one (see :attr:`url`).
        simulator: The simulator to serve (default: the member named by ``member``).
        member: The member of the family to serve (default ``"default"``); not with
            ``simulator``. Requests for ``model="sim:<name>"`` get member ``<name>`` either way.
        capture_path: Also append every captured request to this JSONL file.
        quiet: Do not log each request to stderr.

    Raises:
        InvalidInputError: ``member`` names no member, or both ``simulator`` and ``member``
            are given.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 simulator: SimulatedLLM | None = None, member: str | None = None,
                 capture_path: str | Path | None = None, quiet: bool = True) -> None:
        if simulator is not None and member is not None:
            raise InvalidInputError("give the offline server a simulator or a member name, "
                                    "not both")
        self.host, self.port = host, port
        self.simulator = simulator or get_member(member or DEFAULT_MEMBER)
        self._members: dict[str, SimulatedLLM] = {}
        self.capture_path = Path(capture_path) if capture_path is not None else None
        self.quiet = quiet
        self._captured: list[CapturedRequest] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------ lifecycle
    def start(self) -> OfflineLLMServer:
        """Start listening (no-op if already started).

        Raises:
            LLMError: The address cannot be bound (e.g. the port is taken).
        """
        if self._httpd is not None:
            return self
        try:
            httpd = ThreadingHTTPServer((self.host, self.port), _handler_for(self))
        except OSError as exc:
            raise LLMError(f"the offline LLM simulator cannot listen on {self.host}:{self.port}: "
                           f"{exc.strerror or exc}; pick another port") from exc
        httpd.daemon_threads = True
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="hydrahead-offline-llm", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and free the port (no-op if not started)."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> OfflineLLMServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL of the API, ending in ``/v1`` (e.g. ``http://127.0.0.1:54321/v1``)."""
        host = self.host if self.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/v1"

    @property
    def member(self) -> str:
        """The name of the member that answers requests not asking for one."""
        return getattr(self.simulator, "name", DEFAULT_MEMBER)

    def simulator_for(self, body: Any) -> SimulatedLLM:
        """The member that answers a request body: ``sim:<name>`` in its ``model``, else the
        server's own.

        Raises:
            InvalidInputError: The body asks for ``sim:<name>`` with an unknown name.
        """
        name = member_of_model(body.get("model")) if isinstance(body, dict) else None
        if name is None:
            return self.simulator
        with self._lock:
            if name not in self._members:
                self._members[name] = get_member(name)
            return self._members[name]

    # -------------------------------------------------------------------------------- captures
    @property
    def captured(self) -> list[CapturedRequest]:
        """Every request received so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._captured)

    def clear_captured(self) -> None:
        """Forget the captured requests (the capture file, if any, is kept)."""
        with self._lock:
            self._captured.clear()

    def _capture(self, request: CapturedRequest) -> None:
        with self._lock:
            self._captured.append(request)
            if self.capture_path is not None:
                line = json.dumps({"time": time.time(), "path": request.path,
                                   "headers": request.headers,
                                   "body": request.body.decode("utf-8", errors="replace")},
                                  ensure_ascii=False)
                with self.capture_path.open("a", encoding="utf-8") as f:
                    f.write(line + "\n")


def offline_member(offline: bool | str | None) -> str | None:
    """The member an ``offline`` argument asks for: ``None`` for ``False``, ``None`` or ``""``,
    ``"default"`` for ``True``, else the name itself (checked).

    Raises:
        InvalidInputError: The name is not a member's.
    """
    if offline is True:
        return DEFAULT_MEMBER
    if not offline:
        return None
    return check_member(str(offline))


@contextmanager
def llm_endpoint(llm_url: str | None, *, offline: bool | str | None = False,
                 announce: Callable[[str], None] | None = None
                 ) -> Iterator[tuple[str | None, bool]]:
    """The LLM endpoint of a command or a run, as ``(url, simulated)``.

    Args:
        llm_url: The endpoint to use when not ``offline`` (``None``: the caller's default,
            e.g. ``$HYDRAHEAD_LLM_BASE_URL``).
        offline: Serve the offline simulator on loopback for the duration of the block instead;
            its URL comes back with ``simulated=True``. ``True`` serves the ``default`` member,
            a string the member of that name (:mod:`hydrahead.offline.family`).
        announce: Told, when the simulator is started, :data:`SIMULATOR_NOTE`, the member (if
            not the default) and its URL.

    Raises:
        InvalidInputError: ``offline`` names no member (the message lists them).
        LLMError: The simulator cannot listen.
    """
    member = offline_member(offline)
    if member is None:
        yield llm_url, False
        return
    with OfflineLLMServer(member=member) as server:
        if announce is not None:
            which = "" if member == DEFAULT_MEMBER else f"member {member!r}, "
            announce(f"{SIMULATOR_NOTE} ({which}at {server.url})")
        yield server.url, True


def serve_forever(host: str = "127.0.0.1", port: int = 8000, *, member: str = DEFAULT_MEMBER,
                  capture_path: str | Path | None = None, quiet: bool = False) -> None:
    """Run the offline simulator server in the foreground until interrupted (Ctrl-C).

    Prints the base URL to give hydrahead (``HYDRAHEAD_LLM_BASE_URL``), the member it serves
    and a reminder that the answers come from a simulator, not a language model.

    Raises:
        InvalidInputError: ``member`` names no member.
        LLMError: The address cannot be bound.
    """
    server = OfflineLLMServer(host, port, member=member, capture_path=capture_path,
                              quiet=quiet).start()
    print(f"hydrahead offline LLM listening on {server.url}", flush=True)
    print(f"simulated LLM: {server.member} (model \"{MODEL_PREFIX}<name>\" picks another "
          f"member: {', '.join(member_names())})", flush=True)
    print(SIMULATOR_NOTE, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


# ----------------------------------------------------------------------------------- handler
def _handler_for(server: OfflineLLMServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        owner = server

    return Handler


class _Handler(BaseHTTPRequestHandler):
    owner: OfflineLLMServer
    protocol_version = "HTTP/1.1"
    # Keep-alive connections: headers and body go out in separate writes, and Nagle's algorithm
    # would hold the body back for the client's delayed ACK (~40 ms a request).
    disable_nagle_algorithm = True
    server_version = "hydrahead-offline-simulator/1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self._receive(b"")
        if path in ("/v1/models", "/models"):
            self._send(HTTPStatus.OK, {"object": "list", "data": [
                {"id": SIMULATOR_MODEL, "object": "model", "created": 0,
                 "owned_by": "hydrahead", "x_hydrahead_simulator": SIMULATOR_NOTE,
                 "x_hydrahead_member": self.owner.member,
                 "x_hydrahead_members": [MODEL_PREFIX + n for n in member_names()]}]})
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no route GET {path}", "not_found_error")

    def do_POST(self) -> None:  # noqa: N802
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self._receive(b"")
            self.close_connection = True
            self._error(HTTPStatus.BAD_REQUEST, "missing or invalid Content-Length")
            return
        path = self._receive(self.rfile.read(length))
        if path not in ("/v1/chat/completions", "/chat/completions"):
            self._error(HTTPStatus.NOT_FOUND, f"no route POST {path}", "not_found_error")
            return
        try:
            body = json.loads(self._body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self._error(HTTPStatus.BAD_REQUEST, f"the body is not valid JSON: {exc}")
            return
        try:
            response = self.owner.simulator_for(body).complete(body)
        except InvalidInputError as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
            return
        except Exception as exc:  # a simulator bug must still answer in OpenAI's shape
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"simulator failure: {exc!r}",
                        "server_error")
            return
        self._send(HTTPStatus.OK, response)

    # ------------------------------------------------------------------------------- helpers
    def _receive(self, body: bytes) -> str:
        self._body = body
        path = self.path.split("?", 1)[0]
        headers = {k: v for k, v in self.headers.items() if k.lower() != "authorization"}
        self.owner._capture(CapturedRequest(path=path, headers=headers, body=body))
        return path

    def _error(self, status: HTTPStatus, message: str,
               kind: str = "invalid_request_error") -> None:
        self._send(status, {"error": {"message": message, "type": kind, "param": None,
                                      "code": None}})

    def _send(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        if not self.owner.quiet:
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")
