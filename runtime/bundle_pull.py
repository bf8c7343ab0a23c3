"""Getting a bundle onto a device: pull it from a URL, a directory or an archive, and install it.

:func:`pull_bundle` works in four steps, so that a failed pull never leaves the device without
a working bundle:

1. **Manifest first.** It reads ``manifest.json`` (and ``manifest.sig``) from the source and
   checks the signature against the trusted publisher keys (see :mod:`.bundle_signing`) before
   fetching anything else. Unsigned bundles are refused unless ``allow_unsigned``.
2. **Resumable download.** Every file the manifest lists is fetched into a staging directory
   named after the manifest's hash (``<versions>/<id>.partial/``, where ``<versions>`` is
   ``.<name>-versions/`` beside the bundle path). Over HTTP(S) a file stops
   where the connection broke (``name.part``) and the next pull of the same manifest resumes it
   with a ``Range`` request. Each file is checked against its size and sha256 as it completes.
3. **Verify.** The staged bundle is opened with :meth:`Bundle.open` (every hash again).
4. **Atomic swap.** The staged bundle is renamed to ``<versions>/<id>/`` and the bundle path
   (``<home>/bundle``) is pointed at it by replacing a symlink in one ``rename``: a reader sees
   the old bundle or the new one. The previous version is then removed.

Sources: ``https://host/path`` (the directory holding ``manifest.json``; plain ``http://`` only
to a loopback host), a local bundle directory, or a ``.tar``, ``.tar.gz``/``.tgz`` or ``.zip``
archive of one (the manifest at its top or in its single top-level folder).

Bounds, whatever a source sends: the manifest and its signature are read first, each at most
:data:`MAX_MANIFEST_BYTES`; from an archive nothing else is unpacked until the signature is
checked, and then only the files the manifest lists, each streamed to its staging file and
stopped at its declared size; a whole pull must finish within ``deadline`` seconds
(:data:`PULL_DEADLINE` by default). Every archive error is a :class:`BundleError`, and nothing is
left in a temp directory. One pull per bundle path runs at a time (a lock in the versions
folder; a second pull fails at once, saying so). An installed version that no longer verifies is
fetched again. A manifest older (``created``) than the installed one is refused unless
``allow_downgrade``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import shutil
import tarfile
import time
import urllib.parse
import zlib
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import filelock
import requests
import urllib3
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from .bundle import MANIFEST_NAME, Bundle, check_manifest_bytes, sha256_file
from .bundle_signing import SIGNATURE_NAME, check_signature, require_trusted, trusted_keys
from .errors import BundleError

log = logging.getLogger(__name__)

def versions_dir(target: Path) -> Path:
    """Where the versions of the bundle at ``target`` live: ``<parent>/.<name>-versions/``
    (one folder per bundle path, so that pruning one never touches another's)."""
    return target.parent / f".{target.name}-versions"
CHUNK = 1 << 16
ARCHIVES = (".tar", ".tar.gz", ".tgz", ".zip")
MAX_MANIFEST_BYTES = 1 << 20
"""The most bytes a manifest or a signature may have, from any source."""
PULL_DEADLINE = 1800.0
"""Seconds a whole pull may take by default (a 27 MB bundle over a slow 1 Mbit/s link: ~4 min)."""
_ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, zipfile.LargeZipFile, OSError,
                   EOFError, zlib.error, RuntimeError, NotImplementedError, ValueError)

Progress = Callable[[str], None]


