"""Making a bundle where the exporter may be missing.

:func:`make_bundle` is ``hydrahead export bundle`` (build, optionally sign); :func:`ensure_bundle`
is what the demo, ``hydrahead train labels`` and ``hydrahead bench quality`` do (open the
bundle, building it first when there is none). Both look for the exporter and the model weights
(:func:`hydrahead.export.missing_requirements`) before importing any of it, so that the base
install gets a clear error saying what to do instead of an ImportError.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import hydrahead.export
from hydrahead.runtime.bundle import Bundle
from hydrahead.runtime.errors import BundleError, ExportError


@dataclass(frozen=True)
class MadeBundle:
    """What :func:`make_bundle` made.

    Attributes:
        path: The bundle directory.
        seconds: How long building (and signing) took.
        key_id: The signing key's id, or ``None`` when not signed.
    """

    path: Path
    seconds: float
    key_id: str | None


def make_bundle(out: str | os.PathLike[str], *, overwrite: bool = False,
                sign_key: str | os.PathLike[str] | None = None,
                untrained: bool = False) -> MadeBundle:
    """Export the int8 encoder and the shared bases (the trained ones hydrahead ships, or
    untrained ones with ``untrained``) into ``out``, then sign it with ``sign_key`` (a key from
    ``hydrahead bundle keygen``) if given.

    Raises:
        ExportError: the exporter or the model weights are missing (the message says how to
            install them), ``out`` is in the way, or the export fails its quality gate.
    """
    missing = hydrahead.export.missing_requirements()
    if missing:
        raise ExportError("exporting a bundle needs the exporter and the model weights: "
                          + " && ".join(missing))
    from hydrahead.export.bundle import build_bundle
    from hydrahead.runtime.bundle_signing import sign_bundle

    t0 = time.perf_counter()
    path = build_bundle(out, overwrite=overwrite, untrained=untrained)
    key_id = sign_bundle(path, sign_key) if sign_key else None
    return MadeBundle(path, time.perf_counter() - t0, key_id)


def ensure_bundle(bundle_dir: Path, echo: Callable[[str], None]) -> Bundle:
    """Open the bundle at ``bundle_dir``, building it first when there is none.

    Args:
        bundle_dir: The bundle directory.
        echo: Told when a bundle is being built, and how long it took.

    Raises:
        BundleError: there is no bundle and this install cannot build one (the message says
            how to pull one, or what to install).
    """
    if (bundle_dir / "manifest.json").exists():
        return Bundle.open(bundle_dir)
    missing = hydrahead.export.missing_requirements()
    if missing:
        raise BundleError(
            f"no bundle at {bundle_dir}. Get one with `hydrahead bundle pull SOURCE` (a URL, "
            "directory or archive from the bundle's publisher), or install the exporter to "
            f"build one here: {' && '.join(missing)}"
        )
    echo(f"no bundle at {bundle_dir}: exporting one (int8 encoder + shared bases) ...")
    from hydrahead.export.bundle import build_bundle

    t0 = time.perf_counter()
    build_bundle(bundle_dir)
    echo(f"bundle built in {time.perf_counter() - t0:.1f} s")
    return Bundle.open(bundle_dir)
