"""Hyper-parameters of base training (torch-free, so the CLI can list them without torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainSettings:
    """Hyper-parameters of both phases."""

    epochs: int = 40
    base_head_epochs: int = 40
    batch_groups: int = 32  # groups (one labelling query each) per global batch
    lr: float = 3e-3
    l2_to_prior: float = 1e-3
    val_fraction: float = 0.15
    patience: int = 6
    seed: int = 0
    hidden: int = 64
    init_gain: float = 0.5  # std of the base's initial pre-activations (PairBase.untrained)
