"""Versioned ``.npz`` files: the one way hydrahead writes and reads arrays on disk.

Every ``.npz`` hydrahead writes (heads, pair bases, base heads, label and feedback files,
training datasets) holds, next to its own arrays, a header of three arrays::

    format          () str    what the file is, e.g. "hydrahead-head"
    format_version  () int    its layout, raised when the layout changes
    meta            () str    a JSON object (``{}`` when there is nothing to say)

Arrays only: files are read with ``allow_pickle=False``, so opening one never runs code.
:func:`read_npz` checks the header and turns every way a file can be unusable (missing,
truncated, not an archive, pickled arrays, another format, a newer or unknown version) into
the caller's own error type, with the caller's hint on what to do about it.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
import zlib
from collections.abc import Collection, Mapping
from typing import IO, Any, NamedTuple

import numpy as np

from .errors import HydraheadError, InvalidInputError
from .paths import atomic_write_bytes

HEADER = ("format", "format_version", "meta")
"""Names of the header arrays; a file's own arrays cannot use them."""

# What reading a damaged archive raises: from open() and zipfile (OSError, BadZipFile), from
# numpy's .npy parser (ValueError, EOFError, KeyError), from a damaged deflate stream (zlib).
_DAMAGE = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


class Npz(NamedTuple):
    """What :func:`read_npz` read: the file's own arrays, its ``meta`` and its version."""

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    version: int


def write_npz(
    target: str | os.PathLike[str] | IO[bytes],
    arrays: Mapping[str, np.ndarray],
    *,
    format: str,
    version: int,
    meta: Mapping[str, Any] | None = None,
    compressed: bool = False,
    mode: int = 0o600,
) -> None:
    """Write ``arrays`` and the header (``format``, ``version``, ``meta``) as one ``.npz``.

    Args:
        target: A path, written atomically (a reader sees the old file or the new one), or a
            binary file object, written at its current position.
        arrays: The file's arrays, by name; none may be an object array or use a header name.
        format: The format name, e.g. ``"hydrahead-head"``.
        version: The format version of this layout.
        meta: JSON-serializable facts about the file (stored as one JSON string).
        compressed: Deflate the arrays (``np.savez_compressed``).
        mode: Permissions of a file written to a path: owner-only by default, as everything
            in a user's directory; ``0o644`` for shared artefacts such as bundle files.

    Raises:
        InvalidInputError: an array uses a header name or holds Python objects, or ``meta``
            is not JSON-serializable.
    """
    clash = sorted(set(HEADER) & set(arrays))
    if clash:
        raise InvalidInputError(f"array names {clash} are reserved for the .npz header")
    values = {name: np.asarray(a) for name, a in arrays.items()}
    pickled = sorted(name for name, a in values.items() if a.dtype.hasobject)
    if pickled:
        raise InvalidInputError(f"arrays {pickled} hold Python objects; store plain arrays")
    try:
        text = json.dumps(dict(meta or {}), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"meta must be JSON-serializable: {exc}") from exc
    header = {"format": np.array(format), "format_version": np.array(int(version)),
              "meta": np.array(text)}
    buffer = io.BytesIO()
    save = np.savez_compressed if compressed else np.savez
    save(buffer, allow_pickle=False, **header, **values)
    if isinstance(target, (str, os.PathLike)):
        atomic_write_bytes(target, buffer.getvalue(), mode=mode)
    else:
        target.write(buffer.getvalue())


