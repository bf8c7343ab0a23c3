"""HYDRA's per-user head: a tiny MLP that turns pair hidden features into a score.

A head reads the hidden vector ``h`` of one (query, item) pair, made by the shared base (see
:mod:`hydrahead.runtime.pair_base`), and gives two logits::

    z = tanh(h @ W1 + b1)        W1: (hidden, hidden), optionally low-rank W1 = U @ V
    logits = z @ W2 + b2         W2: (hidden, 2)
    score = softmax(logits)[1]   probability that the item helps (reranker) or that the
                                 candidate is what the user wants (adapter)

The bundle ships one *base head* per role (knowledge shared across users); every user gets a
copy of it, which :func:`hydrahead.runtime.fitting.fit_head` moves toward the user (HYDRA's
factorisation: the user part stays a small deviation from the shared part).

Parameters are stored as float32 (the head of a 64-wide base is about 17 KB); scoring and
fitting compute in float64, which costs nothing at this size and keeps rankings free of
rounding ties.

Files (versioned ``.npz`` of :mod:`hydrahead.runtime.npz_file`): a user's head
(:meth:`Head.save`, format ``hydrahead-head``) holds ``param.<name>`` arrays stamped with its
``role`` and ``base_fingerprint``; a base head shipped on its own (cross mode,
:func:`write_base_head`, format ``hydrahead-base-head``) holds ``head.<name>`` arrays.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import IO

import numpy as np

from .errors import HeadError, HydraheadError, InvalidInputError, StaleHeadError
from .npz_file import describe, read_npz, write_npz

FORMAT = "hydrahead-head"
FORMAT_VERSION = 2  # 2: stamped with its base's fingerprint (1: the whole bundle's)
BASE_FORMAT = "hydrahead-base-head"  # a bundle's or a training run's base head, unstamped
BASE_FORMAT_VERSION = 1  # 1: the ``head.`` arrays (headerless files before it read as 1)
REFIT = "refit with `hydrahead fit`"
ROLES = ("reranker", "adapter")
FULL_KEYS = ("W1", "b1", "W2", "b2")
LOW_RANK_KEYS = ("U", "V", "b1", "W2", "b2")
_CHUNK = 64  # rows per matrix product outside the mini-batches (see _first_layer)


class Head:
    """The per-user head (also the shape of the shared base head).

    Build a full head with ``Head(W1, b1, W2, b2)`` or a low-rank one with
    :meth:`Head.low_rank`. Heads are immutable: fitting returns a new head.

    Args:
        W1: (hidden, hidden) first dense layer.
        b1: (hidden,) its bias.
        W2: (hidden, 2) output layer (logit 0 = "no", logit 1 = "yes").
        b2: (2,) its bias.
    """

    def __init__(self, W1: np.ndarray, b1: np.ndarray, W2: np.ndarray, b2: np.ndarray) -> None:
        self._params = _checked_params({"W1": W1, "b1": b1, "W2": W2, "b2": b2}, InvalidInputError)
        self._params64: dict[str, np.ndarray] | None = None

    @classmethod
    def low_rank(
        cls, U: np.ndarray, V: np.ndarray, b1: np.ndarray, W2: np.ndarray, b2: np.ndarray
    ) -> Head:
        """A head whose first layer is ``W1 = U @ V`` with U (hidden, r) and V (r, hidden)."""
        return cls.from_params({"U": U, "V": V, "b1": b1, "W2": W2, "b2": b2})

    @classmethod
    def from_params(cls, params: Mapping[str, np.ndarray]) -> Head:
        """A head from a parameter mapping with the keys of a full or a low-rank head."""
        head = cls.__new__(cls)
        head._params = _checked_params(params, InvalidInputError)
        head._params64 = None
        return head

    # ------------------------------------------------------------------ shape and size
    @property
    def params(self) -> dict[str, np.ndarray]:
        """The parameters (read-only float32 arrays), keyed W1/b1/W2/b2 or U/V/b1/W2/b2."""
        return dict(self._params)

    @property
    def hidden(self) -> int:
        """Width of the hidden vectors this head reads."""
        return int(self._params["b1"].shape[0])

    @property
    def rank(self) -> int | None:
        """Rank of the first layer's factorisation, or None for a full head."""
        return int(self._params["U"].shape[1]) if "U" in self._params else None

    @property
    def W1(self) -> np.ndarray:
        """The first layer as a (hidden, hidden) matrix (``U @ V`` for a low-rank head)."""
        if "U" in self._params:
            return self._params["U"] @ self._params["V"]
        return self._params["W1"]

    @property
    def num_params(self) -> int:
        """Number of scalar parameters."""
        return sum(p.size for p in self._params.values())

    @property
    def nbytes(self) -> int:
        """Size of the parameters in bytes (what a user stores per role, format aside)."""
        return sum(p.nbytes for p in self._params.values())

    def copy(self) -> Head:
        """An independent copy."""
        return Head.from_params({k: v.copy() for k, v in self._params.items()})

    def factorize(self, rank: int) -> Head:
        """The best rank-``rank`` approximation of this head's first layer (truncated SVD)."""
        if not isinstance(rank, (int, np.integer)) or not 1 <= rank <= self.hidden:
            raise InvalidInputError(f"rank must be an integer in [1, {self.hidden}], got {rank!r}")
        u, s, vt = np.linalg.svd(self.W1.astype(np.float64))
        root = np.sqrt(s[:rank])
        p = self._params
        U, V = u[:, :rank] * root, root[:, None] * vt[:rank]
        return Head.low_rank(U, V, p["b1"], p["W2"], p["b2"])

    # ------------------------------------------------------------------ scoring
    def logits(self, H: np.ndarray) -> np.ndarray:
        """Logits (n, 2), float64, for hidden vectors ``H`` (n, hidden)."""
        p = self._float64()
        return _first_layer(p, self._checked_hidden(H)) @ p["W2"] + p["b2"]

    def scores(self, H: np.ndarray) -> np.ndarray:
        """Scores (n,), float64 in [0, 1]: ``softmax(logits)[:, 1]``, computed stably.

        The softmax of two logits is the logistic function of their difference, evaluated
        here without overflow for any finite logits.
        """
        p = self._float64()
        return _sigmoid(_margin(p, _first_layer(p, self._checked_hidden(H))))

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike[str], *, base_fingerprint: str, role: str) -> None:
        """Write the head to ``path`` (.npz, atomically), stamped with its base and role.

        Args:
            path: Target file.
            base_fingerprint: Fingerprint of the shared base whose hidden features this head
                was fitted on (:attr:`hydrahead.runtime.featurizer.Featurizer.fingerprint`).
            role: "reranker" or "adapter".
        """
        _check_role(role)
        if not isinstance(base_fingerprint, str) or not base_fingerprint:
            raise InvalidInputError("base_fingerprint must be a non-empty string")
        arrays = {"base_fingerprint": np.array(base_fingerprint), "role": np.array(role),
                  **self.arrays("param.")}
        write_npz(path, arrays, format=FORMAT, version=FORMAT_VERSION)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        base_fingerprint: str,
        role: str,
        hidden: int | None = None,
    ) -> Head:
        """Read a head written by :meth:`save`, checking that it fits the base now loaded.

        Args:
            path: The .npz file.
            base_fingerprint: Fingerprint of the role's base now loaded; must equal the stamp.
            role: The role expected ("reranker" or "adapter"); must equal the stamp.
            hidden: If given, the hidden width the head must read.

        Raises:
            StaleHeadError: the head was fitted on another base (or is a version-1 file,
                stamped with a whole bundle): refit it.
            HeadError: the file is missing, corrupt, from a newer hydrahead, of another role,
                or its parameters have the wrong keys, shapes or non-finite values.
        """
        _check_role(role)
        arrays, _, version = read_npz(path, format=FORMAT, versions=FORMAT_VERSION,
                                      error=HeadError, hint=REFIT, what="head file")
        where = describe("head file", path)
        stored_role = _text(arrays, "role", where)
        if stored_role != role:
            raise HeadError(f"{where} holds the {stored_role} head, not the {role} head")
        stamp = _text(arrays, "base_fingerprint" if version >= 2 else "bundle_fingerprint", where)
        if version < 2 or stamp != base_fingerprint:
            raise StaleHeadError(
                f"the {role} head was fitted on base {stamp[:12]}…, the bundle's {role} base is "
                f"{base_fingerprint[:12]}…; {REFIT}"
            )
        params = {k[len("param."):]: v for k, v in arrays.items() if k.startswith("param.")}
        head = cls.from_params(_checked_params(params, HeadError, where=where))
        if hidden is not None and head.hidden != hidden:
            raise HeadError(
                f"{where} reads hidden vectors of width {head.hidden}, the base makes {hidden}; "
                f"{REFIT}"
            )
        return head

    def arrays(self, prefix: str = "head.") -> dict[str, np.ndarray]:
        """The parameters keyed ``prefix + name``, for storing inside another ``.npz``."""
        return {f"{prefix}{k}": v for k, v in self._params.items()}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str = "head.") -> Head:
        """The head stored by :meth:`arrays` among other arrays (keys without ``prefix`` are
        ignored)."""
        return cls.from_params({k[len(prefix):]: v for k, v in arrays.items()
                                if k.startswith(prefix)})

    # ------------------------------------------------------------------ internals
    def _float64(self) -> dict[str, np.ndarray]:
        if self._params64 is None:
            self._params64 = {k: v.astype(np.float64) for k, v in self._params.items()}
        return self._params64

    def _checked_hidden(self, H: np.ndarray) -> np.ndarray:
        H = np.asarray(H)
        if H.ndim != 2 or H.shape[1] != self.hidden:
            raise InvalidInputError(
                f"hidden features must have shape (n, {self.hidden}), got {H.shape}"
            )
        return H

    def __repr__(self) -> str:
        form = "full" if self.rank is None else f"rank {self.rank}"
        return f"Head(hidden={self.hidden}, {form}, {self.nbytes} bytes)"


