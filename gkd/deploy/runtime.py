"""The optional ONNX packages, imported only when an ONNX feature runs, so the library and the client work without
them; a missing extra is one clear error instead of an ImportError deep in a call."""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL_HINT = "pip install 'gkd[onnx]' (make install includes it)"


class OnnxUnavailable(RuntimeError):
    """onnx or onnxruntime is not installed."""


def require(module: str) -> ModuleType:
    """Import `module` (onnx, onnxruntime, onnxruntime.quantization) or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise OnnxUnavailable(f"{module} is not installed; ONNX export and inference need it: {INSTALL_HINT}") from exc
