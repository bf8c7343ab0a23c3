"""Tests of hydrahead.export: target checks, the quality gate, the torch.onnx fallback."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from hydrahead.export import bundle as export_bundle
from hydrahead.export.bundle import _move_into_place, build_bundle, export_fp32_onnx
from hydrahead.export.quality import check_quality
from hydrahead.export.quality_sentences import QUALITY_SENTENCES
from hydrahead.runtime.bundle import Bundle
from hydrahead.runtime.encoder import Encoder
from hydrahead.runtime.errors import ExportError, InvalidInputError


def _unit_rows(rng: np.random.Generator, n: int, dim: int = 384) -> np.ndarray:
    rows = rng.normal(size=(n, dim))
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_quality_sentences_are_varied_and_include_long_texts(bundle_dir: Path) -> None:
    assert len(QUALITY_SENTENCES) >= 50
    assert len(set(QUALITY_SENTENCES)) == len(QUALITY_SENTENCES)
    tokenizer = Encoder(bundle_dir, threads=1).tokenizer
    lengths = [len(tokenizer.encode(text).ids) for text in QUALITY_SENTENCES]
    assert min(lengths) <= 4 and sum(length > 128 for length in lengths) >= 3


def test_check_quality_passes_and_reports_figures() -> None:
    rng = np.random.default_rng(0)
    reference = _unit_rows(rng, 60)
    candidate = reference + 0.003 * rng.normal(size=reference.shape)
    figures = check_quality(candidate, reference)
    assert figures["sentences"] == 60
    assert 0.985 <= figures["min_cosine"] <= figures["mean_cosine"] <= 1.0


def test_check_quality_names_the_failed_thresholds() -> None:
    rng = np.random.default_rng(1)
    reference = _unit_rows(rng, 60)
    candidate = reference.copy()
    candidate[7] = _unit_rows(rng, 1)[0]  # one text far off: min fails, mean still fine
    with pytest.raises(ExportError, match=r"min cosine -?0\.\d+ \(text #7\) < required 0\.95"):
        check_quality(candidate, reference)
    with pytest.raises(ExportError, match=r"mean cosine 1\.0000 < required 1\.01"):
        check_quality(reference, reference, min_mean_cosine=1.01)
    with pytest.raises(ExportError, match="mean cosine nan"):
        check_quality(np.full_like(reference, np.nan), reference)


def test_refuses_a_non_empty_out_dir(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not empty.*overwrite"):
        build_bundle(out)
    assert (out / "notes.txt").read_text() == "keep me"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ExportError, match="not a directory"):
        build_bundle(tmp_path / "afile")


def test_refuses_too_few_quality_sentences(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="at least 50"):
        build_bundle(tmp_path / "bundle", sentences=["one", "two"])
    assert not (tmp_path / "bundle").exists()


def test_move_into_place_replaces_the_old_bundle(tmp_path: Path) -> None:
    out, staging = tmp_path / "bundle", tmp_path / ".staging"
    out.mkdir()
    (out / "old.txt").write_text("old")
    staging.mkdir()
    (staging / "new.txt").write_text("new")
    _move_into_place(staging, out)
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


@pytest.fixture
def reuse_fp32_export(bundle_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Copy the cached fp32 export instead of exporting again; the rest of the build is real."""
    fp32 = bundle_dir / "encoder.fp32.onnx"
    if fp32.is_file():
        monkeypatch.setattr(
            export_bundle, "export_fp32_onnx", lambda out: Path(shutil.copyfile(fp32, out))
        )


@pytest.mark.slow
@pytest.mark.usefixtures("reuse_fp32_export")
def test_failed_quality_gate_leaves_the_existing_bundle_alone(
    bundle_dir: Path, tmp_path: Path
) -> None:
    """A gate that cannot be met: ExportError, no manifest written, old bundle still intact."""
    out = tmp_path / "bundle"
    shutil.copytree(bundle_dir, out, ignore=shutil.ignore_patterns("*.fp32.onnx"))
    before = Bundle.open(out).fingerprint

    with pytest.raises(ExportError, match=r"mean cosine 0\.9\d+ < required 0\.99999"):
        build_bundle(out, overwrite=True, min_mean_cosine=0.99999)

    assert Bundle.open(out).fingerprint == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no partial dirs left


@pytest.mark.slow
@pytest.mark.usefixtures("reuse_fp32_export")
def test_build_publishes_models_added_before_publish(bundle_dir: Path, tmp_path: Path) -> None:
    weights = tmp_path / "reranker.npz"
    np.savez(weights, w=np.ones(3, dtype=np.float32))
    seen = []

    def add_reranker(staging: Path) -> None:
        seen.append(Encoder(staging, threads=1).encode_one("staged").shape)
        Bundle.add_model(staging, "reranker", {"kind": "pair-base"}, {"weights": weights})

    out = build_bundle(tmp_path / "new" / "bundle", before_publish=add_reranker)

    bundle = Bundle.open(out)
    assert seen == [(384,)]
    assert bundle.model_names == ["encoder", "reranker", "adapter"]
    assert bundle.model("encoder")["quality"]["sentences"] == len(QUALITY_SENTENCES)
    assert set(bundle.manifest["files"]) == {"encoder.int8.onnx", "tokenizer.json",
                                             "reranker.npz", "adapter.npz", "adapter.onnx"}
    assert not (out / "encoder.fp32.onnx").exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["bundle"]


