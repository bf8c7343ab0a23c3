"""Build the device model bundle: all-MiniLM-L6-v2 as an int8 ONNX model plus its tokenizer.

Steps (each logged with its duration on the ``hydrahead.export`` logger):

1. export the transformer to fp32 ONNX with optimum (output ``last_hidden_state``),
2. quantize it to int8 with onnxruntime's dynamic quantization, per channel, keeping the
   one weight matrix that int8 hurts most in fp32 (see :data:`FP32_NODE_PATTERNS`),
3. write the tokenizer with the runtime's settings (truncation at 256 tokens, no padding),
4. quality gate: embed a fixed set of texts through the runtime :class:`Encoder` and through
   the torch fp32 reference; refuse the bundle unless they agree closely enough,
5. write the manifest (files hashed, quality figures recorded).

Everything is written into a temporary directory next to the target and moved into place at
the end, so a failed export never leaves a half-written bundle behind.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydrahead.export.bases import add_untrained_bases
from hydrahead.export.trained import add_trained_bases
from hydrahead.runtime._optional import require
from hydrahead.runtime.bundle import Bundle, write_manifest
from hydrahead.runtime.encoder import ENCODER_KIND, ENCODER_MODEL, Encoder
from hydrahead.runtime.errors import ExportError, InvalidInputError
from hydrahead.train.sentence_encoder import (
    MAX_SEQ_LENGTH,
    MODEL_NAME,
    TorchSentenceEncoder,
    model_path,
)

from .quality import MIN_COSINE, MIN_MEAN_COSINE, check_quality
from .quality_sentences import QUALITY_SENTENCES

logger = logging.getLogger("hydrahead.export")

ENCODER_FILE = "encoder.int8.onnx"
TOKENIZER_FILE = "tokenizer.json"
FP32_FILE = "encoder.fp32.onnx"  # kept next to the bundle's files only with keep_fp32=True
EMBEDDING_DIM = 384
MIN_QUALITY_TEXTS = 50
QUANTIZATION = "int8 dynamic per-channel"

# Weight matrices that quantize_int8 leaves in fp32 (mixed precision), as regular expressions
# searched in the node names of the exported graph (optimum names the node
# "/encoder/layer.0/output/dense/MatMul", the torch.onnx fallback "/model/encoder/...").
# Why this node: a sensitivity sweep left each of the 39 weight MatMul/Gather nodes in fp32 in
# turn and compared with torch fp32 on the quality texts and on 650 held-out commit subjects,
# bodies and short fragments. The first layer's feed-forward output projection stood out on
# every set. Its input, the GELU output, has the widest range relative to its typical values
# (max about 25, median 0.12) and dynamic quantization gives activations one scale per tensor.
# In fp32 it lifts the worst quality text ("ok") from 0.952 to 0.965 (0.937-0.973 -> 0.955-0.971
# over batch sizes 1 to 64), the worst held-out text from 0.982 to 0.989, and cuts the mean
# cosine error by about a fifth, for about 5% more latency and 1.8 MB. No other node gains half
# as much; the last layers gain almost nothing.
FP32_NODE_PATTERNS: tuple[str, ...] = (r"(?:^|/)encoder/layer\.0/output/dense/MatMul$",)


def export_fp32_onnx(
    out_path: str | os.PathLike[str],
    *,
    model_dir: str | os.PathLike[str] | None = None,
    exporter: str = "auto",
) -> Path:
    """Export all-MiniLM-L6-v2 to an fp32 ONNX model with a ``last_hidden_state`` output.

    Args:
        out_path: Where to write the model (a single .onnx file).
        model_dir: The transformers model directory (default: the packaged all-MiniLM-L6-v2).
        exporter: "optimum", "torch" (``torch.onnx.export``), or "auto": optimum, falling back
            to torch.onnx (with a warning in the log) when optimum is missing or fails.

    Returns:
        ``out_path`` as a Path.
    """
    if exporter not in ("auto", "optimum", "torch"):
        raise InvalidInputError(f"exporter must be 'auto', 'optimum' or 'torch', not {exporter!r}")
    out = Path(out_path)
    source = Path(model_dir) if model_dir is not None else model_path()
    started = time.perf_counter()
    if exporter in ("auto", "optimum"):
        try:
            _export_with_optimum(source, out)
            method = "optimum"
        except Exception as exc:
            if exporter == "optimum":
                raise ExportError(f"optimum could not export {source} to ONNX: {exc}") from exc
            logger.warning(
                "optimum could not export the encoder (%s: %s); falling back to torch.onnx.export",
                type(exc).__name__,
                exc,
            )
            exporter = "torch"
    if exporter == "torch":
        _export_with_torch_onnx(source, out)
        method = "torch.onnx"
    logger.info(
        "exported fp32 ONNX with %s (%.1f MB) in %.1f s",
        method,
        out.stat().st_size / 1e6,
        time.perf_counter() - started,
    )
    return out


def _export_with_optimum(source: Path, out: Path) -> None:
    require("optimum.exporters.onnx", "export")
    from optimum.exporters.onnx import main_export

    with tempfile.TemporaryDirectory(prefix="hydrahead-optimum-") as scratch:
        # library_name="transformers": otherwise optimum detects sentence-transformers and adds
        # its own pooled output; the runtime pools itself.
        main_export(
            model_name_or_path=str(source),
            output=scratch,
            task="feature-extraction",
            library_name="transformers",
            local_files_only=True,
            do_validation=False,  # the quality gate below checks the int8 model end to end
        )
        produced = Path(scratch) / "model.onnx"
        if not produced.is_file() or (Path(scratch) / "model.onnx_data").exists():
            raise ExportError(f"optimum did not write a single-file model.onnx in {scratch}")
        shutil.move(str(produced), out)


def _export_with_torch_onnx(source: Path, out: Path) -> None:
    torch: Any = require("torch", "train")  # a module the type checker cannot see into here
    transformers = require("transformers", "train")
    model = transformers.AutoModel.from_pretrained(str(source), local_files_only=True).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    sample = tokenizer(["a short sample", "a somewhat longer sample text"], padding=True,
                       return_tensors="pt")

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):  # noqa: D102
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {0: "batch_size", 1: "sequence_length"}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # TorchScript exporter deprecation and tracer warnings
        torch.onnx.export(
            LastHiddenState(),
            tuple(sample[name] for name in names),
            str(out),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes={name: axes for name in [*names, "last_hidden_state"]},
            opset_version=17,
            dynamo=False,
        )


def quantize_int8(
    fp32_path: str | os.PathLike[str],
    int8_path: str | os.PathLike[str],
    *,
    fp32_patterns: Sequence[str] = FP32_NODE_PATTERNS,
) -> Path:
    """Quantize an fp32 ONNX model to int8: dynamic, weights QInt8 per output channel.

    Per-tensor weights (onnxruntime's default) lose too much here (mean cosine 0.96 to fp32);
    per channel keeps about 0.99. The nodes that ``fp32_patterns`` pick out stay in fp32 (see
    :func:`fp32_nodes`); if any pattern does not pick out exactly one node, every node is
    quantized and a warning is logged.

    Args:
        fp32_path: The fp32 model.
        int8_path: Where to write the quantized model.
        fp32_patterns: Regular expressions for the names of the weight MatMul nodes to keep
            in fp32 (default: :data:`FP32_NODE_PATTERNS`; empty: quantize everything).

    Returns:
        ``int8_path`` as a Path.
    """
    quantization = require("onnxruntime.quantization", "export")
    started = time.perf_counter()
    keep = fp32_nodes(fp32_path, fp32_patterns)
    quant_logger = logging.getLogger()  # onnxruntime's quantizer warns through the root logger
    previous = quant_logger.level
    quant_logger.setLevel(max(previous, logging.ERROR))
    try:
        quantization.quantize_dynamic(
            str(fp32_path),
            str(int8_path),
            per_channel=True,
            weight_type=quantization.QuantType.QInt8,
            nodes_to_exclude=keep,
        )
    finally:
        quant_logger.setLevel(previous)
    out = Path(int8_path)
    logger.info(
        "quantized to int8 (%.1f MB; kept in fp32: %s) in %.1f s",
        out.stat().st_size / 1e6,
        ", ".join(keep) or "nothing",
        time.perf_counter() - started,
    )
    return out


def fp32_nodes(model: str | os.PathLike[str], patterns: Sequence[str]) -> list[str]:
    """Find the weight MatMul nodes of ``model`` that ``patterns`` name, one per pattern.

    A weight MatMul is one whose second input is a stored tensor (an initializer). Each
    pattern is searched (``re.search``) in the node names and must match exactly one weight
    MatMul.

    Returns:
        The node names in pattern order, or ``[]`` (quantize everything) with a warning on the
        ``hydrahead.export`` logger when any pattern matches no node or several: a graph laid
        out differently should still export, just without the mixed-precision gain.
    """
    if not patterns:
        return []
    onnx = require("onnx", "export")
    graph = onnx.load(str(model), load_external_data=False).graph
    stored = {tensor.name for tensor in graph.initializer}
    candidates = [
        node.name
        for node in graph.node
        if node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in stored
    ]
    names = []
    for pattern in patterns:
        matches = [name for name in candidates if re.search(pattern, name)]
        if len(matches) != 1:
            logger.warning(
                "%d weight MatMul nodes of %s match %r (expected exactly 1); quantizing every "
                "node to int8 (the quality gate still applies)",
                len(matches),
                model,
                pattern,
            )
            return []
        names.append(matches[0])
    return names


def write_runtime_tokenizer(
    source: str | os.PathLike[str], target: str | os.PathLike[str], max_length: int
) -> Path:
    """Copy tokenizer.json with the runtime's settings: truncation at ``max_length``, no padding.

    The packaged file truncates at 128 and pads every text to 128 tokens; the runtime pads per
    batch instead, and a tool reading the bundle's tokenizer.json directly should see the real
    limit.
    """
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(source))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.save(str(target))
    return Path(target)


def measure_quality(
    model: Path,
    tokenizer: Path,
    texts: Sequence[str],
    *,
    min_mean_cosine: float = MIN_MEAN_COSINE,
    min_cosine: float = MIN_COSINE,
    max_length: int = MAX_SEQ_LENGTH,
) -> dict:
    """Run the quality gate: runtime :class:`Encoder` on ``model`` vs. the torch fp32 reference.

    Raises:
        ExportError: if a threshold is not met (see :func:`check_quality`).
    """
    started = time.perf_counter()
    candidate = Encoder.from_files(model, tokenizer, max_length=max_length).encode(texts)
    reference = TorchSentenceEncoder(max_length=max_length).encode(texts)
    quality = check_quality(
        candidate, reference, min_mean_cosine=min_mean_cosine, min_cosine=min_cosine
    )
    logger.info(
        "quality on %d texts: mean cosine %.4f, min %.4f (%.1f s)",
        quality["sentences"],
        quality["mean_cosine"],
        quality["min_cosine"],
        time.perf_counter() - started,
    )
    return quality


def build_bundle(
    out_dir: str | os.PathLike[str],
    *,
    sentences: Sequence[str] | None = None,
    min_mean_cosine: float = MIN_MEAN_COSINE,
    min_cosine: float = MIN_COSINE,
    overwrite: bool = False,
    keep_fp32: bool = False,
    before_publish: Callable[[Path], None] | None = None,
    untrained: bool = False,
) -> Path:
    """Export the bundle into ``out_dir``: the int8 encoder plus the reranker/adapter bases.

    The bases are the trained ones hydrahead ships (:data:`hydrahead.export.trained.SHIPPED_BASES`)
    unless ``untrained``: then the reranker's base scores by the cosine alone and the adapter's
    by the greedy answer's agreement (unfitted, the pipeline is plain dense RAG).

    Args:
        out_dir: Target directory; must not exist or be empty unless ``overwrite``.
        sentences: Texts for the quality gate (at least 50; default: a fixed varied set).
        min_mean_cosine: Lowest acceptable mean cosine between int8 and fp32 embeddings.
        min_cosine: Lowest acceptable cosine of any single text.
        overwrite: Replace an existing non-empty ``out_dir`` (only once the new bundle is
            complete).
        keep_fp32: Also leave the fp32 model in ``out_dir`` as ``encoder.fp32.onnx`` (not
            listed in the manifest; the benchmarks compare against it).
        untrained: Ship untrained bases instead of the trained ones.
        before_publish: Called with the staging directory once it holds a valid encoder
            bundle, before it is moved into place; add more models there with
            ``Bundle.add_model(staging, ...)`` (``Encoder(staging)`` works too). If it raises,
            nothing is published.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ExportError: if ``out_dir`` is in the way, the export fails, or the quality gate fails.
        InvalidInputError: if ``sentences`` is not a list of at least 50 strings.
    """
    out = Path(out_dir).expanduser().absolute()
    texts = _check_sentences(sentences)
    _check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        fp32 = export_fp32_onnx(staging / FP32_FILE)
        int8 = quantize_int8(fp32, staging / ENCODER_FILE)
        kept_fp32 = fp32_nodes(fp32, FP32_NODE_PATTERNS)  # recorded in the manifest
        tokenizer = write_runtime_tokenizer(
            model_path() / "tokenizer.json", staging / TOKENIZER_FILE, MAX_SEQ_LENGTH
        )
        quality = measure_quality(
            int8, tokenizer, texts, min_mean_cosine=min_mean_cosine, min_cosine=min_cosine
        )
        if not keep_fp32:
            fp32.unlink()
        spec = {
            "kind": ENCODER_KIND,
            "name": MODEL_NAME,
            "files": {"model": ENCODER_FILE, "tokenizer": TOKENIZER_FILE},
            "embedding_dim": EMBEDDING_DIM,
            "max_seq_length": MAX_SEQ_LENGTH,
            "pooling": "mean",
            "normalize": True,
            "quantization": QUANTIZATION,
            "fp32_nodes": kept_fp32,
            "quality": quality,
        }
        write_manifest(staging, {ENCODER_MODEL: spec})
        if untrained:
            add_untrained_bases(staging)
        else:
            add_trained_bases(staging)
        if before_publish is not None:
            before_publish(staging)
        Bundle.open(staging, verify=True)  # what we ship must open
        os.chmod(staging, 0o755)
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("bundle written to %s in %.1f s", out, time.perf_counter() - started)
    return out


def _check_sentences(sentences: Sequence[str] | None) -> list[str]:
    if sentences is None:
        return list(QUALITY_SENTENCES)
    if isinstance(sentences, str):
        raise InvalidInputError("sentences must be a list of texts, not a single string")
    texts = list(sentences)
    if len(texts) < MIN_QUALITY_TEXTS or not all(isinstance(t, str) and t for t in texts):
        raise InvalidInputError(
            f"the quality gate needs at least {MIN_QUALITY_TEXTS} non-empty texts; got "
            f"{len(texts)} items"
        )
    return texts


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(
            f"{out} already exists and is not empty; choose another directory or pass "
            "overwrite=True (--overwrite) to replace it"
        )


def _move_into_place(staging: Path, out: Path) -> None:
    """Rename the finished ``staging`` dir to ``out``, replacing what was there."""
    if not out.exists():
        os.replace(staging, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, old / "bundle")
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(old / "bundle", out)  # put the previous bundle back
        os.rmdir(old)
        raise
    shutil.rmtree(old, ignore_errors=True)
