"""Training the shared bases: HYDRA's multi-user model, on one CPU or many GPUs.

Both modes (``TrainSettings.mode``) train here: fast mode's pair network over the items'
embeddings (:class:`~hydrahead.train.fast_model.FastBase`, saved as ``<role>.npz``) and cross
mode's MiniLM cross-encoder (:class:`~hydrahead.train.cross_model.CrossBase`, saved as
``<role>.cross/``). For each role (reranker, adapter), from a label dataset
(:mod:`hydrahead.train.labels`):

1. **Joint phase.** The shared base (fast mode: its random non-linear features switched on;
   cross mode: MiniLM's first ``cross_layers`` layers, fine-tuned) and one head per training
   user, all starting from the untrained base head, are trained together: every user's loss on
   their own labels (the reranker pointwise, the adapter listwise, as on the device), plus the
   device's L2 pull of each head toward the base head. Early stopping on held-out groups keeps
   the best base.
2. **Base-head phase.** The base is frozen and the shipped base head, the head a new user
   starts from, is fitted on all users' labels pooled (same losses, same early stopping).

New users' heads are then fitted on their devices with this base frozen
(:func:`hydrahead.runtime.fitting.fit_head`); ``hydrahead train evaluate`` does that for the dev
users.

Scale-out is torch's own: this module is the entry point of ``torchrun``::

    torchrun --nproc_per_node 8 -m hydrahead.train.trainer labels.npz out/       # one node
    torchrun --nnodes 2 --node_rank R --master_addr HOST --nproc_per_node 8 \\
        -m hydrahead.train.trainer labels.npz out/                                # two nodes

(several datasets, ``... a.npz b.npz out/``, are merged first: several tasks and LLMs), and
runs unchanged as one process on a CPU (``python -m hydrahead.train.trainer ...`` or
``hydrahead train fit``). Under ``torchrun`` each process takes every ``world``-th group of a
global batch, gradients are averaged by DistributedDataParallel (gloo on CPUs, NCCL on GPUs),
and each rank's loss is scaled so the result equals the one-process run's up to rounding
(``tests/test_train_fast.py`` checks two gloo processes against one).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from hydrahead.runtime._optional import require
from hydrahead.runtime.heads import Head
from hydrahead.runtime.pairs import PairSet
from hydrahead.runtime.pair_base import PairBase

from .fast_model import FastBase, StackedHeads, listwise_loss, pointwise_loss
from .labels import Dataset, load_dataset
from .merge import merge_datasets
from .settings import TrainSettings

if TYPE_CHECKING:  # the type checker reads torch's types (see fast_model)
    import torch
else:
    torch = require("torch", "train")
dist = torch.distributed

LISTWISE = {"reranker": False, "adapter": True}  # as the device fits each head


@dataclass
class _Data:
    """One role's labels as tensors: what the base reads per pair row, and the groups."""

    inputs: dict[str, Any]  # name -> (P, ...) per pair row (the base's keyword arguments)
    f: Any  # (P, F) named features
    y: Any  # (P,) targets
    user: Any  # (G,) each group's user
    slots: Any  # (G, L) each group's rows, padded with -1

    def rows(self) -> int:
        return int(self.y.shape[0])


def _kept(pairs: PairSet, listwise: bool, max_groups: int, seed: int) -> list[int]:
    """The groups training uses: listwise ones with a preference to learn; at most
    ``max_groups`` of them (a seeded sample) when ``max_groups`` > 0."""
    keep = [i for i, y in enumerate(pairs.labels) if not listwise or np.ptp(y) > 0]
    if 0 < max_groups < len(keep):
        pick = np.random.default_rng(seed).choice(len(keep), max_groups, replace=False)
        keep = [keep[i] for i in sorted(pick)]
    return keep