# ---------------------------------------------------------------------- base head files
def write_base_head(target: str | os.PathLike[str] | IO[bytes], head: Head) -> None:
    """Write a shared base head on its own (cross mode's bundle file and training output).

    Unlike :meth:`Head.save` the file carries no stamp: it *is* part of a base. Its arrays are
    :meth:`Head.arrays` (``head.W1`` ...); a path is written atomically, readable by all (0644).
    """
    write_npz(target, head.arrays(), format=BASE_FORMAT, version=BASE_FORMAT_VERSION,
              mode=0o644)


def read_base_head(source: str | os.PathLike[str] | IO[bytes], *,
                   error: type[HydraheadError], hint: str) -> Head:
    """Read a base head written by :func:`write_base_head` (or a headerless one of before).

    Args:
        source: The .npz file (path or binary file object).
        error: The caller's exception type for an unusable file (e.g. ``BundleError``).
        hint: What the user should do about it, ending the message.
    """
    arrays = read_npz(source, format=BASE_FORMAT, versions=BASE_FORMAT_VERSION, error=error,
                      hint=hint, what="base head", unversioned=1).arrays
    where = describe("base head", source)
    params = {k[len("head."):]: v for k, v in arrays.items() if k.startswith("head.")}
    return Head.from_params(_checked_params(params, error, where=where))


