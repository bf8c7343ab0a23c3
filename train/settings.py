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
    # Std of the pair network's initial pre-activations (PairBase.untrained). 0 keeps the network
    # off (W = 0 gets no gradient) and trains only the heads: on git-lamp dev it fitted better
    # than 0.5, whose pair features overfit the training users (bench/QUALITY.md).
    init_gain: float = 0.0
