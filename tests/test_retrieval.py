"""Per-user retrieval: BM25 or both lists fused feed the reranker only where the user's own
history shows they find the records that answer a query better than dense retrieval does."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from hydrahead.offline.server import OfflineLLMServer
from hydrahead.runtime.bundle import Bundle
from hydrahead.runtime.errors import HeadError, InvalidInputError
from hydrahead.runtime.importing import import_records
from hydrahead.runtime.labeling import Labeler
from hydrahead.runtime.llm.config import LLMConfig
from hydrahead.runtime.personalizer import Personalizer
from hydrahead.runtime.retrieval import RRF_K, KeywordIndex, combine, words
from hydrahead.runtime.validation import Choices, check_retrieval

TAGS = ["tests", "completion", "docs", "build"]
SYLLABLES = ["ba", "ko", "ri", "tu", "me", "lo", "sa", "ne", "vi", "do", "pe", "gu", "ha", "zi",
             "mo", "fe", "ru", "ta", "li", "no"]
WORDS = [a + b + c for a in SYLLABLES for b in SYLLABLES for c in SYLLABLES[:5]]


def _user(codes_decide: bool, n: int = 120, seed: int = 0) -> list[dict[str, str]]:
    """Notes whose words (drawn at random from 2,000) say nothing of their area; the ticket
    they cite decides it (``codes_decide``) or is noise (the area drawn at random). Dense
    retrieval sees mostly the words; BM25 weighs the one word two notes share: the ticket."""
    rng = random.Random(seed)
    codes = {f"ZQ{7000 + 37 * i}": TAGS[i % len(TAGS)] for i in range(16)}
    history = []
    for i in range(n):
        code = rng.choice(sorted(codes))
        tag = codes[code] if codes_decide else rng.choice(TAGS)
        text = " ".join(rng.sample(WORDS, 8)) + f", for {code}."
        history.append({"id": f"c{i}", "text": text, "tag": tag,
                        "date": f"2021-{1 + i // 28:02d}-{1 + i % 28:02d}T12:00:00Z"})
    return history


def test_words_and_keyword_index() -> None:
    assert words("Fix T-1000's crash, again") == ["fix", "t", "1000", "s", "crash", "again"]
    index = KeywordIndex(["the cat sat", "a dog ran", "the dog sat", ""])
    assert index.top("dog", 5) == [1, 2]  # only documents sharing a word, best first
    assert index.top("dog", 5, np.array([True, False, True, True])) == [2]
    assert index.top("zebra", 5) == [] and index.top("!!", 5) == []
    assert KeywordIndex([]).top("dog", 3) == []
    # The same scores as rank-bm25's own get_scores (the postings only make them fast)
    from rank_bm25 import BM25Okapi

    texts = [item["text"] for item in _user(True, n=200)] + ["", "for for ZQ7000"]
    index, reference = KeywordIndex(texts), BM25Okapi([words(t) or ["\x00"] for t in texts])
    for query in ("tubame rikoha, for ZQ7000.", "for for", "nothing shared", texts[5]):
        assert np.allclose(index.scores(query), reference.get_scores(words(query)))


def test_combine() -> None:
    dense, keyword = [1, 2, 3, 4], [9, 3, 8]
    assert combine("dense", dense, keyword, 3) == [1, 2, 3]
    assert combine("bm25", dense, keyword, 3) == [9, 3, 8]
    assert combine("bm25", dense, keyword, 5) == [9, 3, 8, 1, 2]  # filled by the nearest
    # 3 is in both lists (1/(RRF_K+3) + 1/(RRF_K+2)); 1 and 9 tie at 1/(RRF_K+1), dense first
    assert combine("fused", dense, keyword, 4) == [3, 1, 9, 2]
    assert RRF_K == 60
    with pytest.raises(ValueError):
        combine("sparse", dense, keyword, 3)


def test_check_retrieval_needs_record_by_record_evidence() -> None:
    dense = [0.25] * 8
    assert check_retrieval({}).method == "dense"
    assert check_retrieval({"dense": dense, "bm25": [0.5] * 2 + [0.25] * 6}).method == "dense"
    chosen = check_retrieval({"dense": dense, "bm25": [0.5] * 5 + [0.25] * 3,
                              "fused": [0.75] * 5 + [0.25] * 3})
    assert (chosen.method, chosen.wins, chosen.losses, chosen.n) == ("fused", 5, 0, 8)
    assert chosen.quality["fused"] > chosen.quality["bm25"] > chosen.quality["dense"]
    assert check_retrieval({"dense": dense, "bm25": [0.5] * 5 + [0.0] * 3}).method == "dense"


def test_choices_keep_the_retrieval_and_refuse_an_unknown_one(tmp_path: Path) -> None:
    path = tmp_path / "choices.json"
    Choices(retrieval=check_retrieval({"dense": [0.0] * 5, "bm25": [1.0] * 5})).save(path)
    assert Choices.load(path).retrieval.method == "bm25"
    body = path.read_text().replace('"bm25"', '"sparse"', 1)
    path.write_text(body)
    with pytest.raises(HeadError, match="retrieval"):
        Choices.load(path)
    path.write_text(body.replace('"retrieval"', '"unused"'))  # a file from before: dense
    assert Choices.load(path).retrieval.method == "dense"


@pytest.mark.parametrize("codes_decide", [True, False])
def test_a_users_fit_chooses_the_retrieval_their_history_supports(
        tmp_path: Path, bundle_dir: Path, codes_decide: bool) -> None:
    """Where a ticket code decides the area, BM25 (alone or fused) finds the records that
    answer a query and the fit chooses it; ask() then hands every record citing the query's
    ticket to the reranker and the adapter, where dense retrieval missed some. Where the ticket
    is noise, dense retrieval stays (the control: nothing to find)."""
    with OfflineLLMServer() as server, Personalizer.open(
            "u", bundle=Bundle.open(bundle_dir), task="GIT_area", root=tmp_path,
            llm=LLMConfig.from_env(base_url=server.url)) as p:
        import_records(p.store, p.task, _user(codes_decide))
        labeler = Labeler(p.store, p.task, None, settings=p.settings, budget=0)
        evidence = labeler.retrieval_quality()
        assert len(evidence["dense"]) == 30
        summary = p.fit(budget=20)
        method = summary.choices.retrieval.method
        assert method == p.heads.retrieval() == labeler.retrieval.method
        query = "tubame rikoha lofe, for ZQ7111."
        citing = sum("ZQ7111" in r["text"] for r in _user(codes_decide))
        pool = [h.record.text for h in p.pipeline.prepare(query).neighbours]  # what the reranker
        with p.heads.using(fitted=()):  # and the adapter read; unfitted: dense retrieval
            assert p.heads.retrieval() == "dense"
            dense_pool = [h.record.text for h in p.pipeline.prepare(query).neighbours]
        if codes_decide:
            assert method in ("bm25", "fused")
            assert np.mean(evidence[method]) > np.mean(evidence["dense"]) + 0.1
            assert sum("ZQ7111" in text for text in pool) == citing >= 5
            assert sum("ZQ7111" in text for text in dense_pool) < citing
        else:
            assert method == "dense" and pool == dense_pool
        reopened = Choices.load(p.heads.files.choices)
        assert reopened.retrieval.method == method


def test_labeler_refuses_an_unknown_retrieval(tmp_path: Path, bundle_dir: Path) -> None:
    with Personalizer.open("u", bundle=Bundle.open(bundle_dir), task="GIT_area",
                           root=tmp_path) as p:
        with pytest.raises(InvalidInputError, match="retrieval"):
            Labeler(p.store, p.task, None, retrieval="sparse")
