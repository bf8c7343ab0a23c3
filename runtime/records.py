"""What a user's history is made of: :class:`Record` (one item) and :class:`Hit` (a search result).

A record is an id, a text, a flat dict of task fields (``label``, ``tag``, ``title``, ``score``,
...) and an optional timestamp. Records check themselves when they are built, so an invalid one
never reaches the store:

- ``id``: a non-blank string of at most :data:`MAX_ID_BYTES` UTF-8 bytes.
- ``text``: a non-blank string of at most :data:`MAX_TEXT_BYTES` (1,000,000) UTF-8 bytes. Longer
  texts are rejected, not truncated: the encoder only reads the first few hundred tokens, and a
  megabyte of text in one history item is almost always a mistake (a whole file pasted in).
- ``fields``: string keys (not ``id``, ``text``, ``timestamp`` or ``embedding``) mapping to JSON
  scalars: ``str``, ``int`` (64-bit), finite ``float``, ``bool`` or ``None``.
- ``timestamp``: seconds since the Unix epoch (finite number) or ``None``.

Every violation raises :class:`~hydrahead.runtime.errors.InvalidInputError`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from .errors import InvalidInputError

MAX_TEXT_BYTES = 1_000_000
"""Largest accepted text, in UTF-8 bytes; longer texts raise InvalidInputError."""

MAX_ID_BYTES = 1024
"""Largest accepted record id, in UTF-8 bytes."""

RESERVED_KEYS = frozenset({"id", "text", "timestamp", "embedding"})
"""Keys of a record's dict form that are not task fields."""

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class Record:
    """One item of a user's history.

    Attributes:
        id: Unique id within the user's store.
        text: The text that is embedded and shown to the LLM.
        fields: Task fields (JSON scalars), e.g. ``{"tag": "doc", "date": "2015-07-09"}``.
        timestamp: Seconds since the Unix epoch, or None if unknown.

    Raises:
        InvalidInputError: if any attribute breaks the rules in the module docstring.
    """

    id: str
    text: str
    fields: dict[str, Any] = field(default_factory=dict)
    timestamp: float | None = None

    def __post_init__(self) -> None:
        _check_id(self.id)
        check_text(self.text, "record text")
        object.__setattr__(self, "fields", _checked_fields(self.fields))
        object.__setattr__(self, "timestamp", _checked_timestamp(self.timestamp))

    def __hash__(self) -> int:  # fields is a dict, so hash what is hashable
        return hash((self.id, self.text, self.timestamp))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Record:
        """Build a record from a flat dict such as a LaMP profile item.

        ``id``, ``text`` and ``timestamp`` are read as such; every other key becomes a field.
        Without a ``timestamp`` key, an ISO-8601 ``date`` string (``2015-07-09T11:33:21+05:30``
        or ``2015-07-09``; naive dates count as UTC) sets the timestamp, and ``date`` stays a
        field. A ``timestamp`` may itself be an ISO-8601 string.

        Raises:
            InvalidInputError: if ``data`` is not a mapping, lacks ``id`` or ``text``, has an
                ``embedding`` key (pass vectors to ``HistoryStore.add(vectors=...)`` instead),
                or makes an invalid record.
        """
        if not isinstance(data, Mapping):
            raise InvalidInputError(f"a record must be a dict or Record, got {type(data).__name__}")
        for key in ("id", "text"):
            if key not in data:
                keys = ", ".join(sorted(repr(k) for k in data)[:10])
                raise InvalidInputError(f"record dict has no {key!r} key (keys: {keys})")
        if "embedding" in data:
            raise InvalidInputError(
                "record dict has an 'embedding' key; remove it and pass the vectors to "
                "HistoryStore.add(items, vectors=...) instead"
            )
        fields = {k: v for k, v in data.items() if k not in RESERVED_KEYS}
        if "timestamp" in data:
            timestamp = data["timestamp"]
            if isinstance(timestamp, str):
                parsed = parse_iso_timestamp(timestamp)
                if parsed is None:
                    raise InvalidInputError(f"timestamp {timestamp!r} is not an ISO-8601 date")
                timestamp = parsed
        else:
            date = data.get("date")
            timestamp = parse_iso_timestamp(date) if isinstance(date, str) else None
        return cls(id=data["id"], text=data["text"], fields=fields, timestamp=timestamp)

    def to_dict(self) -> dict[str, Any]:
        """Return the flat dict form: ``id``, ``text``, ``timestamp`` and then the fields.

        ``Record.from_dict(r.to_dict()) == r`` for every record ``r``.
        """
        return {"id": self.id, "text": self.text, "timestamp": self.timestamp, **self.fields}

    @classmethod
    def _trusted(
        cls, id: str, text: str, fields: dict[str, Any], timestamp: float | None
    ) -> Record:
        """Build a record without checks (for rows the store wrote after checking them)."""
        record = object.__new__(cls)
        object.__setattr__(record, "id", id)
        object.__setattr__(record, "text", text)
        object.__setattr__(record, "fields", fields)
        object.__setattr__(record, "timestamp", timestamp)
        return record


@dataclass(frozen=True)
class Change:
    """One entry of a record's history.

    Attributes:
        id: The record id.
        op: ``"add"``, ``"update"`` or ``"delete"``.
        at: Unix time of the change.
        text: The record's text after the change; None for a delete, and for every entry of a
            record that was deleted since (deletion blanks its history's texts).
        fields: The record's fields after the change (so a change of fields alone shows);
            None where ``text`` is, and for entries recorded before hydrahead kept fields.
    """

    id: str
    op: str
    at: float
    text: str | None
    fields: dict[str, Any] | None = None


