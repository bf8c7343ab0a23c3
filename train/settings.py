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
    # Std of the pair network's initial pre-activations (PairBase.untrained). 0 starts it at
    # W = 0: it grows only as the heads' read-out of its units grows. On git-lamp dev that fitted
    # better than 0.5, whose pair features overfit the training users (bench/QUALITY.md).
    init_gain: float = 0.0
    mode: str = "fast"  # "fast" (pair network over embeddings) or "cross" (MiniLM cross-encoder)
    max_groups: int = 0  # labelled groups per role to train on; 0 = all (cross mode: sample)
    # Cross mode's size: 64 tokens per (query, item) pair through MiniLM's first 2 layers fits
    # ask() in about 100 ms on 2 cores (k=20, N=8); the full model at 128 tokens takes about 210.
    max_length: int = 64  # cross mode: tokens per (query, item) pair
    encoder_lr: float = 2e-5  # cross mode: MiniLM's learning rate
    cross_layers: int = 2  # cross mode: MiniLM's first layers kept (fewer: faster on the device)
