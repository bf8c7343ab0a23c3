"""The package layout promises: the device side never pulls in torch or transformers, nor the
test and demo tools (the offline simulator, the benchmark, the demo)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "optimum", "hydrahead.offline", "hydrahead.offline.simulator",
         "hydrahead.evaluation", "hydrahead.demo")


def _loaded_after(code: str) -> list[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_runtime_imports_no_torch_transformers_or_test_tools() -> None:
    import hydrahead.runtime as rt
    from pathlib import Path

    modules = sorted(
        "hydrahead.runtime."
        + ".".join(p.relative_to(Path(rt.__file__).parent).with_suffix("").parts)
        for p in Path(rt.__file__).parent.rglob("*.py")
        if p.name != "__init__.py"
    )
    assert modules, "runtime has no modules?"
    code = "\n".join(f"import {m}" for m in modules)
    assert _loaded_after(code) == []


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["llm", "--help"], ["user", "--help"], ["outbox", "--help"]],
)
def test_cli_device_commands_import_no_torch(argv: list[str]) -> None:
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom hydrahead.cli import cli\n"
        f"r = CliRunner().invoke(cli, {argv!r})\nassert r.exit_code == 0, r.output"
    )
    assert _loaded_after(code) == []


def test_top_level_names_are_namespaced(tmp_path) -> None:
    """The repository's runtime/, train/ and export/ are installed only as hydrahead.runtime,
    hydrahead.train and hydrahead.export: pyproject maps each folder to that one name, every
    installed package is under hydrahead, and outside the repository ``import runtime`` fails
    while ``import hydrahead.runtime`` loads the repository's runtime/."""
    import importlib
    import os
    import tomllib
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    folders = ("runtime", "train", "export")
    setuptools = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_dir = setuptools["package-dir"]
    for folder in folders:
        assert [name for name, path in package_dir.items() if path == folder] == [
            f"hydrahead.{folder}"]
        assert Path(importlib.import_module(f"hydrahead.{folder}").__file__).parent == repo / folder
    assert all(name == "hydrahead" or name.startswith("hydrahead.")
               for name in [*setuptools["packages"], *package_dir])

    probe = "\n".join(
        f"try:\n    import {folder}\nexcept ModuleNotFoundError:\n    print('absent')\n"
        f"else:\n    print({folder}.__file__)" for folder in folders)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only what is installed
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=tmp_path, env=env)
    assert out.stdout.split() == ["absent"] * len(folders)


def test_layer_contracts_hold(tmp_path) -> None:
    """import-linter's contracts ([tool.importlinter] in pyproject) hold: the CLI, evaluation,
    demo and offline LLM sit above train/ and export/, which sit above runtime/, and runtime/
    imports no torch, transformers or optimum. Checked on a regular install of the package: the
    editable one hides runtime/, train/ and export/ from import-linter."""
    import shutil
    from pathlib import Path

    from testing import REPO_ROOT
    from testing.regular_install import install

    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint_imports is None:
        pytest.skip("lint-imports is not installed (it comes with the [dev] extra)")
    site = install(tmp_path)
    out = subprocess.run([lint_imports, "--no-cache", str(REPO_ROOT / "pyproject.toml")],
                         capture_output=True, text=True, cwd=site)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout
