"""Fast mode in torch: the shared pair base, per-user heads, and their losses.

These are the training twins of the device's numpy code and compute the same functions:

* :class:`FastBase` is :class:`hydrahead.runtime.pair_base.PairBase`:
  ``h = [s * f, tanh([q, d, q*d, |q-d|] @ W + b)]``;
* :class:`StackedHeads` holds one HYDRA head per user (``tanh(h @ W1 + b1) @ W2 + b2``, as
  :class:`hydrahead.runtime.heads.Head`) in stacked tensors, so a batch mixing users is one
  gather and two batched products, and every head takes part in every step (which keeps
  distributed training's gradient reduction simple);
* :func:`pointwise_loss` and :func:`listwise_loss` are the losses of
  :func:`hydrahead.runtime.fitting.fit_head` (HYDRA's cross-entropy; ListNet over a query's
  candidates).

``tests/test_train_fast.py`` checks scores and gradients against the numpy code to 1e-5.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from hydrahead.runtime._optional import require
from hydrahead.runtime.heads import Head
from hydrahead.runtime.pair_base import PairBase

if TYPE_CHECKING:  # the type checker reads torch's types; at run time, the import says what
    import torch  # to install if torch is missing
    from torch import nn
else:
    torch = require("torch", "train")
    nn = torch.nn


class FastBase(nn.Module):
    """The fast-mode shared base: ``h = [s * f, tanh([q, d, q*d, |q-d|] @ W + b)]``.

    Args:
        W: (4 * dim, width) initial weights.
        b: (width,) initial bias.
        feature_names: Names of the passthrough features.
        feature_scale: (F,) their fixed scales.
    """

    scale: torch.Tensor  # a buffer, registered in __init__

    def __init__(self, W: np.ndarray, b: np.ndarray, feature_names: Sequence[str],
                 feature_scale: np.ndarray) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.tensor(np.asarray(W), dtype=torch.float32))
        self.b = nn.Parameter(torch.tensor(np.asarray(b), dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(np.asarray(feature_scale), dtype=torch.float32))
        self.feature_names = tuple(feature_names)
        self.dim = self.W.shape[0] // 4

    @classmethod
    def from_pair_base(cls, base: PairBase) -> FastBase:
        """A torch base with ``base``'s weights."""
        return cls(base.W, base.b, base.feature_names, base.feature_scale)

    def forward(self, q: torch.Tensor, d: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """Hidden vectors (n, F + width) of pairs: ``q`` (n or 1, dim), ``d`` (n, dim),
        ``f`` (n, F)."""
        q = q.expand_as(d)
        x = torch.cat([q, d, q * d, (d - q).abs()], dim=1)
        return torch.cat([f * self.scale, torch.tanh(x @ self.W + self.b)], dim=1)

    def to_pair_base(self, head: Head) -> PairBase:
        """The numpy base with these weights and ``head`` as its base head."""
        return PairBase(self.W.detach().cpu().numpy(), self.b.detach().cpu().numpy(),
                        self.feature_names, self.scale.cpu().numpy(), head)


class StackedHeads(nn.Module):
    """``n_users`` full heads of HYDRA's shape, in stacked parameters.

    Args:
        init: The head every user starts from (copied ``n_users`` times).
        n_users: Number of heads.
    """

    def __init__(self, init: Head, n_users: int) -> None:
        super().__init__()
        p = {k: torch.tensor(np.asarray(v), dtype=torch.float32) for k, v in init.params.items()}
        W1 = p["U"] @ p["V"] if "U" in p else p["W1"]
        self.W1 = nn.Parameter(W1.repeat(n_users, 1, 1))
        self.b1 = nn.Parameter(p["b1"].repeat(n_users, 1))
        self.W2 = nn.Parameter(p["W2"].repeat(n_users, 1, 1))
        self.b2 = nn.Parameter(p["b2"].repeat(n_users, 1))

    def forward(self, H: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        """The margins ``logit[1] - logit[0]`` (n,) of hidden vectors ``H`` (n, hidden), row i
        scored by head ``user[i]``."""
        z = torch.tanh(torch.einsum("nh,nhk->nk", H, self.W1[user]) + self.b1[user])
        logits = torch.einsum("nh,nhk->nk", z, self.W2[user]) + self.b2[user]
        return logits[:, 1] - logits[:, 0]

    def distance_to(self, prior: StackedHeads) -> torch.Tensor:
        """``sum_u ||theta_u - theta_prior||^2 / n_users`` for a one-head ``prior``."""
        total = sum(((getattr(self, k) - getattr(prior, k)[:1]) ** 2).sum()
                    for k in ("W1", "b1", "W2", "b2"))
        return total / self.W1.shape[0]

    def head(self, user: int = 0) -> Head:
        """Head ``user`` as the device's numpy head."""
        return Head(*(getattr(self, k)[user].detach().cpu().numpy()
                      for k in ("W1", "b1", "W2", "b2")))


def pointwise_loss(d: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pair cross-entropy of ``sigmoid(d)`` against soft labels ``y`` (summed)."""
    return (y * nn.functional.softplus(-d) + (1 - y) * nn.functional.softplus(d)).sum()


def listwise_loss(d: torch.Tensor, y: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """ListNet per group (summed over groups): ``slots`` (G, L) holds each group's row indices
    into ``d``/``y``, padded with -1; targets are the group's labels normalised to sum 1."""
    mask = slots >= 0
    idx = slots.clamp(min=0)
    logits = torch.where(mask, d[idx], torch.full_like(d[idx], -torch.inf))
    target = torch.where(mask, y[idx], torch.zeros_like(y[idx]))
    target = target / target.sum(dim=1, keepdim=True)
    log_p = torch.log_softmax(logits, dim=1)
    return -(torch.where(mask, target * log_p, torch.zeros_like(log_p))).sum()
