"""Fitting a head: mini-batch Adam on a pointwise or listwise loss, pulled toward a prior.

:func:`fit_head` moves a copy of the shared base head toward one user, from labelled pairs:
HYDRA's pointwise cross-entropy (the reranker) or a listwise loss over each query's candidates
(the adapter, which picks one candidate per query), with an L2 pull toward the base head and
early stopping on held-out data. The backward pass is written by hand (a head is two small
matrices); ``tests/test_head_gradients.py`` checks it against finite differences.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .adam import Adam
from .errors import InvalidInputError
from .heads import Head, _first_layer, _margin, _sigmoid

# Defaults of fit_head (see its docstring for the reasoning).
DEFAULT_EPOCHS = 40
DEFAULT_BATCH_SIZE = 32
DEFAULT_LR = 3e-3
DEFAULT_L2_TO_PRIOR = 1e-3
DEFAULT_PATIENCE = 5
MIN_VALIDATION_SAMPLES = 10
_MIN_IMPROVEMENT = 1e-4


@dataclass(frozen=True)
class FitReport:
    """What :func:`fit_head` did.

    Attributes:
        epochs: Epochs run (fewer than asked when early stopping triggered).
        best_epoch: Epoch whose parameters were kept (0 = the initial head was best on the
            held-out slice); the last epoch when there was no held-out slice.
        best_val_loss: Held-out loss of the kept parameters, or None without a held-out slice.
        train_loss: Training-split loss of the kept parameters (class-weighted, no L2 term).
        n_train: Number of training pairs.
        n_val: Number of held-out pairs (0 when validation was skipped).
        seconds: Wall time of the fit.
    """

    epochs: int
    best_epoch: int
    best_val_loss: float | None
    train_loss: float
    n_train: int
    n_val: int
    seconds: float


def fit_head(
    H: np.ndarray,
    y: np.ndarray,
    *,
    init: Head,
    prior: Head | None = None,
    l2_to_prior: float = DEFAULT_L2_TO_PRIOR,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lr: float = DEFAULT_LR,
    val_fraction: float = 0.2,
    patience: int = DEFAULT_PATIENCE,
    seed: int = 0,
    sample_weight: np.ndarray | None = None,
    balance_classes: bool = True,
    groups: np.ndarray | None = None,
) -> tuple[Head, FitReport]:
    """Fit a head to labelled pairs, starting from ``init``.

    Two losses, both on the head's margin ``d = logit[1] - logit[0]`` (the score is
    ``sigmoid(d)``), plus ``l2_to_prior / 2 * ||theta - theta_prior||^2`` over all parameters,
    minimised with mini-batch Adam:

    * **pointwise** (default): the cross-entropy of ``sigmoid(d)`` against each pair's label,
      as HYDRA trains its heads;
    * **listwise** (with ``groups``): pairs sharing a group id are the candidates of one query,
      and the loss is the cross-entropy between ``softmax(d)`` over the group and the group's
      labels normalised to sum to 1 (ListNet): exactly what picking one candidate per query
      needs. Groups whose labels are all equal say nothing about which candidate to prefer and
      are left out; every other group weighs the same, and mini-batches hold whole groups.

    A new user starts from the shared base head (``init=base.head``, ``prior=base.head``); a
    feedback update starts from the user's current head with a few epochs and a small ``lr``,
    and works from a single pair on.

    Validation: with at least 10 units (pairs; listwise: groups) and ``val_fraction > 0``, a
    ``val_fraction`` of the units is held out (pointwise: stratified, each class keeping at
    least one training pair). After every epoch the held-out loss is measured; training stops
    after ``patience`` epochs without improvement and the parameters with the best held-out
    loss are returned, counting the initial head as epoch 0 so a fit never returns something
    worse on held-out data than it started from. With fewer units all of them train and the
    last epoch is returned.

    Class imbalance (pointwise): with ``balance_classes`` each pair is weighted by
    ``n / (2 * n_class)`` of its class (sklearn's "balanced"), so both classes weigh the same
    in the loss whatever their counts; weights are multiplied by ``sample_weight`` if given
    and rescaled to mean 1.

    Same data, same arguments and same ``seed`` give bit-identical heads.

    Defaults (40 epochs, batch 32, lr 3e-3, l2 1e-3, patience 5) fit 1,000 pairs of a 64-wide
    base in well under 0.3 s on two cores (see bench/test_head_bench.py).

    Args:
        H: (n, hidden) hidden features of the pairs.
        y: (n,) labels in [0, 1]: 0 or 1, or graded (soft) targets such as a normalised
            ROUGE.
        init: Head to start from (its form, full or low-rank, is kept).
        prior: Head whose parameters the L2 term pulls toward (same form and shapes as
            ``init``); None means ``init``.
        l2_to_prior: Strength of the pull; 0 disables it.
        epochs: Maximum number of passes over the training split.
        batch_size: Pairs per Adam step (listwise: whole groups up to about this many pairs).
        lr: Adam step size.
        val_fraction: Share of units held out for early stopping (0 to train on all).
        patience: Epochs without held-out improvement before stopping.
        seed: Seeds the split and the shuffling.
        sample_weight: Optional (n,) non-negative weights per pair (pointwise only).
        balance_classes: Weight the classes equally (see above; pointwise only).
        groups: Optional (n,) group ids (any sortable values): fit listwise.

    Returns:
        The fitted head (float32) and a :class:`FitReport`.

    Raises:
        InvalidInputError: on shape mismatches, labels outside [0, 1], NaN/inf, bad weights,
            listwise data without a group of unequal labels, a prior of another form than
            ``init``, or out-of-range hyperparameters.
    """
    started = time.perf_counter()
    if not isinstance(init, Head):
        raise InvalidInputError(f"init must be a Head, got {type(init).__name__}")
    prior = init if prior is None else prior
    if not isinstance(prior, Head):
        raise InvalidInputError(f"prior must be a Head or None, got {type(prior).__name__}")
    shapes = {k: v.shape for k, v in init._params.items()}
    if {k: v.shape for k, v in prior._params.items()} != shapes:
        raise InvalidInputError(
            f"prior {prior!r} and init {init!r} must have the same form and shapes"
        )
    H, y, weight = _checked_data(H, y, sample_weight, init.hidden)
    _check_hyperparameters(l2_to_prior, epochs, batch_size, lr, val_fraction, patience)
    rng = np.random.default_rng(seed)
    if groups is None:
        objective: _Objective = _Pointwise(H, y, weight, balance_classes, val_fraction, rng)
    else:
        objective = _Listwise(H, y, groups, val_fraction, rng)

    names = list(init._params)
    theta, views = _flat(init._params, names)
    prior_theta, _ = _flat(prior._params, names)
    grad, grad_views = _flat({k: np.zeros_like(v) for k, v in init._params.items()}, names)
    adam = Adam(theta.size, lr=lr)
    pull = np.empty_like(theta)  # scratch for the L2 gradient

    best_theta = theta.copy()
    best_epoch = 0
    best_val = objective.val_loss(views) if objective.has_validation else math.inf
    epochs_run, stale = 0, 0
    for epoch in range(1, epochs + 1):
        epochs_run = epoch
        for batch in objective.batches(batch_size, rng):
            _gradient(views, grad_views, batch)
            if l2_to_prior:
                np.subtract(theta, prior_theta, out=pull)
                pull *= l2_to_prior
                grad += pull
            adam.step(theta, grad)
        if not objective.has_validation:  # nothing held out: keep the last epoch
            best_theta[:] = theta
            best_epoch = epoch
            continue
        val = objective.val_loss(views)
        if val < best_val - _MIN_IMPROVEMENT:
            best_theta[:] = theta
            best_epoch, best_val, stale = epoch, val, 0
        else:
            stale += 1
            if stale >= patience:
                break

    theta[:] = best_theta
    head = Head.from_params({k: views[k].astype(np.float32) for k in names})
    report = FitReport(
        epochs=epochs_run,
        best_epoch=best_epoch,
        best_val_loss=float(best_val) if objective.has_validation else None,
        train_loss=float(objective.train_loss(views)),
        n_train=objective.n_train,
        n_val=objective.n_val,
        seconds=time.perf_counter() - started,
    )
    return head, report


# ---------------------------------------------------------------------- objectives
@dataclass
class _Batch:
    """Rows of one Adam step and how to turn their margins into d loss / d margin."""

    H: np.ndarray
    dloss: Callable[[np.ndarray], np.ndarray]


def _pointwise_dloss(d: np.ndarray, *, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """d loss / d margin of a pointwise batch's mean: ``w * (sigmoid(d) - y) / batch size``."""
    return w * (_sigmoid(d) - y) / y.size


class _Objective(Protocol):
    has_validation: bool
    n_train: int
    n_val: int

    def batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[_Batch]: ...

    def val_loss(self, p: Mapping[str, np.ndarray]) -> float: ...

    def train_loss(self, p: Mapping[str, np.ndarray]) -> float: ...


class _Pointwise:
    """Weighted binary cross-entropy per pair (HYDRA's loss)."""

    def __init__(self, H: np.ndarray, y: np.ndarray, weight: np.ndarray, balance: bool,
                 val_fraction: float, rng: np.random.Generator) -> None:
        train, val = _stratified_split(y, val_fraction, rng)
        self.H, self.y = H[train], y[train]
        self.w = _pair_weights(self.y, weight[train], balance)
        self.H_val, self.y_val = H[val], y[val]
        self.w_val = _pair_weights(self.y_val, weight[val], balance)
        self.n_train, self.n_val = int(train.size), int(val.size)
        self.has_validation = val.size > 0

    def batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[_Batch]:
        order = rng.permutation(self.n_train)
        H, y, w = self.H[order], self.y[order], self.w[order]
        for start in range(0, self.n_train, batch_size):
            stop = start + batch_size
            yb, wb = y[start:stop], w[start:stop]
            yield _Batch(H[start:stop], functools.partial(_pointwise_dloss, y=yb, w=wb))

    def val_loss(self, p: Mapping[str, np.ndarray]) -> float:
        return _pointwise_loss(_margin(p, _first_layer(p, self.H_val)), self.y_val, self.w_val)

    def train_loss(self, p: Mapping[str, np.ndarray]) -> float:
        return _pointwise_loss(_margin(p, _first_layer(p, self.H)), self.y, self.w)


class _Listwise:
    """Cross-entropy between softmax(margins) and the normalised labels, per group."""

    def __init__(self, H: np.ndarray, y: np.ndarray, groups: np.ndarray, val_fraction: float,
                 rng: np.random.Generator) -> None:
        g = np.asarray(groups)
        if g.shape != y.shape:
            raise InvalidInputError(f"groups must have shape {y.shape}, got {g.shape}")
        order = np.argsort(g, kind="stable")
        _, starts = np.unique(g[order], return_index=True)
        spans = [order[a:b] for a, b in zip(starts, [*starts[1:], order.size])]
        spans = [idx for idx in spans if np.ptp(y[idx]) > 0]  # a preference to learn
        if not spans:
            raise InvalidInputError("no group has labels that differ: nothing to learn listwise")
        self.H, self.y = H, y
        perm = rng.permutation(len(spans))
        n_val = 0
        if len(spans) >= MIN_VALIDATION_SAMPLES and val_fraction > 0:
            n_val = max(1, int(round(val_fraction * len(spans))))
        self.val = [spans[i] for i in perm[:n_val]]
        self.train = [spans[i] for i in perm[n_val:]]
        self.n_train = int(sum(idx.size for idx in self.train))
        self.n_val = int(sum(idx.size for idx in self.val))
        self.has_validation = n_val > 0

    def batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[_Batch]:
        batch: list[np.ndarray] = []
        for i in rng.permutation(len(self.train)):
            batch.append(self.train[i])
            if sum(idx.size for idx in batch) >= batch_size:
                yield self._batch(batch)
                batch = []
        if batch:
            yield self._batch(batch)

    def _batch(self, spans: list[np.ndarray]) -> _Batch:
        rows = np.concatenate(spans)
        starts = np.cumsum([0] + [idx.size for idx in spans[:-1]])
        target = _segment_normalise(self.y[rows], starts)
        n_groups = len(spans)
        return _Batch(self.H[rows],
                      lambda d: (_segment_softmax(d, starts) - target) / n_groups)

    def _loss(self, p: Mapping[str, np.ndarray], spans: list[np.ndarray]) -> float:
        if not spans:
            return 0.0
        rows = np.concatenate(spans)
        starts = np.cumsum([0] + [idx.size for idx in spans[:-1]])
        d = _margin(p, _first_layer(p, self.H[rows]))
        log_p = d - _segment_logsumexp(d, starts)
        target = _segment_normalise(self.y[rows], starts)
        return float(-np.sum(target * log_p) / len(spans))

    def val_loss(self, p: Mapping[str, np.ndarray]) -> float:
        return self._loss(p, self.val)

    def train_loss(self, p: Mapping[str, np.ndarray]) -> float:
        return self._loss(p, self.train)


def _segment_logsumexp(d: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per row, the log-sum-exp of its segment (segments start at ``starts``)."""
    top = np.maximum.reduceat(d, starts)
    sizes = np.diff(np.append(starts, d.size))
    lse = top + np.log(np.add.reduceat(np.exp(d - np.repeat(top, sizes)), starts))
    return np.repeat(lse, sizes)


def _segment_softmax(d: np.ndarray, starts: np.ndarray) -> np.ndarray:
    return np.exp(d - _segment_logsumexp(d, starts))


def _segment_normalise(y: np.ndarray, starts: np.ndarray) -> np.ndarray:
    sizes = np.diff(np.append(starts, y.size))
    return y / np.repeat(np.add.reduceat(y, starts), sizes)


def _pointwise_loss(d: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """Weighted mean cross-entropy: y * softplus(-d) + (1 - y) * softplus(d)."""
    return float(np.mean(w * (y * np.logaddexp(0.0, -d) + (1.0 - y) * np.logaddexp(0.0, d))))


def _gradient(p: Mapping[str, np.ndarray], g: Mapping[str, np.ndarray], batch: _Batch) -> None:
    """Write the gradient of the batch's loss into ``g`` (the loss enters as d loss / d margin;
    the margin is logit 1 - logit 0, so d loss / d logit 1 = -d loss / d logit 0 = r)."""
    H = batch.H
    if "U" in p:
        HU = H @ p["U"]
        Z = np.tanh(HU @ p["V"] + p["b1"])
    else:
        Z = np.tanh(H @ p["W1"] + p["b1"])
    w2_diff = p["W2"][:, 1] - p["W2"][:, 0]
    r = batch.dloss(Z @ w2_diff + (p["b2"][1] - p["b2"][0]))
    zr = Z.T @ r
    g["W2"][:, 0] = -zr
    g["W2"][:, 1] = zr
    g["b2"][:] = (-r.sum(), r.sum())
    dA = np.outer(r, w2_diff) * (1.0 - Z * Z)
    g["b1"][:] = dA.sum(axis=0)
    if "U" in p:
        g["V"][:] = HU.T @ dA
        g["U"][:] = H.T @ (dA @ p["V"].T)
    else:
        g["W1"][:] = H.T @ dA


def _flat(
    params: Mapping[str, np.ndarray], names: list[str]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One float64 vector holding all parameters, plus named reshaped views into it."""
    flat = np.concatenate([np.asarray(params[k], dtype=np.float64).ravel() for k in names])
    views, offset = {}, 0
    for k in names:
        shape = params[k].shape
        size = math.prod(shape)
        views[k] = flat[offset : offset + size].reshape(shape)
        offset += size
    return flat, views


# ---------------------------------------------------------------------- data preparation
def _stratified_split(
    y: np.ndarray, val_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    n = y.size
    if n < MIN_VALIDATION_SAMPLES or val_fraction == 0.0:
        return np.arange(n), np.arange(0)
    train, val = [], []
    for positive in (False, True):  # strata: soft labels count by which side of 0.5 they are
        idx = rng.permutation(np.flatnonzero((y >= 0.5) == positive))
        n_val = min(int(round(val_fraction * idx.size)), max(idx.size - 1, 0))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _pair_weights(y: np.ndarray, weight: np.ndarray, balance_classes: bool) -> np.ndarray:
    w = weight.copy()
    if balance_classes:  # a soft label counts y of a positive and 1 - y of a negative
        n_pos = float(y.sum())
        n_neg = float(y.size - n_pos)
        if n_pos and n_neg:
            w *= y * (y.size / (2.0 * n_pos)) + (1.0 - y) * (y.size / (2.0 * n_neg))
    total = w.sum()
    return w * (w.size / total) if total > 0 else w  # all-zero weights: nothing to learn


def _checked_data(
    H: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None, hidden: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    H = np.asarray(H)
    y = np.asarray(y)
    if H.ndim != 2 or H.shape[1] != hidden:
        raise InvalidInputError(f"H must have shape (n, {hidden}), got {H.shape}")
    if y.ndim != 1 or y.shape[0] != H.shape[0]:
        raise InvalidInputError(f"y must have shape ({H.shape[0]},) to match H, got {y.shape}")
    if H.shape[0] == 0:
        raise InvalidInputError("no pairs to fit on")
    if not (np.issubdtype(H.dtype, np.number) and np.isfinite(H).all()):
        raise InvalidInputError("H must be numeric and contain no NaN or inf")
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
        raise InvalidInputError(f"labels must be numbers in [0, 1], got dtype {y.dtype}")
    y = y.astype(np.float64)
    outside = ~((y >= 0.0) & (y <= 1.0))  # also catches NaN
    if outside.any():
        raise InvalidInputError(f"labels must be in [0, 1], got e.g. {y[outside][:3].tolist()}")
    if sample_weight is None:
        weight = np.ones(y.size)
    else:
        weight = np.asarray(sample_weight, dtype=np.float64)
        if weight.shape != y.shape:
            raise InvalidInputError(f"sample_weight must have shape {y.shape}, got {weight.shape}")
        if not np.isfinite(weight).all() or (weight < 0).any() or weight.sum() <= 0:
            raise InvalidInputError("sample_weight must be finite, non-negative and not all 0")
    return H.astype(np.float64), y, weight


def _check_hyperparameters(
    l2_to_prior: float, epochs: int, batch_size: int, lr: float, val_fraction: float, patience: int
) -> None:
    problems = []
    if not (math.isfinite(l2_to_prior) and l2_to_prior >= 0):
        problems.append(f"l2_to_prior={l2_to_prior!r} (need >= 0)")
    if not (isinstance(epochs, (int, np.integer)) and epochs >= 1):
        problems.append(f"epochs={epochs!r} (need an integer >= 1)")
    if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
        problems.append(f"batch_size={batch_size!r} (need an integer >= 1)")
    if not (math.isfinite(lr) and lr > 0):
        problems.append(f"lr={lr!r} (need > 0)")
    if not 0.0 <= val_fraction < 1.0:
        problems.append(f"val_fraction={val_fraction!r} (need 0 <= f < 1)")
    if not (isinstance(patience, (int, np.integer)) and patience >= 1):
        problems.append(f"patience={patience!r} (need an integer >= 1)")
    if problems:
        raise InvalidInputError("bad fit settings: " + ", ".join(problems))
