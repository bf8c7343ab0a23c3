"""The outbox: an append-only ledger of everything sent to the LLM endpoint.

hydrahead keeps a user's history on the device; the only thing that leaves it is the prompt
sent to the LLM. The outbox lets the user see exactly that: one JSON line per HTTP attempt
(retries and top-up calls included, cache hits excluded since nothing is sent), at
``<user_dir>/outbox.jsonl``, owner-only (0600). A record is::

    {"time": "2026-01-02T03:04:05.678+00:00",   # UTC, when the attempt started
     "url": "http://127.0.0.1:8080/v1/chat/completions",
     "attempt": 1,                 # 1-based attempt number of this HTTP request (retries count up)
     "request": "{\"model\": ...}",  # the body exactly as sent: request.encode() == wire bytes
     "bytes_sent": 123,            # len of the body in bytes
     "status": 200,                # HTTP status, or null when no answer came (timeout, refused)
     "response": "{...}",          # answer body text (first RESPONSE_LIMIT characters) or null
     "response_truncated": false,
     "error": null,                # what went wrong when there is no answer, else null
     "bytes_received": 456,        # full size of the answer body in bytes
     "elapsed_ms": 12.3,
     "sources": ["r17", "r3"],     # ids of the history records the prompt held (local only)
     "usage": {"prompt_tokens": 310, "completion_tokens": 24}}  # as the server reported, or null

When a history record is deleted, its text is replaced by :data:`ERASED` in every entry
(:meth:`Outbox.erase`); such an entry keeps its time, url, status and byte counts, gets
``"erased_records": n``, and its ``request`` is then no longer the exact wire bytes.

Request headers are not recorded at all (so the ``Authorization`` header cannot leak); the
client also replaces the API key by ``[REDACTED]`` should a server echo it in a body or error.

The outbox is written by the process that holds the user's store open. Each record is written
with one ``write`` on a file opened with ``O_APPEND`` and, by default, fsynced: an attempt is a network round trip, so the fsync costs little next to it, and the
ledger is meant to be trusted after a crash. If a crash tears the last line anyway, readers skip
it (with a logged warning) and the next append starts on a fresh line.

The outbox is bounded: when an append takes the file past ``max_bytes`` (default
:data:`MAX_BYTES`), the oldest entries are dropped until it holds at most half of that, and
their counts (requests, bytes, tokens per UTC day and model; no text at all) are added to
``outbox.totals.json`` beside it, so :meth:`Outbox.summary` still totals every request ever
sent. A dropped entry is gone with its text: there is nothing left to erase.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from ..errors import LLMError
from ..paths import atomic_write_bytes, user_dir
from ..user_files import OUTBOX_FILE, OUTBOX_TOTALS_FILE

log = logging.getLogger(__name__)

RESPONSE_LIMIT = 64 * 1024
"""Answer bodies are recorded up to this many characters (``response_truncated`` says if cut)."""

MAX_BYTES = 16 << 20
"""Default size bound of an outbox file (about 8,000 requests of a 2 KB prompt)."""
TOTALS_FORMAT = "hydrahead-outbox-totals"

ERASED = "[erased: a deleted history record]"
"""What replaces a deleted record's text in the outbox."""

_LOCKS: dict[Path, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _lock_for(path: Path) -> threading.Lock:
    """One lock per outbox file in this process, shared by every Outbox object on it."""
    key = Path(os.path.abspath(path))
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, threading.Lock())


