"""The sentence encoder on the device: tokenizers + onnxruntime + numpy, no torch.

It reproduces sentence-transformers' all-MiniLM-L6-v2: tokenize (truncating to the model's
maximum length), run the transformer, average the token vectors of each text (mean pooling
with the attention mask), and L2-normalise. Texts are batched in order of token length so that
a batch carries little padding, and a batch holds at most ``max_batch_tokens`` padded tokens
(and ``batch_size`` texts): many short texts go together, long ones a few at a time. On a 2-core
CPU that is both faster and leaner than a fixed batch of 32 (git-lamp commit texts: 202 against
140 texts/s, peak memory 184 against 741 MiB; see bench/test_store_bench.py); the result comes
back in input order.

Note: with a dynamically quantized (int8) model, the activation scale of each layer is taken
over the whole batch, so a text's embedding depends very slightly on the texts it is batched
with (cosine > 0.99 between batchings). Use the same batch size when exact reproducibility of
stored vectors matters.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.typing import DTypeLike
from tokenizers import Tokenizer

from .bundle import Bundle
from .errors import BundleError, InvalidInputError

ENCODER_MODEL = "encoder"
ENCODER_KIND = "sentence-encoder"
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def physical_cores() -> int:
    """Return the number of physical CPU cores this process may run on (at least 1).

    Hyper-threads of one core are counted once: onnxruntime gains nothing from them and loses
    to contention. Reads ``/proc/cpuinfo`` ("physical id"/"core id") on Linux and falls back to
    the number of usable logical CPUs elsewhere (psutil is not a dependency).
    """
    try:
        usable = set(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = set(range(os.cpu_count() or 1))
    cores: set[tuple[str, str]] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            blocks = fh.read().split("\n\n")
    except OSError:
        blocks = []
    for block in blocks:
        fields = dict(
            (key.strip(), value.strip())
            for key, _, value in (line.partition(":") for line in block.splitlines())
        )
        if "processor" in fields and "core id" in fields and int(fields["processor"]) in usable:
            cores.add((fields.get("physical id", "0"), fields["core id"]))
    return max(1, len(cores) or len(usable))


DEFAULT_BATCH_TOKENS = 512
"""Padded tokens per inference call by default (see the module docstring)."""


class Encoder:
    """Embeds texts with the bundle's sentence encoder.

    Args:
        bundle: An opened :class:`Bundle` or the path of a bundle directory (opened and
            verified here).
        threads: onnxruntime intra-op threads; default: the number of physical cores.
        batch_size: Most texts per inference call in :meth:`encode`.
        max_length: Truncate texts to this many tokens (special tokens included); default and
            upper limit: the bundle's ``max_seq_length``.
        max_batch_tokens: Most padded tokens per inference call (a text longer than this goes
            alone); bounds the memory of one call.

    Attributes:
        dim: Embedding size (384 for all-MiniLM-L6-v2).
        max_length: Token limit texts are truncated to.
        fingerprint: The encoder's model fingerprint in the bundle (None for
            :meth:`from_files` encoders); stores stamp embeddings with it.
        tokenizer: The ``tokenizers.Tokenizer`` (truncation on, padding off).
        session: The ``onnxruntime.InferenceSession``.
        bundle: The bundle (None for :meth:`from_files` encoders).

    Raises:
        BundleError: if the bundle has no usable sentence encoder.
        InvalidInputError: if ``threads``, ``batch_size`` or ``max_length`` is out of range.
    """

    def __init__(
        self,
        bundle: Bundle | str | os.PathLike[str],
        *,
        threads: int | None = None,
        batch_size: int = 32,
        max_length: int | None = None,
        max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
    ) -> None:
        if not isinstance(bundle, Bundle):
            bundle = Bundle.open(bundle)
        spec = bundle.model(ENCODER_MODEL)
        if spec.get("kind") != ENCODER_KIND:
            raise BundleError(
                f"model {ENCODER_MODEL!r} in {bundle.root} is a {spec.get('kind')!r}, "
                f"not a {ENCODER_KIND!r}"
            )
        if spec.get("pooling") != "mean":
            raise BundleError(
                f"the encoder in {bundle.root} uses {spec.get('pooling')!r} pooling; this "
                "hydrahead supports 'mean' only: upgrade hydrahead"
            )
        limit = int(spec["max_seq_length"])
        self._setup(
            model_path=bundle.file(ENCODER_MODEL, "model"),
            tokenizer_path=bundle.file(ENCODER_MODEL, "tokenizer"),
            max_length=_check_max_length(max_length, limit),
            normalize=bool(spec.get("normalize", True)),
            threads=threads,
            batch_size=batch_size,
            max_batch_tokens=max_batch_tokens,
        )
        if self.dim != spec["embedding_dim"]:
            raise BundleError(
                f"the encoder model in {bundle.root} outputs {self.dim}-d vectors but the "
                f"manifest says {spec['embedding_dim']}; rebuild the bundle with "
                "`hydrahead export bundle --out DIR`"
            )
        self.bundle: Bundle | None = bundle
        self.fingerprint: str | None = bundle.model_fingerprint(ENCODER_MODEL)

    @classmethod
    def from_files(
        cls,
        model_path: str | os.PathLike[str],
        tokenizer_path: str | os.PathLike[str],
        *,
        max_length: int = 256,
        normalize: bool = True,
        threads: int | None = None,
        batch_size: int = 32,
        max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
    ) -> Encoder:
        """Build an encoder from an ONNX model and a tokenizer.json outside any bundle.

        Used by the export quality check and the benchmarks; it has no fingerprint, so a
        history store will not accept it.
        """
        encoder = cls.__new__(cls)
        encoder._setup(
            model_path=Path(model_path),
            tokenizer_path=Path(tokenizer_path),
            max_length=_check_max_length(max_length, None),
            normalize=normalize,
            threads=threads,
            batch_size=batch_size,
            max_batch_tokens=max_batch_tokens,
        )
        encoder.bundle = None
        encoder.fingerprint = None
        return encoder

    def _setup(
        self,
        *,
        model_path: Path,
        tokenizer_path: Path,
        max_length: int,
        normalize: bool,
        threads: int | None,
        batch_size: int,
        max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
    ) -> None:
        if threads is None:
            threads = physical_cores()
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise InvalidInputError(f"threads must be a positive integer, got {threads!r}")
        self.threads = threads
        self.batch_size = _check_batch_size(batch_size)
        self.max_batch_tokens = _check_batch_size(max_batch_tokens, "max_batch_tokens")
        self.max_length = max_length
        self.normalize = normalize

        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            raise BundleError(f"cannot load the tokenizer {tokenizer_path}: {exc}") from exc
        padding = self.tokenizer.padding or {}
        self._pad_id = int(padding.get("pad_id", self.tokenizer.token_to_id("[PAD]") or 0))
        self.tokenizer.no_padding()  # padding is done per batch in _embed_batch
        self.tokenizer.enable_truncation(max_length=max_length)

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(
                str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BundleError(f"cannot load the encoder model {model_path}: {exc}") from exc

        declared = {node.name: node for node in self.session.get_inputs()}
        unknown = set(declared) - set(_MODEL_INPUTS)
        if unknown or "input_ids" not in declared or "attention_mask" not in declared:
            raise BundleError(
                f"the encoder model {model_path} has inputs {sorted(declared)}; expected "
                f"input_ids, attention_mask and optionally token_type_ids"
            )
        self._inputs = [name for name in _MODEL_INPUTS if name in declared]
        self._id_dtype = np.int32 if declared["input_ids"].type == "tensor(int32)" else np.int64
        outputs = {node.name: node for node in self.session.get_outputs()}
        output = outputs.get("last_hidden_state") or self.session.get_outputs()[0]
        self._output_name = output.name
        dim = output.shape[-1]
        if not isinstance(dim, int):  # symbolic: find out with one tiny run
            dim = self._embed_batch([self.tokenizer.encode("")]).shape[1]
        self.dim = int(dim)

    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """Embed ``texts``.

        Args:
            texts: The texts (a list or other sequence of str; not a single str).
            batch_size: Exactly this many texts per inference call, whatever their length
                (default: batches of at most ``batch_size`` texts and ``max_batch_tokens``
                padded tokens).

        Returns:
            float32 array of shape ``(len(texts), dim)``, L2-normalised rows, in input order.

        Raises:
            InvalidInputError: if ``texts`` is a single string, not a sequence, or holds a
                non-string.
        """
        texts = _check_texts(texts)
        fixed = None if batch_size is None else _check_batch_size(batch_size)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(texts)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(texts))
        order = np.argsort(lengths, kind="stable")
        start = 0
        while start < len(texts):
            end = start + 1
            if fixed is not None:
                end = min(start + fixed, len(texts))
            else:  # sorted by length: the last text of a batch is its longest
                while (end < len(texts) and end - start < self.batch_size
                       and (end - start + 1) * lengths[order[end]] <= self.max_batch_tokens):
                    end += 1
            rows = order[start:end]
            out[rows] = self._embed_batch([encodings[i] for i in rows])
            start = end
        return out

    def encode_one(self, text: str) -> np.ndarray:
        """Embed one text; returns a float32 vector of shape ``(dim,)``."""
        if not isinstance(text, str):
            raise InvalidInputError(f"text must be a str, got {type(text).__name__}")
        return self.encode([text])[0]

    def _embed_batch(self, encodings: list) -> np.ndarray:
        """Pad one batch of token encodings, run the model, mean-pool and normalise."""
        feed = padded_batch(encodings, self._pad_id, self._id_dtype)
        if "token_type_ids" not in self._inputs:
            del feed["token_type_ids"]
        hidden = self.session.run([self._output_name], feed)[0]  # (batch, tokens, dim)
        weights = feed["attention_mask"].astype(np.float32)
        pooled = (weights[:, None, :] @ hidden)[:, 0, :]  # sum of the real tokens' vectors
        pooled /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-9)
        if self.normalize:
            pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled

    def __repr__(self) -> str:
        source = self.bundle.root if self.bundle is not None else "files"
        return (
            f"Encoder({source}, dim={self.dim}, max_length={self.max_length}, "
            f"threads={self.threads})"
        )


def padded_batch(encodings: Sequence, pad_id: int, dtype: DTypeLike = np.int64
                 ) -> dict[str, np.ndarray]:
    """``input_ids``, ``attention_mask`` and ``token_type_ids`` of a batch of tokenizer
    encodings, padded on the right to the longest (the model inputs of a BERT-style graph)."""
    width = max(len(e.ids) for e in encodings)
    ids = np.full((len(encodings), width), pad_id, dtype=dtype)
    mask = np.zeros((len(encodings), width), dtype=dtype)
    types = np.zeros((len(encodings), width), dtype=dtype)
    for row, encoding in enumerate(encodings):
        n = len(encoding.ids)
        ids[row, :n] = encoding.ids
        mask[row, :n] = 1
        types[row, :n] = encoding.type_ids
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _check_texts(texts: object) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise InvalidInputError(
            "encode() takes a sequence of texts, not a single string; use encode_one(text)"
        )
    try:
        items = list(texts)  # type: ignore[call-overload]
    except TypeError:
        raise InvalidInputError(
            f"texts must be a sequence of str, got {type(texts).__name__}"
        ) from None
    for index, text in enumerate(items):
        if not isinstance(text, str):
            raise InvalidInputError(
                f"texts[{index}] must be a str, got {type(text).__name__}"
            )
    return items


def _check_batch_size(batch_size: object, name: str = "batch_size") -> int:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InvalidInputError(f"{name} must be a positive integer, got {batch_size!r}")
    return batch_size


def _check_max_length(max_length: int | None, limit: int | None) -> int:
    if max_length is None:
        if limit is None:
            raise InvalidInputError("max_length is required")
        return limit
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
        raise InvalidInputError(f"max_length must be an integer >= 2, got {max_length!r}")
    if limit is not None and max_length > limit:
        raise InvalidInputError(
            f"max_length {max_length} exceeds the encoder's limit of {limit} tokens"
        )
    return max_length