@pytest.mark.slow
def test_torch_onnx_fallback_when_optimum_fails(
    bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    def broken_optimum(source: Path, out: Path) -> None:
        raise RuntimeError("simulated optimum failure")

    monkeypatch.setattr(export_bundle, "_export_with_optimum", broken_optimum)
    with caplog.at_level(logging.INFO, logger="hydrahead.export"):
        model = export_fp32_onnx(tmp_path / "fallback.onnx")
    assert "falling back to torch.onnx.export" in caplog.text
    assert "simulated optimum failure" in caplog.text
    assert "with torch.onnx" in caplog.text

    texts = list(QUALITY_SENTENCES[:12])
    fallback = Encoder.from_files(model, bundle_dir / "tokenizer.json").encode(texts)
    from hydrahead.train.sentence_encoder import TorchSentenceEncoder

    reference = TorchSentenceEncoder().encode(texts)
    np.testing.assert_allclose(fallback, reference, atol=1e-4)

    with pytest.raises(ExportError, match="optimum could not export"):
        export_fp32_onnx(tmp_path / "strict.onnx", exporter="optimum")


def _weight_matmuls(model: Path) -> dict[str, str]:
    """Map each weight-bearing (Dynamic)MatMul(Integer) node of ``model`` to its op type."""
    import onnx

    graph = onnx.load(str(model)).graph
    stored = {tensor.name for tensor in graph.initializer}
    return {
        node.name: node.op_type
        for node in graph.node
        if node.op_type in ("MatMul", "MatMulInteger", "DynamicQuantizeMatMul")
        and any(name in stored for name in node.input[1:])
    }


def _tiny_matmul_model(path: Path, names: list[str]) -> Path:
    """An fp32 model that chains one 8x8 weight MatMul per name."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, weights, current = [], [], "x"
    for index, name in enumerate(names):
        weights.append(numpy_helper.from_array(rng.normal(size=(8, 8)).astype(np.float32),
                                               f"w{index}"))
        nodes.append(helper.make_node("MatMul", [current, f"w{index}"], [f"h{index}"], name=name))
        current = f"h{index}"
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, [2, 8])], weights,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_quantize_keeps_the_sensitive_matmul_in_fp32(bundle_dir: Path, tmp_path: Path) -> None:
    # on a copy: onnxruntime writes a scratch file next to the model it quantizes
    fp32 = Path(shutil.copyfile(bundle_dir / "encoder.fp32.onnx", tmp_path / "fp32.onnx"))
    out = export_bundle.quantize_int8(fp32, tmp_path / "int8.onnx")
    ops = _weight_matmuls(out)
    kept = sorted(name for name, op in ops.items() if op == "MatMul")
    assert kept == ["/encoder/layer.0/output/dense/MatMul"]
    assert len(ops) == 36  # 6 layers x (q, k, v, attention output, intermediate, output)
    assert 22e6 < out.stat().st_size < 27e6  # int8 apart from one 1536x384 matrix


def test_quantize_finds_nodes_by_pattern_and_falls_back_to_full_int8(
    tmp_path: Path, caplog
) -> None:
    names = ["/model/encoder/layer.0/intermediate/dense/MatMul",
             "/model/encoder/layer.0/output/dense/MatMul",
             "/model/encoder/layer.1/output/dense/MatMul"]
    fp32 = _tiny_matmul_model(tmp_path / "tiny.onnx", names)

    mixed = export_bundle.quantize_int8(fp32, tmp_path / "mixed.onnx")  # default patterns
    assert {n for n, op in _weight_matmuls(mixed).items() if op == "MatMul"} == {names[1]}

    renamed = _tiny_matmul_model(tmp_path / "renamed.onnx", ["/a/MatMul", "/b/MatMul"])
    with caplog.at_level(logging.WARNING, logger="hydrahead.export"):
        full = export_bundle.quantize_int8(renamed, tmp_path / "full.onnx")
        ambiguous = export_bundle.quantize_int8(
            fp32, tmp_path / "ambiguous.onnx", fp32_patterns=[r"output/dense/MatMul$"]
        )
    assert "0 weight MatMul nodes" in caplog.text and "2 weight MatMul nodes" in caplog.text
    for model in (full, ambiguous):
        assert "MatMul" not in _weight_matmuls(model).values()
    assert len(_weight_matmuls(ambiguous)) == 3