class Outbox:
    """Append-only JSONL ledger of HTTP attempts to the LLM endpoint.

    Args:
        path: The JSONL file (created owner-only, with its parent directory, on first append).
        enabled: When False, :meth:`record` writes nothing; reading still works.
        fsync: fsync after every append (default True).
        max_bytes: Size bound of the file (see the module docstring); at least 4096.
    """

    def __init__(self, path: str | os.PathLike[str], enabled: bool = True, *,
                 fsync: bool = True, max_bytes: int = MAX_BYTES) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 4096:
            raise ValueError(f"max_bytes must be an int of at least 4096, got {max_bytes!r}")
        self.path = Path(path)
        self.totals_path = self.path.with_name(OUTBOX_TOTALS_FILE)
        self.enabled = enabled
        self.fsync = fsync
        self.max_bytes = max_bytes
        self._lock = _lock_for(self.path)

    @classmethod
    def for_user(cls, user_id: str, root: str | os.PathLike[str] | None = None,
                 enabled: bool = True) -> Outbox:
        """The outbox of ``user_id``: ``<data root>/users/<user_id>/outbox.jsonl``."""
        return cls(user_dir(user_id, root) / OUTBOX_FILE, enabled=enabled)

    # -- writing ---------------------------------------------------------------------------

    def record(self, *, url: str, attempt: int, request: bytes, started: datetime,
               status: int | None, response: str | None, bytes_received: int,
               error: str | None, elapsed_ms: float,
               sources: Iterable[str] = (),
               usage: Mapping[str, int] | None = None) -> dict[str, Any] | None:
        """Append one attempt and return the record (``None`` when disabled).

        Args:
            url: Where the request went.
            attempt: 1-based attempt number of this HTTP request.
            request: The body bytes exactly as sent (UTF-8 JSON).
            started: When the attempt started (timezone-aware).
            status: HTTP status code, or None if no answer arrived.
            response: The answer body as text (truncated here at RESPONSE_LIMIT characters).
            bytes_received: Size of the answer body in bytes.
            error: What went wrong, if no usable HTTP answer arrived.
            elapsed_ms: Wall time of the attempt in milliseconds.
            sources: Ids of the history records the prompt held.
            usage: Token counts the server reported for this answer.
        """
        if not self.enabled:
            return None
        truncated = response is not None and len(response) > RESPONSE_LIMIT
        rec = {
            "time": started.astimezone(timezone.utc).isoformat(timespec="milliseconds"),
            "url": url,
            "attempt": attempt,
            "request": request.decode("utf-8"),
            "bytes_sent": len(request),
            "status": status,
            "response": response[:RESPONSE_LIMIT] if response is not None else None,
            "response_truncated": truncated,
            "error": error,
            "bytes_received": bytes_received,
            "elapsed_ms": round(elapsed_ms, 3),
            "sources": list(sources),
            "usage": dict(usage) if usage else None,
        }
        self.append(rec)
        return rec

    def check_writable(self) -> None:
        """Raise LLMError if records could not be appended (the directory is gone).

        The client calls it before sending, so that nothing leaves unrecorded.
        """
        if self.enabled and not self.path.parent.is_dir():
            raise LLMError(
                f"the outbox directory {self.path.parent} does not exist (was the user "
                "forgotten?); nothing was sent"
            )
        if self.enabled and (self.path.is_symlink() or (self.path.exists()
                                                       and not self.path.is_file())):
            raise LLMError(f"the outbox {self.path} is not a regular file; nothing was sent "
                           "(move it away: a new outbox is started)")

    def append(self, record: dict[str, Any]) -> None:
        """Append one record as a JSON line (no-op when disabled).

        Raises:
            LLMError: if the outbox's directory does not exist (it is never created here, so
                that a forgotten user's directory does not come back).
        """
        if not self.enabled:
            return
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        with self._lock:
            self.check_writable()
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.chmod(self.path, 0o600)  # also tightens a file created by someone else
                if _ends_torn(fd):
                    line = b"\n" + line  # keep a crash-torn line from swallowing this record
                os.write(fd, line)
                if self.fsync:
                    os.fsync(fd)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            if size > self.max_bytes:
                self._drop_oldest()

    def _drop_oldest(self) -> None:
        """Keep the newest entries within half of ``max_bytes``; count the dropped ones into
        the totals file (written first: a crash between the two counts them twice, never
        loses them). Called with the lock held."""
        lines = self.path.read_bytes().splitlines(keepends=True)
        kept, size = 0, 0
        for line in reversed(lines):
            if size + len(line) > self.max_bytes // 2:
                break
            size += len(line)
            kept += 1
        dropped = lines[:len(lines) - kept]
        totals = self._archived()
        rows = {(r["day"], r["model"]): r for r in totals["by_day_model"]}
        for raw in dropped:
            try:
                rec = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                rec = None
            if not isinstance(rec, dict):
                totals["unreadable_lines"] += 1
                continue
            day, model = str(rec.get("time") or "?")[:10], _model_of(rec.get("request"))
            _add(rows.setdefault((day, model), {"day": day, "model": model, **_totals()}), rec)
        totals["by_day_model"] = [rows[key] for key in sorted(rows)]
        atomic_write_bytes(self.totals_path, json.dumps(totals, indent=1).encode())
        atomic_write_bytes(self.path, b"".join(lines[len(dropped):]))
        log.info("outbox %s: dropped its %d oldest entries (over %d bytes); their counts are "
                 "kept in %s", self.path, len(dropped), self.max_bytes, self.totals_path.name)

    def _archived(self) -> dict[str, Any]:
        """The totals file's counts (empty when there is none, or it is unreadable)."""
        empty: dict[str, Any] = {"format": TOTALS_FORMAT, "by_day_model": [],
                                 "unreadable_lines": 0}
        try:
            data = json.loads(self.totals_path.read_bytes())
        except FileNotFoundError:
            return empty
        except (OSError, ValueError, RecursionError) as exc:
            log.warning("outbox totals %s unreadable (%s): counting from the outbox only",
                        self.totals_path, type(exc).__name__)
            return empty
        rows = data.get("by_day_model") if isinstance(data, dict) else None
        if not isinstance(rows, list) or not all(
                isinstance(r, dict) and {"day", "model", *_totals()} <= set(r)
                and all(isinstance(r[k], int) for k in _totals()) for r in rows):
            log.warning("outbox totals %s malformed: counting from the outbox only",
                        self.totals_path)
            return empty
        return {"format": TOTALS_FORMAT, "by_day_model": rows,
                "unreadable_lines": int(data.get("unreadable_lines") or 0)}

    def erase(self, texts_by_id: Mapping[str, str]) -> int:
        """Replace deleted records' texts by :data:`ERASED` in every entry; return how many
        entries changed.

        An entry changes where it lists the record among its ``sources`` (or, for an entry
        written before sources were kept, where the text appears): the text is replaced in its
        request, response and error, and if the request holds none of it verbatim (cut short or
        reformatted in the prompt), its whole message text is. Entries that did not hold the
        record keep every word, even words it shares. The file is rewritten atomically.
        """
        fragments = {rid: _fragments(text) for rid, text in texts_by_id.items()}
        with self._lock:
            try:
                raw_lines = self.path.read_bytes().splitlines()
            except FileNotFoundError:
                return 0
            out, changed = [], 0
            for raw in raw_lines:
                try:
                    rec = json.loads(raw)
                except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                    rec = None
                if not isinstance(rec, dict):
                    # A torn line cannot be parsed, so it cannot be partly kept: drop it if it
                    # holds deleted text, else keep it as it was.
                    if not any(_contains_raw(raw, f) for fs in fragments.values() for f in fs):
                        out.append(raw)
                    continue
                if _erase_from(rec, fragments):
                    changed += 1
                out.append(json.dumps(rec, ensure_ascii=False, separators=(",", ":")).encode())
            if changed or len(out) != len(raw_lines):
                data = b"".join(line + b"\n" for line in out)
                atomic_write_bytes(self.path, data)
            return changed

    # -- reading ---------------------------------------------------------------------------

    def records(self) -> Iterator[dict[str, Any]]:
        """Iterate over the records, oldest first; unreadable (torn) lines are skipped."""
        for rec in self._scan():
            if rec is not None:
                yield rec

    def tail(self, n: int = 10) -> list[dict[str, Any]]:
        """The last ``n`` records, oldest first."""
        if n <= 0:
            return []
        return list(collections.deque(self.records(), maxlen=n))

    def summary(self) -> dict[str, Any]:
        """Totals over the ledger: counts, bytes, tokens, time span and unreadable lines.

        ``by_day_model`` breaks the same totals down per UTC day (of the attempt's ``time``)
        and model (the ``model`` the request asked for; ``"?"`` where the request body is not
        JSON), one row each, sorted by day then model. Entries dropped to keep the file
        within its bound are counted too (``dropped_records``; ``first`` is then the oldest
        entry still in the file).
        """
        archived = self._archived()
        out: dict[str, Any] = {
            "path": str(self.path), "enabled": self.enabled, **_totals(), "first": None,
            "last": None, "unreadable_lines": archived["unreadable_lines"],
            "dropped_records": sum(r["records"] for r in archived["by_day_model"]),
            "max_bytes": self.max_bytes,
        }
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for old in archived["by_day_model"]:
            row = rows.setdefault((old["day"], old["model"]),
                                  {"day": old["day"], "model": old["model"], **_totals()})
            for key in _totals():
                row[key] += old[key]
                out[key] += old[key]
        for rec in self._scan():
            if rec is None:
                out["unreadable_lines"] += 1
                continue
            day = str(rec.get("time") or "?")[:10]
            model = _model_of(rec.get("request"))
            row = rows.setdefault((day, model), {"day": day, "model": model, **_totals()})
            _add(out, rec)
            _add(row, rec)
            out["first"] = out["first"] or rec.get("time")
            out["last"] = rec.get("time")
        out["by_day_model"] = [rows[key] for key in sorted(rows)]
        return out

    def _scan(self) -> Iterator[dict[str, Any] | None]:
        """Yield each line's record, or None for a line that is not a JSON object."""
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return
        with fh:
            for lineno, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                try:
                    rec = json.loads(raw)
                except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                    rec = None
                if not isinstance(rec, dict):
                    torn = "" if raw.endswith(b"\n") else " (torn last line, e.g. after a crash)"
                    log.warning("outbox %s: skipping unreadable line %d%s", self.path, lineno, torn)
                    yield None
                    continue
                yield rec

    def __repr__(self) -> str:
        return f"Outbox({str(self.path)!r}, enabled={self.enabled})"


