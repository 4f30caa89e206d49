"""How long a run takes, before it runs: its step count and a rough time per step.

Pure arithmetic, shared by the trainer (its step count) and the service's estimates (`app.store.estimates`),
which replace `default_seconds_per_row` with what workers measured once they have run a job of the same shape.
"""

from __future__ import annotations

import math
from typing import Literal

DeviceKind = Literal["cpu", "gpu"]

# Sustained throughput of a training step, floating point operations per second: deliberately modest figures
# (a few CPU cores; one data-centre GPU at a fraction of its peak) for an estimate before anything was measured.
DEFAULT_FLOPS: dict[str, float] = {"cpu": 2e10, "gpu": 2e12}

# Forward and backward of one encoder layer per token: about 6 operations per weight, 12 * width^2 weights.
FLOPS_PER_TOKEN_PER_LAYER_PER_WIDTH2 = 72.0


def steps_per_epoch(rows: int, batch_size: int, accumulation: int = 1) -> int:
    """Optimiser steps of one pass: `rows` in micro-batches of `batch_size`, `accumulation` micro-batches a step."""
    return math.ceil(math.ceil(rows / batch_size) / accumulation)


def total_steps(rows: int, batch_size: int, accumulation: int, epochs: int) -> int:
    return steps_per_epoch(rows, batch_size, accumulation) * epochs


def length_bucket(max_length: int) -> int:
    """The power of two at or above `max_length` (at least 16): jobs of similar lengths share a calibration."""
    return max(16, 1 << max(0, max_length - 1).bit_length())


def default_seconds_per_row(width: int, depth: int, max_length: int, device_kind: str) -> float:
    """A rough time per training row and step, from the student's size alone (no measurement yet): every token
    of `max_length` through `depth` layers of `width`, forward and backward, at `DEFAULT_FLOPS[device_kind]`.
    The teacher's outputs are assumed cached; padding, evaluations and method extras are not counted."""
    flops = FLOPS_PER_TOKEN_PER_LAYER_PER_WIDTH2 * width * width * depth * max_length
    return flops / DEFAULT_FLOPS[device_kind]
