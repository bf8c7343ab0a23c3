"""The model bundle: a directory of model files plus a manifest that lists and hashes them.

A device downloads a bundle once and opens it with :meth:`Bundle.open`, which refuses a bundle
that is incomplete, truncated, tampered with, or written by a newer hydrahead. The manifest
holds several named models (the sentence encoder, and later the shared reranker and adapter
bases); each model names its files by role::

    {
      "format": "hydrahead-bundle", "format_version": 1,
      "created": "2026-11-21T10:00:00+00:00", "library_version": "0.1.0",
      "models": {"encoder": {"kind": "sentence-encoder",
                             "files": {"model": "encoder.int8.onnx",
                                       "tokenizer": "tokenizer.json"}, ...}},
      "files": {"encoder.int8.onnx": {"sha256": "...", "bytes": 22947555}, ...}
    }

Two fingerprints identify what a bundle contains: :attr:`Bundle.fingerprint` (the whole
manifest) and :meth:`Bundle.model_fingerprint` (one model's spec and file hashes, unchanged
when other models are added to the bundle).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from .. import __version__
from .errors import BundleError
from .paths import atomic_write_bytes

MANIFEST_NAME = "manifest.json"
BUNDLE_FORMAT = "hydrahead-bundle"
FORMAT_VERSION = 1
_HASH_CHUNK = 1 << 20  # 1 MiB
_REBUILD_HINT = ("pull it again (`hydrahead bundle pull SOURCE`) or rebuild it with "
                 "`hydrahead export bundle --out DIR`")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the sha256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the manifest entry of one file: ``{"sha256": hex, "bytes": size}``."""
    return {"sha256": sha256_file(path), "bytes": os.path.getsize(path)}


