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
"""

from __future__ import annotations

from collections.abc import Sequence

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
    base_grads = torch.autograd.grad(base, parameters, retain_graph=True, allow_unused=True)
    extra_grads = torch.autograd.grad(extra, parameters, allow_unused=True)
    # The whole-model factor; per tensor, each tensor gets its own below.
    scale = 1.0 if per_tensor else capped_scale(float(_norm(base_grads)), float(_norm(extra_grads)), cap)
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
    return weighted_scales / sizes if per_tensor and sizes else scale
