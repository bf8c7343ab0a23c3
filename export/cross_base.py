"""Cross-mode bases into the bundle: the fine-tuned MiniLM cross-encoder as one ONNX graph.

The graph takes a batch of tokenized (query, item) pairs and their named features and returns
the hidden vectors the heads read (inputs ``input_ids``, ``attention_mask``,
``token_type_ids`` (n, tokens), ``features`` (n, F); output ``hidden`` (n, hidden)). It is
quantized to int8 per channel (onnxruntime dynamic quantization) when that passes the parity
gate against torch on fixed commit-message pairs, else shipped in fp32; the manifest records
both measurements. The bundle's ``tokenizer.json`` (the same MiniLM vocabulary as the encoder)
tokenizes the pairs on the device (:class:`hydrahead.runtime.featurizer.OnnxCrossBase`).
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hydrahead.runtime._optional import require
from hydrahead.runtime.bundle import Bundle
from hydrahead.runtime.errors import ExportError
from hydrahead.runtime.featurizer import OnnxCrossBase
from hydrahead.runtime.heads import write_base_head

from .bases import NAMED_FEATURES, OPSET
from .quality_sentences import QUALITY_SENTENCES

logger = logging.getLogger("hydrahead.export")

# Parity gate of the cross graph against torch: the base head's scores on the gate's pairs.
MAX_SCORE_ERROR = 0.03
MAX_FP32_SCORE_ERROR = 1e-3


def _graph(base: Any, path: Path) -> None:
    torch = require("torch", "train")
    example = base.tokenize(["a query"], ["an item"])
    args = tuple(torch.from_numpy(example[k]) for k in ("input_ids", "attention_mask",
                                                        "token_type_ids"))
    features = torch.zeros((1, len(base.feature_names)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            base, (*args, features), str(path), dynamo=False, opset_version=OPSET,
            input_names=["input_ids", "attention_mask", "token_type_ids", "features"],
            output_names=["hidden"],
            dynamic_axes={"input_ids": {0: "n", 1: "tokens"},
                          "attention_mask": {0: "n", 1: "tokens"},
                          "token_type_ids": {0: "n", 1: "tokens"},
                          "features": {0: "n"}, "hidden": {0: "n"}})


def _measure(graph: Path, tokenizer: Path, base: Any, head: Any) -> dict[str, float]:
    """Max score and hidden error against torch on pairs of quality sentences, and latency."""
    torch = require("torch", "train")
    runtime = OnnxCrossBase(str(graph), str(tokenizer), head, base.feature_names,
                            base.scale.numpy(), base.max_length, "parity", threads=2)
    texts = list(QUALITY_SENTENCES)
    rng = np.random.default_rng(0)
    hidden_err = score_err = 0.0
    for i in range(0, 40, 10):
        query, items = texts[i], texts[i + 1:i + 11]
        f = rng.uniform(-1, 1, (len(items), len(base.feature_names))).astype(np.float32)
        tok = base.tokenize([query] * len(items), items)
        with torch.no_grad():
            want = base(**{k: torch.from_numpy(v) for k, v in tok.items()},
                        f=torch.from_numpy(f)).numpy()
        got = runtime.hidden_of(query, None, items, None, f)
        hidden_err = max(hidden_err, float(np.abs(got - want).max()))
        score_err = max(score_err, float(np.abs(head.scores(got) - head.scores(want)).max()))
    t0 = time.perf_counter()
    for _ in range(5):
        runtime.hidden_of(texts[0], None, texts[1:21], None,
                          np.zeros((20, len(base.feature_names)), np.float32))
    return {"max_hidden_error": hidden_err, "max_score_error": score_err,
            "ms_per_20_pairs": (time.perf_counter() - t0) / 5 * 1e3}


def write_cross_base(bundle_root: str | Path, role: str, trained: str | Path, *,
                     training: Mapping[str, Any] | None = None) -> Bundle:
    """Export the cross-mode base in ``trained`` (``CrossBase.save``'s directory) as ``role``.

    Raises:
        ExportError: the graph disagrees with torch beyond the gate in both precisions.
    """
    from hydrahead.train.cross_model import CrossBase

    quantization = require("onnxruntime.quantization", "export")
    base, head = CrossBase.load(trained)
    bundle = Bundle.open(bundle_root)
    tokenizer = bundle.file("encoder", "tokenizer")
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / f"{role}.cross.fp32.onnx", Path(tmp) / f"{role}.cross.onnx"
        _graph(base, fp32)
        quantization.quantize_dynamic(str(fp32), str(int8), per_channel=True,
                                      weight_type=quantization.QuantType.QInt8)
        measured = {"fp32": _measure(fp32, tokenizer, base, head),
                    "int8": _measure(int8, tokenizer, base, head)}
        if measured["int8"]["max_score_error"] <= MAX_SCORE_ERROR:
            precision, graph = "int8 dynamic per-channel", int8
        elif measured["fp32"]["max_score_error"] <= MAX_FP32_SCORE_ERROR:
            precision, graph = "fp32", fp32.rename(Path(tmp) / f"{role}.cross.onnx")
        else:
            raise ExportError(f"the {role} cross base graph disagrees with torch: {measured}")
        logger.info("%s cross base: %s kept (%s)", role, precision, measured)
        head_file = Path(tmp) / f"{role}.cross-head.npz"
        write_base_head(head_file, head)
        spec = {
            "kind": OnnxCrossBase.kind,
            "hidden": head.hidden,
            "features": "[named features] + tanh(P [CLS of MiniLM(query, item)] + b)",
            "named_features": NAMED_FEATURES[role],
            "feature_names": list(base.feature_names),
            "feature_scale": [float(x) for x in base.scale],
            "max_length": base.max_length,
            "layers": base.layers,
            "precision": precision,
            "parity": {p: {k: round(v, 6) for k, v in m.items()} for p, m in measured.items()},
            "trained": training is not None,
            **({"training": dict(training)} if training is not None else {}),
        }
        files = {"graph": graph, "head": head_file, "tokenizer": tokenizer}
        return Bundle.add_model(bundle_root, role, spec, files)
