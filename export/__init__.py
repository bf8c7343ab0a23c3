"""hydrahead.export: builds the device model bundle (optimum, onnx, onnxruntime.quantization)."""

from __future__ import annotations
