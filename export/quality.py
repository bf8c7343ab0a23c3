"""The export quality gate: does the quantized encoder still agree with the fp32 reference?

Agreement is the cosine similarity between the two embeddings of each text. A bundle is only
written when the mean over the texts and the worst single text both clear their thresholds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hydrahead.runtime.errors import ExportError

MIN_MEAN_COSINE = 0.985
MIN_COSINE = 0.95


def rowwise_cosine(candidate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Cosine similarity between row i of ``candidate`` and row i of ``reference``."""
    if candidate.shape != reference.shape or candidate.ndim != 2:
        raise ExportError(
            f"cannot compare embeddings of shapes {candidate.shape} and {reference.shape}"
        )
    a = candidate.astype(np.float64)
    b = reference.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(norms, 1e-12)


def check_quality(
    candidate: np.ndarray,
    reference: np.ndarray,
    *,
    min_mean_cosine: float = MIN_MEAN_COSINE,
    min_cosine: float = MIN_COSINE,
) -> dict[str, Any]:
    """Compare quantized embeddings with the reference and enforce the thresholds.

    Args:
        candidate: Embeddings from the exported model, shape (n, dim).
        reference: Embeddings of the same texts from the fp32 reference, shape (n, dim).
        min_mean_cosine: Lowest acceptable mean cosine over the texts.
        min_cosine: Lowest acceptable cosine of any single text.

    Returns:
        The figures recorded in the manifest: ``{"sentences", "mean_cosine", "min_cosine"}``.

    Raises:
        ExportError: naming every threshold that is not met, with the measured numbers.
    """
    cosines = rowwise_cosine(candidate, reference)
    if cosines.size == 0:
        raise ExportError("the quality check needs at least one text")
    mean, worst = float(cosines.mean()), float(cosines.min())
    failures = []
    if not mean >= min_mean_cosine:  # `not >=` also catches NaN
        failures.append(f"mean cosine {mean:.4f} < required {min_mean_cosine}")
    if not worst >= min_cosine:
        failures.append(
            f"min cosine {worst:.4f} (text #{int(np.argmin(np.nan_to_num(cosines, nan=-2.0)))}) "
            f"< required {min_cosine}"
        )
    if failures:
        raise ExportError(
            f"the int8 encoder is too far from the fp32 reference on {cosines.size} texts: "
            + "; ".join(failures)
            + ". The bundle was not written; check the onnxruntime/optimum versions "
            "(see constraints.txt) or loosen the thresholds deliberately."
        )
    return {
        "sentences": int(cosines.size),
        "mean_cosine": round(mean, 5),
        "min_cosine": round(worst, 5),
    }