def _totals() -> dict[str, int]:
    """The counters :meth:`Outbox.summary` keeps, at zero."""
    return {"records": 0, "answered_2xx": 0, "failed": 0, "bytes_sent": 0, "bytes_received": 0,
            "prompt_tokens": 0, "completion_tokens": 0}


def _add(totals: dict[str, Any], rec: Mapping[str, Any]) -> None:
    """Count one ledger record into ``totals`` (see :func:`_totals`)."""
    totals["records"] += 1
    status = rec.get("status")
    if isinstance(status, int) and 200 <= status < 300:
        totals["answered_2xx"] += 1
    else:
        totals["failed"] += 1
    totals["bytes_sent"] += int(rec.get("bytes_sent") or 0)
    totals["bytes_received"] += int(rec.get("bytes_received") or 0)
    usage = rec.get("usage")
    if not isinstance(usage, dict):
        usage = {}
    for name in ("prompt_tokens", "completion_tokens"):
        if isinstance(usage.get(name), int):
            totals[name] += usage[name]


def _model_of(request: object) -> str:
    """The model a recorded request body asked for (``"?"`` if it names none)."""
    try:
        body = json.loads(request) if isinstance(request, str) else None
    except ValueError:
        body = None
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) and model else "?"


def format_record(record: dict[str, Any], *, bodies: bool = False, width: int = 200) -> str:
    """One human-readable line per record (plus the bodies when ``bodies`` is True).

    Args:
        record: A record from :meth:`Outbox.records`.
        bodies: Also show the request and the response/error, each cut at ``width`` characters.
        width: How many characters of each body to show.
    """
    status = record.get("status")
    if status is not None:
        outcome = f"HTTP {status}"
    else:
        outcome = f"no answer ({_cut(record.get('error'), 80)})"
    line = (
        f"{record.get('time', '?')}  POST {record.get('url', '?')}  "
        f"attempt {record.get('attempt', '?')}"
        f"  -> {outcome}  sent {record.get('bytes_sent', 0)} B, received "
        f"{record.get('bytes_received', 0)} B, {record.get('elapsed_ms', 0):.0f} ms"
    )
    if bodies:
        line += f"\n  request:  {_cut(record.get('request'), width)}"
        if record.get("response") is not None:
            line += f"\n  response: {_cut(record.get('response'), width)}"
        if record.get("error"):
            line += f"\n  error:    {_cut(record.get('error'), width)}"
    return line