def pull_bundle(source: str | os.PathLike[str], target: str | os.PathLike[str], *,
                keys: Iterable[str | bytes] | None = None, allow_unsigned: bool = False,
                allow_downgrade: bool = False, timeout: float = 30.0,
                deadline: float = PULL_DEADLINE, progress: Progress | None = None) -> Bundle:
    """Fetch the bundle at ``source``, verify it and install it at ``target``.

    Args:
        source: A URL, a bundle directory or an archive (see the module docstring).
        target: Where the app opens its bundle (becomes a symlink to the installed version).
        keys: Trusted publisher public keys (hex); default ``$HYDRAHEAD_BUNDLE_KEYS``.
        allow_unsigned: Accept a bundle that is unsigned or signed by an unknown key (never
            one whose signature does not match).
        allow_downgrade: Accept a manifest older than the installed bundle's.
        timeout: Seconds to wait for the server (connect and between bytes).
        deadline: Seconds the whole pull may take.
        progress: Called with a line of text as files arrive.

    Returns:
        The installed bundle, opened.

    Raises:
        BundleSignatureError: the signature is missing, unknown or wrong.
        BundleError: the source cannot be read, a file does not match the manifest, the pull
            ran past ``deadline``, another pull of ``target`` is running, the manifest is older
            than the installed one, or the bundle cannot be installed. The bundle installed
            before is left as it was.
    """
    say = progress or (lambda line: None)
    target = Path(target).expanduser()
    bundles = versions_dir(target)
    bundles.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(bundles / ".pull.lock"), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise BundleError(f"another pull of {target} is running; try again when it is done") \
            from None
    try:
        reader = _reader(str(source), timeout, time.monotonic() + deadline)
        try:
            final, version = _fetch(reader, str(source), target, bundles, keys, allow_unsigned,
                                    allow_downgrade, say)
        finally:
            reader.close()
        _point(target, final)
        _prune(bundles, keep=final)
    finally:
        lock.release()
    say(f"installed bundle {version} at {target}")
    return Bundle.open(target, verify=False)


def _fetch(reader: _Reader, source: str, target: Path, bundles: Path,
           keys: Iterable[str | bytes] | None, allow_unsigned: bool, allow_downgrade: bool,
           say: Progress) -> tuple[Path, str]:
    """Manifest and signature first, then every listed file into staging; the version's
    folder and id."""
    manifest_bytes = reader.read(MANIFEST_NAME)
    if manifest_bytes is None:
        raise BundleError(f"no {MANIFEST_NAME} at {source}: not a hydrahead bundle")
    manifest = check_manifest_bytes(manifest_bytes, f"{source}/{MANIFEST_NAME}")
    signature = reader.read(SIGNATURE_NAME)
    status = check_signature(manifest_bytes, signature, trusted_keys(keys))
    require_trusted(status, allow_unsigned, source)
    if not status.trusted:
        log.warning("installing a bundle that is not verified: %s", status.reason)
    if not allow_downgrade:
        _refuse_downgrade(manifest, target)
    version = hashlib.sha256(manifest_bytes).hexdigest()[:16]
    final = bundles / version
    if final.is_dir():
        try:
            Bundle.open(final, verify=True)
            say(f"bundle {version} is already downloaded")
            return final, version
        except BundleError as exc:  # damaged since it was installed: fetch it again
            log.warning("installed bundle %s no longer verifies (%s); fetching it again",
                        version, exc)
            broken = bundles / f"{version}.broken-{os.getpid()}"
            os.replace(final, broken)
            shutil.rmtree(broken, ignore_errors=True)
    staging = bundles / f"{version}.partial"
    staging.mkdir(exist_ok=True)
    for name, entry in manifest["files"].items():
        dest = staging / name
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            reader.fetch(name, dest, entry["sha256"], entry["bytes"], say)
        except OSError as exc:
            raise BundleError(f"cannot write {name} of the bundle ({exc})") from None
    (staging / MANIFEST_NAME).write_bytes(manifest_bytes)
    if signature is not None:
        (staging / SIGNATURE_NAME).write_bytes(signature)
    Bundle.open(staging, verify=True)
    os.replace(staging, final)
    return final, version


def _refuse_downgrade(manifest: dict, target: Path) -> None:
    """Refuse a manifest created before the installed bundle's (a replayed older release)."""
    try:
        installed = Bundle.open(target, verify=False).manifest
    except BundleError:
        return  # nothing (usable) installed: nothing to go back from
    new, old = str(manifest.get("created") or ""), str(installed.get("created") or "")
    if new and old and new < old:
        raise BundleError(f"the bundle offered was created {new}, before the installed one "
                          f"({old}); refusing to go back (pass --allow-downgrade to install it)")


