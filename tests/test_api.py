"""The top-level API: ``from hydrahead import Personalizer, ...``, loaded lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

import hydrahead


def test_every_public_name_resolves_to_the_runtime_object() -> None:
    from hydrahead.runtime import errors
    from hydrahead.runtime.personalizer import Personalizer
    from hydrahead.runtime.settings import Settings
    from hydrahead.runtime.tasks import get_task

    assert hydrahead.Personalizer is Personalizer
    assert hydrahead.Settings is Settings
    assert hydrahead.get_task is get_task
    assert hydrahead.HydraheadError is errors.HydraheadError
    for name in hydrahead.__all__:
        assert getattr(hydrahead, name) is not None, name
    assert issubclass(hydrahead.StoreError, hydrahead.HydraheadError)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Personaliser'"):
        hydrahead.Personaliser  # noqa: B018
    with pytest.raises(ImportError):
        exec("from hydrahead import Personaliser", {})


def _modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True)
    return set(out.stdout.split())


def test_importing_hydrahead_loads_nothing_heavy() -> None:
    loaded = _modules_after("import hydrahead")
    assert not loaded & {"numpy", "onnxruntime", "torch", "transformers", "hnswlib"}
    assert not any(m.startswith("hydrahead.runtime") for m in loaded)


def test_the_app_names_load_the_runtime_but_never_torch() -> None:
    loaded = _modules_after(
        "from hydrahead import Personalizer, AsyncPersonalizer, HistoryStore, Bundle, "
        "LLMConfig, get_task, Settings, HydraheadError")
    assert "hydrahead.runtime.personalizer" in loaded
    assert not loaded & {"torch", "transformers", "optimum"}