def _cut(text: object, width: int) -> str:
    s = "" if text is None else str(text)
    return s if len(s) <= width else s[: max(width - 1, 0)] + "…"


def _fragments(text: str) -> list[str]:
    """The forms in which a record's text may appear in a prompt, longest first."""
    forms = {text.strip(), " ".join(text.split())}
    return sorted((f for f in forms if f), key=len, reverse=True)


def _escaped(fragment: str) -> list[str]:
    """``fragment`` as it appears inside a JSON string (both ``ensure_ascii`` settings)."""
    return list(dict.fromkeys(json.dumps(fragment, ensure_ascii=a)[1:-1] for a in (False, True)))


def _contains_raw(raw: bytes, fragment: str) -> bool:
    return any(e.encode() in raw for e in _escaped(fragment)) or fragment.encode() in raw


def _replace_all(text: str, fragments: list[str], escaped: bool) -> tuple[str, bool]:
    found = False
    for fragment in fragments:
        for form in _escaped(fragment) if escaped else [fragment]:
            if form in text:
                text, found = text.replace(form, ERASED), True
    return text, found


def _erase_from(rec: dict[str, Any], fragments: Mapping[str, list[str]]) -> bool:
    """Erase the records in ``fragments`` from one outbox entry; True if it changed."""
    sources = rec.get("sources")
    if not isinstance(sources, list):
        sources = []
    request = rec.get("request")
    if not isinstance(request, str):
        request = ""
    try:
        body = json.loads(request)
        messages = body.get("messages") if isinstance(body, dict) else None
    except ValueError:
        body, messages = None, None
    if not isinstance(messages, list):
        messages = []
    listed = isinstance(rec.get("sources"), list)  # entries before sources were kept: unknown
    erased = 0
    for record_id, forms in fragments.items():
        if listed and record_id not in sources:
            continue  # this request did not hold the record (another's same words stay)
        hit = False
        for message in messages:
            if isinstance(message, dict) and isinstance(message.get("content"), str):
                message["content"], found = _replace_all(message["content"], forms, False)
                hit |= found
        if not messages:  # not a chat body we can parse: work on the JSON text itself
            request, found = _replace_all(request, forms, True)
            hit |= found
        if record_id in sources and not hit:
            for message in messages:
                if isinstance(message, dict) and "content" in message:
                    message["content"] = ERASED
            if not messages:
                request = ERASED
            hit = True
        if isinstance(rec.get("response"), str):
            rec["response"], found = _replace_all(rec["response"], forms, True)
            hit |= found
        if isinstance(rec.get("error"), str):
            rec["error"], found = _replace_all(rec["error"], forms, True)
            hit |= found
        if hit:
            erased += 1
            if record_id in sources:
                sources.remove(record_id)
    if not erased:
        return False
    if messages:
        request = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    rec["request"] = request
    if "sources" in rec:
        rec["sources"] = sources
    rec["erased_records"] = int(rec.get("erased_records") or 0) + erased
    return True


def _ends_torn(fd: int) -> bool:
    """True when the file is non-empty and its last byte is not a newline."""
    if os.fstat(fd).st_size == 0:
        return False
    os.lseek(fd, -1, os.SEEK_END)  # O_APPEND writes still go to the end afterwards
    return os.read(fd, 1) != b"\n"


def now_utc() -> datetime:
    """The current time, timezone-aware UTC (the outbox's clock)."""
    return datetime.now(timezone.utc)
