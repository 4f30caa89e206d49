"""gkd.method.gradient_cap: the gradient term's parameter gradient is capped against the logit loss's."""

from __future__ import annotations

import pytest
import torch

from gkd.method.gradient_cap import GradientCap, capped_backward, capped_scale


def test_scale_is_one_within_the_cap_and_shrinks_the_excess_exactly():
    assert capped_scale(base_norm=2.0, extra_norm=1.0, cap=1.0) == 1.0
    assert capped_scale(base_norm=2.0, extra_norm=2.0, cap=1.0) == 1.0
    assert capped_scale(base_norm=1.0, extra_norm=8.0, cap=0.5) == pytest.approx(1 / 16)
    assert capped_scale(base_norm=1.0, extra_norm=0.0, cap=1.0) == 1.0  # nothing to cap


def _two_parameters() -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    return torch.nn.Parameter(torch.tensor([1.0, 2.0])), torch.nn.Parameter(torch.tensor([3.0]))


def test_capped_backward_adds_base_plus_scaled_extra_to_grad():
    a, b = _two_parameters()
    # d base / d(a, b) = (1, 1, 0): norm sqrt(2). d extra / d(a, b) = (0, 0, 2 * 3 * 10) = (0, 0, 60).
    base = a.sum()
    extra = 10.0 * b.pow(2).sum()
    scale = capped_backward(base, extra, [a, b], cap=0.5, weight=0.25)
    expected_scale = 0.5 * 2**0.5 / 60.0
    assert scale == pytest.approx(expected_scale)
    assert a.grad is not None and b.grad is not None
    torch.testing.assert_close(a.grad, torch.tensor([0.25, 0.25]))
    torch.testing.assert_close(b.grad, torch.tensor([0.25 * 60.0 * expected_scale]))
    # the capped extra gradient is exactly `cap` times the base gradient's norm (before the share)
    assert float(b.grad.norm()) / 0.25 == pytest.approx(0.5 * 2**0.5)


def test_capped_backward_accumulates_and_matches_plain_backward_under_the_cap():
    a, b = _two_parameters()
    a.grad = torch.tensor([1.0, 1.0])  # an earlier micro-batch
    base, extra = (a * a).sum(), 0.1 * (a * b).sum()
    assert capped_backward(base, extra, [a, b], cap=1.0) == 1.0
    a2, b2 = _two_parameters()
    ((a2 * a2).sum() + 0.1 * (a2 * b2).sum()).backward()
    assert a.grad is not None and a2.grad is not None
    torch.testing.assert_close(a.grad, a2.grad + 1.0)
    torch.testing.assert_close(b.grad, b2.grad)


def test_capped_backward_leaves_parameters_outside_both_terms_untouched():
    a, b = _two_parameters()
    unused = torch.nn.Parameter(torch.zeros(2))
    capped_backward(a.sum(), b.sum(), [a, b, unused], cap=1.0)
    assert unused.grad is None


def test_per_tensor_cap_bounds_each_tensor_against_its_own_base_gradient():
    a, b = _two_parameters()
    # base reaches only a: d base / d a = (1, 1). extra reaches a with (0.1, 0.1) and b with (6,).
    base = a.sum()
    extra = 0.1 * a.sum() + 2.0 * b.sum() * 3.0
    scale = capped_backward(base, extra, [a, b], cap=1.0, per_tensor=True)
    assert a.grad is not None and b.grad is not None
    torch.testing.assert_close(a.grad, torch.tensor([1.1, 1.1]))  # within a's cap: kept whole
    torch.testing.assert_close(b.grad, torch.tensor([0.0]))  # b gets nothing from the base: capped to zero
    assert scale == pytest.approx((1.0 * 2 + 0.0 * 1) / 3)  # size-weighted mean of the per-tensor factors
    # the global cap would have let b through: ||d extra|| = 6.0017 > sqrt(2) * 1, so c = 0.2356 for every tensor
    a2, b2 = _two_parameters()
    capped_backward(a2.sum(), 0.1 * a2.sum() + 6.0 * b2.sum(), [a2, b2], cap=1.0)
    assert b2.grad is not None and float(b2.grad) > 1.0


def _quadratic_terms(a: torch.nn.Parameter, b: torch.nn.Parameter, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """base reaches a with (1, 1); extra = weight * 30 * b^2 reaches b with weight * 180 at b = 3."""
    return a.sum(), weight * 30.0 * b.pow(2).sum()


def test_gradient_cap_measures_on_its_schedule_and_reuses_the_ratio_in_between():
    cap = GradientCap(cap=0.5, every=3)
    a, b = _two_parameters()
    scales, measured = [], []
    for _ in range(4):
        cap.next_step()
        a.grad = b.grad = None
        base, extra = _quadratic_terms(a, b, 1.0)
        scales.append(cap.backward(base, extra, [a, b]))
        measured.append(cap.measured_this_step)
        assert b.grad is not None
        # the update is always base + c * extra, whichever way c was found
        torch.testing.assert_close(b.grad, torch.tensor([180.0 * scales[-1]]))
    assert measured == [True, False, False, True]
    expected = 0.5 * 2**0.5 / 180.0
    assert scales == pytest.approx([expected] * 4)


def test_gradient_cap_corrects_the_reused_ratio_for_the_term_weight():
    cap = GradientCap(cap=0.5, every=10)
    a, b = _two_parameters()
    cap.next_step()
    first = cap.backward(*_quadratic_terms(a, b, 0.25), [a, b], extra_weight=0.25)
    cap.next_step()
    a.grad = b.grad = None
    second = cap.backward(*_quadratic_terms(a, b, 1.0), [a, b], extra_weight=1.0)
    assert not cap.measured_this_step
    # the term is 4x heavier now, so the reused scale is 4x smaller: exactly what measuring would give
    assert second == pytest.approx(first / 4)
    a2, b2 = _two_parameters()
    assert capped_backward(*_quadratic_terms(a2, b2, 1.0), [a2, b2], cap=0.5) == pytest.approx(second)
    assert b.grad is not None and b2.grad is not None
    torch.testing.assert_close(b.grad, b2.grad)


def test_gradient_cap_within_the_cap_reuses_one_and_per_tensor_always_measures():
    cap = GradientCap(cap=1.0, every=5)
    a, b = _two_parameters()
    for _ in range(2):
        cap.next_step()
        assert cap.backward(a.sum(), 0.01 * b.sum(), [a, b]) == 1.0
    per_tensor = GradientCap(cap=1.0, every=5, per_tensor=True)
    for _ in range(3):
        per_tensor.next_step()
        per_tensor.backward(a.sum(), 0.01 * b.sum(), [a, b])
        assert per_tensor.measured_this_step


def test_gradient_cap_measures_every_micro_batch_of_a_measuring_step():
    cap = GradientCap(cap=1.0, every=4)
    a, b = _two_parameters()
    cap.next_step()
    for _ in range(3):  # gradient accumulation: three micro-batches in one optimisation step
        cap.backward(a.sum(), b.sum(), [a, b], weight=1 / 3)
        assert cap.measured_this_step
    cap.next_step()
    cap.backward(a.sum(), b.sum(), [a, b])
    assert not cap.measured_this_step
