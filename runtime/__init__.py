"""hydrahead.runtime: the device side (numpy, onnxruntime, tokenizers, hnswlib, requests).

Never imports torch or transformers.
"""

from __future__ import annotations