def _tensors(pairs: PairSet, users: np.ndarray, keep: list[int], inputs: dict[str, np.ndarray],
             device: Any) -> _Data:
    sizes = [len(pairs.labels[i]) for i in keep]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    slots = np.full((len(keep), max(sizes, default=1)), -1, np.int64)
    for g, (a, n) in enumerate(zip(starts, sizes)):
        slots[g, :n] = np.arange(a, a + n)
    n_features = next((f.shape[1] for f in pairs.features if f is not None), 0)

    def t(a: Any, dtype: Any = torch.float32) -> Any:
        return torch.as_tensor(np.asarray(a), dtype=dtype, device=device)

    return _Data(
        inputs={k: t(v, torch.long if v.dtype.kind in "iu" else torch.float32)
                for k, v in inputs.items()},
        f=t(np.concatenate([pairs.features[i] for i in keep]) if keep
            else np.zeros((0, n_features))),
        y=t(np.concatenate([pairs.labels[i] for i in keep]) if keep else np.zeros(0)),
        user=t(users[keep], torch.long),
        slots=t(slots, torch.long),
    )


def fast_inputs(pairs: PairSet, keep: list[int]) -> dict[str, np.ndarray]:
    """What :class:`FastBase` reads per pair row: the query's and the item's embeddings."""
    return {
        "q": np.concatenate([np.repeat(pairs.queries[i][None], len(pairs.labels[i]), 0)
                             for i in keep]).astype(np.float32),
        "d": np.concatenate([pairs.docs[i] for i in keep]).astype(np.float32),
    }


class _Given(torch.nn.Module):
    """A frozen base whose hidden vectors were computed once (the base-head phase)."""

    def forward(self, h: Any, f: Any) -> Any:
        return h


class _Model(torch.nn.Module):
    def __init__(self, base: Any, heads: StackedHeads) -> None:
        super().__init__()
        self.base, self.heads = base, heads

    def forward(self, data: _Data, groups: Any, user_of: Any | None = None
                ) -> tuple[Any, Any, Any]:
        """Margins and targets of ``groups``' rows, and those rows' slots within them."""
        slots = data.slots[groups]
        valid = slots >= 0
        rows = slots[valid]
        group_of_row = torch.arange(len(groups), device=slots.device).unsqueeze(1).expand_as(
            slots)[valid]
        users = data.user[groups] if user_of is None else user_of[groups]
        H = self.base(**{k: v[rows] for k, v in data.inputs.items()}, f=data.f[rows])
        margins = self.heads(H, users[group_of_row])
        local = torch.cumsum(valid.flatten().long(), 0).reshape(slots.shape) - 1
        return margins, data.y[rows], torch.where(valid, local, torch.full_like(local, -1))


def _loss(model: Any, data: _Data, groups: Any, listwise: bool, scale: float,
          user_of: Any | None = None) -> Any:
    """The summed loss of ``groups`` times ``scale``."""
    d, y, local = model(data, groups, user_of)
    total = listwise_loss(d, y, local) if listwise else pointwise_loss(d, y)
    return total * scale


def _units(data: _Data, groups: Any, listwise: bool) -> int:
    """What a loss is averaged over: groups (listwise) or pairs (pointwise)."""
    return len(groups) if listwise else int((data.slots[groups] >= 0).sum())


def _phase(model: Any, data: _Data, train: np.ndarray, val: np.ndarray, *, listwise: bool,
           prior: StackedHeads, s: TrainSettings, epochs: int, rank: int, world: int,
           user_of: Any | None = None, desc: str = "") -> list[dict[str, float]]:
    """Adam over ``train`` groups in global batches (each rank its share), early stopping on
    ``val``; the best parameters are loaded back into ``model``."""
    inner = model.module if hasattr(model, "module") else model
    encoder = getattr(inner.base, "encoder", None)  # cross mode: MiniLM gets its own rate
    slow = {id(p) for p in encoder.parameters()} if encoder is not None else set()
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if id(p) not in slow], "lr": s.lr}]
    if any(id(p) in slow for p in params):
        groups.append({"params": [p for p in params if id(p) in slow], "lr": s.encoder_lr})
    optimizer = torch.optim.Adam(groups)
    rng = np.random.default_rng(s.seed)
    device = data.slots.device
    val_t = torch.as_tensor(val, device=device)

    def val_loss() -> float:
        if not len(val):
            return float("nan")
        with torch.no_grad():
            return float(_loss(inner, data, val_t, listwise, 1.0 / _units(data, val_t, listwise),
                               user_of))

    best, best_state, history, waited = val_loss(), _state(inner), [], 0
    history.append({"epoch": 0, "val_loss": best})
    bar = tqdm(range(1, epochs + 1), desc=desc, unit="epoch", disable=rank != 0 or not epochs)
    for epoch in bar:
        order = train[rng.permutation(len(train))]
        total = 0.0
        for start in range(0, len(order), s.batch_groups):
            batch = torch.as_tensor(order[start:start + s.batch_groups], device=device)
            mine = batch[rank::world]
            scale = world / max(_units(data, batch, listwise), 1)
            loss = _loss(model, data, mine, listwise, scale, user_of)
            loss = loss + s.l2_to_prior / 2 * inner.heads.distance_to(prior)
            optimizer.zero_grad(set_to_none=False)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) / world
        current = val_loss()
        history.append({"epoch": epoch, "train_loss": total, "val_loss": current})
        bar.set_postfix(val_loss=f"{current:.4f}")
        if not len(val) or current < best - 1e-5:
            best, best_state, waited = current, _state(inner), 0
        else:
            waited += 1
            if waited >= s.patience:
                break
    inner.load_state_dict(best_state)
    return history


