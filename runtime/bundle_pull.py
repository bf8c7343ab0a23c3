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
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.parse
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

import requests
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

Progress = Callable[[str], None]


def pull_bundle(source: str | os.PathLike[str], target: str | os.PathLike[str], *,
                keys: Iterable[str | bytes] | None = None, allow_unsigned: bool = False,
                timeout: float = 30.0, progress: Progress | None = None) -> Bundle:
    """Fetch the bundle at ``source``, verify it and install it at ``target``.

    Args:
        source: A URL, a bundle directory or an archive (see the module docstring).
        target: Where the app opens its bundle (becomes a symlink to the installed version).
        keys: Trusted publisher public keys (hex); default ``$HYDRAHEAD_BUNDLE_KEYS``.
        allow_unsigned: Accept a bundle that is unsigned or signed by an unknown key (never
            one whose signature does not match).
        timeout: Seconds to wait for the server (connect and between bytes).
        progress: Called with a line of text as files arrive.

    Returns:
        The installed bundle, opened.

    Raises:
        BundleSignatureError: the signature is missing, unknown or wrong.
        BundleError: the source cannot be read, a file does not match the manifest, or the
            bundle cannot be installed. The bundle installed before is left as it was.
    """
    say = progress or (lambda line: None)
    target = Path(target).expanduser()
    reader = _reader(str(source), timeout)
    try:
        manifest_bytes = reader.read(MANIFEST_NAME)
        if manifest_bytes is None:
            raise BundleError(f"no {MANIFEST_NAME} at {source}: not a hydrahead bundle")
        manifest = check_manifest_bytes(manifest_bytes, f"{source}/{MANIFEST_NAME}")
        signature = reader.read(SIGNATURE_NAME)
        status = check_signature(manifest_bytes, signature, trusted_keys(keys))
        require_trusted(status, allow_unsigned, str(source))
        if not status.trusted:
            log.warning("installing a bundle that is not verified: %s", status.reason)
        bundles = versions_dir(target)
        bundles.mkdir(parents=True, exist_ok=True)
        version = hashlib.sha256(manifest_bytes).hexdigest()[:16]
        final = bundles / version
        if final.is_dir():
            Bundle.open(final, verify=True)
            say(f"bundle {version} is already downloaded")
        else:
            staging = bundles / f"{version}.partial"
            staging.mkdir(exist_ok=True)
            for name, entry in manifest["files"].items():
                reader.fetch(name, staging / name, entry["sha256"], entry["bytes"], say)
            (staging / MANIFEST_NAME).write_bytes(manifest_bytes)
            if signature is not None:
                (staging / SIGNATURE_NAME).write_bytes(signature)
            Bundle.open(staging, verify=True)
            os.replace(staging, final)
    finally:
        reader.close()
    _point(target, final)
    _prune(bundles, keep=final)
    say(f"installed bundle {version} at {target}")
    return Bundle.open(target, verify=False)


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
    """Remove the installed versions other than ``keep`` (and interrupted pulls of others)."""
    for entry in bundles.iterdir():
        if entry != keep and entry.is_dir() and not entry.name.endswith(".partial"):
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


def _reader(source: str, timeout: float) -> _Reader:
    parts = urllib.parse.urlsplit(source)
    if parts.scheme in ("http", "https"):
        if parts.scheme == "http" and not _loopback(parts.hostname or ""):
            raise BundleError(f"refusing {source}: plain http is only for a loopback host; use "
                              "https")
        return _HttpReader(source.rstrip("/"), timeout)
    path = Path(source).expanduser()
    if path.is_dir():
        return _DirReader(path)
    if path.is_file() and path.name.endswith(ARCHIVES):
        return _DirReader(_extract(path), cleanup=True)
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
    def __init__(self, root: Path, cleanup: bool = False) -> None:
        self.root, self.cleanup = root, cleanup

    def read(self, name: str) -> bytes | None:
        path = self.root / name
        return path.read_bytes() if path.is_file() else None

    def fetch(self, name: str, dest: Path, sha256: str, size: int, say: Progress) -> None:
        src = self.root / name
        if not src.is_file():
            raise BundleError(f"{name} is listed in the manifest but missing from {self.root}")
        shutil.copyfile(src, dest)
        _check_file(dest, name, sha256, size)
        say(f"copied {name} ({size:,} bytes)")

    def close(self) -> None:
        if self.cleanup:
            shutil.rmtree(self.root.parent, ignore_errors=True)


def _extract(archive: Path) -> Path:
    """Extract an archive safely into a temp directory; return the folder holding the manifest."""
    tmp = Path(tempfile.mkdtemp(prefix="hydrahead-bundle-"))
    out = tmp / "x"
    out.mkdir()
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                for member in z.namelist():
                    _check_member(member, archive)
                z.extractall(out)
        else:
            with tarfile.open(archive) as t:
                t.extractall(out, filter="data")  # no links out, no devices, no absolute paths
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BundleError(f"cannot extract {archive}: {exc}") from None
    if (out / MANIFEST_NAME).is_file():
        return out
    inner = [p for p in out.iterdir() if p.is_dir()]
    if len(inner) == 1 and (inner[0] / MANIFEST_NAME).is_file():
        return inner[0]
    shutil.rmtree(tmp, ignore_errors=True)
    raise BundleError(f"{archive} holds no {MANIFEST_NAME} at its top or in one top folder")


def _check_member(name: str, archive: Path) -> None:
    parts = Path(name).parts
    if name.startswith(("/", "\\")) or ".." in parts or ":" in name:
        raise BundleError(f"{archive} holds an unsafe path {name!r}")


class _Transient(Exception):
    pass


class _HttpReader(_Reader):
    """A bundle directory served over HTTP(S); files resume with Range requests."""

    def __init__(self, base: str, timeout: float) -> None:
        self.base, self.timeout = base, timeout
        self.session = requests.Session()

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
                        return resp.content
        except _Transient as exc:
            raise BundleError(f"cannot download {name}: {exc}") from None
        return None  # pragma: no cover

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
                try:
                    for chunk in resp.iter_content(CHUNK):
                        fh.write(chunk)
                        have += len(chunk)
                        if have > size:
                            raise BundleError(f"{name} is larger than the manifest says")
                except requests.RequestException as exc:
                    raise _Transient(f"the download of {name} broke off at {have:,} bytes "
                                     f"({type(exc).__name__})") from None
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