# ---------------------------------------------------------------------- forward / backward
def _pre_activation(p: Mapping[str, np.ndarray], H: np.ndarray) -> np.ndarray:
    if "U" in p:
        return (H @ p["U"]) @ p["V"] + p["b1"]
    return H @ p["W1"] + p["b1"]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _margin(p: Mapping[str, np.ndarray], Z: np.ndarray) -> np.ndarray:
    """logit[1] - logit[0]; the 2-way softmax depends on nothing else."""
    return Z @ (p["W2"][:, 1] - p["W2"][:, 0]) + (p["b2"][1] - p["b2"][0])


def _first_layer(p: Mapping[str, np.ndarray], H: np.ndarray) -> np.ndarray:
    """``tanh(H @ W1 + b1)``, in chunks of 64 rows.

    Products that small stay single-threaded in OpenBLAS, whose threads make scoring and
    fitting several times slower on a busy two-core device.
    """
    if H.shape[0] <= _CHUNK:
        return np.tanh(_pre_activation(p, H))
    return np.concatenate(
        [np.tanh(_pre_activation(p, H[i : i + _CHUNK])) for i in range(0, H.shape[0], _CHUNK)]
    )


# ---------------------------------------------------------------------- parameters and files
def _checked_params(
    params: Mapping[str, np.ndarray], error: type[Exception], *, where: str = "head"
) -> dict[str, np.ndarray]:
    """Validate keys, shapes and values; return read-only float32 copies."""
    keys = set(params)
    names: tuple[str, ...]
    if keys == set(FULL_KEYS):
        names = FULL_KEYS
    elif keys == set(LOW_RANK_KEYS):
        names = LOW_RANK_KEYS
    else:
        raise error(
            f"{where} has parameters {sorted(keys)}; expected {list(FULL_KEYS)} or "
            f"{list(LOW_RANK_KEYS)}"
        )
    out = {}
    for k in names:
        a = np.asarray(params[k])
        if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
            raise error(f"{where}: parameter {k} must hold real numbers, not {a.dtype}")
        out[k] = a.astype(np.float32)  # always a copy
    b1 = out["b1"]
    if b1.ndim != 1 or b1.shape[0] < 1:
        raise error(f"{where}: b1 must be a non-empty vector, got shape {b1.shape}")
    h = b1.shape[0]
    expected = {"b1": (h,), "W2": (h, 2), "b2": (2,)}
    if names is FULL_KEYS:
        expected["W1"] = (h, h)
    else:
        r = out["U"].shape[1] if out["U"].ndim == 2 else -1
        expected["U"], expected["V"] = (h, r), (r, h)
        if not 1 <= r <= h:
            raise error(
                f"{where}: U must have shape ({h}, r) with 1 <= r <= {h}, got {out['U'].shape}"
            )
    for k, shape in expected.items():
        if out[k].shape != shape:
            raise error(f"{where}: {k} must have shape {shape}, got {out[k].shape}")
    for k, a in out.items():
        if not np.isfinite(a).all():
            raise error(f"{where}: parameter {k} contains NaN or inf")
        a.setflags(write=False)
    return out


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise InvalidInputError(f"role must be one of {ROLES}, got {role!r}")


def _text(arrays: Mapping[str, np.ndarray], key: str, where: str) -> str:
    a = arrays.get(key)
    if a is None or a.shape != () or a.dtype.kind != "U":
        raise HeadError(f"{where} is corrupt: missing or malformed {key!r}")
    return str(a)
