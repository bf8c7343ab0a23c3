"""The shared base of fast mode: pair features of two sentence embeddings -> a hidden vector.

HYDRA factorises each model into a shared *base* and per-user *heads*. Here the base turns one
(query, item) pair into a hidden vector ``h`` that every user's head reads (see
:mod:`hydrahead.runtime.heads`)::

    x = [q, d, q * d, |q - d|]                        (4 * dim,)  q, d: sentence embeddings
    h = [c * cos(q, d), tanh(x @ W + b)]              (hidden,) = 1 + width

Feature 0 passes the cosine similarity through (scaled by ``c``), so dense retrieval is always
one linear read-out away; the other ``width`` features are a learned (or, untrained, random)
non-linear view of the pair that user heads can pick idiosyncratic preferences from.

The base also carries its *base head*: the head every user starts from and is pulled back to.

Scoring code depends only on ``h`` through the :class:`PairFeaturizer` protocol, so a later
"cross mode" (a cross-encoder reading "[CLS] query [SEP] item [SEP]") can produce ``h`` too.

File format (``.npz``, arrays only, loadable with ``allow_pickle=False``):
``format`` = "hydrahead-pair-base", ``format_version`` = 1, ``W`` (4*dim, width) float32,
``b`` (width,) float32, ``cos_scale`` () float32, and the base head's parameters as
``head.W1``, ``head.b1``, ``head.W2``, ``head.b2`` (or ``head.U``, ``head.V`` instead of
``head.W1`` for a low-rank head).
"""

from __future__ import annotations

import io
import os
import zipfile
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .errors import BundleError, InvalidInputError
from .heads import Head
from .paths import atomic_write_bytes

FORMAT = "hydrahead-pair-base"
FORMAT_VERSION = 1
DEFAULT_DIM = 384
DEFAULT_HIDDEN = 64

# The untrained base (see PairBase.untrained).
COS_SCALE = 2.0  # h[0] = 2 * cos: [-0.4, 2] for typical sentence-embedding cosines
COS_SLOPE = 1.5  # base head unit 0: tanh(1.5 * (h[0] - 2 * COS_CENTER))
COS_CENTER = 0.35  # cosine at which the base head's score is 0.5
OUTPUT_GAIN = 3.0  # logit[1] - logit[0] = 3 * unit 0: scores from ~0.1 to ~0.95


@runtime_checkable
class PairFeaturizer(Protocol):
    """Anything that turns a query and n items into hidden vectors a head can read."""

    hidden: int

    def hidden_of(self, query: Any, items: Any) -> np.ndarray:
        """Hidden vectors (n, hidden), float32, one per item, for this query."""
        ...


