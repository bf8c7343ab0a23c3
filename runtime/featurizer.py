"""The seam between a role's shared base and its heads: a featurizer per role, from the bundle.

A *featurizer* turns one query and its items (retrieved records for the reranker, LLM
candidates for the adapter) into the hidden vectors a head reads, and carries the base head
every user starts from. The personalizer and the labeller call it with texts **and** vectors,
so a base that reads texts (a cross-encoder) fits the same seam as one that reads embeddings.

The bundle says which featurizer each role uses by its model ``kind``; :data:`KINDS` maps a
kind to its loader, and a new mode is one more entry:

* ``"pair-base-onnx"``: fast mode run by onnxruntime. ``files.graph`` is the base as an ONNX
  graph (inputs ``query`` (1, dim), ``items`` (n, dim), ``features`` (n, F); output ``hidden``
  (n, F + width)), ``files.weights`` the :class:`~hydrahead.runtime.pair_base.PairBase` file
  it was exported from (read here for the base head and the feature names only).
* ``"pair-base"``: fast mode in numpy from the ``.npz`` alone (bundles of hydrahead 0.1 before
  ONNX bases).
* ``"pair-cross-onnx"``: cross mode (HYDRA's own): a fine-tuned MiniLM cross-encoder over
  ``[CLS] query [SEP] item [SEP]``, ``files.graph`` its ONNX graph (token ids and named features
  in, hidden vectors out), ``files.tokenizer`` the tokenizer, ``files.head`` the base head.

A featurizer's :attr:`Featurizer.fingerprint` covers the base's spec and files and the encoder
whose embeddings it reads: a user's heads are bound to it, not to the whole bundle.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import onnxruntime as ort

from .bundle import Bundle
from .encoder import padded_batch, physical_cores
from .errors import BundleError, InvalidInputError
from .heads import Head, read_base_head
from .pair_base import PairBase, check_pair

REBUILD = ("pull the bundle again (`hydrahead bundle pull SOURCE`) or rebuild it with "
           "`hydrahead export bundle --out DIR`")


@runtime_checkable
class Featurizer(Protocol):
    """What the personalizer needs from a role's shared base."""

    kind: str
    hidden: int
    feature_names: tuple[str, ...]
    head: Head  # the shared base head
    fingerprint: str

    def hidden_of(self, query_text: str, query_vec: np.ndarray, item_texts: Sequence[str],
                  item_vecs: np.ndarray, features: np.ndarray) -> np.ndarray:
        """Hidden vectors (n, hidden), float32, one per item.

        Args:
            query_text: The query.
            query_vec: Its embedding (dim,).
            item_texts: The items' texts (records as examples, or candidate answers).
            item_vecs: Their embeddings (n, dim).
            features: Their named features (n, F) in ``feature_names`` order.
        """
        ...


class NumpyFastBase:
    """Fast mode in numpy (:class:`PairBase`); the ``"pair-base"`` kind."""

    kind = "pair-base"

    def __init__(self, base: PairBase, fingerprint: str) -> None:
        self.base, self.fingerprint = base, fingerprint
        self.hidden, self.feature_names, self.head = base.hidden, base.feature_names, base.head

    def hidden_of(self, query_text: str, query_vec: np.ndarray, item_texts: Sequence[str],
                  item_vecs: np.ndarray, features: np.ndarray) -> np.ndarray:
        return self.base.hidden_of(query_vec, item_vecs, features)


