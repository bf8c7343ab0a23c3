"""The wire format of OpenAI-compatible Chat Completions: what a request body holds, how an
answer is read, and how what comes back is quoted safely (previews, redaction of the API key).

Pure functions over bytes and strings; :mod:`.client` adds the HTTP, the retries and the
policies around them.
"""

from __future__ import annotations

import email.utils
import json
import math
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence, TypeGuard

from ..errors import InvalidInputError

SIMULATOR_PREFIX = "hydrahead-offline-simulator"
"""A response whose ``system_fingerprint`` or ``model`` starts with this came from the simulator."""

PREVIEW_CHARS = 200
"""How much of an answer body an error message quotes."""

REDACTED = "[REDACTED]"


@dataclass(frozen=True)
class ParsedAnswer:
    """The useful part of one successful HTTP answer."""

    texts: list[str]
    model: str | None
    simulated: bool
    prompt_tokens: int = 0
    completion_tokens: int = 0
    truncated: int = 0


class Malformed(ValueError):
    """A 2xx body that is not a chat completion."""


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay seconds or an HTTP date).

    Returns None when the header is absent or unreadable; never a negative number.
    """
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def usage_of(raw: bytes) -> dict[str, int] | None:
    """The token counts an answer reports (``usage``), or None."""
    try:
        usage = json.loads(raw).get("usage")
    except (ValueError, AttributeError):
        return None
    if not isinstance(usage, dict):
        return None
    counts = {k: usage[k] for k in ("prompt_tokens", "completion_tokens")
              if is_int(usage.get(k)) and usage[k] >= 0}
    return counts or None


def parse_completion(raw: bytes, key: str | None = None) -> tuple[ParsedAnswer, list[bool]]:
    """Read texts, model and simulator flag from a chat completion body (``key`` redacted),
    and which choices were cut at the token limit."""
    try:
        data = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise Malformed(f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Malformed(f"expected a JSON object, got {type(data).__name__}")
    choices = data.get("choices")
    if not isinstance(choices, list):
        raise Malformed("no 'choices' list")
    indexed: list[tuple[int, str, bool]] = []
    for pos, choice in enumerate(choices):
        if not isinstance(choice, dict):
            raise Malformed(f"choice {pos} is not an object")
        message = choice.get("message")
        if isinstance(message, dict) and "content" in message:
            content = message["content"]
        elif "text" in choice:  # a few servers answer in the legacy completions shape
            content = choice["text"]
        else:
            raise Malformed(f"choice {pos} has no message.content")
        if content is None:  # e.g. a refusal or tool call: no text
            content = ""
        if not isinstance(content, str):
            raise Malformed(f"choice {pos} content is {type(content).__name__}, not a string")
        index = choice.get("index")
        indexed.append((index if is_int(index) else pos, content,
                        choice.get("finish_reason") == "length"))
    indexed.sort(key=lambda item: item[0])  # stable: keeps server order on ties
    model = data.get("model") if isinstance(data.get("model"), str) else None
    fingerprint = data.get("system_fingerprint")
    simulated = any(isinstance(v, str) and v.startswith(SIMULATOR_PREFIX)
                    for v in (fingerprint, model))
    usage = data.get("usage")
    if not isinstance(usage, dict):
        usage = {}
    tokens = [t if is_int(t) and t >= 0 else 0
              for t in (usage.get(k) for k in ("prompt_tokens", "completion_tokens"))]
    answer = ParsedAnswer([redact(content, key) for _, content, _ in indexed], model, simulated,
                     *tokens)
    return answer, [cut for _, _, cut in indexed]


def chat_messages(prompt: str | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The chat messages of ``prompt`` (a string becomes one user message)."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise InvalidInputError("prompt must not be empty")
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, (bytes, Mapping)) or not isinstance(prompt, Sequence) or not prompt:
        raise InvalidInputError(
            "prompt must be a non-empty string or a non-empty list of "
            '{"role": ..., "content": ...} messages'
        )
    messages = []
    for i, message in enumerate(prompt):
        if (not isinstance(message, Mapping) or not isinstance(message.get("role"), str)
                or not isinstance(message.get("content"), str)):
            raise InvalidInputError(
                f'message {i} must be a mapping with string "role" and "content", got {message!r}'
            )
        messages.append(dict(message))
    try:
        json.dumps(messages)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"messages must be JSON-serialisable: {exc}") from None
    return messages


def server_message(text: str) -> str:
    """The error message in an OpenAI-style error body, else the start of the body."""
    try:
        data = json.loads(text)
    except ValueError:
        return preview(text)
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return preview(err["message"])
        for candidate in (err, data.get("message"), data.get("detail")):
            if isinstance(candidate, str):
                return preview(candidate)
    return preview(text)


def preview(text: str) -> str:
    text = text.strip()
    if not text:
        return "(empty body)"
    return text[:PREVIEW_CHARS] + ("..." if len(text) > PREVIEW_CHARS else "")


def redact(text: str, key: str | None) -> str:
    """``text`` with the key, and its URL-encoded forms, replaced by ``[REDACTED]``."""
    if not key:
        return text
    for form in dict.fromkeys((key, urllib.parse.quote(key, safe=""),
                               urllib.parse.quote_plus(key))):
        text = text.replace(form, REDACTED)
    return text


def describe_error(exc: BaseException, key: str | None) -> str:
    """``Type: message`` of a transport exception, cut short and without the key."""
    message = redact(str(exc), key)
    if len(message) > 300:
        message = message[:300] + "..."
    return f"{type(exc).__name__}: {message}"


def is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
