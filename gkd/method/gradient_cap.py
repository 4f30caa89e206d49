"""Keep the gradient term of `gradient_kd` from drowning the logit loss (ours, not in the paper).

The gradient loss compares *unit* input-gradient vectors, so its parameter gradient grows like
`1 / ||g_student||`. A student's input gradients are small (at initialisation about 1e-5 per token on
the MiniLM example teacher, against 0.03 for the teacher) and shrink further as the student grows
confident, so with any fixed beta the gradient term's parameter gradient can be hundreds of times
the KD term's. Adam then follows the gradient term alone and the student can collapse to chance
(benchmarks/results/quality.md).

`capped_backward` back-propagates `base + c * extra` with
`c = min(1, cap * ||d base / d theta|| / ||d extra / d theta||)`: the gradient term may steer the
update, but its parameter gradient is never longer than `cap` times that of the logit loss. With the
cap off (None) it is the plain sum of the paper.

`per_tensor` applies the same rule to each parameter tensor on its own. Adam normalises every parameter
by its own gradient history, so a tensor that gets almost nothing from the logit loss but something from
the gradient term takes full-size steps in the gradient term's direction, however small beta is; the
per-tensor cap bounds that too.

Measuring `c` needs the two parameter gradients apart: two passes back through the student's forward
graph instead of one, about a third of a cached `gradient_kd` step at real lengths
(benchmarks/results/archive/2026-11-29-lagged-cap/train_step_bucketed_cap_every_step.md).
`GradientCap` measures it every `every` optimisation steps and in between back-propagates
`base + c * extra` once, with `c` from the last measured norm ratio (corrected for the term's current
weight, which the warm-up ramp changes). The per-tensor rule cannot be applied to a summed gradient, so
it measures every time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


def _norm(gradients: Sequence[Tensor | None]) -> Tensor:
    squares = [g.detach().float().pow(2).sum() for g in gradients if g is not None]
    return torch.stack(squares).sum().sqrt() if squares else torch.zeros(())


def capped_scale(base_norm: float, extra_norm: float, cap: float) -> float:
    """The factor `c` applied to the extra term's parameter gradient (1 when it is within the cap)."""
    if extra_norm <= 0.0 or extra_norm <= cap * base_norm:
        return 1.0
    return cap * base_norm / extra_norm


def capped_backward(
    base: Tensor,
    extra: Tensor,
    parameters: Sequence[torch.nn.Parameter],
    cap: float,
    weight: float = 1.0,
    per_tensor: bool = False,
) -> float:
    """Add `weight * (d base + c * d extra)` to each parameter's `.grad`; return `c` (see module doc).

    `weight` is the micro-batch's share of the optimisation step (gradient accumulation). With `per_tensor`,
    `c` is computed for each tensor and the return value is their mean, weighted by tensor size."""
    return _measured_backward(base, extra, parameters, cap, weight, per_tensor).scale


def gradient_norms(base: Tensor, extra: Tensor, parameters: Sequence[torch.nn.Parameter]) -> tuple[float, float]:
    """The whole-model norms of the two terms' parameter gradients, leaving every `.grad` untouched."""
    base_grads = torch.autograd.grad(base, parameters, retain_graph=True, allow_unused=True)
    extra_grads = torch.autograd.grad(extra, parameters, allow_unused=True)
    return float(_norm(base_grads)), float(_norm(extra_grads))


def cap_bound(base_norm: float, extra_norm: float, cap: float) -> float | None:
    """The weight at which a term whose unit-weight parameter gradient has norm `extra_norm` reaches `cap` times
    the base's: any larger weight is cut back to it (None when the term has no gradient at all)."""
    return cap * base_norm / extra_norm if extra_norm > 0.0 else None


@dataclass(frozen=True)
class Measurement:
    """One measured backward: the factor applied, and the whole-model norms and cosine of the two gradients."""

    scale: float
    base_norm: float
    extra_norm: float
    cosine: float


def _cosine(first: Sequence[Tensor | None], second: Sequence[Tensor | None], norms: float) -> float:
    dots = [a.detach().float().flatten() @ b.detach().float().flatten()
            for a, b in zip(first, second, strict=True) if a is not None and b is not None]
    return float(torch.stack(dots).sum()) / norms if dots and norms > 0 else 0.0