class Bundle:
    """An opened model bundle. Create it with :meth:`Bundle.open`.

    Attributes:
        root: The bundle directory.
        manifest: The parsed manifest (treat it as read-only).
        fingerprint: sha256 hex digest of the manifest bytes; identifies the whole bundle.
    """

    def __init__(self, root: Path, manifest: dict[str, Any], manifest_bytes: bytes) -> None:
        self.root = root
        self.manifest = manifest
        self.fingerprint = hashlib.sha256(manifest_bytes).hexdigest()

    @classmethod
    def open(cls, path: str | os.PathLike[str], verify: bool = True) -> Bundle:
        """Open the bundle in directory ``path`` and check it.

        The format, its version and the manifest's structure are always checked, as are the
        existence and size of every listed file.

        Args:
            path: The bundle directory (the one holding ``manifest.json``).
            verify: Also check the sha256 of every file (reads every file once; about 50 ms
                for the encoder bundle).

        Raises:
            BundleError: if the manifest is missing or malformed, the format is unknown or
                newer than this hydrahead supports, a model refers to a file the manifest does
                not list, or a listed file is missing, of the wrong size, or (with ``verify``)
                has the wrong sha256.
        """
        root = Path(path).expanduser()
        manifest_path = root / MANIFEST_NAME
        try:
            manifest_bytes = manifest_path.read_bytes()
        except FileNotFoundError:
            raise BundleError(
                f"no {MANIFEST_NAME} in {root}: this is not a hydrahead bundle (or an "
                f"incomplete one); {_REBUILD_HINT}"
            ) from None
        except OSError as exc:
            raise BundleError(f"cannot read {manifest_path}: {exc}") from exc
        manifest = check_manifest_bytes(manifest_bytes, manifest_path)
        bundle = cls(root, manifest, manifest_bytes)
        bundle.check_files(hashes=verify)
        return bundle

    def check_files(self, hashes: bool = True) -> None:
        """Check that every listed file exists with the listed size (and sha256).

        Raises:
            BundleError: naming the first file that is missing, truncated or altered.
        """
        for name, entry in self.manifest["files"].items():
            path = self.root / name
            if not path.is_file():
                raise BundleError(
                    f"bundle file {name!r} is missing from {self.root}; {_REBUILD_HINT}"
                )
            size = path.stat().st_size
            if size != entry["bytes"]:
                raise BundleError(
                    f"bundle file {name!r} has {size} bytes but the manifest lists "
                    f"{entry['bytes']} (truncated or replaced); {_REBUILD_HINT}"
                )
            if hashes and sha256_file(path) != entry["sha256"]:
                raise BundleError(
                    f"bundle file {name!r} does not match its sha256 in the manifest (corrupted "
                    f"or tampered with); {_REBUILD_HINT}"
                )

    @property
    def model_names(self) -> list[str]:
        """Names of the models in this bundle, e.g. ``["encoder"]``."""
        return list(self.manifest["models"])

    def has_model(self, name: str) -> bool:
        """Whether the bundle holds a model called ``name``."""
        return name in self.manifest["models"]

    def model(self, name: str) -> dict[str, Any]:
        """Return the spec of model ``name`` (a dict; treat it as read-only).

        Raises:
            BundleError: if the bundle has no such model.
        """
        try:
            return self.manifest["models"][name]
        except KeyError:
            raise BundleError(
                f"the bundle in {self.root} has no model {name!r} (it has: "
                f"{', '.join(self.model_names) or 'none'}); rebuild it with a hydrahead "
                "version that exports this model"
            ) from None

    def file(self, model: str, role: str) -> Path:
        """Return the path of the file that plays ``role`` (e.g. "tokenizer") in ``model``.

        Raises:
            BundleError: if the model or the role does not exist.
        """
        files = self.model(model)["files"]
        try:
            return self.root / files[role]
        except KeyError:
            raise BundleError(
                f"model {model!r} in {self.root} has no {role!r} file (it has: "
                f"{', '.join(files) or 'none'})"
            ) from None

    def model_fingerprint(self, name: str) -> str:
        """sha256 hex digest over model ``name``'s spec and the hashes of its files.

        Unlike :attr:`fingerprint`, this does not change when other models are added to the
        bundle, so data derived from one model (e.g. stored embeddings) stays valid.
        """
        spec = self.model(name)
        files = {fname: self.manifest["files"][fname] for fname in spec["files"].values()}
        payload = {"name": name, "spec": spec, "files": files}
        return hashlib.sha256(_canonical_json(payload)).hexdigest()

    def base_training(self, role: str) -> dict[str, Any]:
        """What the shared base of ``role`` was trained on, from its manifest entry:
        ``{"trained": False}``, or ``trained``, ``tasks``, ``labels_from`` (the LLMs whose labels
        it learned from), ``users`` (labelled user histories), ``sources`` ((task, LLM) pairs)
        and ``dev`` (a quality run's summary, where the publisher added one)."""
        spec = self.model(role)
        if not spec.get("trained"):
            return {"trained": False}
        training = spec.get("training") or {}
        data = training.get("data") or {}
        sources = data.get("sources") or [{"task": data.get("task"), "llm": data.get("labels")}]
        return {"trained": True,
                "tasks": sorted({str(s.get("task")) for s in sources}),
                "labels_from": sorted({str(s.get("llm")) for s in sources}),
                "users": data.get("users"), "sources": len(sources), "dev": training.get("dev")}

    def copy_to(self, target: str | os.PathLike[str]) -> Bundle:
        """Copy the manifest and the files it lists (nothing else) into the new directory
        ``target``, and open the copy.

        Raises:
            BundleError: ``target`` already exists.
        """
        target = Path(target)
        if target.exists():
            raise BundleError(f"cannot copy the bundle to {target}: it exists")
        target.mkdir(parents=True)
        for name in [MANIFEST_NAME, *self.manifest["files"]]:
            shutil.copy2(self.root / name, target / name)
        signature = self.root / "manifest.sig"  # bundle_signing.SIGNATURE_NAME
        if signature.exists():
            shutil.copy2(signature, target / signature.name)
        return Bundle.open(target)

    @staticmethod
    def add_model(
        root: str | os.PathLike[str],
        name: str,
        spec: Mapping[str, Any],
        files: Mapping[str, str | os.PathLike[str]],
    ) -> Bundle:
        """Add model ``name`` to the bundle in ``root`` (or replace it) and rewrite the manifest.

        The existing bundle is verified first. Each file is copied into ``root`` under its file
        name unless it is already there; the manifest gets its sha256 and size. Files of a
        replaced model that no other model uses are dropped from the manifest (not deleted).

        Args:
            root: The bundle directory (must already hold a valid bundle).
            name: Model name, e.g. ``"reranker"``.
            spec: The model's spec (``kind`` and any model-specific keys); its ``files`` key,
                if any, is replaced by one built from ``files``.
            files: Role -> path of the file, e.g. ``{"weights": "/tmp/reranker.npz"}``.

        Returns:
            The bundle, reopened.
        """
        root = Path(root)
        bundle = Bundle.open(root, verify=True)
        roles: dict[str, str] = {}
        for role, source in files.items():
            src = Path(source)
            if not src.is_file():
                raise BundleError(f"cannot add {name!r} to the bundle: {src} is not a file")
            target = root / src.name
            if not (target.exists() and os.path.samefile(src, target)):
                _copy_atomically(src, target)
            roles[role] = src.name
        models = dict(bundle.manifest["models"])
        models[name] = {**dict(spec), "files": roles}
        return write_manifest(root, models, created=bundle.manifest["created"])


