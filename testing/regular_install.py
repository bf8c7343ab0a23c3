"""A regular (non-editable) install of the package, for the tools that read it from disk.

pyproject maps the top-level folders ``runtime/``, ``train/`` and ``export/`` into the
``hydrahead`` package. An editable install does that with an import hook, which Python follows but
tools that walk the file system do not: mypy, pyright and import-linter see a ``hydrahead`` without
``runtime``, ``train`` or ``export``. They run on the tree :func:`install` writes instead.

Run as ``python -m testing.regular_install DEST`` from the repository root (``.ci/typecheck``
does), or call :func:`install` (tests/test_layout.py does).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from testing import REPO_ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - mypy depends on tomli before Python 3.11
    import tomli as tomllib


def source_paths(root: Path = REPO_ROOT) -> list[str]:
    """What the package is built from: pyproject.toml, the readme and each mapped folder.

    The folders are the top-level ones named in pyproject's ``[tool.setuptools.package-dir]``.
    """
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    folders = {d.split("/")[0] for d in project["tool"]["setuptools"]["package-dir"].values()}
    return sorted(folders | {"pyproject.toml", project["project"]["readme"]})


def install(dest: Path, root: Path = REPO_ROOT) -> Path:
    """Install the package at ``root`` into ``dest/site`` (no dependencies) and return that folder.

    The build runs on a copy of the sources in ``dest/src``, so that it leaves nothing in the
    working tree: setuptools never empties its ``build/lib``, and a module deleted from the sources
    would come back from there into the wheel. Builds without isolation, with the setuptools of the
    running environment (the ``[dev]`` extra asks for one), so nothing is downloaded.

    Raises:
        subprocess.CalledProcessError: if pip fails (its output is in the exception).
    """
    src, site = dest / "src", dest / "site"
    src.mkdir(parents=True)
    for name in source_paths(root):
        if (root / name).is_dir():
            shutil.copytree(root / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(root / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--target", str(site), str(src)],
        check=True, capture_output=True, text=True,
    )
    return site


def main(argv: list[str]) -> int:
    """``python -m testing.regular_install DEST``: install, then print the install's folder."""
    if len(argv) != 1:
        print("usage: python -m testing.regular_install DEST", file=sys.stderr)
        return 2
    try:
        print(install(Path(argv[0])))
    except subprocess.CalledProcessError as err:
        print(f"regular install failed:\n{err.stdout}{err.stderr}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
