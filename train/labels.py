"""Labels at server scale: every training user's reranker and adapter labels, in one file.

For each user of a LaMP-format split, this does **exactly what the device does** in
``Personalizer.fit`` (same code: the runtime's store, labeller, LLM client, response cache and
ledger), with the user's own LaMP questions as labelling queries first (their golds are known
on training users) and then the user's records, each predicted from the records before it
(profile against profile). Users run concurrently in a bounded thread pool; each gets a
working directory (``WORK/users/<id>/``) whose response cache makes a rerun free: an
interrupted build resumes where it stopped, sending only the requests not yet answered.

The result is one ``.npz`` (:func:`save_dataset`): per role, the columns of
:mod:`hydrahead.runtime.label_file` with vectors and texts, each group tagged with its user,
plus a JSON ``meta`` saying what made the labels (data, users, the LLM or the simulator and the
name it goes by, the encoder's fingerprint, the named features, settings, requests sent).
Training reads it with :func:`load_dataset`.

**Shards.** ``shard=(i, n)`` labels only shard ``i`` of ``n``: the users of the split are taken
in file order, cut to the first ``users`` if given, and user number ``p`` of that list (from 0)
belongs to shard ``p % n``. So every shard gets the same number of users, give or take one,
whatever ``users`` is, and ``n`` machines label a split between them, each with its own working
directory. Each user keeps its place ``p`` (:attr:`Dataset.user_position`), and
:func:`hydrahead.train.merge.merge_datasets` puts the shards back together into exactly the
dataset one unsharded run writes (meta aside).

**Sources.** A dataset can hold labels of several tasks and LLMs (merged from several runs). Its
*sources* (:attr:`Dataset.sources`) are its (task, LLM) pairs, each listing the meta of every run
that labelled it; every user belongs to one (:attr:`Dataset.user_source`), so a user id can come
back under another task or LLM (a different user there, with its own head in training).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from hydrahead import __version__
from hydrahead.runtime.bundle import Bundle
from hydrahead.runtime.encoder import Encoder
from hydrahead.runtime.errors import InvalidInputError
from hydrahead.runtime.importing import import_records, lamp_users
from hydrahead.runtime.label_file import pairs_from_arrays, pairs_to_arrays
from hydrahead.runtime.labeling import Question
from hydrahead.runtime.pairs import PairSet
from hydrahead.runtime.llm.config import LLMConfig
from hydrahead.runtime.npz_file import read_npz, write_npz
from hydrahead.runtime.personalizer import ROLES, Personalizer
from hydrahead.runtime import adapter_features, reranker_features
from hydrahead.runtime.settings import Settings
from hydrahead.runtime.tasks import get_task

FORMAT = "hydrahead-label-dataset"
FORMAT_VERSION = 1  # (datasets written before versioning have none and read as 1)
# Later additions read with defaults from files without them: ``user_source`` (all 0) and
# ``user_position`` (0, 1, ...).

FEATURES = {"reranker": reranker_features.FEATURE_NAMES, "adapter": adapter_features.FEATURE_NAMES}
"""The named features each role's pairs carry (recorded in the meta; merging compares them)."""
SIMULATOR_NAME = "offline simulator"
"""What labels of the offline simulator are said to come from, unless named otherwise."""


@dataclass(frozen=True)
class LabelRun:
    """How labels are made: the device's pipeline settings (its defaults unless given), and
    what the server adds.

    Attributes:
        settings: The pipeline settings each user's ``Personalizer`` labels with.
        budget: LLM calls per user (larger than a device's default).
        reranker_rule: ``"graded"`` (hydrahead's) or ``"binary"`` (HYDRA's) reranker labels.
        questions: Label with the users' own LaMP questions first (their golds are known).
    """

    settings: Settings = field(default_factory=Settings)
    budget: int = 200
    reranker_rule: str = "graded"
    questions: bool = True

    def as_dict(self) -> dict[str, Any]:
        """The run's knobs as one flat dict (the dataset's ``meta["settings"]``)."""
        return {**self.settings.as_dict(), "budget": self.budget,
                "reranker_rule": self.reranker_rule, "questions": self.questions}


@dataclass
class Dataset:
    """Labelled pairs of many users, per role, and what made them.

    Attributes:
        users: The users' ids; unique within a source, not across sources.
        pairs: Per role, every group of every user.
        group_user: Per role, each group's index into ``users``.
        meta: What made the labels (see the module docstring); a merged dataset's lists its
            ``sources``.
        user_source: Each user's index into :attr:`sources` (default: all 0).
        user_position: Each user's place in the order of its split's users (default: 0, 1,
            ...): the order merging restores.
    """

    users: list[str]
    pairs: dict[str, PairSet]
    group_user: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)
    user_source: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    user_position: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self) -> None:
        n = len(self.users)
        if not len(self.user_source):
            self.user_source = np.zeros(n, np.int64)
        if not len(self.user_position):
            self.user_position = np.arange(n, dtype=np.int64)
        self.user_source = np.asarray(self.user_source, np.int64)
        self.user_position = np.asarray(self.user_position, np.int64)
        if self.user_source.shape != (n,) or self.user_position.shape != (n,):
            raise InvalidInputError(f"user_source and user_position need one entry per user "
                                    f"({n}), got {self.user_source.shape} and "
                                    f"{self.user_position.shape}")

    @property
    def sources(self) -> list[dict[str, Any]]:
        """The (task, LLM) pairs the labels come from, in :attr:`user_source`'s order: each a
        dict with ``task``, ``llm`` and ``runs`` (the meta of every run that labelled it)."""
        if "sources" in self.meta:
            return list(self.meta["sources"])
        return [source_of(self.meta)]

    def group_source(self, role: str) -> np.ndarray:
        """Each of ``role``'s groups' index into :attr:`sources`."""
        return self.user_source[self.group_user[role]]