def read_npz(
    source: str | os.PathLike[str] | IO[bytes],
    *,
    format: str,
    versions: int | Collection[int],
    error: type[HydraheadError],
    hint: str,
    what: str,
    unversioned: int | None = None,
    raise_not_found: bool = False,
) -> Npz:
    """Read every array of an ``.npz`` written by :func:`write_npz`, checking its header.

    Args:
        source: A path or a binary file object (read from its current position, left open).
        format: The format name the file must have.
        versions: The versions this code reads: a collection of them, or the newest one
            (then every version from 1 up to it).
        error: The exception type to raise (the caller's, e.g. ``HeadError``).
        hint: What the user should do about an unusable file, ending every message, e.g.
            ``"refit with `hydrahead fit`"``.
        what: What the file is, in words, e.g. ``"head file"``; messages read
            ``"<what> <path> is corrupt (...); <hint>"``.
        unversioned: Read a file without ``format_version`` (one written before its format
            was versioned) as this version; its ``format``, if it has one, must still match.
            ``None`` refuses such files.
        raise_not_found: Let a missing file raise :class:`FileNotFoundError` (for callers to
            whom it means "nothing stored yet") instead of ``error``.

    Returns:
        The file's arrays (without the header), its ``meta`` (``{}`` if it has none) and its
        version.

    Raises:
        FileNotFoundError: the file does not exist and ``raise_not_found`` is set.
        HydraheadError: (of type ``error``) the file is missing, truncated, not an ``.npz``,
            holds pickled arrays, lacks the header, is of another format, or of a version not
            in ``versions``.
    """
    where = describe(what, source)
    try:
        if isinstance(source, (str, os.PathLike)):
            # Our own file handle: np.load leaks its own when the zip is truncated.
            with open(source, "rb") as fh:
                arrays = _arrays(fh)
        else:
            arrays = _arrays(source)
    except FileNotFoundError as exc:
        if raise_not_found:
            raise
        raise error(f"{where} does not exist; {hint}") from exc
    except _DAMAGE as exc:
        raise error(f"{where} is corrupt ({exc}); {hint}") from exc

    stored = arrays.pop("format", None)
    version_array = arrays.pop("format_version", None)
    meta_array = arrays.pop("meta", None)
    if stored is None and (version_array is not None or unversioned is None):
        raise error(f"{where} has no 'format' header: it was not written by hydrahead or is "
                    f"damaged; {hint}")
    if stored is not None and _text(stored) != format:
        found = "a malformed one" if _text(stored) is None else repr(_text(stored))
        raise error(f"{where} is not a hydrahead {what} (its format is {found}, not "
                    f"{format!r}); {hint}")
    if version_array is not None:
        if version_array.shape != () or version_array.dtype.kind not in "iu":
            raise error(f"{where} is corrupt (malformed 'format_version'); {hint}")
        version = int(version_array)
    elif unversioned is not None:
        version = unversioned
    else:
        raise error(f"{where} has no 'format_version' header: it was not written by hydrahead "
                    f"or is damaged; {hint}")
    accepted = range(1, versions + 1) if isinstance(versions, int) else versions
    if version not in accepted:
        newest = max(accepted, default=0)
        if version > newest:
            raise error(f"{where} has format version {version}, newer than this hydrahead "
                        f"understands ({newest}); upgrade hydrahead or {hint}")
        raise error(f"{where} has format version {version}, which this hydrahead does not "
                    f"read (it reads {sorted(accepted)}); {hint}")
    return Npz(arrays, _meta(meta_array, where, error, hint), version)


def describe(what: str, source: str | os.PathLike[str] | IO[bytes]) -> str:
    """``"<what> <path>"`` for a path, ``what`` alone for a file object (as messages say it)."""
    if isinstance(source, (str, os.PathLike)):
        return f"{what} {os.fspath(source)}"
    return what


def _arrays(fh: IO[bytes]) -> dict[str, np.ndarray]:
    """Every array of the archive open in ``fh``, read eagerly (never unpickling)."""
    loaded = np.load(fh, allow_pickle=False)
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError("a single .npy array, not an .npz archive")
    with loaded:
        return {name: loaded[name] for name in loaded.files}


def _text(array: np.ndarray) -> str | None:
    """The string a 0-d str array holds, or None if it is something else."""
    if array.shape != () or array.dtype.kind != "U":
        return None
    return str(array)


def _meta(array: np.ndarray | None, where: str, error: type[HydraheadError],
          hint: str) -> dict[str, Any]:
    if array is None:
        return {}
    text = _text(array)
    try:
        meta = json.loads(text) if text is not None else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise error(f"{where} is corrupt ('meta' is not a JSON object); {hint}")
    return meta
