"""Trained shared bases in a bundle: the ones every bundle ships (:data:`SHIPPED_BASES`, put in
by ``hydrahead export bundle``), or any that ``hydrahead train fit`` wrote, in a copy of a bundle
(``hydrahead train export``).

Each base goes through its parity gate on the way in (:func:`~hydrahead.export.bases.write_base`
for fast-mode bases, :func:`~hydrahead.export.cross_base.write_cross_base` for cross-mode ones),
and its manifest entry records what it was trained on (the training report's data and
settings, the fit's figures) and, when given, the dev metrics of a quality run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from hydrahead.runtime.bundle import Bundle
from hydrahead.runtime.errors import ExportError
from hydrahead.runtime.pair_base import PairBase

from .bases import write_base

TRAINING_REPORT = "training.json"  # what hydrahead.train.trainer.train writes beside the bases
DEV_REPORT = "dev.json"  # optional: a quality summary on dev users (bench/shipped_dev_summary.py)

# The bases `hydrahead export bundle` ships: fast-mode bases trained on labels of every member of
# the offline simulator family on both git-lamp tasks' training users (bench/train_shipped.sh
# rebuilds them; bench/QUALITY.md evaluates them on the dev users).
SHIPPED_BASES = Path(__file__).resolve().parent / "shipped_bases"


def add_trained_bases(bundle_root: str | Path, trained: str | Path = SHIPPED_BASES, *,
                      metrics: str | Path | None = None) -> list[str]:
    """Write the trained bases of ``trained`` into the bundle at ``bundle_root``, in place.

    Args:
        bundle_root: A bundle with its encoder (a staging directory while one is being built).
        trained: A directory with ``training.json`` and, per role, ``<role>.npz`` (fast mode)
            or ``<role>.cross/`` (cross mode); by default the bases hydrahead ships.
        metrics: A quality run's JSON whose ``summary`` goes into each base's manifest entry
            (default: ``trained``'s ``dev.json`` where there is one).

    Returns:
        The roles written, in the training report's order.

    Raises:
        ExportError: ``trained`` holds no training report (for the shipped bases: the package
            lost them; ``bench/train_shipped.sh`` rebuilds them, or build with ``--untrained``),
            or a base fails its parity gate.
    """
    trained = Path(trained)
    report_path = trained / TRAINING_REPORT
    if not report_path.is_file():
        raise ExportError(f"no trained bases at {trained} ({TRAINING_REPORT} is missing): rebuild "
                          "them with bench/train_shipped.sh, or build the bundle with "
                          "--untrained (untrained=True)")
    report = json.loads(report_path.read_text(encoding="utf-8"))
    if metrics is None and (trained / DEV_REPORT).is_file():
        metrics = trained / DEV_REPORT  # the shipped bases' dev-user quality
    dev = (json.loads(Path(metrics).read_text(encoding="utf-8"))["summary"] if metrics
           else None)
    for role in report["roles"]:
        _write_trained_base(Path(bundle_root), role, trained, _training_meta(report, role, dev))
    return list(report["roles"])


def bundle_with_trained_bases(bundle: str | Path, trained: str | Path, out: str | Path, *,
                              metrics: str | Path | None = None) -> list[str]:
    """Copy ``bundle`` to ``out`` with the trained bases of ``trained`` in it.

    Args:
        bundle: The bundle to start from (its encoder and files are copied).
        trained: The directory ``hydrahead train fit`` wrote: ``training.json`` and, per role,
            ``<role>.npz`` (fast mode) or ``<role>.cross/`` (cross mode).
        out: The new bundle directory; must not exist.
        metrics: A quality run's JSON (``hydrahead bench quality``) whose ``summary`` goes into
            each base's manifest entry as its dev metrics.

    Returns:
        The roles whose bases were replaced, in the training report's order.

    Raises:
        ExportError: ``out`` exists, or a base fails its parity gate (then nothing is left at
            ``out``).
    """
    target = Path(out)
    if target.exists():
        raise ExportError(f"{target} exists; choose a new --out")
    try:
        Bundle.open(bundle).copy_to(target)
        return add_trained_bases(target, trained, metrics=metrics)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise


def _training_meta(report: dict[str, Any], role: str,
                   dev: dict[str, Any] | None) -> dict[str, Any]:
    """What goes into the manifest about one trained base."""
    return {"data": report["data"], "settings": report["settings"],
            "fit": {k: v for k, v in report["roles"][role].items()
                    if k not in ("joint", "base_head")},
            **({"dev": dev} if dev else {})}


def _write_trained_base(target: Path, role: str, trained: Path, meta: dict[str, Any]) -> None:
    cross = trained / f"{role}.cross"
    if cross.is_dir():  # cross mode
        from .cross_base import write_cross_base

        write_cross_base(target, role, cross, training=meta)
    else:
        write_base(target, role, PairBase.load(trained / f"{role}.npz"), training=meta)
