"""Helpers shared by tests/ and bench/ (not part of the installed package).

Imported as ``testing.<module>`` from the repository root, which pytest puts on ``sys.path``
(the root ``conftest.py``'s folder). A child Python that needs them runs with
``cwd=REPO_ROOT``: ``python -c`` looks for imports in its working directory first.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The repository root: the folder that holds ``testing/``."""
