"""Tests of hydrahead.runtime.bundle: manifest contents, verification, adding models."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

import hydrahead
from hydrahead.runtime import bundle as bundle_module
from hydrahead.runtime.bundle import MANIFEST_NAME, Bundle, sha256_file, write_manifest
from hydrahead.runtime.errors import BundleError


@pytest.fixture
def bundle_copy(bundle_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the bundle (manifest and listed files only) that a test may damage."""
    target = tmp_path / "bundle"
    target.mkdir()
    manifest = json.loads((bundle_dir / MANIFEST_NAME).read_text())
    for name in [MANIFEST_NAME, *manifest["files"]]:
        shutil.copyfile(bundle_dir / name, target / name)
    return target


def _edit_manifest(root: Path, edit) -> None:
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    edit(manifest)
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_manifest_describes_the_encoder_and_every_file(bundle_dir: Path) -> None:
    manifest = json.loads((bundle_dir / MANIFEST_NAME).read_text())
    assert manifest["format"] == "hydrahead-bundle"
    assert manifest["format_version"] == 1
    assert manifest["library_version"] == hydrahead.__version__
    assert datetime.fromisoformat(manifest["created"]).utcoffset().total_seconds() == 0

    encoder = manifest["models"]["encoder"]
    assert encoder["kind"] == "sentence-encoder"
    assert encoder["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert encoder["files"] == {"model": "encoder.int8.onnx", "tokenizer": "tokenizer.json"}
    assert encoder["embedding_dim"] == 384
    assert encoder["max_seq_length"] == 256
    assert encoder["pooling"] == "mean"
    assert encoder["normalize"] is True
    assert encoder["quantization"] == "int8 dynamic per-channel"
    assert encoder["fp32_nodes"] == ["/encoder/layer.0/output/dense/MatMul"]  # mixed precision
    quality = encoder["quality"]
    assert quality["sentences"] >= 50
    assert quality["mean_cosine"] >= 0.985
    assert 0.95 <= quality["min_cosine"] <= quality["mean_cosine"] <= 1.0

    assert set(manifest["files"]) == {
        "encoder.int8.onnx", "tokenizer.json", "reranker.npz", "adapter.npz", "reranker.onnx",
        "adapter.onnx"}
    for role in ("reranker", "adapter"):
        assert manifest["models"][role]["kind"] == "pair-base-onnx"
        assert manifest["models"][role]["files"] == {"graph": f"{role}.onnx",
                                                     "weights": f"{role}.npz"}
    for name, entry in manifest["files"].items():
        data = (bundle_dir / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def test_open_exposes_models_files_and_fingerprints(bundle_dir: Path) -> None:
    bundle = Bundle.open(bundle_dir)
    assert bundle.root == bundle_dir
    assert bundle.has_model("encoder") and bundle.has_model("reranker")
    assert not bundle.has_model("cross-encoder")
    assert sorted(bundle.model_names) == ["adapter", "encoder", "reranker"]
    assert bundle.model("encoder")["embedding_dim"] == 384
    assert bundle.file("encoder", "model") == bundle_dir / "encoder.int8.onnx"
    assert bundle.file("encoder", "tokenizer").is_file()
    manifest_bytes = (bundle_dir / MANIFEST_NAME).read_bytes()
    assert bundle.fingerprint == hashlib.sha256(manifest_bytes).hexdigest()
    fingerprint = bundle.model_fingerprint("encoder")
    assert len(fingerprint) == 64 and fingerprint != bundle.fingerprint
    assert Bundle.open(bundle_dir, verify=False).model_fingerprint("encoder") == fingerprint


def test_unknown_model_or_role_is_a_bundle_error(bundle_dir: Path) -> None:
    bundle = Bundle.open(bundle_dir, verify=False)
    with pytest.raises(BundleError, match="no model 'cross-encoder'.*it has: .*encoder"):
        bundle.model("cross-encoder")
    with pytest.raises(BundleError, match="no 'weights' file"):
        bundle.file("encoder", "weights")


def test_tampered_file_is_refused(bundle_copy: Path) -> None:
    path = bundle_copy / "encoder.int8.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"'encoder\.int8\.onnx'.*sha256.*export bundle"):
        Bundle.open(bundle_copy)
    Bundle.open(bundle_copy, verify=False)  # same size: only hashing catches it


def test_truncated_file_is_refused(bundle_copy: Path) -> None:
    path = bundle_copy / "tokenizer.json"
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(BundleError, match=rf"'tokenizer\.json' has {len(data) - 10} bytes"):
        Bundle.open(bundle_copy, verify=False)


def test_missing_file_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match=r"'tokenizer\.json' is missing.*bundle pull"):
        Bundle.open(bundle_copy)


def test_missing_manifest_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / MANIFEST_NAME).unlink()
    with pytest.raises(BundleError, match="no manifest.json"):
        Bundle.open(bundle_copy)


def test_newer_format_version_is_refused(bundle_copy: Path) -> None:
    _edit_manifest(bundle_copy, lambda m: m.update(format_version=2))
    with pytest.raises(BundleError, match="format version 2.*supports up to 1.*upgrade"):
        Bundle.open(bundle_copy)