class PairBase:
    """Shared base of fast mode: ``h = [c * cos(q, d), tanh([q, d, q*d, |q-d|] @ W + b)]``.

    Args:
        W: (4 * dim, width) weights of the non-linear features.
        b: (width,) their bias.
        cos_scale: ``c``, the scale of the cosine passthrough feature.
        head: The base head (reads ``hidden = 1 + width`` features).
    """

    def __init__(self, W: np.ndarray, b: np.ndarray, cos_scale: float, head: Head) -> None:
        W = np.array(W, dtype=np.float32)  # own copies, made read-only below
        b = np.array(b, dtype=np.float32)
        if W.ndim != 2 or W.shape[0] % 4 or W.shape[0] == 0 or W.shape[1] < 1:
            raise InvalidInputError(f"W must have shape (4 * dim, width), got {W.shape}")
        if b.shape != (W.shape[1],):
            raise InvalidInputError(f"b must have shape ({W.shape[1]},), got {b.shape}")
        if not (np.isfinite(W).all() and np.isfinite(b).all() and np.isfinite(cos_scale)):
            raise InvalidInputError("base weights contain NaN or inf")
        if not isinstance(head, Head) or head.hidden != W.shape[1] + 1:
            raise InvalidInputError(
                f"the base head must read {W.shape[1] + 1} features, got {head!r}"
            )
        W.setflags(write=False)
        b.setflags(write=False)
        self.dim = W.shape[0] // 4
        self.width = W.shape[1]
        self.hidden = self.width + 1
        self.W, self.b, self.cos_scale, self.head = W, b, float(cos_scale), head
        # Blocks of W for q, d, q*d and |q-d|: the q block is applied once per query.
        self._Wq, self._Wd, self._Wqd, self._Wabs = (
            W[i * self.dim : (i + 1) * self.dim] for i in range(4)
        )

    @classmethod
    def untrained(
        cls,
        dim: int = DEFAULT_DIM,
        hidden: int = DEFAULT_HIDDEN,
        seed: int = 0,
        *,
        gain: float = 0.5,
        head_rank: int | None = None,
    ) -> PairBase:
        """A sensible base before any training: random features, cosine-ranking base head.

        ``W`` is Gaussian with a standard deviation per input block chosen so that each of
        the four blocks adds variance ``gain**2 / 4`` to a pre-activation for unit-norm
        embeddings (``q * d`` has norm about ``1 / sqrt(dim)``, so its block is scaled up by
        ``sqrt(dim)``): pre-activations have std about ``gain`` and tanh is not saturated.
        ``b = 0``; ``c = 2``.

        The base head scores ``sigmoid(3 * tanh(1.5 * (c * cos - 2 * 0.35)))``: unit 0 of
        its first layer reads only feature 0 (column 0 of W1 is ``1.5 * e0``) and only
        unit 0 separates the two logits (rows 1.. of W2 are zero). Every other step is
        monotone, so ranking by the base head alone is exactly ranking by cosine (dense
        retrieval). The other columns of W1 are random (std ``1 / sqrt(hidden)``): a user's
        head starts reading them as soon as its W2 rows move off zero.

        Args:
            dim: Embedding width.
            hidden: Hidden width of the pair vector (1 + number of random features).
            seed: Seed of all random weights.
            gain: Scale of the random pre-activations.
            head_rank: Make the base head low-rank (``W1 = U @ V``) with this rank.
        """
        if dim < 1 or hidden < 2:
            raise InvalidInputError(f"need dim >= 1 and hidden >= 2, got {dim}, {hidden}")
        rng = np.random.default_rng(seed)
        width = hidden - 1
        block_norm = np.array([1.0, 1.0, 1.0 / np.sqrt(dim), 1.0])  # q, d, q*d, |q-d|
        std = np.repeat(gain / (2.0 * block_norm), dim)[:, None]
        W = rng.standard_normal((4 * dim, width)) * std
        return cls(W, np.zeros(width), COS_SCALE, _cosine_base_head(hidden, rng, head_rank))

    def hidden_of(self, query: np.ndarray, items: np.ndarray,
                  anchor: np.ndarray | None = None) -> np.ndarray:
        """Hidden vectors of (query, item) pairs.

        Args:
            query: (dim,) query embedding.
            items: (n, dim) item (or candidate) embeddings.
            anchor: Optional (n,) values that replace the cosine as feature 0. The adapter
                passes the LLM's own preference for each candidate
                (:func:`hydrahead.runtime.candidates.llm_preference`), so that its base head
                starts from the black box's choice, as the reranker's starts from dense retrieval.

        Returns:
            (n, hidden) float32; column 0 is ``cos_scale * cos(query, item)`` (or
            ``cos_scale * anchor``).
        """
        q = np.asarray(query, dtype=np.float32)
        D = np.asarray(items, dtype=np.float32)
        if q.shape != (self.dim,):
            raise InvalidInputError(f"query must have shape ({self.dim},), got {q.shape}")
        if D.ndim != 2 or D.shape[1] != self.dim:
            raise InvalidInputError(f"items must have shape (n, {self.dim}), got {D.shape}")
        if not (np.isfinite(q).all() and np.isfinite(D).all()):
            raise InvalidInputError("embeddings contain NaN or inf")
        q_norm = float(np.linalg.norm(q))
        d_norm = np.linalg.norm(D, axis=1)
        if q_norm == 0.0 or (d_norm == 0.0).any():
            raise InvalidInputError("embeddings must be non-zero vectors")
        H = np.empty((D.shape[0], self.hidden), dtype=np.float32)
        if anchor is None:
            H[:, 0] = self.cos_scale * ((D @ q) / (d_norm * q_norm))
        else:
            a = np.asarray(anchor, dtype=np.float32)
            if a.shape != (D.shape[0],) or not np.isfinite(a).all():
                raise InvalidInputError(f"anchor must be {D.shape[0]} finite values, got {a.shape}")
            H[:, 0] = self.cos_scale * a
        pre = D @ self._Wd + (D * q) @ self._Wqd + np.abs(D - q) @ self._Wabs
        pre += q @ self._Wq + self.b
        np.tanh(pre, out=H[:, 1:])
        return H

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the base and its base head to ``path`` (.npz, atomically)."""
        buffer = io.BytesIO()
        np.savez(
            buffer,
            format=np.array(FORMAT),
            format_version=np.array(FORMAT_VERSION),
            W=self.W,
            b=self.b,
            cos_scale=np.array(self.cos_scale, dtype=np.float32),
            **{f"head.{k}": v for k, v in self.head.params.items()},
        )
        atomic_write_bytes(path, buffer.getvalue(), mode=0o644)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PairBase:
        """Read a base written by :meth:`save`.

        Raises:
            BundleError: the file is missing, corrupt, of a newer format, or inconsistent.
        """
        where = f"pair base {os.fspath(path)}"
        try:
            # Our own file handle: np.load leaks its own when the zip is truncated.
            with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except FileNotFoundError as exc:
            raise BundleError(f"{where} does not exist; re-download the bundle") from exc
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            raise BundleError(f"{where} is corrupt ({exc}); re-download the bundle") from exc
        missing = {"format", "format_version", "W", "b", "cos_scale"} - set(arrays)
        if missing:
            raise BundleError(f"{where} lacks {sorted(missing)}; re-export the bundle")
        if str(arrays["format"]) != FORMAT:
            raise BundleError(f"{where} is not a hydrahead pair base")
        if arrays["format_version"].dtype.kind not in "iu" or arrays["format_version"].shape != ():
            raise BundleError(f"{where} has a malformed format_version")
        if int(arrays["format_version"]) > FORMAT_VERSION:
            raise BundleError(
                f"{where} has format version {int(arrays['format_version'])}, newer than this "
                f"hydrahead understands ({FORMAT_VERSION}); upgrade hydrahead"
            )
        head_params = {k[len("head."):]: v for k, v in arrays.items() if k.startswith("head.")}
        try:
            head = Head.from_params(head_params)
            return cls(arrays["W"], arrays["b"], float(arrays["cos_scale"]), head)
        except (InvalidInputError, TypeError, ValueError) as exc:
            raise BundleError(f"{where} is inconsistent: {exc}") from exc

    def __repr__(self) -> str:
        return f"PairBase(dim={self.dim}, hidden={self.hidden}, head={self.head!r})"


def _cosine_base_head(hidden: int, rng: np.random.Generator, rank: int | None) -> Head:
    """The base head whose score is an increasing function of feature 0 alone (see above)."""
    b1 = np.zeros(hidden)
    b1[0] = -COS_SLOPE * COS_SCALE * COS_CENTER
    W2 = np.zeros((hidden, 2))
    W2[0] = (-OUTPUT_GAIN / 2.0, OUTPUT_GAIN / 2.0)
    b2 = np.zeros(2)
    if rank is None:
        W1 = rng.standard_normal((hidden, hidden)) / np.sqrt(hidden)
        W1[:, 0] = 0.0
        W1[0, 0] = COS_SLOPE
        return Head(W1, b1, W2, b2)
    if not 1 <= rank <= hidden:
        raise InvalidInputError(f"head_rank must be in [1, {hidden}], got {rank}")
    # (U @ V)[:, 0] = U[:, 0] * V[0, 0] = COS_SLOPE * e0 when U[1:, 0] = 0 and V[1:, 0] = 0.
    U = rng.standard_normal((hidden, rank)) / np.sqrt(hidden)
    V = rng.standard_normal((rank, hidden)) / np.sqrt(rank)
    U[:, 0] = 0.0
    V[:, 0] = 0.0
    U[0, 0] = V[0, 0] = np.sqrt(COS_SLOPE)
    return Head.low_rank(U, V, b1, W2, b2)
