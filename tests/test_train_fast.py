"""Server-side training of fast-mode bases: torch twins of the numpy code, joint multi-user
training that learns (and fails on inverted labels), and torchrun/DDP equal to one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hydrahead.runtime import fitting  # noqa: E402
from hydrahead.runtime.heads import Head  # noqa: E402
from hydrahead.runtime.pairs import PairSet  # noqa: E402
from hydrahead.runtime.pair_base import PairBase  # noqa: E402
from hydrahead.runtime.reranker_features import FEATURE_NAMES  # noqa: E402
from hydrahead.train.fast_model import (  # noqa: E402
    FastBase,
    StackedHeads,
    listwise_loss,
    pointwise_loss,
)
from hydrahead.train.labels import Dataset, load_dataset, save_dataset  # noqa: E402
from hydrahead.train.settings import TrainSettings  # noqa: E402
from hydrahead.train.trainer import train, train_role  # noqa: E402

DIM = 16


def _head(hidden: int = 8, seed: int = 0) -> Head:
    rng = np.random.default_rng(seed)
    return Head(rng.normal(size=(hidden, hidden)) / 2, rng.normal(size=hidden),
                rng.normal(size=(hidden, 2)), rng.normal(size=2))


def test_torch_base_computes_the_numpy_base() -> None:
    base = PairBase.untrained(dim=DIM, hidden=12, seed=3, gain=0.8,
                              features={name: 1.0 for name in FEATURE_NAMES})
    rng = np.random.default_rng(0)
    q = rng.normal(size=DIM).astype(np.float32)
    D = rng.normal(size=(7, DIM)).astype(np.float32)
    f = rng.uniform(-1, 1, (7, len(FEATURE_NAMES))).astype(np.float32)
    with torch.no_grad():
        got = FastBase.from_pair_base(base)(torch.from_numpy(q)[None], torch.from_numpy(D),
                                            torch.from_numpy(f)).numpy()
    np.testing.assert_allclose(got, base.hidden_of(q, D, f), atol=1e-5)
    back = FastBase.from_pair_base(base).to_pair_base(base.head)
    np.testing.assert_array_equal(back.W, base.W)


@pytest.mark.parametrize("kind", ["pointwise", "listwise"])
def test_torch_head_scores_and_gradients_equal_the_numpy_head(kind: str) -> None:
    head = _head()
    rng = np.random.default_rng(1)
    H = rng.normal(size=(24, head.hidden))
    y = rng.uniform(size=24).round(1)
    heads = StackedHeads(head, 1).double()
    users = torch.zeros(24, dtype=torch.long)
    Ht, yt = torch.from_numpy(H), torch.from_numpy(y)
    d = heads(Ht, users)
    np.testing.assert_allclose(torch.sigmoid(d).detach().numpy(), head.scores(H), atol=1e-5)

    # numpy: the device's hand-written backward pass on the same batch
    if kind == "pointwise":
        objective = fitting._Pointwise(H, y, np.ones(24), False, 0.0, rng)
        loss = pointwise_loss(d, yt) / 24
    else:
        objective = fitting._Listwise(H, y, np.repeat(np.arange(6), 4), 0.0, rng)
        slots = torch.arange(24).reshape(6, 4)
        loss = listwise_loss(d, yt, slots) / 6
    (batch,) = list(objective.batches(10_000, np.random.default_rng(2)))
    names = list(head.params)
    _, views = fitting._flat(head.params, names)
    _, grads = fitting._flat({k: np.zeros_like(v) for k, v in head.params.items()}, names)
    fitting._gradient(views, grads, batch)
    np.testing.assert_allclose(float(loss.detach()), objective.train_loss(views), rtol=1e-5)
    loss.backward()
    for name in names:
        got = getattr(heads, name).grad[0].numpy()
        np.testing.assert_allclose(got, grads[name], rtol=1e-5, atol=1e-8)
    assert np.abs(grads["W1"]).max() > 1e-3


# ---------------------------------------------------------------------------- training learns
def _dataset(seed: int = 0, users: int = 4, groups: int = 30, invert: bool = False) -> Dataset:
    """Reranker labels where only ``lexical`` (feature 1) says which item helps; cos is noise."""
    rng = np.random.default_rng(seed)
    pairs, owner = PairSet(), []
    for u in range(users):
        for _ in range(groups):
            q = rng.normal(size=DIM)
            D = rng.normal(size=(5, DIM))
            f = rng.uniform(0, 1, (5, len(FEATURE_NAMES)))
            y = (f[:, 1] > 0.5).astype(float)
            pairs.add(q, D, 1.0 - y if invert else y, f)
            owner.append(u)
    empty = PairSet()
    return Dataset([f"u{u}" for u in range(users)], {"reranker": pairs, "adapter": empty},
                   {"reranker": np.array(owner), "adapter": np.zeros(0, np.int64)},
                   {"task": "synthetic"})


def _auc(base: PairBase, data: Dataset) -> float:
    pairs = data.pairs["reranker"]
    s = np.concatenate([base.head.scores(base.hidden_of(q, D, f))
                        for q, D, f in zip(pairs.queries, pairs.docs, pairs.features)])
    y = np.concatenate(pairs.labels) > 0.5
    return float((s[y][:, None] > s[~y][None, :]).mean())


SETTINGS = TrainSettings(epochs=15, base_head_epochs=25, hidden=12, batch_groups=16, lr=1e-2,
                         init_gain=0.5)


def _trained(data: Dataset) -> PairBase:
    from hydrahead.train.trainer import _kept, _tensors, fast_inputs, initial_base

    init = initial_base("reranker", DIM, SETTINGS)
    pairs = data.pairs["reranker"]
    keep = _kept(pairs, False, 0, 0)
    tensors = _tensors(pairs, data.group_user["reranker"], keep, fast_inputs(pairs, keep), "cpu")
    base = FastBase.from_pair_base(init)
    head, report = train_role("reranker", tensors, base, init.head, len(data.users), SETTINGS)
    assert report["joint"][-1]["epoch"] >= 1
    return base.to_pair_base(head)


def test_trained_base_head_learns_what_helps_and_inverted_labels_break_it() -> None:
    from hydrahead.train.trainer import initial_base

    held_out = _dataset(seed=99, users=1)
    untrained = _auc(initial_base("reranker", DIM, SETTINGS), held_out)
    trained = _auc(_trained(_dataset()), held_out)
    inverted = _auc(_trained(_dataset(invert=True)), held_out)
    assert 0.35 < untrained < 0.65  # the cosine says nothing here
    assert trained > 0.9
    assert inverted < 0.1


def test_torchrun_with_two_gloo_processes_equals_one_process(tmp_path: Path) -> None:
    data = _dataset(users=3, groups=12)
    save_dataset(tmp_path / "labels.npz", data)
    assert len(load_dataset(tmp_path / "labels.npz").pairs["reranker"]) == 36
    args = ["hydrahead.train.trainer", str(tmp_path / "labels.npz"), "--roles", "reranker",
            "--epochs", "3", "--base-head-epochs", "3", "--hidden", "12", "--batch-groups", "8",
            "--init-gain", "0.5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", *args[:2], str(tmp_path / "one"), *args[2:]],
                   check=True, env=env, capture_output=True)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--master_port", "0", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                    "localhost:0", "-m", *args[:2], str(tmp_path / "two"), *args[2:]],
                   check=True, env=env, capture_output=True)
    one, two = (PairBase.load(tmp_path / d / "reranker.npz") for d in ("one", "two"))
    assert np.abs(one.W - two.W).max() < 1e-4
    for k, v in one.head.params.items():
        np.testing.assert_allclose(two.head.params[k], v, atol=1e-4)
    from hydrahead.train.trainer import initial_base

    start = initial_base("reranker", DIM, TrainSettings(hidden=12, init_gain=0.5))
    assert np.abs(one.W - start.W).max() > 1e-3  # it trained: both runs moved the same way
    assert np.abs(one.head.params["W2"] - start.head.params["W2"]).max() > 1e-3


def test_train_writes_bases_and_a_report(tmp_path: Path) -> None:
    report = train(_dataset(users=2, groups=10), tmp_path, SETTINGS, roles=["reranker"])
    assert (tmp_path / "reranker.npz").exists() and (tmp_path / "training.json").exists()
    assert report["roles"]["reranker"]["users"] == 2 and report["world_size"] == 1
