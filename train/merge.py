"""Merging label datasets: the shards of one run back into one, or several tasks and LLMs into
one training set.

:func:`merge_datasets` takes datasets of :mod:`hydrahead.train.labels` (or their files) and
returns one whose

* **sources** are the inputs' (task, LLM) pairs, in the order they first appear, each listing
  the meta of every run that labelled it (a merged input's sources are taken apart, so merging
  is associative);
* **users** are ordered by source, then by their place in their split's user order
  (:attr:`~hydrahead.train.labels.Dataset.user_position`), then by input; ids are kept as
  they are: the same id under another source is another user (``user_source`` tells them
  apart), the same id twice under one source is refused as a duplicate;
* **groups** are each user's, in the users' order, each user's own in their original order.

The shards ``0/n`` ... ``n-1/n`` of one run, merged in any order, therefore give exactly the
arrays that the unsharded run writes: the sharded users' places interleave back into the
split's order. Only the meta differs (it lists the shards' runs).

What cannot be trained on together is refused: vectors of different encoders (compared by the
``encoder_fingerprint`` the meta records; by ``bundle_fingerprint`` for datasets written before
it was), of different widths, or pairs with different named features.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from hydrahead import __version__
from hydrahead.runtime.errors import InvalidInputError
from hydrahead.runtime.pairs import PairSet
from hydrahead.runtime.personalizer import ROLES

from .labels import Dataset, load_dataset

COUNTS = ("users_skipped", "llm_calls", "requests_sent", "prompt_tokens", "completion_tokens",
          "reranker_pairs", "adapter_pairs")
"""Meta counts a merged dataset sums over its runs."""


def merge_datasets(inputs: Iterable[Dataset | str | Path]) -> Dataset:
    """One dataset of every user and group of ``inputs`` (see the module docstring).

    Args:
        inputs: Datasets, or paths of dataset files; at least one.

    Raises:
        InvalidInputError: no inputs; inputs made with different encoders, of different vector
            widths or named features; a user twice under one (task, LLM); a damaged file.
    """
    named = [(d, f"dataset {i}") if isinstance(d, Dataset) else (load_dataset(d), str(d))
             for i, d in enumerate(inputs)]
    if not named:
        raise InvalidInputError("nothing to merge: give at least one label dataset")
    datasets = [d for d, _ in named]
    encoder = _same_encoder(named)
    features = _same_features(named)

    # The merged sources: one per (task, LLM), in the order they first appear.
    sources: list[dict[str, Any]] = []
    where: dict[tuple[str, str], int] = {}
    source_of_input: list[list[int]] = []
    for d in datasets:
        mapping = []
        for s in d.sources:
            key = (str(s["task"]), str(s["llm"]))
            if key not in where:
                where[key] = len(sources)
                sources.append({"task": s["task"], "llm": s["llm"], "runs": []})
            sources[where[key]]["runs"] += s["runs"]
            mapping.append(where[key])
        source_of_input.append(mapping)

    # Every user, in the merged order: source, place in the split's order, input.
    everyone = [(source_of_input[n][int(d.user_source[u])], int(d.user_position[u]), n, u)
                for n, d in enumerate(datasets) for u in range(len(d.users))]
    everyone.sort(key=lambda e: e[:3])
    _no_duplicates(everyone, datasets, sources, named)
    new_index = {(n, u): i for i, (_, _, n, u) in enumerate(everyone)}

    pairs, group_user = {}, {}
    for role in ROLES:
        taken = [(new_index[n, int(u)], n, g) for n, d in enumerate(datasets)
                 for g, u in enumerate(d.group_user[role])]
        taken.sort(key=lambda t: t[0])  # stable: each user's groups keep their order
        pairs[role] = _take([(datasets[n].pairs[role], g) for _, n, g in taken])
        group_user[role] = np.array([i for i, _, _ in taken], np.int64)

    runs = [r for s in sources for r in s["runs"]]
    meta = {
        "hydrahead": __version__, "merged": [label for _, label in named],
        "users": len(everyone),
        **{k: int(sum(r.get(k, 0) or 0 for r in runs)) for k in COUNTS},
        "encoder_fingerprint": encoder,
        "bundle_fingerprints": sorted({str(r["bundle_fingerprint"]) for r in runs
                                       if r.get("bundle_fingerprint")}),
        "features": features,
        "sources": sources,
    }
    return Dataset(
        [datasets[n].users[u] for _, _, n, u in everyone], pairs, group_user, meta,
        user_source=np.array([s for s, _, _, _ in everyone], np.int64),
        user_position=np.array([p for _, p, _, _ in everyone], np.int64))


def _same_encoder(named: Sequence[tuple[Dataset, str]]) -> str | None:
    """The inputs' common encoder fingerprint (``None`` where none records one).

    Raises:
        InvalidInputError: two inputs' vectors come from different encoders or have different
            widths.
    """
    fingerprints = {label: d.meta.get("encoder_fingerprint") for d, label in named}
    known = {label: f for label, f in fingerprints.items() if f}
    _all_equal(known, "were embedded by different encoders (encoder fingerprints)")
    if len(known) < len(named):  # older datasets: their bundle is all that says
        _all_equal({label: _bundle(d) for d, label in named if _bundle(d)},
                   "were made with different bundles, and do not record their encoder")
    widths = {label: int(d.pairs[role].queries[0].shape[0])
              for d, label in named for role in ROLES if len(d.pairs[role])}
    _all_equal(widths, "hold vectors of different widths")
    return next(iter(known.values()), None)


def _bundle(d: Dataset) -> str | None:
    if d.meta.get("bundle_fingerprint"):
        return str(d.meta["bundle_fingerprint"])
    found = d.meta.get("bundle_fingerprints") or []
    return ",".join(found) if found else None


def _same_features(named: Sequence[tuple[Dataset, str]]) -> dict[str, list[str]] | None:
    """The inputs' common named features per role (``None`` where none records them).

    Raises:
        InvalidInputError: two inputs' pairs carry different named features (by name where
            the meta records them, else by number).
    """
    recorded = {label: d.meta["features"] for d, label in named if d.meta.get("features")}
    for role in ROLES:
        _all_equal({label: tuple(f.get(role, ())) for label, f in recorded.items()},
                   f"carry different named {role} features")
        widths = {label: next((f.shape[1] for f in d.pairs[role].features if f is not None), 0)
                  for d, label in named if len(d.pairs[role])}
        _all_equal(widths, f"carry different numbers of named {role} features")
    return next(iter(recorded.values()), None)


def _all_equal(values: dict[str, Any], what: str) -> None:
    """Refuse unless every value of ``values`` (by input) is the same."""
    if len(set(values.values())) > 1:
        shown = "; ".join(f"{label}: {value}" for label, value in values.items())
        raise InvalidInputError(f"cannot merge label datasets that {what} ({shown}); label "
                                "them again with one bundle")


def _no_duplicates(everyone: Sequence[tuple[int, int, int, int]], datasets: Sequence[Dataset],
                   sources: Sequence[dict[str, Any]],
                   named: Sequence[tuple[Dataset, str]]) -> None:
    """Refuse a user id that two inputs (or one input twice) hold under one (task, LLM)."""
    seen: dict[tuple[int, str], int] = {}
    for s, _, n, u in everyone:
        key = (s, datasets[n].users[u])
        if key in seen:
            source = sources[s]
            raise InvalidInputError(
                f"user {key[1]!r} is labelled twice for task {source['task']!r} by LLM "
                f"{source['llm']!r} (in {named[seen[key]][1]} and {named[n][1]}): merge each "
                "user once; to merge the labels of two LLMs, name them apart "
                "(`hydrahead train labels --llm-name`)")
        seen[key] = n


def _take(groups: Sequence[tuple[PairSet, int]]) -> PairSet:
    """A new PairSet of the given (PairSet, group index) groups, in that order."""
    out = PairSet()
    for f in fields(PairSet):
        getattr(out, f.name).extend(getattr(pairs, f.name)[g] for pairs, g in groups)
    return out