def write_manifest(
    root: str | os.PathLike[str],
    models: Mapping[str, Mapping[str, Any]],
    *,
    created: str | None = None,
    library_version: str | None = None,
) -> Bundle:
    """Write ``root/manifest.json`` for ``models``, hashing every file they refer to.

    Args:
        root: The bundle directory; every file named in a model's ``files`` must be in it.
        models: Model name -> spec; each spec has a ``files`` dict mapping role -> file name
            (relative to ``root``).
        created: ISO-8601 creation time to record (default: now, UTC).
        library_version: Version to record (default: ``hydrahead.__version__``).

    Returns:
        The written bundle, opened (without re-hashing).

    Raises:
        BundleError: if a spec has no ``files`` dict or a file is missing or outside ``root``.
    """
    root = Path(root)
    file_entries: dict[str, dict[str, Any]] = {}
    for model_name, spec in models.items():
        files = spec.get("files")
        if not isinstance(files, Mapping) or not files:
            raise BundleError(
                f"model {model_name!r} needs a non-empty 'files' dict (role -> file name)"
            )
        for role, fname in files.items():
            _check_file_name(fname, f"model {model_name!r} role {role!r}")
            path = root / fname
            if not path.is_file():
                raise BundleError(
                    f"model {model_name!r} refers to {fname!r}, which is not in {root}"
                )
            if fname not in file_entries:
                file_entries[fname] = file_entry(path)
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": FORMAT_VERSION,
        "created": created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "library_version": library_version or __version__,
        "models": {name: dict(spec) for name, spec in models.items()},
        "files": dict(sorted(file_entries.items())),
    }
    data = (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode("utf-8")
    atomic_write_bytes(root / MANIFEST_NAME, data, mode=0o644)
    return Bundle(root, manifest, data)


def check_manifest_bytes(data: bytes, where: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse and check a manifest (format, version, structure; not the files).

    Raises:
        BundleError: naming ``where`` and what is wrong.
    """
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise BundleError(f"{where} is not valid JSON ({exc}); {_REBUILD_HINT}") from None
    _check_manifest(manifest, Path(where))
    return manifest


def _check_manifest(manifest: Any, manifest_path: Path) -> None:
    """Check the manifest's format, version and structure (not the files themselves)."""
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise BundleError(
            f"{manifest_path} is not a hydrahead bundle manifest (format {found!r}, expected "
            f"{BUNDLE_FORMAT!r}); {_REBUILD_HINT}"
        )
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BundleError(
            f"{manifest_path} has an invalid format_version {version!r}; {_REBUILD_HINT}"
        )
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{manifest_path} has bundle format version {version}, but this hydrahead supports "
            f"up to {FORMAT_VERSION}: upgrade hydrahead (pip install -U hydrahead) or use a "
            "bundle exported by this version"
        )
    models, files = manifest.get("models"), manifest.get("files")
    if not isinstance(models, dict) or not isinstance(files, dict):
        raise BundleError(f"{manifest_path} lacks a 'models' or 'files' table; {_REBUILD_HINT}")
    for fname, entry in files.items():
        _check_file_name(fname, f"{manifest_path} lists a file")
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("sha256"), str)
            or not isinstance(entry.get("bytes"), int)
        ):
            raise BundleError(f"{manifest_path}: entry of {fname!r} needs 'sha256' and 'bytes'")
    for model_name, spec in models.items():
        roles = spec.get("files") if isinstance(spec, dict) else None
        if not isinstance(roles, dict):
            raise BundleError(f"{manifest_path}: model {model_name!r} has no 'files' table")
        for role, fname in roles.items():
            if fname not in files:
                raise BundleError(
                    f"{manifest_path}: model {model_name!r} refers to {fname!r} ({role}), which "
                    f"the manifest's 'files' table does not list; {_REBUILD_HINT}"
                )


def _check_file_name(name: Any, where: str) -> None:
    """Refuse file names that could point outside the bundle directory."""
    path = PurePosixPath(name) if isinstance(name, str) else None
    if (
        path is None
        or not name
        or path.is_absolute()
        or "\\" in name
        or any(part in ("", ".", "..") for part in name.split("/"))
    ):
        raise BundleError(f"{where}: {name!r} is not a plain relative file name inside the bundle")


def _canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _copy_atomically(src: Path, target: Path) -> None:
    """Copy ``src`` to ``target`` through a temp file in the target's directory."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
