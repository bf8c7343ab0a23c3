"""Labelled pairs on disk: a user's fitted labels, and the server's training dataset.

A :class:`~hydrahead.runtime.pairs.PairSet` is written flat, one array per column, into a
versioned ``.npz`` (:mod:`hydrahead.runtime.npz_file`: arrays only, with a JSON ``meta``). Per
role (``reranker.`` or ``adapter.`` prefix)::

    query_text (G,) str     query_id (G,) str ("" = not a record)     group_user (G,) int
    item_group (P,) int     item_text (P,) str     item_id (P,) str ("" = an LLM candidate)
    features (P, F) float32     label (P,) float64
    query_vec (G, dim) float32  item_vec (P, dim) float32    (only when vectors are kept)

Three files use it:

* ``heads/labels.npz`` in a user's directory, written by ``fit()``: the labels the user's heads
  were fitted on, **without vectors** (record ids point into the user's store; candidates are
  re-embedded). When the bundle's shared base changes, the heads are refitted from it with no
  LLM request. Deleting records from the store drops the groups that held them
  (:func:`drop_records`).
* ``heads/feedback.npz``, the same format: every ``feedback()`` the user gave, appended
  (:func:`append_labels`) and used by every later fit.
* the training dataset of :mod:`hydrahead.train.labels` (its own format name), many users,
  **with vectors**, texts kept for a cross-encoder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .errors import HeadError, InvalidInputError
from .npz_file import read_npz, write_npz
from .pairs import PairSet

FORMAT = "hydrahead-labels"
FORMAT_VERSION = 1
ROLES = ("reranker", "adapter")
DAMAGED = "delete it and run `hydrahead fit` again"


def pairs_to_arrays(pairs: PairSet, *, vectors: bool,
                    users: Sequence[int] | np.ndarray | None = None,
                    prefix: str = "") -> dict[str, np.ndarray]:
    """The columns of ``pairs`` (see the module docstring), keys prefixed by ``prefix``."""
    sizes = [len(y) for y in pairs.labels]
    n_features = next((f.shape[1] for f in pairs.features if f is not None), 0)
    features = [f if f is not None else np.zeros((n, 0), np.float32)
                for f, n in zip(pairs.features, sizes)]
    out = {
        "query_text": np.array(pairs.query_texts, dtype=str),
        "query_id": np.array([i or "" for i in pairs.query_ids], dtype=str),
        "group_user": np.array(users if users is not None else [0] * len(sizes), dtype=np.int64),
        "item_group": np.repeat(np.arange(len(sizes), dtype=np.int64), sizes),
        "item_text": np.array([t for ts in pairs.item_texts for t in ts], dtype=str),
        "item_id": np.array([i or "" for ids in pairs.item_ids for i in ids], dtype=str),
        "features": (np.concatenate(features).astype(np.float32) if sizes
                     else np.zeros((0, n_features), np.float32)),
        "label": (np.concatenate(pairs.labels) if sizes else np.zeros(0)).astype(np.float64),
    }
    if vectors:
        dim = pairs.queries[0].shape[0] if sizes else 0
        out["query_vec"] = (np.stack(pairs.queries) if sizes
                            else np.zeros((0, dim), np.float32)).astype(np.float32)
        out["item_vec"] = (np.concatenate(pairs.docs) if sizes
                           else np.zeros((0, dim), np.float32)).astype(np.float32)
    return {prefix + k: v for k, v in out.items()}


def pairs_from_arrays(
    arrays: Mapping[str, np.ndarray],
    *,
    prefix: str = "",
    query_vectors: Callable[[str, str], np.ndarray | None] | None = None,
    item_vectors: Callable[[Sequence[str], Sequence[str]], np.ndarray | None] | None = None,
) -> tuple[PairSet, np.ndarray]:
    """A PairSet (and each group's user) from the columns written by :func:`pairs_to_arrays`.

    Without stored vectors, ``query_vectors(text, id)`` and ``item_vectors(texts, ids)`` give
    them; a group for which either returns ``None`` (a deleted record) is dropped.
    """
    a = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    stored = "query_vec" in a and "item_vec" in a
    if not stored and (query_vectors is None or item_vectors is None):
        raise InvalidInputError("these labels keep no vectors: pass query_vectors, item_vectors")
    groups = a["item_group"]
    starts = np.searchsorted(groups, np.arange(len(a["query_text"]) + 1))
    pairs, users = PairSet(), []
    for g in range(len(a["query_text"])):
        rows = slice(starts[g], starts[g + 1])
        q_text, q_id = str(a["query_text"][g]), str(a["query_id"][g]) or None
        texts = [str(t) for t in a["item_text"][rows]]
        ids = [str(i) or None for i in a["item_id"][rows]]
        q_vec: np.ndarray | None
        d_vecs: np.ndarray | None
        if stored:
            q_vec, d_vecs = a["query_vec"][g], a["item_vec"][rows]
        else:
            q_vec = query_vectors(q_text, q_id or "")  # type: ignore[misc]
            d_vecs = item_vectors(texts, [i or "" for i in ids])  # type: ignore[misc]
            if q_vec is None or d_vecs is None:
                continue
        f = a["features"][rows]
        pairs.add(q_vec, d_vecs, a["label"][rows], f if f.shape[1] else None,
                  query_text=q_text, query_id=q_id, item_texts=texts, item_ids=ids)
        users.append(int(a["group_user"][g]))
    return pairs, np.array(users, dtype=np.int64)


def save_labels(path: str | os.PathLike[str], labels: Mapping[str, PairSet],
                meta: Mapping[str, Any]) -> None:
    """Write a user's labels (no vectors) with ``meta`` (JSON) to ``path``, atomically."""
    arrays: dict[str, np.ndarray] = {}
    for role, pairs in labels.items():
        arrays.update(pairs_to_arrays(pairs, vectors=False, prefix=f"{role}."))
    _write(path, arrays, meta)


def load_labels(
    path: str | os.PathLike[str],
    *,
    query_vectors: Callable[[str, str], np.ndarray | None],
    item_vectors: Callable[[Sequence[str], Sequence[str]], np.ndarray | None],
) -> tuple[dict[str, PairSet], dict[str, Any]]:
    """Read a user's labels written by :func:`save_labels` (see :func:`pairs_from_arrays`).

    Raises:
        FileNotFoundError: there is no labels file.
        HeadError: the file is damaged.
    """
    arrays, meta = _read(path)
    out = {}
    for role in ROLES:
        if f"{role}.label" in arrays:
            out[role], _ = pairs_from_arrays(arrays, prefix=f"{role}.",
                                             query_vectors=query_vectors,
                                             item_vectors=item_vectors)
    return out, meta


def drop_records(path: str | os.PathLike[str], ids: Sequence[str]) -> int:
    """Remove from a user's labels file every group whose query or items include a record in
    ``ids`` (their text goes with them); returns how many groups were dropped."""
    try:
        arrays, meta = _read(path)
    except FileNotFoundError:
        return 0
    gone = list(set(ids))
    out = {k: v for k, v in arrays.items() if "." not in k}
    dropped = 0
    for role in ROLES:
        if f"{role}.label" not in arrays:
            continue
        a = _role_arrays(arrays, role)
        hit = np.isin(a["query_id"], gone)
        hit[a["item_group"][np.isin(a["item_id"], gone)]] = True
        dropped += int(hit.sum())
        out.update({f"{role}.{k}": v for k, v in _keep_groups(a, ~hit).items()})
    if dropped:
        _write(path, out, meta)
    return dropped


def append_labels(path: str | os.PathLike[str], labels: Mapping[str, PairSet],
                  meta: Mapping[str, Any], *, limit: int) -> None:
    """Add ``labels`` after those already in ``path`` (written by :func:`save_labels` or this),
    keeping each role's newest ``limit`` groups."""
    new = {k: v for role, pairs in labels.items()
           for k, v in pairs_to_arrays(pairs, vectors=False, prefix=f"{role}.").items()}
    try:
        old, _ = _read(path)
    except FileNotFoundError:
        old = {}
    out: dict[str, np.ndarray] = {}
    for role in ROLES:
        parts = [_role_arrays(src, role) for src in (old, new) if f"{role}.label" in src]
        if not parts:
            continue
        merged = parts[0]
        if len(parts) == 2:
            first, second = parts
            if first["features"].shape[1] != second["features"].shape[1]:
                merged = second  # written by another hydrahead's features: keep the new only
            else:
                second = dict(second, item_group=second["item_group"] + len(first["query_text"]))
                merged = {k: np.concatenate([first[k], second[k]]) for k in first}
        groups = len(merged["query_text"])
        keep = np.arange(groups) >= groups - limit
        out.update({f"{role}.{k}": v for k, v in _keep_groups(merged, keep).items()})
    _write(path, out, meta)


def _role_arrays(arrays: Mapping[str, np.ndarray], role: str) -> dict[str, np.ndarray]:
    return {k[len(role) + 1:]: v for k, v in arrays.items() if k.startswith(f"{role}.")}


def _keep_groups(a: Mapping[str, np.ndarray], keep_group: np.ndarray) -> dict[str, np.ndarray]:
    """One role's columns with only the groups where ``keep_group`` is True, renumbered."""
    keep_row = keep_group[a["item_group"]]
    renumber = np.cumsum(keep_group) - 1
    out = {}
    for k, v in a.items():
        if k in ("query_text", "query_id", "group_user", "query_vec"):
            out[k] = v[keep_group]
        elif k == "item_group":
            out[k] = renumber[v[keep_row]]
        else:
            out[k] = v[keep_row]
    return out


def _read(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and ``meta`` of a labels file; FileNotFoundError if there is none.

    Raises:
        HeadError: the file is damaged, or its columns are not what :func:`pairs_to_arrays`
            writes (a missing column, wrong shapes or lengths, group numbers out of range,
            labels outside [0, 1]); the message names the file.
    """
    arrays, meta, _ = read_npz(path, format=FORMAT, versions=FORMAT_VERSION, error=HeadError,
                               hint=DAMAGED, what="labels file", raise_not_found=True)
    for role in ROLES:
        if any(k.startswith(f"{role}.") for k in arrays):
            problem = _column_problem(_role_arrays(arrays, role))
            if problem:
                raise HeadError(f"labels file {path} is malformed ({role}: {problem}); {DAMAGED}")
    return arrays, meta


_GROUP_COLUMNS = ("query_text", "query_id", "group_user")
_ITEM_COLUMNS = ("item_group", "item_text", "item_id", "features", "label")


def _column_problem(a: Mapping[str, np.ndarray]) -> str | None:
    """What is wrong with one role's columns, or ``None``."""
    missing = [k for k in (*_GROUP_COLUMNS, *_ITEM_COLUMNS) if k not in a]
    if missing:
        return f"missing column(s) {missing}"
    n_groups, n_items = len(a["query_text"]), len(a["label"])
    for k in _GROUP_COLUMNS:
        if a[k].ndim != 1 or len(a[k]) != n_groups:
            return f"{k} is not one entry per group"
    for k in _ITEM_COLUMNS:
        if a[k].ndim != (2 if k == "features" else 1) or len(a[k]) != n_items:
            return f"{k} is not one entry per item"
    for k in ("query_vec", "item_vec"):
        if k in a and (a[k].ndim != 2 or len(a[k]) != (n_groups if k == "query_vec"
                                                       else n_items)):
            return f"{k} is not one vector per {'group' if k == 'query_vec' else 'item'}"
    groups, labels = a["item_group"], a["label"]
    if groups.dtype.kind not in "iu" or labels.dtype.kind != "f":
        return "item_group must hold integers and label numbers"
    if n_items and (groups.min() < 0 or groups.max() >= n_groups
                    or np.any(np.diff(groups) < 0)):
        return "item_group numbers are out of order or out of range"
    if not np.all((labels >= 0.0) & (labels <= 1.0)):  # also catches NaN
        return "labels outside [0, 1]"
    if a["features"].dtype.kind != "f" or not np.all(np.isfinite(a["features"])):
        return "features must be finite numbers"
    return None


def _write(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray],
           meta: Mapping[str, Any]) -> None:
    write_npz(path, arrays, format=FORMAT, version=FORMAT_VERSION, meta=meta, compressed=True)