def _state(module: Any) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def train_role(role: str, data: _Data, base: Any, init_head: Head, n_users: int,
               s: TrainSettings, *, rank: int = 0, world: int = 1
               ) -> tuple[Head, dict[str, Any]]:
    """Train one role's base (in place) and fit its base head (see the module docstring).

    Args:
        role: "reranker" (pointwise loss) or "adapter" (listwise).
        data: The role's labels as tensors, ``data.inputs`` what ``base`` reads.
        base: The torch base (:class:`FastBase` or :class:`CrossBase`), trained in place.
        init_head: The head every training user starts from, and the L2 prior.
        n_users: Training users (one head each).
        s: Hyper-parameters.

    Returns:
        The shipped base head and a report of both phases.
    """
    listwise = LISTWISE[role]
    device = data.slots.device
    n = len(data.slots)
    if n < 2:
        raise ValueError(f"{role}: {n} usable labelled groups; need at least 2")
    perm = np.random.default_rng(s.seed).permutation(n)
    n_val = int(round(s.val_fraction * n))
    val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    torch.manual_seed(s.seed)

    prior = StackedHeads(init_head, 1).to(device).requires_grad_(False)
    model = _Model(base, StackedHeads(init_head, n_users).to(device))
    t0 = time.perf_counter()
    joint = _phase(_ddp(model, device, world), data, train, val, listwise=listwise,
                   prior=prior, s=s, epochs=s.epochs, rank=rank, world=world,
                   desc=f"{role}: base + {n_users} user heads")

    base.requires_grad_(False).eval()
    frozen = _Data({"h": _hidden(base, data, s.batch_groups * 8)}, data.f, data.y, data.user,
                   data.slots)
    pooled = _Model(_Given(), StackedHeads(init_head, 1).to(device))
    everyone = torch.zeros(n, dtype=torch.long, device=device)  # all groups read head 0
    head_phase = _phase(_ddp(pooled, device, world), frozen, train, val, listwise=listwise,
                        prior=prior, s=s, epochs=s.base_head_epochs, rank=rank, world=world,
                        user_of=everyone, desc=f"{role}: base head")
    report = {
        "groups": n, "pairs": data.rows(), "val_groups": int(n_val), "users": n_users,
        "loss": "listwise (ListNet)" if listwise else "pointwise (BCE)",
        "joint": joint, "base_head": head_phase, "seconds": round(time.perf_counter() - t0, 2),
    }
    return pooled.heads.head(0), report


def _hidden(base: Any, data: _Data, batch: int) -> Any:
    """The frozen base's hidden vectors of every pair row."""
    with torch.no_grad():
        return torch.cat([
            base(**{k: v[i:i + batch] for k, v in data.inputs.items()}, f=data.f[i:i + batch])
            for i in range(0, data.rows(), batch)])


def _ddp(model: Any, device: Any, world: int) -> Any:
    if world == 1:
        return model
    ids = [device] if str(device).startswith("cuda") else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def initial_base(role: str, dim: int, s: TrainSettings) -> PairBase:
    """Where training starts, in either mode: the role's untrained base (its pair network
    switched on with ``s.init_gain``), whose named features, feature scales, width and base
    head a cross-mode base takes over too."""
    from hydrahead.export.bases import BASE_ROLES, GAINS  # the device's untrained base heads

    return PairBase.untrained(dim=dim, hidden=s.hidden, seed=BASE_ROLES[role],
                              features=GAINS[role], gain=s.init_gain)


