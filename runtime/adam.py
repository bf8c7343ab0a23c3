"""Adam (Kingma & Ba, 2015) on one flat parameter vector, in plain numpy.

The per-user heads are tiny, so every parameter lives in one contiguous float64 array and one
optimiser step is a handful of vectorised operations, whatever the number of weight matrices.
"""

from __future__ import annotations

import numpy as np


class Adam:
    """Adam with bias correction, updating a flat parameter vector in place.

    Args:
        size: Number of parameters.
        lr: Step size.
        beta1: Decay of the first-moment (mean) estimate.
        beta2: Decay of the second-moment (uncentred variance) estimate.
        eps: Added to the root of the second moment to avoid division by zero.
    """

    def __init__(
        self, size: int, *, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8
    ) -> None:
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.m = np.zeros(size)
        self.v = np.zeros(size)
        self.t = 0
        self._scratch = np.empty(size)

    def step(self, theta: np.ndarray, grad: np.ndarray) -> None:
        """Move ``theta`` (modified in place) one step against ``grad``."""
        self.t += 1
        m, v, tmp = self.m, self.v, self._scratch
        # m = beta1 * m + (1 - beta1) * grad;  v = beta2 * v + (1 - beta2) * grad**2
        m *= self.beta1
        np.multiply(grad, 1.0 - self.beta1, out=tmp)
        m += tmp
        v *= self.beta2
        np.square(grad, out=tmp)
        tmp *= 1.0 - self.beta2
        v += tmp
        # theta -= lr * m_hat / (sqrt(v_hat) + eps), bias corrections folded into the step size
        step_size = self.lr * np.sqrt(1.0 - self.beta2**self.t) / (1.0 - self.beta1**self.t)
        np.sqrt(v, out=tmp)
        tmp += self.eps
        np.divide(m, tmp, out=tmp)
        tmp *= step_size
        theta -= tmp
