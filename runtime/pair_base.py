"""The shared base of fast mode: a (query, item) pair -> a hidden vector a head can read.

HYDRA factorises each model into a shared *base* and per-user *heads*. Here the base turns one
(query, item) pair into a hidden vector ``h`` that every user's head reads (see
:mod:`hydrahead.runtime.heads`)::

    x = [q, d, q * d, |q - d|]                       (4 * dim,)  q, d: sentence embeddings
    h = [s_1 * f_1, ..., s_F * f_F, tanh(x @ W + b)]  (hidden,) = F + width

``f_1 .. f_F`` are the base's *named features*, passed through scaled:

* the **reranker** has one, ``cos``: the cosine of query and item, which the base computes
  itself, so dense retrieval is one linear read-out away;
* the **adapter** has the history-aware candidate features of
  :mod:`hydrahead.runtime.adapter_features` (the LLM's greedy answer, its votes, agreement with
  the user's history, ...), which the caller computes and passes in.

The other ``width`` features are a learned (or, untrained, random) non-linear view of the pair
that user heads can pick idiosyncratic preferences from.

The base also carries its *base head*: the head every user starts from and is pulled back to.
Its first ``F`` units each read one named feature; the untrained base head scores by one of them
(``cos`` for the reranker, ``llm_greedy`` then ``llm_vote`` for the adapter), so an unfitted
pipeline is dense retrieval feeding the LLM's own answer.

On the device the base runs as an ONNX graph exported from this one
(:class:`hydrahead.runtime.featurizer.OnnxFastBase`); scoring code depends only on ``h``
through :class:`hydrahead.runtime.featurizer.Featurizer`, the seam a cross-encoder mode would
use too. The torch twin that training uses is :class:`hydrahead.train.fast_model.FastBase`.

File format (a versioned ``.npz`` of :mod:`hydrahead.runtime.npz_file`, arrays only):
``format`` = "hydrahead-pair-base", ``format_version`` = 2, ``W`` (4*dim, width) float32,
``b`` (width,) float32, ``feature_names`` (F,) str, ``feature_scale`` (F,) float32, and the base
head's parameters as ``head.W1``, ``head.b1``, ``head.W2``, ``head.b2`` (or ``head.U``,
``head.V`` instead of ``head.W1`` for a low-rank head). Version 1 files (``cos_scale`` instead of
the two feature arrays) read as a base with the single named feature ``cos``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from .errors import BundleError, InvalidInputError
from .heads import Head
from .npz_file import describe, read_npz, write_npz

FORMAT = "hydrahead-pair-base"
FORMAT_VERSION = 2
PULL_AGAIN = "pull the bundle again (`hydrahead bundle pull SOURCE`)"
DEFAULT_DIM = 384
DEFAULT_HIDDEN = 64
COSINE = ("cos",)

# The untrained cosine base (see PairBase.untrained).
COS_SCALE = 2.0  # h[0] = 2 * cos: [-0.4, 2] for typical sentence-embedding cosines
COS_SLOPE = 1.5  # base head unit 0: tanh(1.5 * (h[0] - 2 * COS_CENTER))
COS_CENTER = 0.35  # cosine at which the base head's score is 0.5
OUTPUT_GAIN = 3.0  # logit[1] - logit[0] = 3 * unit 0: scores from ~0.1 to ~0.95


class PairBase:
    """Shared base of fast mode: ``h = [s * f, tanh([q, d, q*d, |q-d|] @ W + b)]``.

    Args:
        W: (4 * dim, width) weights of the non-linear features.
        b: (width,) their bias.
        feature_names: Names of the passthrough features ``f`` (``("cos",)`` for the reranker).
        feature_scale: (F,) their scales ``s``.
        head: The base head (reads ``hidden = F + width`` features).
    """

    def __init__(self, W: np.ndarray, b: np.ndarray, feature_names: Sequence[str],
                 feature_scale: Sequence[float] | np.ndarray, head: Head) -> None:
        W = np.array(W, dtype=np.float32)  # own copies, made read-only below
        b = np.array(b, dtype=np.float32)
        scale = np.array(feature_scale, dtype=np.float32).reshape(-1)
        names = tuple(str(n) for n in feature_names)
        if W.ndim != 2 or W.shape[0] % 4 or W.shape[0] == 0 or W.shape[1] < 1:
            raise InvalidInputError(f"W must have shape (4 * dim, width), got {W.shape}")
        if b.shape != (W.shape[1],):
            raise InvalidInputError(f"b must have shape ({W.shape[1]},), got {b.shape}")
        if not names or len(set(names)) != len(names) or scale.shape != (len(names),):
            raise InvalidInputError(
                f"need distinct feature names and one scale each, got {names} and {scale.shape}")
        if not (np.isfinite(W).all() and np.isfinite(b).all() and np.isfinite(scale).all()):
            raise InvalidInputError("base weights contain NaN or inf")
        if not isinstance(head, Head) or head.hidden != len(names) + W.shape[1]:
            raise InvalidInputError(
                f"the base head must read {len(names) + W.shape[1]} features, got {head!r}"
            )
        for a in (W, b, scale):
            a.setflags(write=False)
        self.dim = W.shape[0] // 4
        self.width = W.shape[1]
        self.feature_names = names
        self.n_features = len(names)
        self.hidden = self.n_features + self.width
        self.W, self.b, self.feature_scale, self.head = W, b, scale, head
        # Blocks of W for q, d, q*d and |q-d|: the q block is applied once per query.
        self._Wq, self._Wd, self._Wqd, self._Wabs = (
            W[i * self.dim : (i + 1) * self.dim] for i in range(4)
        )

    @property
    def computes_cosine(self) -> bool:
        """Whether this base computes its only named feature, the cosine, itself."""
        return self.feature_names == COSINE

    @classmethod
    def untrained(
        cls,
        dim: int = DEFAULT_DIM,
        hidden: int = DEFAULT_HIDDEN,
        seed: int = 0,
        *,
        gain: float = 0.5,
        head_rank: int | None = None,
        features: Mapping[str, float] | None = None,
    ) -> PairBase:
        """A sensible base before any training: random features and a base head that scores
        by the named features alone.

        ``W`` is Gaussian with a standard deviation per input block chosen so that each of
        the four blocks adds variance ``gain**2 / 4`` to a pre-activation for unit-norm
        embeddings (``q * d`` has norm about ``1 / sqrt(dim)``, so its block is scaled up by
        ``sqrt(dim)``): pre-activations have std about ``gain`` and tanh is not saturated.
        ``b = 0``.

        Without ``features`` the base is the **cosine base** (the reranker's): one named
        feature ``cos`` with scale ``c = 2``, and a base head scoring
        ``sigmoid(3 * tanh(1.5 * (c * cos - 2 * 0.35)))``. Every step is monotone, so ranking
        by the base head alone is exactly ranking by cosine (dense retrieval).

        With ``features`` (name -> gain, in feature order) unit ``j`` of the base head reads
        named feature ``j`` alone and adds ``gain_j`` times it to the logit margin: a feature
        named ``cos`` exactly as above, any other as ``tanh(f_j)`` (scale 1). The adapter gives
        ``llm_greedy`` a gain that outweighs everything else, ``llm_vote`` a small one (to
        order the rest) and the others 0: a user's head starts reading those as soon as its
        output weights move off zero.

        In both forms the other columns of the first layer are random (std
        ``1 / sqrt(hidden)``) and do not reach the output (their rows of W2 are zero).

        Args:
            dim: Embedding width.
            hidden: Hidden width of the pair vector (number of named + random features).
            seed: Seed of all random weights.
            gain: Scale of the random pre-activations; 0 makes the non-linear features all zero
                (an untrained base whose only signal is its named features).
            head_rank: Make the base head low-rank (``W1 = U @ V``) with this rank (at least
                the number of named features).
            features: Named passthrough features and their base-head gains (see above).
        """
        names = COSINE if features is None else tuple(features)
        if dim < 1 or hidden < len(names) + 1:
            raise InvalidInputError(
                f"need dim >= 1 and hidden >= {len(names) + 1}, got {dim}, {hidden}")
        rng = np.random.default_rng(seed)
        width = hidden - len(names)
        block_norm = np.array([1.0, 1.0, 1.0 / np.sqrt(dim), 1.0])  # q, d, q*d, |q-d|
        std = np.repeat(gain / (2.0 * block_norm), dim)[:, None]
        W = rng.standard_normal((4 * dim, width)) * std
        gains = {"cos": OUTPUT_GAIN} if features is None else dict(features)
        units, scale = [], []
        for name, g in gains.items():
            if name == "cos":  # scaled, and centred where typical cosines are
                units.append((COS_SLOPE, -COS_SLOPE * COS_SCALE * COS_CENTER, float(g)))
                scale.append(COS_SCALE)
            else:
                units.append((1.0, 0.0, float(g)))
                scale.append(1.0)
        return cls(W, np.zeros(width), names, scale, _readout_head(hidden, units, rng, head_rank))

    def hidden_of(self, query: np.ndarray, items: np.ndarray,
                  features: np.ndarray | None = None) -> np.ndarray:
        """Hidden vectors of (query, item) pairs.

        Args:
            query: (dim,) query embedding.
            items: (n, dim) item (or candidate) embeddings.
            features: (n, F) values of the named features, in ``feature_names`` order. The
                cosine base computes its own and takes none.

        Returns:
            (n, hidden) float32; the first F columns are ``feature_scale * features``.
        """
        q, D = check_pair(query, items, self.dim)
        q_norm = float(np.linalg.norm(q))
        d_norm = np.linalg.norm(D, axis=1)
        F = self.n_features
        H = np.empty((D.shape[0], self.hidden), dtype=np.float32)
        if features is None:
            if not self.computes_cosine:
                raise InvalidInputError(
                    f"this base reads the named features {list(self.feature_names)}; pass them")
            H[:, 0] = self.feature_scale[0] * ((D @ q) / (d_norm * q_norm))
        else:
            f = np.asarray(features, dtype=np.float32)
            if f.shape != (D.shape[0], F) or not np.isfinite(f).all():
                raise InvalidInputError(
                    f"features must be {D.shape[0]} x {F} finite values, got {f.shape}")
            H[:, :F] = self.feature_scale * f
        pre = D @ self._Wd + (D * q) @ self._Wqd + np.abs(D - q) @ self._Wabs
        pre += q @ self._Wq + self.b
        np.tanh(pre, out=H[:, F:])
        return H

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the base and its base head to ``path`` (.npz, atomically)."""
        arrays = {"W": self.W, "b": self.b, "feature_names": np.array(self.feature_names),
                  "feature_scale": self.feature_scale, **self.head.arrays()}
        write_npz(path, arrays, format=FORMAT, version=FORMAT_VERSION, mode=0o644)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PairBase:
        """Read a base written by :meth:`save` (or a version-1 cosine base).

        Raises:
            BundleError: the file is missing, corrupt, of a newer format, or inconsistent.
        """
        arrays, _, version = read_npz(path, format=FORMAT, versions=FORMAT_VERSION,
                                      error=BundleError, hint=PULL_AGAIN, what="pair base")
        where = describe("pair base", path)
        missing = {"W", "b"} - set(arrays)
        if missing:
            raise BundleError(f"{where} lacks {sorted(missing)}; re-export the bundle")
        names: tuple[str, ...]
        if version == 1 and "cos_scale" in arrays:
            names, scale = COSINE, arrays["cos_scale"].reshape(1)
        elif {"feature_names", "feature_scale"} <= set(arrays):
            stored, scale = arrays["feature_names"], arrays["feature_scale"]
            if stored.dtype.kind != "U" or stored.ndim != 1:
                raise BundleError(f"{where} has malformed feature_names")
            names = tuple(str(n) for n in stored)
        else:
            raise BundleError(f"{where} lacks its named features; re-export the bundle")
        try:
            head = Head.from_arrays(arrays)
            return cls(arrays["W"], arrays["b"], names, scale, head)
        except (InvalidInputError, TypeError, ValueError) as exc:
            raise BundleError(f"{where} is inconsistent: {exc}") from exc

    def __repr__(self) -> str:
        return (f"PairBase(dim={self.dim}, hidden={self.hidden}, "
                f"features={list(self.feature_names)}, head={self.head!r})")


def check_pair(query: np.ndarray, items: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """A query (dim,) and items (n, dim) as float32, finite and non-zero, or InvalidInputError."""
    q = np.asarray(query, dtype=np.float32)
    D = np.asarray(items, dtype=np.float32)
    if q.shape != (dim,):
        raise InvalidInputError(f"query must have shape ({dim},), got {q.shape}")
    if D.ndim != 2 or D.shape[1] != dim:
        raise InvalidInputError(f"items must have shape (n, {dim}), got {D.shape}")
    if not (np.isfinite(q).all() and np.isfinite(D).all()):
        raise InvalidInputError("embeddings contain NaN or inf")
    if float(np.linalg.norm(q)) == 0.0 or (np.linalg.norm(D, axis=1) == 0.0).any():
        raise InvalidInputError("embeddings must be non-zero vectors")
    return q, D


def _readout_head(hidden: int, units: Sequence[tuple[float, float, float]],
                  rng: np.random.Generator, rank: int | None) -> Head:
    """A base head whose unit j reads named feature j alone: ``tanh(slope_j * h_j + bias_j)``,
    adding ``gain_j`` times it to the logit margin; the other units are random and unread."""
    F = len(units)
    slope = np.array([u[0] for u in units])
    b1 = np.zeros(hidden)
    b1[:F] = [u[1] for u in units]
    W2 = np.zeros((hidden, 2))
    for j, (_, _, g) in enumerate(units):
        W2[j] = (-g / 2.0, g / 2.0)
    b2 = np.zeros(2)
    if rank is None:
        W1 = rng.standard_normal((hidden, hidden)) / np.sqrt(hidden)
        W1[:, :F] = 0.0
        W1[np.arange(F), np.arange(F)] = slope
        return Head(W1, b1, W2, b2)
    if not F <= rank <= hidden:
        raise InvalidInputError(f"head_rank must be in [{F}, {hidden}], got {rank}")
    # (U @ V)[:, j] = sqrt(slope_j) * U[:, j] = slope_j * e_j when U[:, j] and V[:, j] are
    # zero but for their diagonal entries, for each named unit j.
    U = rng.standard_normal((hidden, rank)) / np.sqrt(hidden)
    V = rng.standard_normal((rank, hidden)) / np.sqrt(rank)
    U[:, :F] = 0.0
    V[:, :F] = 0.0
    U[np.arange(F), np.arange(F)] = np.sqrt(slope)
    V[np.arange(F), np.arange(F)] = np.sqrt(slope)
    return Head.low_rank(U, V, b1, W2, b2)