class OnnxFastBase:
    """Fast mode run by onnxruntime; the ``"pair-base-onnx"`` kind.

    The graph is tiny (a few matrix products per item), so it runs on one thread: more only
    adds synchronisation to a sub-millisecond call.
    """

    kind = "pair-base-onnx"

    def __init__(self, graph_path: str, base: PairBase, fingerprint: str) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(graph_path, sess_options=options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BundleError(f"cannot load the base graph {graph_path}: {exc}") from exc
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        if set(inputs) != {"query", "items", "features"}:
            raise BundleError(f"the base graph {graph_path} has inputs {sorted(inputs)}; "
                              "expected query, items, features")
        self.fingerprint, self.dim = fingerprint, base.dim
        self.hidden, self.feature_names, self.head = base.hidden, base.feature_names, base.head

    def hidden_of(self, query_text: str, query_vec: np.ndarray, item_texts: Sequence[str],
                  item_vecs: np.ndarray, features: np.ndarray) -> np.ndarray:
        q, D = check_pair(query_vec, item_vecs, self.dim)
        f = np.asarray(features, dtype=np.float32)
        if f.shape != (D.shape[0], len(self.feature_names)) or not np.isfinite(f).all():
            raise InvalidInputError(
                f"features must be {D.shape[0]} x {len(self.feature_names)} finite values, "
                f"got {f.shape}")
        if D.shape[0] == 0:
            return np.zeros((0, self.hidden), np.float32)
        (H,) = self.session.run(None, {"query": q[None, :], "items": D, "features": f})
        return H


class OnnxCrossBase:
    """Cross mode run by onnxruntime; the ``"pair-cross-onnx"`` kind.

    A MiniLM cross-encoder reads each (query, item) pair as ``[CLS] query [SEP] item [SEP]``
    (the bundle's tokenizer, truncated to ``max_length`` tokens, longest side first); the graph
    returns the hidden vectors (the scaled named features, then the projected [CLS] state).
    It reads texts, not embeddings.
    """

    kind = "pair-cross-onnx"

    def __init__(self, graph_path: str, tokenizer_path: str, head: Head,
                 feature_names: Sequence[str], feature_scale: Sequence[float] | np.ndarray,
                 max_length: int, fingerprint: str, *, threads: int | None = None) -> None:
        from tokenizers import Tokenizer


        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or physical_cores()
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(graph_path, sess_options=options,
                                                providers=["CPUExecutionProvider"])
            self.tokenizer = Tokenizer.from_file(tokenizer_path)
        except Exception as exc:  # onnxruntime and tokenizers raise their own types
            raise BundleError(f"cannot load the cross base {graph_path}: {exc}") from exc
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=int(max_length))
        self._inputs = {i.name for i in self.session.get_inputs()}
        self.feature_names = tuple(feature_names)
        self.hidden, self.head, self.fingerprint = head.hidden, head, fingerprint
        self._pad = self.tokenizer.token_to_id("[PAD]") or 0

    def hidden_of(self, query_text: str, query_vec: np.ndarray | None, item_texts: Sequence[str],
                  item_vecs: np.ndarray | None, features: np.ndarray) -> np.ndarray:
        f = np.asarray(features, dtype=np.float32)
        if f.shape != (len(item_texts), len(self.feature_names)) or not np.isfinite(f).all():
            raise InvalidInputError(
                f"features must be {len(item_texts)} x {len(self.feature_names)} finite values, "
                f"got {f.shape}")
        if not item_texts:
            return np.zeros((0, self.hidden), np.float32)
        encoded = self.tokenizer.encode_batch([(query_text, t) for t in item_texts])
        feed = {k: v for k, v in padded_batch(encoded, self._pad).items() if k in self._inputs}
        (H,) = self.session.run(None, {**feed, "features": f})
        return H


def base_fingerprint(bundle: Bundle, role: str) -> str:
    """sha256 over the role's base (spec and files) and the encoder it reads embeddings of."""
    parts = [bundle.model_fingerprint(role)]
    if bundle.has_model("encoder"):
        parts.append(bundle.model_fingerprint("encoder"))
    return hashlib.sha256(":".join(parts).encode()).hexdigest()


def _numpy(bundle: Bundle, role: str) -> Featurizer:
    return NumpyFastBase(PairBase.load(bundle.file(role, "weights")),
                         base_fingerprint(bundle, role))


def _onnx(bundle: Bundle, role: str) -> Featurizer:
    return OnnxFastBase(str(bundle.file(role, "graph")),
                        PairBase.load(bundle.file(role, "weights")),
                        base_fingerprint(bundle, role))


def _cross(bundle: Bundle, role: str) -> Featurizer:
    spec = bundle.model(role)
    head = read_base_head(bundle.file(role, "head"), error=BundleError, hint=REBUILD)
    try:
        names, scale = spec["feature_names"], spec["feature_scale"]
        max_length = int(spec["max_length"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"the {role} cross base in {bundle.root} is damaged: {exc}") from exc
    return OnnxCrossBase(str(bundle.file(role, "graph")), str(bundle.file(role, "tokenizer")),
                         head, names, scale, max_length, base_fingerprint(bundle, role))


KINDS: dict[str, Callable[[Bundle, str], Featurizer]] = {
    NumpyFastBase.kind: _numpy,
    OnnxFastBase.kind: _onnx,
    OnnxCrossBase.kind: _cross,
}


def load_featurizer(bundle: Bundle, role: str) -> Featurizer:
    """The featurizer of ``role`` ("reranker" or "adapter") that ``bundle`` declares.

    Raises:
        BundleError: the role is missing, of an unknown kind, or its files are damaged.
    """
    kind = bundle.model(role).get("kind")
    loader = KINDS.get(kind)  # type: ignore[arg-type]
    if loader is None:
        raise BundleError(
            f"the {role} base in {bundle.root} is of kind {kind!r}; this hydrahead runs "
            f"{sorted(KINDS)}: upgrade hydrahead or rebuild the bundle")
    return loader(bundle, role)
