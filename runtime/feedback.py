"""Feedback: the answer a user accepted or wrote, turned into labelled pairs for both heads.

No LLM call is made. A query asked in this session is judged against the candidates the LLM
gave for it; any other query against the answers of the history records the device retrieves
for it. The adapter learns that the user's answer is what they want over the alternatives (an
edited answer is scored with the same history context the candidates had); the reranker learns
which of the prompt's records agree with it. :meth:`~hydrahead.runtime.user_heads.UserHeads.
learn_feedback` then steps the heads toward the pairs and keeps them for every later fit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import reranker_features
from .adapter_features import candidate_features
from .ask_pipeline import Answer, AskPipeline
from .errors import InvalidInputError
from .labeling import label_by_answer
from .pairs import PairSet


def feedback_pairs(pipeline: AskPipeline, query: str, answer: str,
                   last: Answer | None = None) -> dict[str, PairSet]:
    """The labelled pairs one piece of feedback gives each head.

    Args:
        pipeline: The user's ask pipeline (its task, store, candidate embeddings).
        query: Any query.
        answer: The answer the user accepted, or their own answer.
        last: What ``ask()`` answered for ``query`` in this session, if it did.

    Raises:
        InvalidInputError: an empty query or answer.
    """
    if not isinstance(answer, str) or not answer.strip():
        raise InvalidInputError("feedback needs a non-empty answer string")
    if not isinstance(query, str) or not query.strip():
        raise InvalidInputError("feedback needs the query it answers (a non-empty string)")
    task, store = pipeline.task, pipeline.store
    if last is not None and last.context is not None:
        context, items = last.context, [(it.record, it.retrieval_score) for it in last.items]
        alternatives = [c.text for c in last.candidates]
    else:
        prepared = pipeline.prepare(query)
        context = pipeline.context(prepared, None, [])
        items = [(it.record, it.retrieval_score) for it in prepared.items]
        alternatives = [a for a in dict.fromkeys(
            task.answer_of(h.record) for h in prepared.neighbours) if a]
    wanted = task.parse(answer)

    def same(a: Any, b: Any) -> bool:
        return task.kind != "generation" and a is not None and a == b

    others = [t for t in alternatives
              if t.strip() != answer.strip() and not same(task.parse(t), wanted)]
    labels = {"reranker": PairSet(), "adapter": PairSet()}
    if others:
        texts = [answer, *others]
        vecs = pipeline.candidates.vectors(texts)
        labels["adapter"].add(context.query_vec, vecs, [1.0] + [0.0] * len(others),
                              candidate_features(task, context, texts, vecs),
                              query_text=query, item_texts=texts)
    if items:
        records = [r for r, _ in items]
        labels["reranker"].add(
            context.query_vec,
            store.vectors([r.id for r in records]),
            label_by_answer(task, [task.answer_of(r) or "" for r in records], answer),
            reranker_features.reranker_features(
                task, query, records, np.array([s for _, s in items])),
            query_text=query, item_texts=[task.example_text(r) for r in records],
            item_ids=[r.id for r in records],
        )
    return labels
