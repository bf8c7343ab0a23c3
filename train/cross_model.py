"""Cross mode (HYDRA-faithful): MiniLM fine-tuned as a cross-encoder is the shared base.

The base reads a (query, item) pair as one sequence, ``[CLS] query [SEP] item [SEP]`` (the item
is a history record for the reranker, an LLM candidate for the adapter), and turns the
cross-encoder's [CLS] hidden state into the same kind of hidden vector fast mode makes::

    h = [s * f, tanh(cls @ P + b)]        (hidden,) = F + width

so the per-user heads, their fitting on the device and the history-aware named features ``f``
are those of fast mode; only the pair network differs. On the device it runs as one ONNX graph
(tokenizer outside it; :class:`hydrahead.runtime.featurizer.OnnxCrossBase`).

Files (``save`` / ``load``): ``<dir>/base.pt`` (state dict), ``<dir>/config.json`` (feature
names and scales, width, max_length), ``<dir>/head.npz`` (the base head,
:func:`hydrahead.runtime.heads.write_base_head`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hydrahead.runtime._optional import require
from hydrahead.runtime.errors import InvalidInputError
from hydrahead.runtime.heads import Head, read_base_head, write_base_head

from .sentence_encoder import _offline, model_path

if TYPE_CHECKING:  # the type checker reads torch's types; at run time, the import says what
    import torch  # to install if torch is missing
    import transformers
    from torch import nn
else:
    torch = require("torch", "train")
    transformers = require("transformers", "train")
    nn = torch.nn
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class CrossBase(nn.Module):
    """MiniLM over ``[CLS] query [SEP] item [SEP]``, [CLS] projected to ``width`` tanh units,
    after the scaled named features.

    Args:
        feature_names: The named passthrough features.
        feature_scale: (F,) their scales.
        width: Non-linear units (hidden = F + width).
        max_length: Tokens per pair (query and item truncated to fit).
        layers: Keep only MiniLM's first ``layers`` transformer layers (default: all 6); fewer
            layers cost proportionally less on the device.
        seed: Seed of the projection's initial weights.
        path: The MiniLM directory (default: the packaged all-MiniLM-L6-v2).
    """

    scale: torch.Tensor  # (F,) a buffer: saved with the state dict, never trained

    def __init__(self, feature_names: Sequence[str], feature_scale: Sequence[float] | np.ndarray,
                 width: int,
                 *, max_length: int = 128, layers: int | None = None, seed: int = 0,
                 path: str | None = None) -> None:
        super().__init__()
        _offline()
        source = str(path or model_path())
        extra = {} if layers is None else {"num_hidden_layers": int(layers)}  # the first layers
        self.encoder = transformers.AutoModel.from_pretrained(source, local_files_only=True,
                                                              **extra)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(source, local_files_only=True)
        generator = torch.Generator().manual_seed(seed)
        size = self.encoder.config.hidden_size
        self.P = nn.Parameter(torch.randn(size, width, generator=generator) * (0.5 / size ** 0.5))
        self.b = nn.Parameter(torch.zeros(width))
        self.register_buffer("scale", torch.tensor(np.asarray(feature_scale), dtype=torch.float32))
        self.feature_names, self.width, self.max_length = tuple(feature_names), width, max_length
        self.layers = self.encoder.config.num_hidden_layers

    def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any, f: Any) -> Any:
        """Hidden vectors (n, F + width) of n tokenized pairs and their named features."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).last_hidden_state[:, 0]
        return torch.cat([f * self.scale, torch.tanh(out @ self.P + self.b)], dim=1)

    def tokenize(self, queries: Sequence[str], items: Sequence[str]) -> dict[str, np.ndarray]:
        """Token ids of the pairs, padded to the longest, as int64 arrays."""
        batch = self.tokenizer(list(queries), list(items), truncation=True,
                               max_length=self.max_length, padding=True, return_tensors="np")
        return {k: batch[k].astype(np.int64) for k in INPUTS}

    def save(self, directory: str | Path, head: Head) -> None:
        """Write the base and its base head to ``directory``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        torch.save({k: v for k, v in self.state_dict().items()}, out / "base.pt")
        (out / "config.json").write_text(json.dumps({
            "feature_names": list(self.feature_names),
            "feature_scale": [float(x) for x in self.scale],
            "width": self.width, "max_length": self.max_length, "layers": self.layers,
        }, indent=1), encoding="utf-8")
        write_base_head(out / "head.npz", head)

    @classmethod
    def load(cls, directory: str | Path) -> tuple[CrossBase, Head]:
        """Read a base (and its base head) written by :meth:`save`.

        Raises:
            InvalidInputError: the base head file is missing or damaged.
        """
        where = Path(directory)
        config = json.loads((where / "config.json").read_text(encoding="utf-8"))
        base = cls(config["feature_names"], config["feature_scale"], config["width"],
                   max_length=config["max_length"], layers=config.get("layers"))
        base.load_state_dict(torch.load(where / "base.pt", weights_only=True))
        head = read_base_head(where / "head.npz", error=InvalidInputError,
                              hint="train the base again (`hydrahead train fit`)")
        return base.eval(), head
