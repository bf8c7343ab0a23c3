"""Where hydrahead keeps user data, user-id validation, and safe file writes.

The data root is, in order of precedence: an explicit argument, the ``HYDRAHEAD_HOME``
environment variable, or platformdirs' per-user data directory. Each user gets one directory
below ``<root>/users/``; everything hydrahead writes there is owner-only (0700 / 0600).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import platformdirs

from .errors import InvalidUserIdError, StoreError

ENV_HOME = "HYDRAHEAD_HOME"
MAX_USER_ID_LENGTH = 128
MAX_USER_ID_BYTES = 255
"""File systems limit a name to 255 bytes; a user id names a directory, in UTF-8."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_WINDOWS_FORBIDDEN = re.compile(r'[<>:"|?*]')
_WINDOWS_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³])(\..*)?$", re.IGNORECASE)


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Return the data root: ``root`` if given, else ``$HYDRAHEAD_HOME``, else the platform's."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("hydrahead", appauthor=False))


def validate_user_id(user_id: object) -> str:
    """Check that ``user_id`` can name a directory safely and return it.

    Raises:
        InvalidUserIdError: if it is not a non-empty string of at most 128 characters and 255
            UTF-8 bytes (lone surrogates cannot be encoded) without path separators, control
            characters, or a leading dot (which also rules out "..").
    """
    if not isinstance(user_id, str):
        raise InvalidUserIdError(f"user id must be a string, got {type(user_id).__name__}")
    if not user_id or not user_id.strip():
        raise InvalidUserIdError("user id must not be empty")
    if len(user_id) > MAX_USER_ID_LENGTH:
        raise InvalidUserIdError(
            f"user id is {len(user_id)} characters long; the limit is {MAX_USER_ID_LENGTH}"
        )
    try:
        size = len(user_id.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidUserIdError(
            "user id is not valid Unicode text (it holds a lone surrogate)") from None
    if size > MAX_USER_ID_BYTES:
        raise InvalidUserIdError(
            f"user id is {size} UTF-8 bytes long; a directory name holds {MAX_USER_ID_BYTES} "
            "at most")
    if "/" in user_id or "\\" in user_id or os.sep in user_id:
        raise InvalidUserIdError(f"user id {user_id!r} must not contain path separators")
    if _CONTROL.search(user_id):
        raise InvalidUserIdError("user id must not contain control characters")
    if user_id.startswith(".") or user_id != user_id.strip():
        raise InvalidUserIdError(
            f"user id {user_id!r} must not start with '.' or have surrounding spaces"
        )
    # Names other file systems refuse or alias (Windows, and SMB/exFAT volumes anywhere).
    if _WINDOWS_FORBIDDEN.search(user_id):
        raise InvalidUserIdError(
            f'user id {user_id!r} must not contain any of < > : " | ? * (not valid in file '
            "names on every system)")
    if user_id.endswith("."):
        raise InvalidUserIdError(f"user id {user_id!r} must not end with '.'")
    if _WINDOWS_RESERVED.match(user_id):
        raise InvalidUserIdError(f"user id {user_id!r} is a reserved device name on Windows")
    return user_id


def make_private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) if needed and make it owner-only (0700).

    Raises:
        StoreError: if ``path`` (or a parent) exists and is not a directory.
    """
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True, mode=0o700)
    except (FileExistsError, NotADirectoryError):
        raise StoreError(f"{p} cannot be a directory: it (or a parent) exists as a file; "
                         "move that file away") from None
    os.chmod(p, 0o700)
    return p


def user_dir(user_id: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Return (and create, owner-only) the directory of ``user_id`` under the data root.

    A data root hydrahead creates is owner-only too (an existing one keeps its mode).
    """
    uid = validate_user_id(user_id)
    home = data_root(root)
    if not home.exists():
        make_private_dir(home)
    users = make_private_dir(home / "users")
    _refuse_case_collision(users, uid)
    return make_private_dir(users / uid)


def _refuse_case_collision(users: Path, uid: str) -> None:
    """Refuse ``uid`` if another user's id differs from it only by case: on a case-insensitive
    file system (macOS, Windows) the two would share one directory."""
    folded = uid.casefold()
    for name in os.listdir(users):
        if name != uid and name.casefold() == folded:
            raise InvalidUserIdError(
                f"user id {uid!r} differs only by case from the existing user {name!r}; on a "
                "case-insensitive file system they would share one directory")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same dir, fsync, rename.

    A reader sees either the old file or the new one, never a partial write.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(target.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
