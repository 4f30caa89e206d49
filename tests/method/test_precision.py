"""Mixed precision for double backprop (gkd.method.precision): the loss scale keeps input gradients that fp16 would
flush to zero, `auto` picks bf16 only on a CUDA device with bf16 support, and fp16 / bf16 gradient losses match
fp32 on CUDA (those tests skip without it)."""

from __future__ import annotations

import pytest
import torch

from gkd.config import Hyperparameters, RunSettings
from gkd.method import losses
from gkd.method.objective import student_loss_parts, teacher_targets
from gkd.method.precision import Precision, resolve_precision, scaled_input_gradients
from gkd.models.teacher import load_teacher
from tests.support.factories import make_tiny_teacher

FP16_SMALLEST_NORMAL = 6.1e-5


class Fp16Backward(torch.autograd.Function):
    """Identity forward; the backward rounds the incoming gradient to fp16, as a half-precision matmul's backward
    does: values under fp16's range flush to zero (a fake underflow that runs on any CPU)."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return grad.half().float()


def tiny_confidence(x: torch.Tensor, weight: torch.Tensor, *, fp16_backward: bool = True) -> torch.Tensor:
    """A 'model' whose input gradients are about 1e-8 per element, the size fp16 cannot hold; with
    `fp16_backward` the gradient reaching `x` is rounded to fp16."""
    inputs = Fp16Backward.apply(x) if fp16_backward else x
    return losses.confidence_signal((inputs @ weight) @ weight.T[:, :3])


def test_the_scale_keeps_input_gradients_that_fp16_flushes_to_zero() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 6, 16, requires_grad=True)
    weight = torch.randn(16, 16) * 1e-4
    (exact,) = torch.autograd.grad(tiny_confidence(x, weight, fp16_backward=False), [x])  # the fp32 truth
    assert 0 < exact.abs().max() < FP16_SMALLEST_NORMAL

    (plain,) = scaled_input_gradients(tiny_confidence(x, weight), [x], 1.0, create_graph=True)
    (scaled,) = scaled_input_gradients(tiny_confidence(x, weight), [x], 2.0**16, create_graph=True)
    lost = (plain == 0).float().mean()
    assert lost > 0.5  # most of the gradient is gone without the scale...
    assert torch.allclose(scaled, exact, rtol=2e-3, atol=1e-12)  # ...and kept with it
    # and the gradient loss built on it sees the right direction: the unit vectors agree with fp32's
    cos = torch.nn.functional.cosine_similarity(losses.unit_vectors(scaled), losses.unit_vectors(exact), dim=-1)
    assert cos.min() > 0.999


def test_the_scaled_gradients_keep_their_graph_for_the_second_backward() -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 3, 8, requires_grad=True)
    weight = (torch.randn(8, 8) * 1e-4).requires_grad_()
    (exact,) = scaled_input_gradients(tiny_confidence(x, weight, fp16_backward=False), [x], 1.0, create_graph=True)
    (scaled,) = scaled_input_gradients(tiny_confidence(x, weight), [x], 2.0**16, create_graph=True)
    (w_exact,) = torch.autograd.grad(losses.unit_vectors(exact).pow(3).sum(), [weight])
    (w_scaled,) = torch.autograd.grad(losses.unit_vectors(scaled).pow(3).sum(), [weight])
    assert w_exact.abs().max() > 0
    assert torch.allclose(w_scaled, w_exact, rtol=1e-2, atol=1e-3 * float(w_exact.abs().max()))


def test_auto_is_fp32_off_cuda_and_an_explicit_choice_is_kept() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == Precision("fp32", "cpu")
    assert resolve_precision("bf16", cpu).dtype is torch.bfloat16
    fp16 = resolve_precision("fp16", cpu)
    assert fp16.scaled and fp16.grad_scaler().is_enabled()
    assert not resolve_precision("bf16", cpu).grad_scaler().is_enabled()
    assert RunSettings.model_fields["precision"].default == "auto"


# ---------------------------------------------------------------- CUDA (skipped without a GPU)
@pytest.fixture(scope="module")
def cuda_teacher(tmp_path_factory: pytest.TempPathFactory):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    directory = make_tiny_teacher(tmp_path_factory.mktemp("cuda_teacher"), num_layers=2, hidden=32)
    return load_teacher(directory, device="cuda")


def _gradient_loss(teacher, precision: str, scale: float) -> float:
    from gkd.data.batching import collate, encode

    tokenizer = teacher.tokenizer
    texts = ["a good and moving film", "dull and tedious", "the plot was fine but the acting was weak"]
    dataset = encode(tokenizer, texts, None, [1, 0, 0], 32)
    batch = collate(dataset, list(range(len(texts))), int(tokenizer.pad_token_id or 0)).to("cuda")
    targets = teacher_targets(teacher.model, batch)
    hp = Hyperparameters(beta=1.0)
    with Precision(precision, "cuda").autocast() if precision != "fp32" else torch.enable_grad():
        parts = student_loss_parts("gradient_kd", hp, teacher.model, batch, targets, (), True,
                                   input_gradient_scale=scale)
    assert parts.gradient is not None
    return float(parts.gradient.detach())


@pytest.mark.cuda
@pytest.mark.parametrize(("precision", "scale", "tolerance"), [("bf16", 1.0, 0.05), ("fp16", 2.0**16, 0.01)])
def test_half_precision_gradient_losses_match_fp32_on_cuda(cuda_teacher, precision: str, scale: float,
                                                          tolerance: float) -> None:
    """The teacher as its own student: the gradient loss is ~0 in fp32; in bf16/fp16 it must stay close (an fp16
    run without the scale loses the gradients and the loss jumps towards 2)."""
    reference = _gradient_loss(cuda_teacher, "fp32", 1.0)
    assert abs(_gradient_loss(cuda_teacher, precision, scale) - reference) < tolerance
