"""Mixed precision that keeps the tiny input gradients of double backprop (docs/methods.md, "Precision").

A freshly cut student's per-token input gradients are about 1e-5 (docs/methods.md). Under fp16 autocast the
backward of half-precision matmuls carries values of that size and smaller in fp16, whose smallest normal
number is 6e-5: they lose their precision or flush to zero, and the gradient term silently vanishes. So fp16
runs with one dynamic loss scale S (torch's `GradScaler`) that covers both backward passes:

- the inner one: the confidence signal is multiplied by S before `autograd.grad(..., create_graph=True)` and the
  input gradients are divided by S afterwards, in fp32 (`scaled_input_gradients`);
- the outer one: the total loss is multiplied by S before `backward()`, and the parameter gradients are
  unscaled before clipping. An overflow anywhere, in either pass, shows as non-finite parameter gradients:
  the scaler skips that step and halves S, as it does for any fp16 run.

bf16 has fp32's exponent range, so it needs no scale; `auto` picks it on a CUDA device that supports it and
fp32 everywhere else (CPU autocast is slower than fp32 on the CPUs we measured).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """The precision a run computes in, resolved for its device."""

    name: Literal["fp32", "bf16", "fp16"]
    device_type: str

    @property
    def dtype(self) -> torch.dtype | None:
        return _DTYPES.get(self.name)

    @property
    def scaled(self) -> bool:
        """fp16 needs the loss scale; fp32 and bf16 do not."""
        return self.name == "fp16"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A dynamic scaler for fp16 (disabled, a pass-through, otherwise)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.scaled)


def bf16_supported(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_precision(requested: PrecisionName, device: torch.device) -> Precision:
    """`auto`: bf16 on a CUDA device with bf16 support, fp32 elsewhere; an explicit choice is kept."""
    if requested == "auto":
        return Precision("bf16" if bf16_supported(device) else "fp32", device.type)
    return Precision(requested, device.type)


def scaled_input_gradients(signal: Tensor, tensors: Sequence[Tensor], scale: float, *,
                           create_graph: bool) -> list[Tensor]:
    """`d signal / d tensors`, computed as `d (scale * signal) / d tensors / scale` with the division in fp32, so
    the half-precision intermediates of the backward carry `scale` times larger values. `scale` 1 is the plain
    gradient."""
    grads = torch.autograd.grad(signal * scale if scale != 1.0 else signal, list(tensors), create_graph=create_graph)
    if scale == 1.0:
        return list(grads)
    return [g.float() / scale for g in grads]