def _measured_backward(
    base: Tensor,
    extra: Tensor,
    parameters: Sequence[torch.nn.Parameter],
    cap: float,
    weight: float,
    per_tensor: bool,
) -> Measurement:
    """`capped_backward`, also returning the whole-model norms and cosine of the two parameter gradients."""
    base_grads = torch.autograd.grad(base, parameters, retain_graph=True, allow_unused=True)
    extra_grads = torch.autograd.grad(extra, parameters, allow_unused=True)
    base_norm, extra_norm = float(_norm(base_grads)), float(_norm(extra_grads))
    cosine = _cosine(base_grads, extra_grads, base_norm * extra_norm)
    # The whole-model factor; per tensor, each tensor gets its own below.
    scale = 1.0 if per_tensor else capped_scale(base_norm, extra_norm, cap)
    weighted_scales, sizes = 0.0, 0
    with torch.no_grad():
        for parameter, from_base, from_extra in zip(parameters, base_grads, extra_grads, strict=True):
            if from_base is None and from_extra is None:
                continue
            if per_tensor:
                scale = capped_scale(float(_norm([from_base])), float(_norm([from_extra])), cap)
                weighted_scales += scale * parameter.numel()
                sizes += parameter.numel()
            total = torch.zeros_like(parameter) if from_base is None else from_base.to(parameter.dtype) * weight
            if from_extra is not None:
                total.add_(from_extra.to(parameter.dtype), alpha=weight * scale)
            if parameter.grad is None:
                parameter.grad = total
            else:
                parameter.grad.add_(total)
    return Measurement(weighted_scales / sizes if per_tensor and sizes else scale, base_norm, extra_norm, cosine)


@dataclass
class GradientCap:
    """`capped_backward` for one training run, measuring the scale only every `every` optimisation steps.

    Call `next_step()` once per optimisation step and `backward()` for each micro-batch. `extra_weight` is
    the factor the trainer put on the gradient term this step (the warm-up ramp): the term's parameter
    gradient is proportional to it, so the last measured ratio stays valid as the ramp moves."""

    cap: float
    every: int = 1
    per_tensor: bool = False
    _step: int = 0
    _measured_step: int | None = None
    # ||d base|| / ||d extra|| at unit extra_weight, from the last measurement
    _base_per_unit_extra: float | None = None
    last_cosine: float | None = None  # cosine of the two parameter gradients at the last measurement

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue the same measurement schedule."""
        return {"step": self._step, "measured_step": self._measured_step,
                "base_per_unit_extra": self._base_per_unit_extra}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._step = int(state["step"])
        self._measured_step = state["measured_step"]
        self._base_per_unit_extra = state["base_per_unit_extra"]

    def next_step(self) -> None:
        self._step += 1

    @property
    def measured_this_step(self) -> bool:
        return self._measured_step is not None and self._measured_step == self._step

    def due(self) -> bool:
        """Whether this step measures the scale (always per tensor, and on the first capped step)."""
        if self.per_tensor or self.every <= 1 or self._measured_step is None:
            return True
        return self.measured_this_step or self._step - self._measured_step >= self.every

    def backward(
        self, base: Tensor, extra: Tensor, parameters: Sequence[torch.nn.Parameter], *, extra_weight: float = 1.0,
        weight: float = 1.0,
    ) -> float:
        """Add `weight * (d base + c * d extra)` to the parameters' `.grad`; return the `c` used."""
        if self.due():
            measured = _measured_backward(base, extra, parameters, self.cap, weight, self.per_tensor)
            self._measured_step = self._step
            self._base_per_unit_extra = (math.inf if measured.extra_norm <= 0.0
                                         else measured.base_norm * extra_weight / measured.extra_norm)
            self.last_cosine = measured.cosine
            return measured.scale
        assert self._base_per_unit_extra is not None
        scale = capped_scale(self._base_per_unit_extra, extra_weight, self.cap)
        (weight * (base + scale * extra)).backward()
        return scale
