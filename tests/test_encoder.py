"""Tests of hydrahead.runtime.encoder on the real int8 bundle."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hydrahead.runtime.bundle import Bundle, write_manifest
from hydrahead.runtime.encoder import Encoder, physical_cores
from hydrahead.runtime.errors import BundleError, InvalidInputError

MIXED_TEXTS = [
    "A fairly long sentence about the weather in the mountains, which changes quickly in "
    "spring and can surprise hikers who set out under a clear sky in the morning.",
    "Hi",
    "How do I bake sourdough bread?",
    "Stock markets fell today.",
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch, "
    "wondering whether the fox will come back for the chickens tonight.",
    "ok",
    "Python lists are mutable; tuples are not.",
    "Where is the nearest train station?",
    "Meeting moved to 3pm.",
]


@pytest.fixture(scope="module")
def encoder(bundle_dir: Path) -> Encoder:
    return Encoder(bundle_dir)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_encode_returns_normalised_float32_rows(encoder: Encoder) -> None:
    vectors = encoder.encode(MIXED_TEXTS)
    assert vectors.shape == (len(MIXED_TEXTS), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encoder.dim == 384 and encoder.max_length == 256
    one = encoder.encode_one("Where is the nearest train station?")
    assert one.shape == (384,) and one.dtype == np.float32


def test_batches_keep_input_order(encoder: Encoder) -> None:
    batched = encoder.encode(MIXED_TEXTS, batch_size=4)
    single = np.stack([encoder.encode_one(text) for text in MIXED_TEXTS])
    # int8 activations are quantized per batch, so a vector depends a little on its batch
    # (most on one-word texts, whose mean pools only three tokens); each batched row must
    # still be its own text's vector and no other's.
    similarity = batched @ single.T
    assert list(similarity.argmax(axis=1)) == list(range(len(MIXED_TEXTS)))
    assert _cosines(batched, single).min() > 0.95


def test_fp32_batches_match_one_by_one_exactly(bundle_dir: Path) -> None:
    """Padding and pooling are exact: with the fp32 model, batching changes nothing."""
    fp32 = bundle_dir / "encoder.fp32.onnx"
    if not fp32.is_file():
        pytest.skip("the test bundle was built without keep_fp32")
    encoder = Encoder.from_files(fp32, bundle_dir / "tokenizer.json")
    batched = encoder.encode(MIXED_TEXTS, batch_size=5)
    single = np.stack([encoder.encode_one(text) for text in MIXED_TEXTS])
    np.testing.assert_allclose(batched, single, atol=2e-5)
    assert encoder.fingerprint is None and encoder.bundle is None


def test_long_text_is_truncated_to_max_length(encoder: Encoder) -> None:
    long_text = " ".join(["the committee discussed the annual budget"] * 200)
    assert len(encoder.tokenizer.encode(long_text).ids) == 256
    first = encoder.encode_one(long_text)
    second = encoder.encode_one(long_text + " and then something entirely different happened")
    np.testing.assert_allclose(first, second, atol=1e-6)


def test_shorter_max_length_is_honoured(bundle_dir: Path) -> None:
    short = Encoder(bundle_dir, max_length=16, threads=1)
    assert short.max_length == 16
    assert len(short.tokenizer.encode("word " * 100).ids) == 16
    with pytest.raises(InvalidInputError, match="exceeds the encoder's limit of 256"):
        Encoder(bundle_dir, max_length=512)


def test_empty_input_gives_an_empty_matrix(encoder: Encoder) -> None:
    out = encoder.encode([])
    assert out.shape == (0, 384) and out.dtype == np.float32


@pytest.mark.parametrize("texts", [["fine", 3], [None], [b"bytes"], "a single string", 42])
def test_non_string_input_is_refused(encoder: Encoder, texts: object) -> None:
    with pytest.raises(InvalidInputError):
        encoder.encode(texts)  # type: ignore[arg-type]


def test_bad_arguments_are_refused(encoder: Encoder, bundle_dir: Path) -> None:
    with pytest.raises(InvalidInputError, match="str"):
        encoder.encode_one(["a list"])  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="batch_size"):
        encoder.encode(["a"], batch_size=0)
    with pytest.raises(InvalidInputError, match="threads"):
        Encoder(bundle_dir, threads=0)


def test_threads_option_reaches_the_session(bundle_dir: Path, encoder: Encoder) -> None:
    one = Encoder(bundle_dir, threads=1)
    assert one.session.get_session_options().intra_op_num_threads == 1
    assert encoder.threads == physical_cores()
    assert encoder.session.get_session_options().intra_op_num_threads == physical_cores()
    assert 1 <= physical_cores() <= (os.cpu_count() or 1)


def test_fingerprint_is_the_bundle_encoder_fingerprint(bundle_dir: Path) -> None:
    bundle = Bundle.open(bundle_dir)
    encoder = Encoder(bundle, threads=1)
    assert encoder.fingerprint == bundle.model_fingerprint("encoder")
    assert encoder.bundle is bundle


def test_bundle_without_an_encoder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "reranker.npz").write_bytes(b"weights")
    write_manifest(tmp_path, {"reranker": {"kind": "pair-base",
                                           "files": {"weights": "reranker.npz"}}})
    with pytest.raises(BundleError, match="no model 'encoder'"):
        Encoder(tmp_path)


@pytest.mark.slow
def test_agrees_with_torch_fp32_reference(encoder: Encoder) -> None:
    pytest.importorskip("torch")
    from hydrahead.train.sentence_encoder import TorchSentenceEncoder

    reference = TorchSentenceEncoder().encode(MIXED_TEXTS)
    cosines = _cosines(encoder.encode(MIXED_TEXTS), reference)
    assert cosines.mean() >= 0.985
    assert cosines.min() >= 0.95


def test_runtime_imports_no_torch_or_transformers() -> None:
    code = (
        "import sys, hydrahead.runtime.encoder, hydrahead.runtime.bundle\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torch', 'transformers', 'optimum', 'onnx'})\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"