def train(dataset: Dataset | str | Path | Sequence[Dataset | str | Path], out: str | Path,
          settings: TrainSettings | None = None,
          roles: Sequence[str] = ("reranker", "adapter")) -> dict[str, Any]:
    """Train the roles' bases from a label dataset, or several merged on the fly
    (:func:`~hydrahead.train.merge.merge_datasets`: several tasks and LLMs train one base);
    rank 0 writes ``out/<role>.npz`` (fast mode) or ``out/<role>.cross/`` (cross mode), and
    ``out/training.json`` (the report, also returned; each role's groups are counted per
    source)."""
    s = settings or TrainSettings()
    if s.mode not in ("fast", "cross"):
        raise ValueError(f"mode must be 'fast' or 'cross', got {s.mode!r}")
    rank, world, device = _setup()
    data = _dataset(dataset)
    out = Path(out)
    report: dict[str, Any] = {
        "data": data.meta, "settings": asdict(s), "world_size": world, "device": str(device),
        "torch": torch.__version__, "mode": s.mode,
        "sources": [{"task": src["task"], "llm": src["llm"],
                     "users": int((data.user_source == i).sum())}
                    for i, src in enumerate(data.sources)],
        "roles": {},
    }
    for role in roles:
        pairs = data.pairs[role]
        keep = _kept(pairs, LISTWISE[role], s.max_groups, s.seed)
        init = initial_base(role, pairs.queries[0].shape[0], s)
        if s.mode == "fast":
            base: Any = FastBase.from_pair_base(init)
            inputs = fast_inputs(pairs, keep)
        else:
            from .cross_model import CrossBase

            base = CrossBase(init.feature_names, init.feature_scale, init.width,
                             max_length=s.max_length, layers=s.cross_layers, seed=s.seed)
            inputs = base.tokenize(
                [pairs.query_texts[i] for i in keep for _ in pairs.labels[i]],
                [t for i in keep for t in pairs.item_texts[i]])
        base = base.to(device)
        tensors = _tensors(pairs, data.group_user[role], keep, inputs, device)
        head, report["roles"][role] = train_role(role, tensors, base, init.head,
                                                 len(data.users), s, rank=rank, world=world)
        per_source = np.bincount(data.group_source(role)[keep], minlength=len(data.sources))
        report["roles"][role]["groups_per_source"] = [int(n) for n in per_source]
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            if s.mode == "fast":
                base.to_pair_base(head).save(out / f"{role}.npz")
            else:
                base.save(out / f"{role}.cross", head)
    if rank == 0:
        (out / "training.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    if world > 1:
        dist.barrier()
    return report


def _dataset(given: Dataset | str | Path | Sequence[Dataset | str | Path]) -> Dataset:
    """A dataset, a dataset file, or several of either merged."""
    if isinstance(given, Dataset):
        return given
    if isinstance(given, (str, Path)):
        return load_dataset(given)
    return merge_datasets(given)


def _setup() -> tuple[int, int, Any]:
    """Rank, world size and device; joins the process group when run by ``torchrun``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo")
    return (dist.get_rank() if world > 1 else 0), world, device


def main(argv: Sequence[str] | None = None) -> None:
    """``torchrun`` entry point: ``-m hydrahead.train.trainer LABELS OUT [options]``."""
    parser = argparse.ArgumentParser(prog="hydrahead.train.trainer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("labels", nargs="+",
                        help="label datasets (.npz) from `hydrahead train labels` or `train "
                             "merge`; several are merged")
    parser.add_argument("out", help="directory for reranker.npz, adapter.npz, training.json")
    for name, value in asdict(TrainSettings()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--roles", default="reranker,adapter")
    args = vars(parser.parse_args(argv))
    labels, out, roles = args.pop("labels"), args.pop("out"), args.pop("roles").split(",")
    try:
        train(labels[0] if len(labels) == 1 else labels, out, TrainSettings(**args),
              roles=roles)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
