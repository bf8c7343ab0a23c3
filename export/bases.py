"""The shared reranker and adapter bases of fast mode, exported into the bundle as ONNX graphs.

Each role's base (:class:`~hydrahead.runtime.pair_base.PairBase`) goes into the bundle as

* ``<role>.onnx``: the base as an ONNX graph the device runs with onnxruntime
  (:class:`~hydrahead.runtime.featurizer.OnnxFastBase`); inputs ``query`` (1, dim), ``items``
  (n, dim), ``features`` (n, F), output ``hidden`` (n, F + width);
* ``<role>.npz``: the base it was exported from, with the base head every user starts from.

The graph is checked against the torch twin (:class:`hydrahead.train.fast_model.FastBase`) on
fixed inputs before it is accepted, like the encoder's quality gate. Both precisions are
measured: fp32, and int8 (onnxruntime dynamic quantization of the four weight blocks); int8 is
kept only if it passes the same gate and is at least 10% faster; otherwise fp32 ships. The manifest records
both measurements, what the base was trained on, and ``"trained"``.

Without trained bases (:mod:`hydrahead.train`), the bundle carries untrained ones
(:meth:`PairBase.untrained`): the reranker's base head scores by the cosine alone (dense
retrieval), the adapter's by the LLM's greedy answer (then its votes), so the unfitted
pipeline is dense RAG by construction; their non-linear features are switched off (W = 0).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hydrahead.runtime import adapter_features, reranker_features
from hydrahead.runtime._optional import require
from hydrahead.runtime.bundle import Bundle
from hydrahead.runtime.errors import ExportError
from hydrahead.runtime.featurizer import OnnxFastBase
from hydrahead.runtime.pair_base import OUTPUT_GAIN, PairBase

logger = logging.getLogger("hydrahead.export")

BASE_ROLES = {"reranker": 0, "adapter": 1}  # role -> seed of its random features
HIDDEN = 64
# The untrained base heads' gains per named feature. Reranker: cosine alone (dense retrieval).
# Adapter: the greedy answer outweighs everything, the votes order the rest.
GAINS = {
    "reranker": {name: 0.0 for name in reranker_features.FEATURE_NAMES} | {"cos": OUTPUT_GAIN},
    "adapter": {name: 0.0 for name in adapter_features.FEATURE_NAMES}
    | {"llm_greedy": 4.0, "llm_vote": 0.5},
}
NAMED_FEATURES = {
    "reranker": reranker_features.RERANKER_FEATURES,
    "adapter": adapter_features.ADAPTER_FEATURES,
}
BASE_HEAD = {
    "reranker": "scores by cos alone (dense retrieval)",
    "adapter": "scores by llm_greedy, then llm_vote: the LLM's own temperature-0 answer",
}
# Untrained, the non-linear pair features are switched off (zero weights): random ones only
# added noise to a user's fit (git-lamp GIT_subject dev, simulator: listwise adapter fits
# reached ROUGE 0.299 with them and 0.306-0.311 without). A trained base fills them.
RANDOM_FEATURE_GAIN = 0.0
# Parity gate: the graph's hidden vectors against torch's, and the base head's scores on them.
MAX_HIDDEN_ERROR = 0.02
MAX_SCORE_ERROR = 0.01
OPSET = 17
INT8_SPEEDUP = 1.1


def untrained_base(role: str, dim: int, hidden: int = HIDDEN) -> PairBase:
    """The untrained shared base of ``role`` ("reranker" or "adapter")."""
    return PairBase.untrained(dim=dim, hidden=hidden, seed=BASE_ROLES[role],
                              features=GAINS[role], gain=RANDOM_FEATURE_GAIN)


def base_graph(base: PairBase) -> Any:
    """The base as an ONNX graph: ``hidden = concat(scale * features, tanh(pre))`` with
    ``pre = items @ Wd + (items * q) @ Wqd + |items - q| @ Wabs + (q @ Wq + b)``."""
    onnx = require("onnx", "export")
    helper, TensorProto, numpy_helper = onnx.helper, onnx.TensorProto, onnx.numpy_helper
    dim, F = base.dim, base.n_features
    blocks = {name: base.W[i * dim:(i + 1) * dim] for i, name in enumerate(("Wq", "Wd", "Wqd",
                                                                            "Wabs"))}
    inits = [numpy_helper.from_array(np.ascontiguousarray(v, np.float32), name)
             for name, v in blocks.items()]
    inits += [numpy_helper.from_array(base.b.astype(np.float32), "b"),
              numpy_helper.from_array(base.feature_scale.astype(np.float32), "scale")]
    node = helper.make_node
    nodes = [
        node("Mul", ["items", "query"], ["qd"]),
        node("Sub", ["items", "query"], ["diff"]),
        node("Abs", ["diff"], ["absdiff"]),
        node("MatMul", ["items", "Wd"], ["t_d"]),
        node("MatMul", ["qd", "Wqd"], ["t_qd"]),
        node("MatMul", ["absdiff", "Wabs"], ["t_abs"]),
        node("MatMul", ["query", "Wq"], ["t_q"]),
        node("Add", ["t_q", "b"], ["t_qb"]),
        node("Add", ["t_d", "t_qd"], ["s1"]),
        node("Add", ["s1", "t_abs"], ["s2"]),
        node("Add", ["s2", "t_qb"], ["pre"]),
        node("Tanh", ["pre"], ["z"]),
        node("Mul", ["features", "scale"], ["named"]),
        node("Concat", ["named", "z"], ["hidden"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "hydrahead-fast-base",
        [helper.make_tensor_value_info("query", TensorProto.FLOAT, [1, dim]),
         helper.make_tensor_value_info("items", TensorProto.FLOAT, ["n", dim]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", F])],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["n", base.hidden])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="hydrahead")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def parity_inputs(base: PairBase, n_queries: int = 8, n_items: int = 20, seed: int = 0
                  ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Fixed inputs for the parity gate: unit vectors and features in [-1, 1] (counts and
    cosines the device computes lie in that range)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_queries):
        q = rng.standard_normal(base.dim).astype(np.float32)
        D = rng.standard_normal((n_items, base.dim)).astype(np.float32) + q  # near the query
        f = rng.uniform(-1, 1, (n_items, base.n_features)).astype(np.float32)
        out.append((q / np.linalg.norm(q), D / np.linalg.norm(D, axis=1, keepdims=True), f))
    return out


def measure_graph(graph_path: Path, base: PairBase) -> dict[str, float]:
    """Max hidden and base-head score error of the graph against torch, and its latency."""
    torch = require("torch", "train")
    from hydrahead.train.fast_model import FastBase

    reference = FastBase.from_pair_base(base).eval()
    runtime = OnnxFastBase(str(graph_path), base, "parity")
    hidden_err = score_err = 0.0
    inputs = parity_inputs(base)
    for q, D, f in inputs:
        with torch.no_grad():
            want = reference(torch.from_numpy(q)[None], torch.from_numpy(D),
                             torch.from_numpy(f)).numpy()
        got = runtime.hidden_of("", q, [""] * len(D), D, f)
        hidden_err = max(hidden_err, float(np.abs(got - want).max()))
        score_err = max(score_err, float(np.abs(base.head.scores(got)
                                                - base.head.scores(want)).max()))
    q, D, f = inputs[0]
    times = []
    for _ in range(300):
        t0 = time.perf_counter()
        runtime.hidden_of("", q, (), D, f)
        times.append(time.perf_counter() - t0)
    return {"max_hidden_error": hidden_err, "max_score_error": score_err,
            "latency_us_p50": float(np.median(times) * 1e6)}


def _quantize(src: Path, dst: Path) -> None:
    quantization = require("onnxruntime.quantization", "export")
    quantization.quantize_dynamic(str(src), str(dst), weight_type=quantization.QuantType.QInt8,
                                  per_channel=True)


def _passes(m: Mapping[str, float]) -> bool:
    return m["max_hidden_error"] <= MAX_HIDDEN_ERROR and m["max_score_error"] <= MAX_SCORE_ERROR


def write_base(bundle_root: str | Path, role: str, base: PairBase, *,
               training: Mapping[str, Any] | None = None) -> Bundle:
    """Export ``base`` as ``role`` into the bundle at ``bundle_root`` (ONNX graph + .npz), after
    the parity gate; ``training`` (what it was trained on, its dev metrics) goes into the
    manifest, and its presence marks the base ``"trained": true``.

    Raises:
        ExportError: the graph disagrees with torch beyond the gate in both precisions.
    """
    onnx = require("onnx", "export")
    with tempfile.TemporaryDirectory() as tmp:
        weights, fp32, int8 = (Path(tmp) / f"{role}.npz", Path(tmp) / f"{role}.fp32.onnx",
                               Path(tmp) / f"{role}.int8.onnx")
        base.save(weights)
        onnx.save(base_graph(base), str(fp32))
        _quantize(fp32, int8)
        measured = {"fp32": measure_graph(fp32, base), "int8": measure_graph(int8, base)}
        ok = [p for p in ("fp32", "int8") if _passes(measured[p])]
        if not ok:
            raise ExportError(f"the {role} base graph disagrees with torch: {measured}")
        # int8 only where it pays: through the gate and at least INT8_SPEEDUP faster.
        fast = measured["int8"]["latency_us_p50"] * INT8_SPEEDUP < measured["fp32"]["latency_us_p50"]
        precision = "int8" if "int8" in ok and (fast or "fp32" not in ok) else "fp32"
        graph = Path(tmp) / f"{role}.onnx"
        (fp32 if precision == "fp32" else int8).rename(graph)
        logger.info("%s base: %s kept (%s)", role, precision, measured)
        spec = {
            "kind": OnnxFastBase.kind,
            "hidden": base.hidden,
            "input_dim": base.dim,
            "features": "[named features] + tanh(W [q, d, q*d, |q-d|] + b)",
            "named_features": NAMED_FEATURES[role],
            "base_head": BASE_HEAD[role] if training is None else "trained (see training)",
            "precision": precision,
            "parity": {p: {k: round(v, 6) for k, v in m.items()} for p, m in measured.items()},
            "trained": training is not None,
            **({"training": dict(training)} if training is not None else {}),
        }
        return Bundle.add_model(bundle_root, role, spec, {"graph": graph, "weights": weights})


def add_untrained_bases(bundle_root: str | Path, *, hidden: int = HIDDEN) -> Bundle:
    """Add untrained ``reranker`` and ``adapter`` bases to the bundle at ``bundle_root``."""
    bundle = Bundle.open(bundle_root)
    dim = int(bundle.model("encoder")["embedding_dim"])
    for role in BASE_ROLES:
        bundle = write_base(bundle_root, role, untrained_base(role, dim, hidden))
    return bundle
