"""Embeddings going into a history store: what an encoder must provide, and the checks.

Cosine similarity needs finite, non-zero vectors of the store's dimension; every vector the
store keeps or searches with passes :func:`embed_checked` (from the encoder) or
:func:`checked_vectors` (given by the caller).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from .errors import InvalidInputError, StoreError


class TextEncoder(Protocol):
    """What the store needs from an encoder (``hydrahead.runtime.encoder.Encoder`` is one)."""

    @property
    def dim(self) -> int: ...  # noqa: D102

    @property
    def fingerprint(self) -> str: ...  # noqa: D102

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...  # noqa: D102


def embed_checked(encoder: TextEncoder, texts: list[str], dim: int) -> np.ndarray:
    """``encoder.encode(texts)`` as float32, checked.

    Raises:
        StoreError: the encoder returned the wrong shape, or a zero or non-finite vector.
    """
    vectors = np.asarray(encoder.encode(texts), dtype=np.float32)
    if vectors.shape != (len(texts), dim):
        raise StoreError(
            f"the encoder returned an array of shape {vectors.shape} for {len(texts)} "
            f"texts; expected ({len(texts)}, {dim})"
        )
    norms = np.linalg.norm(vectors, axis=1)
    if not (np.isfinite(vectors).all() and (norms > 0).all()):
        raise StoreError("the encoder returned a zero or non-finite embedding")
    return vectors


def checked_vectors(vectors: object, n: int, dim: int, what: str = "vectors") -> np.ndarray:
    """``vectors`` as a contiguous (n, dim) float32 array; a "query vector" may be (dim,).

    Raises:
        InvalidInputError: not numbers, the wrong shape, not finite, or a zero vector.
    """
    if (what == "query vector" and isinstance(vectors, np.ndarray)
            and vectors.dtype == np.float32 and vectors.shape == (dim,)):
        # The common case, checked without copies: a float32 vector of the right size.
        norm2 = float(vectors @ vectors)
        if np.isfinite(norm2) and norm2 > 0 and np.isfinite(vectors).all():
            return np.ascontiguousarray(vectors)[None, :]
    try:
        with np.errstate(over="ignore"):  # too large for float32: inf, refused just below
            array = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInputError(f"{what} must be an array of numbers ({exc})") from None
    shape = array.shape  # as given: a query vector becomes one row just below
    if what == "query vector" and array.ndim == 1:
        array = array[None, :]
    if array.shape != (n, dim):
        raise InvalidInputError(
            f"{what} must have shape ({n}, {dim}), got {array.shape}"
            if what == "vectors"
            else f"{what} must have shape ({dim},), got {shape}"
        )
    if not np.isfinite(array).all():
        raise InvalidInputError(f"{what} must be finite (no NaN or inf)")
    if n and not (np.linalg.norm(array, axis=1) > 0).all():
        raise InvalidInputError(f"{what} must not be zero (cosine similarity is undefined)")
    return np.ascontiguousarray(array)