def source_of(meta: dict[str, Any]) -> dict[str, Any]:
    """The one source of a single run's ``meta`` (datasets written before the LLM was named
    go by their ``labels`` line)."""
    return {"task": meta.get("task"), "llm": meta.get("llm", meta.get("labels")),
            "runs": [meta]}


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` as ``(i, n)``, checked (see :func:`check_shard`).

    Raises:
        InvalidInputError: ``text`` is not two integers ``i/n`` with ``0 <= i < n``.
    """
    index, slash, count = str(text).strip().partition("/")
    try:
        shard = (int(index), int(count))
    except ValueError:
        shard = None
    if not slash or shard is None:
        raise InvalidInputError(f"a shard is I/N (shard I of N, from 0), e.g. 0/4; got {text!r}")
    return check_shard(shard)


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    """``shard`` if it is ``(i, n)`` with integers ``0 <= i < n``.

    Raises:
        InvalidInputError: it is not.
    """
    try:
        index, count = shard
    except (TypeError, ValueError):
        raise InvalidInputError(f"a shard is (index, count), got {shard!r}") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (index, count)):
        raise InvalidInputError(f"a shard is two integers, got {shard!r}")
    if count < 1 or not 0 <= index < count:
        raise InvalidInputError(f"shard {index}/{count}: need 0 <= I < N (shards of N are "
                                f"numbered 0 to N-1)")
    return index, count


def build_dataset(
    data: str | Path,
    task_name: str,
    out: str | Path,
    *,
    bundle: str | Path,
    work: str | Path,
    llm: LLMConfig,
    simulated: bool,
    split: str = "train",
    users: int | None = None,
    shard: tuple[int, int] | None = None,
    llm_name: str | None = None,
    run: LabelRun | None = None,
    workers: int = 4,
    max_requests: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Dataset:
    """Label every user of ``split`` and write the dataset to ``out``.

    Args:
        data: A LaMP-format directory.
        task_name: Task name or spec path.
        out: The dataset file to write (.npz).
        bundle: The bundle whose encoder and (untrained or current) bases label.
        work: Working directory: per-user stores, response caches and ledgers (resumable).
        llm: The LLM endpoint.
        simulated: Whether ``llm`` is the offline simulator (recorded in the meta).
        split: Which users (``train`` by default).
        users: Only the first this many users.
        shard: ``(i, n)``: only shard ``i`` of ``n`` of those users, user number ``p`` (in
            file order, from 0) being in shard ``p % n`` (the module docstring).
        llm_name: What the labels' LLM is called in the dataset (merged datasets keep the
            labels of differently named LLMs apart); default: ``"offline simulator"`` when
            ``simulated``, else ``llm.model``.
        run: The pipeline settings, the budget per user and the labelling rule.
        workers: Users labelled concurrently.
        max_requests: Stop starting new users once this many HTTP requests were sent.
        progress: Show a progress bar over users.
        log: Called with one line per finished user.

    Raises:
        InvalidInputError: no users to label (in the split, or in the shard), or a bad shard.
    """
    run = run or LabelRun()
    task = get_task(task_name)
    listed = lamp_users(data, task, split)[:users]
    if not listed:
        raise InvalidInputError(f"no {split} users for {task.name} in {data}")
    index, count = check_shard(shard) if shard is not None else (0, 1)
    position = {user_id: p for p, (user_id, _, _) in enumerate(listed)}
    todo = listed[index::count]
    if not todo:
        raise InvalidInputError(f"shard {index}/{count} of {len(listed)} {split} users holds "
                                f"none: use at most {len(listed)} shards")
    b = Bundle.open(bundle)
    encoder = Encoder(b)
    work = Path(work)
    sent = _Sent()
    started = time.perf_counter()
    results: dict[str, tuple[dict[str, PairSet], dict[str, int]]] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {
            pool.submit(_label_user, work, user_id, rows, questions, task_name, b, encoder, llm,
                        run, sent, max_requests): user_id
            for user_id, rows, questions in todo
        }
        bar = tqdm(as_completed(futures), total=len(futures), desc="users", unit="user",
                   disable=not progress)
        for future in bar:
            user_id = futures[future]
            found = future.result()
            if found is None:
                continue
            results[user_id] = found
            bar.set_postfix(requests=sent.total)
            if log:
                cost = found[1]
                log(f"{user_id}: {cost['reranker_pairs']} reranker / {cost['adapter_pairs']} "
                    f"adapter pairs, {cost['requests_sent']} requests sent")
    names = [u for u, _, _ in todo if u in results]
    pairs = {role: PairSet() for role in ROLES}
    group_user: dict[str, list[int]] = {role: [] for role in ROLES}
    for i, user_id in enumerate(names):
        for role in ROLES:
            pairs[role].extend(results[user_id][0][role])
            group_user[role] += [i] * len(results[user_id][0][role])
    costs = [results[u][1] for u in names]
    meta = {
        "hydrahead": __version__, "task": task.name, "data": str(data), "split": split,
        "users": len(names), "users_skipped": len(todo) - len(names),
        "shard": None if shard is None else {"index": index, "count": count,
                                             "of_users": len(listed)},
        "labels": SIMULATOR_NAME if simulated else f"LLM {llm.model} at {llm.base_url}",
        "llm": llm_name or (SIMULATOR_NAME if simulated else llm.model),
        "simulated": simulated, "bundle_fingerprint": b.fingerprint[:12],
        "encoder_fingerprint": encoder.fingerprint,
        "features": {role: list(FEATURES[role]) for role in ROLES},
        "settings": run.as_dict(),
        **{k: int(sum(c[k] for c in costs)) for k in
           ("llm_calls", "requests_sent", "prompt_tokens", "completion_tokens",
            "reranker_pairs", "adapter_pairs")},
        "seconds": round(time.perf_counter() - started, 1),
    }
    dataset = Dataset(names, pairs, {r: np.array(g, np.int64) for r, g in group_user.items()},
                      meta, user_position=np.array([position[u] for u in names], np.int64))
    save_dataset(out, dataset)
    return dataset


class _Sent:
    """HTTP requests sent so far, across the pool's threads."""

    def __init__(self) -> None:
        self.total = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.total += n


def _label_user(work: Path, user_id: str, rows: list[dict[str, Any]], questions: Sequence[Any],
                task_name: str, bundle: Bundle, encoder: Encoder, config: LLMConfig,
                run: LabelRun, sent: _Sent, max_requests: int | None
                ) -> tuple[dict[str, PairSet], dict[str, int]] | None:
    """One user's labels, made by ``Personalizer.fit`` in the user's working directory."""
    if max_requests is not None and sent.total >= max_requests:
        return None
    directory = work / "users" / user_id
    directory.mkdir(parents=True, exist_ok=True)
    # Given a config, the personalizer keeps the response cache and the ledger in the user's
    # directory, as on a device.
    with Personalizer.open(directory, bundle=bundle, encoder=encoder, task=task_name,
                           llm=config, settings=run.settings) as p:
        if p.store.count() != len(rows):
            import_records(p.store, p.task, rows)
        known = [q for q in questions if q.gold is not None] if run.questions else []
        texts = [p.task.query_text(q.input) for q in known]
        vectors = encoder.encode(texts) if texts else np.empty((0, encoder.dim), np.float32)
        asked = [Question(t, q.gold, v, frozenset(str(r.get("id")) for r in q.profile))
                 for t, v, q in zip(texts, vectors, known)]
        summary = p.fit(budget=run.budget, progress=False, reranker_rule=run.reranker_rule,
                        questions=asked)
    labels = summary.labels
    sent.add(labels.requests_sent)
    cost = {"llm_calls": labels.llm_calls, "requests_sent": labels.requests_sent,
            "prompt_tokens": labels.prompt_tokens, "completion_tokens": labels.completion_tokens,
            "reranker_pairs": labels.reranker.n_pairs, "adapter_pairs": labels.adapter.n_pairs}
    return {"reranker": labels.reranker, "adapter": labels.adapter}, cost


def save_dataset(path: str | Path, dataset: Dataset) -> None:
    """Write ``dataset`` (vectors and texts kept) to ``path``, atomically and owner-only."""
    arrays = {"users": np.array(dataset.users, dtype=str),
              "user_source": dataset.user_source, "user_position": dataset.user_position}
    for role in ROLES:
        arrays.update(pairs_to_arrays(dataset.pairs[role], vectors=True,
                                      users=dataset.group_user[role], prefix=f"{role}."))
    write_npz(path, arrays, format=FORMAT, version=FORMAT_VERSION, meta=dataset.meta)


def load_dataset(path: str | Path) -> Dataset:
    """Read a dataset written by :func:`save_dataset`.

    Raises:
        InvalidInputError: the file is missing, damaged or not a training dataset.
    """
    arrays, meta, _ = read_npz(path, format=FORMAT, versions=FORMAT_VERSION,
                               error=InvalidInputError, unversioned=1,
                               hint="build it again with `hydrahead train labels`",
                               what="training dataset")
    pairs, group_user = {}, {}
    for role in ROLES:
        pairs[role], group_user[role] = pairs_from_arrays(arrays, prefix=f"{role}.")
    none = np.zeros(0, np.int64)  # absent from older files: the defaults
    return Dataset([str(u) for u in arrays["users"]], pairs, group_user, meta,
                   user_source=arrays.get("user_source", none),
                   user_position=arrays.get("user_position", none))
