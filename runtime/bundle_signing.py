"""Signed bundles: an ed25519 signature over the manifest, checked against keys the app trusts.

The manifest lists every file's sha256, so signing the manifest signs the bundle. The signature
lives next to it, in ``manifest.sig``::

    {"format": "hydrahead-bundle-signature", "algorithm": "ed25519",
     "key_id": "3f2a...",            # first 16 hex digits of sha256(public key)
     "signature": "base64..."}       # over the exact bytes of manifest.json

A publisher makes a key pair once (:func:`generate_key_pair`, ``hydrahead bundle keygen``), signs
each bundle it exports (``hydrahead export bundle --sign-key FILE``), and ships the public key
(64 hex digits) with the app. The app trusts keys given to it, or listed in
``$HYDRAHEAD_BUNDLE_KEYS`` (comma-separated hex). ed25519 comes from PyNaCl (libsodium).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import BundleError, BundleSignatureError
from .paths import atomic_write_bytes, make_private_dir

SIGNATURE_NAME = "manifest.sig"
SIGNATURE_FORMAT = "hydrahead-bundle-signature"
ENV_KEYS = "HYDRAHEAD_BUNDLE_KEYS"
PRIVATE_KEY_NAME = "bundle-signing.key"


def _nacl():
    try:
        import nacl.exceptions
        import nacl.signing
    except ImportError:  # pragma: no cover - a base dependency
        raise BundleError("bundle signatures need PyNaCl: pip install pynacl") from None
    return nacl.signing, nacl.exceptions


def key_id(public_key: bytes) -> str:
    """A short name of a public key: the first 16 hex digits of its sha256."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def parse_public_key(value: str | bytes) -> bytes:
    """A public key from 64 hex digits (or 32 raw bytes).

    Raises:
        BundleSignatureError: if it is neither.
    """
    if isinstance(value, bytes) and len(value) == 32:
        return value
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise BundleSignatureError(
            f"{text[:20]!r}... is not an ed25519 public key (64 hex digits)")
    return raw


def trusted_keys(keys: Iterable[str | bytes] | None = None) -> list[bytes]:
    """The keys given, else those in ``$HYDRAHEAD_BUNDLE_KEYS`` (comma-separated hex)."""
    if keys is None:
        keys = [k for k in os.environ.get(ENV_KEYS, "").split(",") if k.strip()]
    return [parse_public_key(k) for k in keys]


def generate_key_pair(directory: str | os.PathLike[str]) -> tuple[Path, str]:
    """Make a signing key in ``directory`` (owner-only) and return its path and public key.

    Raises:
        BundleError: if a key is already there (it is never overwritten).
    """
    signing, _ = _nacl()
    path = make_private_dir(directory) / PRIVATE_KEY_NAME
    if path.exists():
        raise BundleError(f"{path} exists; keep it, or move it away to make a new key")
    key = signing.SigningKey.generate()
    atomic_write_bytes(path, bytes(key).hex().encode() + b"\n", mode=0o600)
    return path, bytes(key.verify_key).hex()


def sign_bundle(root: str | os.PathLike[str], private_key: str | os.PathLike[str]) -> str:
    """Sign the manifest of the bundle in ``root`` with the key file; return the key id."""
    signing, _ = _nacl()
    try:
        seed = bytes.fromhex(Path(private_key).read_text().strip())
        key = signing.SigningKey(seed)
    except (OSError, ValueError, TypeError) as exc:
        raise BundleError(f"cannot read the signing key {private_key}: {exc}") from None
    manifest = (Path(root) / "manifest.json").read_bytes()
    public = bytes(key.verify_key)
    signature = {
        "format": SIGNATURE_FORMAT, "algorithm": "ed25519", "key_id": key_id(public),
        "public_key": public.hex(),
        "signature": base64.b64encode(key.sign(manifest).signature).decode("ascii"),
    }
    atomic_write_bytes(Path(root) / SIGNATURE_NAME,
                       (json.dumps(signature, indent=1) + "\n").encode(), mode=0o644)
    return signature["key_id"]


@dataclass(frozen=True)
class SignatureStatus:
    """What a bundle's signature says.

    Attributes:
        signed: Whether there is a signature file.
        key_id: The signing key's id (None when unsigned).
        trusted: Whether the signature is valid and made by one of the trusted keys.
        reason: Why it is not trusted (empty when it is).
    """

    signed: bool
    key_id: str | None
    trusted: bool
    reason: str = ""


def check_signature(manifest: bytes, signature_file: bytes | None,
                    keys: Iterable[bytes]) -> SignatureStatus:
    """Check ``signature_file`` (the bytes of manifest.sig, or None) over ``manifest``."""
    signing, exceptions = _nacl()
    if signature_file is None:
        return SignatureStatus(False, None, False, "the bundle is not signed")
    try:
        sig = json.loads(signature_file)
        if sig.get("format") != SIGNATURE_FORMAT or sig.get("algorithm") != "ed25519":
            raise ValueError("unknown signature format")
        raw = base64.b64decode(sig["signature"], validate=True)
        claimed = str(sig.get("key_id"))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return SignatureStatus(True, None, False, f"{SIGNATURE_NAME} is unreadable ({exc})")
    keys = list(keys)
    if not keys:
        return SignatureStatus(True, claimed, False,
                               f"no trusted publisher key is configured (pass one, or set "
                               f"${ENV_KEYS})")
    for key in keys:
        if key_id(key) != claimed:
            continue
        try:
            signing.VerifyKey(key).verify(manifest, raw)
        except exceptions.BadSignatureError:
            return SignatureStatus(True, claimed, False,
                                   "the signature does not match the manifest (tampered)")
        return SignatureStatus(True, claimed, True)
    return SignatureStatus(True, claimed, False,
                           f"it is signed by key {claimed}, which is not a trusted key")


def bundle_signature(root: str | os.PathLike[str],
                     keys: Iterable[str | bytes] | None = None) -> SignatureStatus:
    """:func:`check_signature` for the bundle installed in ``root``."""
    root = Path(root)
    try:
        manifest = (root / "manifest.json").read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read the manifest in {root}: {exc}") from None
    sig_path = root / SIGNATURE_NAME
    return check_signature(manifest, sig_path.read_bytes() if sig_path.exists() else None,
                           trusted_keys(keys))


def require_trusted(status: SignatureStatus, allow_unsigned: bool, where: str) -> None:
    """Raise BundleSignatureError unless the signature is trusted (or the app allows an
    unsigned bundle, which never covers a bad signature)."""
    if status.trusted:
        return
    tampered = status.signed and "tampered" in status.reason
    if allow_unsigned and not tampered:
        return
    raise BundleSignatureError(
        f"refusing the bundle from {where}: {status.reason}"
        + ("" if tampered else "; to use it anyway, pass --allow-unsigned (allow_unsigned=True)"))
