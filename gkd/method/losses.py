"""The objectives of shared/docs/GKD.md as pure functions of tensors.

Nothing here knows about models, optimisers or caches: callers pass logits, gradients, hidden states
and masks; every function returns a scalar tensor that can be back-propagated. Teacher quantities are
always treated as constants (`detach`-ed by the caller or loaded from the cache).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

KLReduction = Literal["mean", "batchmean"]
EPS = 1e-12


def _wide(x: Tensor) -> Tensor:
    """Half-precision inputs (autocast) are computed in float32; float32/float64 keep their precision,
    so the losses can be gradchecked in float64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def ce_loss(student_logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of the student against the gold labels (method `ce`)."""
    return F.cross_entropy(_wide(student_logits), labels)


def kl_term(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float, reduction: KLReduction = "mean"
) -> Tensor:
    """`T^2 * KL(softmax(z_T/T) || softmax(z_S/T))`.

    `mean` averages over all B*C elements (PyTorch `KLDivLoss(reduction="mean")`, the authors' choice);
    `batchmean` is the per-example KL averaged over the batch.
    """
    log_p_student = F.log_softmax(_wide(student_logits) / temperature, dim=-1)
    p_teacher = F.softmax(_wide(teacher_logits) / temperature, dim=-1)
    pointwise = F.kl_div(log_p_student, p_teacher, reduction="none")
    denominator = pointwise.numel() if reduction == "mean" else pointwise.shape[0]
    return temperature**2 * pointwise.sum() / denominator


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    temperature: float,
    alpha: float,
    reduction: KLReduction = "mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """`L_KD = alpha * T^2 * KL + (1 - alpha) * CE`; returns the loss and its two terms."""
    kd = kl_term(student_logits, teacher_logits, temperature, reduction)
    ce = ce_loss(student_logits, labels)
    return alpha * kd + (1.0 - alpha) * ce, {"kd": kd, "ce": ce}


def confidence_signal(logits: Tensor) -> Tensor:
    """`s = sum_i max_c softmax(z_i)_c`: each model's confidence in its own prediction, summed over the batch."""
    return F.softmax(_wide(logits), dim=-1).max(dim=-1).values.sum()


def unit_vectors(gradients: Tensor, eps: float = EPS) -> Tensor:
    """Scale each vector along the last axis to unit L2 norm; zero vectors stay zero. Half-precision input is
    normalised in float32: squares of 1e-5 gradients underflow in fp16."""
    gradients = _wide(gradients)
    norms = gradients.norm(dim=-1, keepdim=True)
    return gradients / norms.clamp_min(eps)


def gradient_alignment_loss(teacher_unit: Tensor, student_gradients: Tensor, mask: Tensor) -> Tensor:
    """Mean over real tokens of `||u_T - u_S||^2` (= `2 - 2 cos`), the paper's gradient loss.

    `teacher_unit` holds the teacher's unit gradients [B, L, H] (already normalised, e.g. from the cache),
    `student_gradients` the raw student gradients [B, L, H] (normalised here, with the graph kept),
    `mask` [B, L] is 1 for real tokens.
    """
    student_unit = unit_vectors(student_gradients)
    squared = (_wide(teacher_unit) - student_unit).pow(2).sum(dim=-1)
    mask = mask.to(squared.dtype)
    return (squared * mask).sum() / mask.sum().clamp_min(1.0)


def token_saliency(gradients: Tensor, mask: Tensor, eps: float = EPS) -> Tensor:
    """Per-token saliency `||g_t||`, zeroed at padding and L2-normalised over each sequence: [B, L].

    This is our width-independent form (not in the paper): a student of any hidden size can match
    the teacher's distribution of importance over tokens.
    """
    norms = _wide(gradients).pow(2).sum(dim=-1).add(eps).sqrt()
    norms = norms * mask.to(norms.dtype)
    return norms / norms.norm(dim=-1, keepdim=True).clamp_min(eps)


def saliency_alignment_loss(teacher_saliency: Tensor, student_gradients: Tensor, mask: Tensor) -> Tensor:
    """Mean over examples of `||p_T - p_S||^2` between L2-normalised per-token saliency vectors."""
    student_saliency = token_saliency(student_gradients, mask)
    return (_wide(teacher_saliency) - student_saliency).pow(2).sum(dim=-1).mean()


def pkd_loss(teacher_cls: Tensor, student_cls: Tensor) -> Tensor:
    """Patient-KD term: MSE between L2-normalised [CLS] vectors of mapped layers.

    Both are [B, K, H] (K mapped layers); the mean runs over batch x layers x hidden units.
    """
    return F.mse_loss(unit_vectors(student_cls), unit_vectors(teacher_cls), reduction="mean")


def cls_gradient_loss(teacher_unit_cls: Tensor, student_cls_gradients: Sequence[Tensor] | Tensor) -> Tensor:
    """Sum over mapped layers of the batch mean of `||u_T - u_S||^2` at the [CLS] position.

    `teacher_unit_cls` [B, K, H] holds unit teacher gradients, `student_cls_gradients` the raw student
    gradients w.r.t. each mapped layer's output at [CLS] ([B, K, H] or K tensors of [B, H]).
    """
    if not isinstance(student_cls_gradients, Tensor):
        student_cls_gradients = torch.stack(list(student_cls_gradients), dim=1)
    student_unit = unit_vectors(student_cls_gradients)
    per_layer = (_wide(teacher_unit_cls) - student_unit).pow(2).sum(dim=-1).mean(dim=0)
    return per_layer.sum()


def cosine_agreement(teacher: Tensor, student: Tensor, mask: Tensor, eps: float = EPS) -> Tensor:
    """Mean cosine over real tokens between per-token vectors [B, L, H] (saliency agreement metric)."""
    cos = (unit_vectors(teacher, eps) * unit_vectors(student, eps)).sum(dim=-1)
    mask = mask.to(cos.dtype)
    return (cos * mask).sum() / mask.sum().clamp_min(1.0)


def topk_overlap(teacher_saliency: Tensor, student_saliency: Tensor, mask: Tensor, k: int = 3) -> Tensor:
    """Mean fraction of each example's top-k salient tokens (by teacher) also in the student's top-k.

    Padding is excluded; k shrinks to the number of real tokens of short examples.
    """
    neg_inf = torch.finfo(torch.float32).min
    t = teacher_saliency.float().masked_fill(mask == 0, neg_inf)
    s = student_saliency.float().masked_fill(mask == 0, neg_inf)
    k_eff = torch.clamp(mask.sum(dim=-1), max=k).long()
    kmax = int(min(k, t.shape[-1]))
    top_t = t.topk(kmax, dim=-1).indices
    top_s = s.topk(kmax, dim=-1).indices
    keep = torch.arange(kmax, device=t.device)[None, :] < k_eff[:, None]
    hit_matrix = top_t[:, :, None] == top_s[:, None, :]
    both = keep[:, :, None] & keep[:, None, :]
    hits = (hit_matrix & both).any(dim=-1).sum(dim=-1).float()
    return (hits / k_eff.clamp_min(1).float()).mean()