@dataclass(frozen=True, eq=False)
class Hit:
    """A search result.

    Attributes:
        record: The stored record.
        score: Cosine similarity between the query and the record's embedding (higher is closer).
        vector: The record's stored float32 embedding.
    """

    record: Record
    score: float
    vector: np.ndarray


def parse_iso_timestamp(value: str) -> float | None:
    """Return the Unix time of an ISO-8601 date/datetime string, or None if it is not one.

    Naive values are taken as UTC; a trailing ``Z`` is accepted.
    """
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _utf8_length(value: str, what: str) -> int:
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidInputError(f"{what} is not valid Unicode text ({exc.reason})") from None


def _check_id(value: object) -> None:
    if not isinstance(value, str):
        raise InvalidInputError(f"record id must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidInputError("record id must not be empty or blank")
    if _utf8_length(value, "record id") > MAX_ID_BYTES:
        raise InvalidInputError(f"record id is longer than {MAX_ID_BYTES} UTF-8 bytes")


def check_text(value: object, what: str = "text") -> str:
    """Return ``value`` if it is a non-blank string of at most MAX_TEXT_BYTES UTF-8 bytes.

    Raises:
        InvalidInputError: otherwise; the message starts with ``what``.
    """
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidInputError(f"{what} must not be empty or whitespace only")
    size = len(value) if value.isascii() else _utf8_length(value, what)
    if size > MAX_TEXT_BYTES:
        raise InvalidInputError(
            f"{what} is {size:,} UTF-8 bytes; the limit is {MAX_TEXT_BYTES:,} "
            "(split the text into several records)"
        )
    return value


def _checked_fields(fields: object) -> dict[str, Any]:
    if not isinstance(fields, Mapping):
        raise InvalidInputError(f"record fields must be a dict, got {type(fields).__name__}")
    checked: dict[str, Any] = {}
    for key, value in fields.items():
        if not isinstance(key, str):
            raise InvalidInputError(f"field names must be strings, got {key!r}")
        if key in RESERVED_KEYS:
            raise InvalidInputError(f"{key!r} is reserved and cannot be a field name")
        _utf8_length(key, f"field name {key!r}")
        checked[key] = checked_scalar(value, f"field {key!r}")
    return checked


def checked_scalar(value: object, what: str) -> Any:
    """Return ``value`` if it is a JSON scalar the store can keep, else raise."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, str):
        _utf8_length(value, what)
        return value
    if isinstance(value, numbers.Integral):  # also numpy integers
        if not _INT64_MIN <= int(value) <= _INT64_MAX:
            raise InvalidInputError(f"{what} = {_short(value)} does not fit in 64 bits")
        return int(value)
    if isinstance(value, numbers.Real):  # also numpy floats
        if not math.isfinite(value):
            raise InvalidInputError(f"{what} = {value} is not a finite number")
        return float(value)
    raise InvalidInputError(
        f"{what} must be a JSON scalar (str, int, float, bool or None), "
        f"got {type(value).__name__}"
    )


def _checked_timestamp(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise InvalidInputError(
            f"timestamp must be a number of seconds or None, got {type(value).__name__}"
        )
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise InvalidInputError(f"timestamp {_short(value)} is not a finite number of seconds")
    return seconds


def _short(value: object) -> str:
    text = str(value) if not isinstance(value, int) or abs(value) < 10**30 else "a huge integer"
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------------- API argument checks


def check_int(value: object, name: str, least: int, most: int = _INT64_MAX) -> int:
    """Return ``value`` if it is an int (not a bool) in ``[least, most]``, else raise.

    The default upper bound is what SQLite can bind (a signed 64-bit integer).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
            or not least <= int(value) <= most:
        raise InvalidInputError(
            f"{name} must be an integer from {least} to {most}, got {_short(value)}")
    return int(value)


def as_records(items: object) -> list[Record]:
    """Turn a Record, a dict, or an iterable of them into records, checking each and rejecting
    repeated ids (all or nothing)."""
    if isinstance(items, (Record, Mapping)):
        items = [items]
    elif isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise InvalidInputError("items must be a Record, a dict, or a list of them")
    records: list[Record] = []
    first_seen: dict[str, int] = {}
    for i, item in enumerate(items):
        try:
            record = item if isinstance(item, Record) else Record.from_dict(item)
        except InvalidInputError as exc:
            raise InvalidInputError(f"item {i}: {exc}") from None
        if record.id in first_seen:
            raise InvalidInputError(
                f"item {i}: id {record.id!r} is also item {first_seen[record.id]}; "
                "ids must be unique within one call"
            )
        first_seen[record.id] = i
        records.append(record)
    return records


def as_ids(ids: object) -> list[str]:
    """Turn a record id or an iterable of them into a list of ids that SQLite can bind."""
    if isinstance(ids, str):
        ids = [ids]
    if isinstance(ids, (bytes, Mapping)) or not isinstance(ids, Iterable):
        raise InvalidInputError(f"ids must be a string or a list of strings, got {_short(ids)}")
    result = list(ids)
    for id_ in result:
        if not isinstance(id_, str):
            raise InvalidInputError(
                f"ids must be strings, got {type(id_).__name__}: {_short(repr(id_))}")
        _utf8_length(id_, f"record id {id_!r}")
    return result
