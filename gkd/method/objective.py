"""Model-side plumbing of the objectives: forward passes that expose the embedding output, input
gradients of the confidence signal, and the per-method loss built from `gkd.method.losses`.

The gradient is taken w.r.t. the *output tensor of the embedding module used in this forward pass*
(captured by a forward hook), never w.r.t. the embedding weight matrix (GKD.md, pitfalls).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedModel

from gkd.config import Hyperparameters
from gkd.data.batching import Batch
from gkd.method import losses
from gkd.method.precision import scaled_input_gradients
from gkd.method.properties import MethodProperties, method_properties
from gkd.models.families import embedding_module, model_family


@dataclass
class TeacherTargets:
    """What the losses need from the teacher for one batch (live or from the cache)."""

    logits: Tensor  # [B, C]
    unit_gradients: Tensor | None = None  # [B, L, H] unit per-token input gradients
    saliency: Tensor | None = None  # [B, L] normalised per-token saliency
    cls_states: Tensor | None = None  # [B, M+1, H] [CLS] of every hidden_states entry
    cls_unit_gradients: Tensor | None = None  # [B, M+1, H] unit gradients at [CLS] per layer


@dataclass
class ForwardResult:
    logits: Tensor
    embedding_output: Tensor
    hidden_states: tuple[Tensor, ...] | None


def model_inputs(model: PreTrainedModel, batch: Batch) -> dict[str, Tensor]:
    """The forward arguments of `batch` for this model's family: token_type_ids only where the family takes
    them and has more than one type (DistilBERT, ModernBERT and MPNet take none; RoBERTa has one)."""
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    if model_family(model).takes_token_types(model.config):
        inputs["token_type_ids"] = batch.token_type_ids
    return inputs


@contextmanager
def _capture_embedding_output(model: PreTrainedModel) -> Iterator[list[Tensor]]:
    """Make the embedding output a differentiable tensor and hand it out (forward hook)."""
    captured: list[Tensor] = []

    def hook(_module: torch.nn.Module, _inputs: object, output: Tensor) -> Tensor:
        if not output.requires_grad:
            output = output.detach().requires_grad_(True)
        captured.append(output)
        return output

    handle = embedding_module(model).register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def forward(model: PreTrainedModel, batch: Batch, *, hidden_states: bool = False) -> ForwardResult:
    with _capture_embedding_output(model) as captured:
        out = model(**model_inputs(model, batch), output_hidden_states=hidden_states)
    return ForwardResult(out.logits, captured[0], out.hidden_states if hidden_states else None)


def teacher_targets(model: PreTrainedModel, batch: Batch, *, with_gradients: bool = True) -> TeacherTargets:
    """Teacher logits, [CLS] states and unit input gradients of its confidence signal (no graph kept)."""
    if not with_gradients:  # logits and [CLS] states only: record no graph
        with torch.no_grad():
            out = model(**model_inputs(model, batch), output_hidden_states=True)
        cls_only = torch.stack([h[:, 0] for h in out.hidden_states], dim=1)
        return TeacherTargets(logits=out.logits.float(), cls_states=cls_only.float())
    with torch.enable_grad():
        result = forward(model, batch, hidden_states=True)
        assert result.hidden_states is not None
        cls_states = torch.stack([h[:, 0] for h in result.hidden_states], dim=1)
        signal = losses.confidence_signal(result.logits)
        # hidden_states[0] is E itself for most families, but E projected to the hidden width for ALBERT and
        # ELECTRA: the per-layer [CLS] gradients are taken at hidden_states[k], all of the hidden width.
        tensors = [result.embedding_output, *result.hidden_states]
        grads = torch.autograd.grad(signal, tensors, allow_unused=True)
    embedding_grad = grads[0]
    assert embedding_grad is not None
    layer_cls = [
        (g[:, 0] if g is not None else torch.zeros_like(h[:, 0]))
        for g, h in zip(grads[1:], result.hidden_states, strict=True)
    ]
    mask = batch.attention_mask
    return TeacherTargets(
        logits=result.logits.detach().float(),
        unit_gradients=losses.unit_vectors(embedding_grad.float()) * mask[..., None],
        saliency=losses.token_saliency(embedding_grad, mask),
        cls_states=cls_states.detach().float(),
        cls_unit_gradients=losses.unit_vectors(torch.stack(layer_cls, dim=1).float()),
    )


@dataclass
class LossParts:
    """One batch's loss, split where the trainer may rebalance it (`hyperparameters.gradient_term_cap`).

    `base` is everything but the gradient term(s) (CE, or logit KD plus PKD), `gradient` the weighted
    gradient term (`beta * L_grad` or `gamma * L_grads`; None for methods without one)."""

    base: Tensor
    gradient: Tensor | None
    terms: dict[str, float]

    @property
    def total(self) -> Tensor:
        return self.base if self.gradient is None else self.base + self.gradient


def student_loss_parts(
    method: str,
    hp: Hyperparameters,
    student: PreTrainedModel,
    batch: Batch,
    targets: TeacherTargets | None,
    layer_pairs: Sequence[tuple[int, int]] = (),
    vector_form: bool = True,
    gradient_scale: float = 1.0,
    input_gradient_scale: float = 1.0,
) -> LossParts:
    """The loss of one batch for `method`, kept in its two parts (see `LossParts`).

    `gradient_scale` multiplies beta (gradient_kd) or gamma (gradient_kd_cls); the trainer uses it to ramp
    the gradient terms in (`hyperparameters.gradient_warmup_ratio`). At 0 the gradient terms are not computed
    at all (no double backprop), so steps before the ramp cost what a `kd` step costs. `input_gradient_scale` is
    the fp16 loss scale, applied to the input-gradient pass too (`gkd.method.precision`)."""
    spec = method_properties(method)
    result = forward(student, batch, hidden_states=spec.hidden_states)
    logits = result.logits
    if not spec.teacher_logits:
        loss = losses.ce_loss(logits, batch.labels)
        return LossParts(loss, None, {"ce": float(loss.detach())})
    if targets is None:
        raise ValueError(f"method {method!r} needs teacher targets")
    loss, parts = losses.kd_loss(
        logits, targets.logits, batch.labels, temperature=hp.temperature, alpha=hp.alpha,
        reduction=hp.kl_reduction,
    )
    terms = {name: float(value.detach()) for name, value in parts.items()}
    # the student's agreement with the teacher's predicted labels: what the trainer's accuracy guard watches
    terms["agree"] = float((logits.detach().argmax(dim=-1) == targets.logits.argmax(dim=-1)).float().mean())
    if spec.pkd_term:
        assert result.hidden_states is not None and targets.cls_states is not None
        pkd = logits.new_zeros(())
        if layer_pairs:  # a 1-layer student has no intermediate layer to match: the term is 0
            student_cls = torch.stack([result.hidden_states[k][:, 0] for k, _ in layer_pairs], dim=1)
            teacher_cls = targets.cls_states[:, [t for _, t in layer_pairs]]
            pkd = losses.pkd_loss(teacher_cls, student_cls)
        loss = loss + hp.beta_weight * pkd
        terms["pkd"] = float(pkd.detach())
    weighted_gradient = None
    if spec.input_gradients and gradient_scale > 0:
        grad_term = _gradient_term(spec, result, batch, targets, layer_pairs, vector_form, input_gradient_scale)
        weighted_gradient = spec.gradient_term_weight(hp) * gradient_scale * grad_term
        terms["grad"] = float(grad_term.detach())
    return LossParts(loss, weighted_gradient, terms)


def _gradient_term(
    spec: MethodProperties,
    result: ForwardResult,
    batch: Batch,
    targets: TeacherTargets,
    layer_pairs: Sequence[tuple[int, int]],
    vector_form: bool,
    input_gradient_scale: float = 1.0,
) -> Tensor:
    """Double backprop: the student's input gradients keep their graph (`create_graph=True`)."""
    signal = losses.confidence_signal(result.logits)
    tensors = [result.embedding_output]
    if spec.cls_gradients:
        assert result.hidden_states is not None
        tensors += [result.hidden_states[k] for k, _ in layer_pairs]
    grads = scaled_input_gradients(signal, tensors, input_gradient_scale, create_graph=True)
    mask = batch.attention_mask
    if vector_form:
        assert targets.unit_gradients is not None
        term = losses.gradient_alignment_loss(targets.unit_gradients, grads[0], mask)
    else:
        assert targets.saliency is not None
        term = losses.saliency_alignment_loss(targets.saliency, grads[0], mask)
    if spec.cls_gradients and layer_pairs:
        assert targets.cls_unit_gradients is not None
        teacher_cls = targets.cls_unit_gradients[:, [t for _, t in layer_pairs]]
        term = term + losses.cls_gradient_loss(teacher_cls, [g[:, 0] for g in grads[1:]])
    return term


def student_saliency_gradients(student: PreTrainedModel, batch: Batch) -> tuple[Tensor, Tensor]:
    """Student logits and input gradients of its confidence (evaluation; no graph kept)."""
    with torch.enable_grad():
        result = forward(student, batch)
        signal = losses.confidence_signal(result.logits)
        (grad,) = torch.autograd.grad(signal, [result.embedding_output])
    return result.logits.detach(), grad.detach()
