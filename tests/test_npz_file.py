"""Versioned .npz files: round trips, and every unusable file refused with the caller's error."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from hydrahead.runtime.errors import BundleError, HeadError, InvalidInputError
from hydrahead.runtime.heads import Head, read_base_head, write_base_head
from hydrahead.runtime.npz_file import read_npz, write_npz
from hydrahead.runtime.pair_base import PairBase

FORMAT = "hydrahead-test"
HINT = "refit with `hydrahead fit`"
ARRAYS = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "names": np.array(["a", "bé"]),
          "role.label": np.array([0.0, 1.0])}


def _read(source: object, *, versions: object = 2, error: type = HeadError, **kw: object):
    return read_npz(source, format=FORMAT, versions=versions, error=error,  # type: ignore[arg-type]
                    hint=HINT, what="test file", **kw)


def _raw(**arrays: np.ndarray) -> bytes:
    """An .npz written without write_npz (np.savez pickles object arrays)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(
        np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


@pytest.mark.parametrize("compressed", [False, True])
def test_round_trip_through_a_path(tmp_path: Path, compressed: bool) -> None:
    path = tmp_path / "f.npz"
    write_npz(path, ARRAYS, format=FORMAT, version=2, meta={"task": "GIT_area", "n": [1, 2]},
              compressed=compressed)
    assert (os.stat(path).st_mode & 0o777) == 0o600  # owner-only by default
    arrays, meta, version = _read(path)
    assert _same(arrays, ARRAYS)  # the header is not among the arrays
    assert meta == {"task": "GIT_area", "n": [1, 2]} and version == 2
    with np.load(path, allow_pickle=False) as npz:  # a plain .npz: arrays only
        assert {"format", "format_version", "meta"} <= set(npz.files)
    write_npz(path, ARRAYS, format=FORMAT, version=1, mode=0o644)
    assert (os.stat(path).st_mode & 0o777) == 0o644
    assert _read(path).meta == {} and _read(path).version == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npz"]  # no temp files left


def test_round_trip_through_a_buffer() -> None:
    buffer = io.BytesIO()
    write_npz(buffer, ARRAYS, format=FORMAT, version=1, meta={"a": 1})
    buffer.seek(0)
    got = _read(buffer, versions=[1])
    assert _same(got.arrays, ARRAYS) and got.meta == {"a": 1} and got.version == 1


def test_writing_refuses_header_names_objects_and_unserializable_meta(tmp_path: Path) -> None:
    path = tmp_path / "f.npz"
    with pytest.raises(InvalidInputError, match="reserved"):
        write_npz(path, {"meta": np.zeros(1)}, format=FORMAT, version=1)
    with pytest.raises(InvalidInputError, match="Python objects"):
        write_npz(path, {"x": np.array([{"a": 1}], dtype=object)}, format=FORMAT, version=1)
    with pytest.raises(InvalidInputError, match="JSON"):
        write_npz(path, ARRAYS, format=FORMAT, version=1, meta={"x": object()})
    assert not path.exists()


def test_unusable_files_raise_the_callers_error_with_its_hint(tmp_path: Path) -> None:
    good = tmp_path / "good.npz"
    write_npz(good, ARRAYS, format=FORMAT, version=2)
    data = good.read_bytes()

    def refused(content: bytes, error: type = HeadError, **kw: object) -> str:
        path = tmp_path / "bad.npz"
        path.write_bytes(content)
        with pytest.raises(error) as info:
            _read(path, error=error, **kw)
        assert str(info.value).endswith(HINT) and str(path) in str(info.value)
        return str(info.value)

    header = {"format": np.array(FORMAT), "format_version": np.array(2)}
    assert "corrupt" in refused(data[: len(data) // 2])  # truncated
    assert "corrupt" in refused(b"\x00" * 100)  # garbage
    assert "corrupt" in refused(b"")  # empty
    assert "corrupt" in refused(pickle.dumps({"x": [1, 2]}))  # a pickle, never unpickled
    assert "corrupt" in refused(_raw(**header, x=np.array([{"a": 1}], dtype=object)))
    single = io.BytesIO()
    np.save(single, np.zeros(3))
    assert "not an .npz" in refused(single.getvalue())
    assert "not a hydrahead test file" in refused(
        _raw(**{**header, "format": np.array("hydrahead-other")}))
    assert "newer" in refused(_raw(**{**header, "format_version": np.array(3)}), BundleError)
    assert "does not read" in refused(_raw(**{**header, "format_version": np.array(1)}),
                                      versions={2})
    assert "'format_version' header" in refused(_raw(format=np.array(FORMAT), x=np.zeros(1)))
    assert "'format' header" in refused(_raw(format_version=np.array(1), x=np.zeros(1)))
    assert "malformed 'format_version'" in refused(
        _raw(**{**header, "format_version": np.array(2.0)}))
    assert "'meta'" in refused(_raw(**header, meta=np.array("[1, 2]")), InvalidInputError)
    with pytest.raises(HeadError, match=f"does not exist; {HINT}"):
        _read(tmp_path / "absent.npz")
    with pytest.raises(FileNotFoundError):
        _read(tmp_path / "absent.npz", raise_not_found=True)


def test_unversioned_files_read_as_the_version_the_caller_names(tmp_path: Path) -> None:
    path = tmp_path / "old.npz"
    path.write_bytes(_raw(format=np.array(FORMAT), meta=np.array('{"a": 1}'), x=np.zeros(2)))
    got = _read(path, unversioned=1)
    assert got.version == 1 and got.meta == {"a": 1} and list(got.arrays) == ["x"]
    path.write_bytes(_raw(x=np.zeros(2)))  # no header at all
    assert _read(path, unversioned=1).version == 1
    path.write_bytes(_raw(format=np.array("hydrahead-other"), x=np.zeros(2)))
    with pytest.raises(HeadError, match="not a hydrahead test file"):
        _read(path, unversioned=1)


def test_base_heads_round_trip_and_headerless_ones_still_load(tmp_path: Path) -> None:
    head = PairBase.untrained(dim=8, hidden=6, seed=1).head
    path = tmp_path / "head.npz"
    write_base_head(path, head)
    assert (os.stat(path).st_mode & 0o777) == 0o644  # a bundle file: readable by all
    for loaded in (read_base_head(path, error=BundleError, hint="pull again"),
                   Head.from_arrays(head.arrays())):
        assert all(np.array_equal(loaded.params[k], v) for k, v in head.params.items())
    legacy = tmp_path / "legacy.npz"  # cross mode's head.npz before it had a header
    legacy.write_bytes(_raw(**head.arrays()))
    assert read_base_head(legacy, error=BundleError, hint="pull again").hidden == 6
    with pytest.raises(BundleError, match="pull again"):
        read_base_head(tmp_path / "absent.npz", error=BundleError, hint="pull again")
    broken = tmp_path / "broken.npz"
    broken.write_bytes(_raw(**{k: v for k, v in head.arrays().items() if k != "head.b2"}))
    with pytest.raises(BundleError, match="parameters"):
        read_base_head(broken, error=BundleError, hint="pull again")