@pytest.mark.parametrize(
    "content",
    ["{not json", json.dumps({"format": "something-else"}), json.dumps([1, 2])],
)
def test_malformed_or_foreign_manifest_is_refused(bundle_copy: Path, content: str) -> None:
    (bundle_copy / MANIFEST_NAME).write_text(content)
    with pytest.raises(BundleError, match="manifest.json"):
        Bundle.open(bundle_copy)


def test_model_referring_to_unlisted_file_is_refused(bundle_copy: Path) -> None:
    def point_elsewhere(manifest: dict) -> None:
        manifest["models"]["encoder"]["files"]["model"] = "encoder.fp16.onnx"

    _edit_manifest(bundle_copy, point_elsewhere)
    with pytest.raises(BundleError, match=r"'encoder\.fp16\.onnx'.*does not list"):
        Bundle.open(bundle_copy)


@pytest.mark.parametrize("name", ["../outside.bin", "/etc/hostname", "a/../../b", ""])
def test_file_names_outside_the_bundle_are_refused(bundle_copy: Path, name: str) -> None:
    _edit_manifest(bundle_copy, lambda m: m["files"].update({name: {"sha256": "0", "bytes": 0}}))
    with pytest.raises(BundleError, match="not a plain relative file name"):
        Bundle.open(bundle_copy, verify=False)


def test_sha256_is_streamed_in_chunks_and_correct(tmp_path: Path, monkeypatch) -> None:
    data = np.random.default_rng(0).bytes(3 * 1024 + 17)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    monkeypatch.setattr(bundle_module, "_HASH_CHUNK", 1024)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_add_model_keeps_the_encoder_fingerprint(bundle_copy: Path, tmp_path: Path) -> None:
    before = Bundle.open(bundle_copy)
    weights = tmp_path / "cross.npz"
    np.savez(weights, w=np.arange(6, dtype=np.float32).reshape(2, 3))

    after = Bundle.add_model(bundle_copy, "cross-encoder", {"kind": "pair-base", "dim": 3},
                             {"weights": weights})

    assert after.model_names == ["encoder", "reranker", "adapter", "cross-encoder"]
    assert after.model("cross-encoder") == {"kind": "pair-base", "dim": 3,
                                            "files": {"weights": "cross.npz"}}
    assert (bundle_copy / "cross.npz").read_bytes() == weights.read_bytes()
    assert after.manifest["files"]["cross.npz"]["sha256"] == sha256_file(weights)
    assert after.model_fingerprint("encoder") == before.model_fingerprint("encoder")
    assert after.fingerprint != before.fingerprint
    assert after.manifest["created"] == before.manifest["created"]
    reopened = Bundle.open(bundle_copy)
    assert reopened.fingerprint == after.fingerprint
    assert oct((bundle_copy / MANIFEST_NAME).stat().st_mode & 0o777) == oct(0o644)
    assert not [p for p in os.listdir(bundle_copy) if p.endswith(".tmp")]


def test_add_model_replaces_a_model_and_drops_its_old_files(bundle_copy: Path) -> None:
    (bundle_copy / "adapter-v1.npz").write_bytes(b"v1")
    (bundle_copy / "adapter-v2.npz").write_bytes(b"v2")
    Bundle.add_model(bundle_copy, "adapter", {"kind": "pair-base"},
                     {"weights": bundle_copy / "adapter-v1.npz"})
    bundle = Bundle.add_model(bundle_copy, "adapter", {"kind": "pair-base"},
                              {"weights": bundle_copy / "adapter-v2.npz"})
    assert bundle.file("adapter", "weights") == bundle_copy / "adapter-v2.npz"
    assert "adapter-v1.npz" not in bundle.manifest["files"]


def test_add_model_refuses_a_damaged_bundle_or_missing_file(bundle_copy: Path,
                                                            tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a file"):
        Bundle.add_model(bundle_copy, "reranker", {"kind": "pair-base"},
                         {"weights": tmp_path / "absent.npz"})
    (bundle_copy / "tokenizer.json").write_text("{}")
    weights = tmp_path / "reranker.npz"
    weights.write_bytes(b"w")
    manifest_before = (bundle_copy / MANIFEST_NAME).read_bytes()
    with pytest.raises(BundleError, match="tokenizer.json"):
        Bundle.add_model(bundle_copy, "reranker", {"kind": "pair-base"}, {"weights": weights})
    assert (bundle_copy / MANIFEST_NAME).read_bytes() == manifest_before


def test_write_manifest_requires_the_files_it_lists(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="'weights.npz', which is not in"):
        write_manifest(tmp_path, {"reranker": {"kind": "pair-base",
                                               "files": {"weights": "weights.npz"}}})
    with pytest.raises(BundleError, match="non-empty 'files'"):
        write_manifest(tmp_path, {"reranker": {"kind": "pair-base"}})
    assert not (tmp_path / MANIFEST_NAME).exists()


def test_copy_to_copies_the_listed_files_only(bundle_dir: Path, tmp_path: Path) -> None:
    source = Path(shutil.copytree(bundle_dir, tmp_path / "source"))
    (source / "notes.txt").write_text("not part of the bundle")
    copy = Bundle.open(source).copy_to(tmp_path / "copy")
    assert copy.fingerprint == Bundle.open(source).fingerprint
    assert sorted(p.name for p in copy.root.iterdir()) == sorted(
        [MANIFEST_NAME, *copy.manifest["files"]])
    with pytest.raises(BundleError, match="exists"):
        Bundle.open(source).copy_to(tmp_path / "copy")