# ---------------------------------------------------------------------- installing


def _point(target: Path, version_dir: Path) -> None:
    """Make ``target`` a symlink to ``version_dir``, replacing what was there in one rename."""
    if target.exists() and not target.is_symlink():
        # A bundle directory from before pulls existed: keep it as a version of its own.
        aside = version_dir.parent / f"previous-{os.getpid()}-{target.name}"
        os.replace(target, aside)
    link = target.with_name(f".{target.name}.{os.getpid()}.link")
    link.unlink(missing_ok=True)
    os.symlink(os.path.relpath(version_dir, target.parent), link)
    os.replace(link, target)


def _prune(bundles: Path, keep: Path) -> None:
    """Remove the installed versions other than ``keep``, and interrupted pulls of any."""
    for entry in bundles.iterdir():
        if entry != keep and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


# ---------------------------------------------------------------------- sources


class _Reader:
    """Reads a bundle's manifest and files from one kind of source."""

    def read(self, name: str) -> bytes | None:
        """A small file's bytes, or None if the source has no such file."""
        raise NotImplementedError

    def fetch(self, name: str, dest: Path, sha256: str, size: int, say: Progress) -> None:
        """Copy file ``name`` to ``dest`` and check it."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def _reader(source: str, timeout: float, deadline: float) -> _Reader:
    parts = urllib.parse.urlsplit(source)
    if parts.scheme in ("http", "https"):
        if parts.scheme == "http" and not _loopback(parts.hostname or ""):
            raise BundleError(f"refusing {source}: plain http is only for a loopback host; use "
                              "https")
        return _HttpReader(source.rstrip("/"), timeout, deadline)
    path = Path(source).expanduser()
    if path.is_dir():
        return _DirReader(path)
    if path.is_file() and path.name.endswith(ARCHIVES):
        return _ArchiveReader(path, deadline)
    raise BundleError(f"{source} is not a URL, a bundle directory or a bundle archive "
                      f"({', '.join(ARCHIVES)})")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _DirReader(_Reader):
    def __init__(self, root: Path) -> None:
        self.root = root

    def read(self, name: str) -> bytes | None:
        path = self.root / name
        if not path.is_file():
            return None
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{path} is over {MAX_MANIFEST_BYTES:,} bytes: not a manifest")
        return path.read_bytes()

    def fetch(self, name: str, dest: Path, sha256: str, size: int, say: Progress) -> None:
        src = self.root / name
        if not src.is_file():
            raise BundleError(f"{name} is listed in the manifest but missing from {self.root}")
        shutil.copyfile(src, dest)
        _check_file(dest, name, sha256, size)
        say(f"copied {name} ({size:,} bytes)")



class _ArchiveReader(_Reader):
    """A bundle in a .tar, .tar.gz/.tgz or .zip archive, read member by member: nothing is
    unpacked but the members the (signed) manifest lists, each bounded by its declared size."""

    def __init__(self, archive: Path, deadline: float) -> None:
        self.archive, self.deadline = archive, deadline
        self._zip: zipfile.ZipFile | None = None
        self._tar: tarfile.TarFile | None = None
        try:
            if archive.name.endswith(".zip"):
                self._zip = zipfile.ZipFile(archive)
                names = self._zip.namelist()
            else:
                self._tar = tarfile.open(archive)
                names = self._tar.getnames()
        except _ARCHIVE_ERRORS as exc:
            self.close()
            raise BundleError(f"cannot read {archive}: {type(exc).__name__}: {exc}") from None
        for name in names:
            _check_member(name, archive)
        self.prefix = self._root(set(names))

    def _root(self, names: set[str]) -> str:
        if MANIFEST_NAME in names:
            return ""
        tops = {name.split("/", 1)[0] for name in names}
        if len(tops) == 1 and f"{next(iter(tops))}/{MANIFEST_NAME}" in names:
            return next(iter(tops)) + "/"
        self.close()
        raise BundleError(f"{self.archive} holds no {MANIFEST_NAME} at its top or in one top "
                          "folder")

    def _open(self, name: str) -> tuple[int, Any] | None:
        """``(declared size, stream)`` of a regular member, or None."""
        member = self.prefix + name
        if self._zip is not None:
            try:
                info = self._zip.getinfo(member)
            except KeyError:
                return None
            return (None if info.is_dir() else (info.file_size, self._zip.open(info)))
        assert self._tar is not None
        try:
            tinfo = self._tar.getmember(member)
        except KeyError:
            return None
        stream = self._tar.extractfile(tinfo) if tinfo.isfile() else None
        return None if stream is None else (tinfo.size, stream)

    def _copy(self, name: str, out: Any, limit: int) -> int:
        """Stream member ``name`` into ``out``, at most ``limit`` bytes; how many it wrote."""
        opened = self._open(name)
        if opened is None:
            return -1
        declared, stream = opened
        if declared > limit:
            raise BundleError(f"{name} in {self.archive} is {declared:,} bytes; at most "
                              f"{limit:,} are allowed")
        written = 0
        with stream:
            while chunk := stream.read(CHUNK):
                written += len(chunk)
                if written > limit:
                    raise BundleError(f"{name} in {self.archive} unpacks to more than "
                                      f"{limit:,} bytes")
                if time.monotonic() > self.deadline:
                    raise BundleError(f"reading {self.archive} ran past the pull's deadline")
                out.write(chunk)
        return written

    def read(self, name: str) -> bytes | None:
        import io

        buffer = io.BytesIO()
        try:
            written = self._copy(name, buffer, MAX_MANIFEST_BYTES)
        except _ARCHIVE_ERRORS as exc:
            raise BundleError(f"cannot read {name} from {self.archive}: "
                              f"{type(exc).__name__}: {exc}") from None
        return None if written < 0 else buffer.getvalue()

    def fetch(self, name: str, dest: Path, sha256: str, size: int, say: Progress) -> None:
        try:
            with open(dest, "wb") as out:
                written = self._copy(name, out, size)
        except _ARCHIVE_ERRORS as exc:
            dest.unlink(missing_ok=True)
            raise BundleError(f"cannot unpack {name} from {self.archive}: "
                              f"{type(exc).__name__}: {exc}") from None
        except BundleError:
            dest.unlink(missing_ok=True)
            raise
        if written < 0:
            dest.unlink(missing_ok=True)
            raise BundleError(f"{name} is listed in the manifest but missing from "
                              f"{self.archive}")
        _check_file(dest, name, sha256, size)
        say(f"unpacked {name} ({size:,} bytes)")

    def close(self) -> None:
        for handle in (self._zip, self._tar):
            if handle is not None:
                handle.close()


def _check_member(name: str, archive: Path) -> None:
    parts = Path(name).parts
    if name.startswith(("/", "\\")) or ".." in parts or ":" in name:
        raise BundleError(f"{archive} holds an unsafe path {name!r}")


class _Transient(Exception):
    pass


class _HttpReader(_Reader):
    """A bundle directory served over HTTP(S); files resume with Range requests."""

    def __init__(self, base: str, timeout: float, deadline: float) -> None:
        self.base, self.timeout, self.deadline = base, timeout, deadline
        self.session = requests.Session()

    def _in_time(self, what: str) -> None:
        if time.monotonic() > self.deadline:
            raise BundleError(f"{what} ran past the pull's deadline; pull again to resume")

    def _get(self, name: str, headers: dict[str, str] | None = None) -> requests.Response:
        url = f"{self.base}/{urllib.parse.quote(name)}"
        try:
            resp = self.session.get(url, headers=headers or {}, stream=True,
                                    timeout=(self.timeout, self.timeout), allow_redirects=False)
        except requests.RequestException as exc:
            raise _Transient(f"cannot reach {url}: {type(exc).__name__}") from None
        if resp.status_code >= 500 or resp.status_code == 429:
            resp.close()
            raise _Transient(f"HTTP {resp.status_code} from {url}")
        return resp

    def _retrying(self) -> Retrying:
        return Retrying(stop=stop_after_attempt(4), wait=wait_exponential(0.2, max=5),
                        retry=retry_if_exception_type(_Transient), reraise=True)

    def read(self, name: str) -> bytes | None:
        try:
            for attempt in self._retrying():
                with attempt:
                    with self._get(name) as resp:
                        if resp.status_code == 404:
                            return None
                        if resp.status_code != 200:
                            raise BundleError(f"HTTP {resp.status_code} for {self.base}/{name}")
                        return self._bounded(name, resp)
        except _Transient as exc:
            raise BundleError(f"cannot download {name}: {exc}") from None
        return None  # pragma: no cover

    def _chunks(self, name: str, resp: requests.Response) -> Iterator[bytes]:
        """The body as it arrives (``read1``: a body dripped a byte at a time still reaches
        the deadline check), each chunk checked against the deadline."""
        while True:
            self._in_time(f"the download of {name}")
            try:
                chunk = resp.raw.read1(CHUNK, decode_content=True)
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                raise _Transient(f"the download of {name} broke off "
                                 f"({type(exc).__name__})") from None
            if not chunk:
                return
            yield chunk

    def _bounded(self, name: str, resp: requests.Response) -> bytes:
        """A small file's body: at most MAX_MANIFEST_BYTES, within the deadline."""
        body = bytearray()
        for chunk in self._chunks(name, resp):
            body += chunk
            if len(body) > MAX_MANIFEST_BYTES:
                raise BundleError(f"{self.base}/{name} is over {MAX_MANIFEST_BYTES:,} bytes: "
                                  "not a manifest")
        return bytes(body)

    def fetch(self, name: str, dest: Path, sha256: str, size: int, say: Progress) -> None:
        if dest.is_file() and dest.stat().st_size == size:
            _check_file(dest, name, sha256, size)  # finished by an earlier pull
            return
        part = dest.with_name(dest.name + ".part")
        try:
            for attempt in self._retrying():
                with attempt:
                    self._download(name, part, size)
        except _Transient as exc:
            raise BundleError(f"cannot download {name} ({exc}); pull again to resume "
                              f"({part.stat().st_size if part.exists() else 0:,} of {size:,} "
                              "bytes are kept)") from None
        _check_file(part, name, sha256, size)
        os.replace(part, dest)
        say(f"downloaded {name} ({size:,} bytes)")

    def _download(self, name: str, part: Path, size: int) -> None:
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            have = 0
        if have == size:
            return
        headers = {"Range": f"bytes={have}-"} if have else {}
        with self._get(name, headers) as resp:
            if resp.status_code == 206 and have:
                mode = "ab"
            elif resp.status_code == 200:
                mode, have = "wb", 0  # the server does not resume: start again
            else:
                raise BundleError(f"HTTP {resp.status_code} for {self.base}/{name}")
            with open(part, mode) as fh:
                for chunk in self._chunks(name, resp):
                    fh.write(chunk)
                    have += len(chunk)
                    if have > size:
                        raise BundleError(f"{name} is larger than the manifest says")
        if have < size:
            raise _Transient(f"the download of {name} ended at {have:,} of {size:,} bytes")

    def close(self) -> None:
        self.session.close()


def _check_file(path: Path, name: str, sha256: str, size: int) -> None:
    actual = path.stat().st_size
    if actual != size:
        path.unlink(missing_ok=True)
        raise BundleError(f"{name} has {actual:,} bytes, the manifest lists {size:,}")
    if sha256_file(path) != sha256:
        path.unlink(missing_ok=True)
        raise BundleError(f"{name} does not match its sha256 in the manifest (corrupted or "
                          "tampered with); pull again")
