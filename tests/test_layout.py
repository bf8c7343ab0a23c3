"""The package layout promises: the device side never pulls in torch or transformers, nor the
test and demo tools (the offline simulator, the benchmark, the demo)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "optimum", "hydrahead.offline", "hydrahead.offline.simulator",
         "hydrahead.benchmark", "hydrahead.demo")


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


def test_top_level_names_are_namespaced() -> None:
    import hydrahead.export
    import hydrahead.runtime
    import hydrahead.train

    for mod in (hydrahead.runtime, hydrahead.train, hydrahead.export):
        assert mod.__name__.startswith("hydrahead.")
