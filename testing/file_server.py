"""A loopback HTTP server for a directory of files, with Range requests and broken downloads.

``FileServer(root)`` serves ``root/<path>`` with ``Accept-Ranges: bytes`` and answers
``Range: bytes=N-`` with 206. ``cut_after(name, n_bytes, times)`` makes the next ``times``
downloads of ``name`` stop after ``n_bytes`` (the connection closes mid-body, as a dropped
network does). Every request is recorded with its headers.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class FileServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._cuts: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    def cut_after(self, name: str, n_bytes: int, times: int = 1) -> None:
        with self._lock:
            self._cuts[name] = [n_bytes, times]

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/bundle"

    def __enter__(self) -> FileServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                name = self.path.split("/bundle/", 1)[-1]
                with server._lock:
                    server.requests.append((name, {k.lower(): v for k, v in self.headers.items()}))
                    cut = server._cuts.get(name)
                    limit = None
                    if cut and cut[1] > 0:
                        limit, cut[1] = cut[0], cut[1] - 1
                path = server.root / name
                if not path.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = path.read_bytes()
                start = 0
                ranged = self.headers.get("Range", "")
                if ranged.startswith("bytes=") and ranged.endswith("-"):
                    start = int(ranged[6:-1])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body if limit is None else body[:limit])
                except (BrokenPipeError, ConnectionResetError):
                    pass
                if limit is not None:
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._httpd is not None
        self._httpd.shutdown()
        self._httpd.server_close()
