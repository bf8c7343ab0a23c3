"""Encoder latency: int8 ONNX (the bundle) vs fp32 ONNX vs torch fp32, at exactly 128 tokens.

Run with ``pytest bench/test_encoder_bench.py --benchmark-only``. All engines use 2 threads and
run in the same process; each benchmark records its speed-up over torch fp32 and ORT fp32
(medians measured in this process just before) in ``extra_info``.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from testing.bundle_fixture import get_test_bundle  # noqa: E402

from hydrahead.export.bundle import FP32_FILE, export_fp32_onnx  # noqa: E402
from hydrahead.export.quality_sentences import QUALITY_SENTENCES  # noqa: E402
from hydrahead.runtime.encoder import Encoder  # noqa: E402
from hydrahead.train.sentence_encoder import TorchSentenceEncoder  # noqa: E402

THREADS = 2
TOKENS = 128
BATCHES = (1, 32)
ROUNDS = {1: 30, 32: 4}


@pytest.fixture(scope="module")
def engines() -> dict:
    bundle = get_test_bundle()
    fp32 = bundle / FP32_FILE
    if not fp32.is_file():  # a bundle built without keep_fp32 (e.g. $HYDRAHEAD_TEST_BUNDLE)
        fp32 = export_fp32_onnx(bundle.parent / f"{bundle.name}-{FP32_FILE}")
    return {
        "ort-int8": Encoder(bundle, threads=THREADS, max_length=TOKENS),
        "ort-fp32": Encoder.from_files(
            fp32, bundle / "tokenizer.json", threads=THREADS, max_length=TOKENS
        ),
        "torch-fp32": TorchSentenceEncoder(threads=THREADS, max_length=TOKENS),
    }


@pytest.fixture(scope="module")
def texts(engines: dict) -> list[str]:
    """32 different texts that each fill exactly 128 tokens after truncation."""
    sentences = list(QUALITY_SENTENCES[:55])  # the short ones; the long ones come last
    out = []
    for i in range(max(BATCHES)):
        rotated = sentences[i:] + sentences[:i]
        out.append(" ".join(rotated[:40]))
    tokenizer = engines["ort-int8"].tokenizer
    assert {len(e.ids) for e in tokenizer.encode_batch(out)} == {TOKENS}
    torch_lengths = engines["torch-fp32"].tokenizer(out, truncation=True, max_length=TOKENS)
    assert {len(ids) for ids in torch_lengths["input_ids"]} == {TOKENS}
    return out


def _encode(engine, batch: list[str]) -> np.ndarray:
    return engine.encode(batch, batch_size=len(batch))


@pytest.fixture(scope="module")
def reference_medians(engines: dict, texts: list[str]) -> dict:
    """Median seconds of the two fp32 references per batch size, measured in this process."""
    medians = {}
    for name in ("torch-fp32", "ort-fp32"):
        for size in BATCHES:
            batch = texts[:size]
            _encode(engines[name], batch)  # warm-up
            runs = []
            for _ in range(ROUNDS[size]):
                started = time.perf_counter()
                _encode(engines[name], batch)
                runs.append(time.perf_counter() - started)
            medians[name, size] = statistics.median(runs)
    return medians


@pytest.mark.parametrize("size", BATCHES)
@pytest.mark.parametrize("engine", ["ort-int8", "ort-fp32", "torch-fp32"])
def test_encode_latency(benchmark, engines, texts, reference_medians, engine, size) -> None:
    batch = texts[:size]
    encoder = engines[engine]
    benchmark.group = f"encode batch {size} x {TOKENS} tokens, {THREADS} threads"
    vectors = benchmark.pedantic(
        _encode, args=(encoder, batch), rounds=ROUNDS[size], warmup_rounds=1
    )
    assert vectors.shape == (size, 384)
    if benchmark.stats is not None:  # None under --benchmark-disable
        median = benchmark.stats.stats.median
        benchmark.extra_info["median_ms"] = round(median * 1e3, 2)
        for reference in ("torch-fp32", "ort-fp32"):
            ratio = reference_medians[reference, size] / median
            benchmark.extra_info[f"speedup_vs_{reference}"] = round(ratio, 2)
    reference = _encode(engines["torch-fp32"], batch)
    assert float((vectors * reference).sum(axis=1).min()) > 0.95
