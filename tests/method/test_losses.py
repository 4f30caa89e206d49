"""gkd.method.losses against hand-computed values, plus gradchecks through the double backward (GKD.md, 'works' 1).

Expectations are written with `math` on explicit small numbers, never with the torch expression under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gkd.data.batching import Batch
from gkd.evaluation.metrics import accuracy_f1
from gkd.method import losses
from gkd.method.objective import TeacherTargets, student_loss_parts

LN3 = math.log(3.0)


def _t(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


# ------------------------------------------------------------------ logit terms
# Row 0: teacher p = softmax([2 ln3, 0] / 2) = [3/4, 1/4], student q = [1/2, 1/2].
# Row 1: teacher p = [1/2, 1/2], student q = softmax([0, 2 ln3] / 2) = [1/4, 3/4].
TEACHER = [[2 * LN3, 0.0], [0.0, 0.0]]
STUDENT = [[0.0, 0.0], [0.0, 2 * LN3]]
KL0 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
KL1 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)


def test_kl_term_mean_averages_over_all_b_times_c_elements():
    value = losses.kl_term(_t(STUDENT), _t(TEACHER), temperature=2.0, reduction="mean")
    # T^2 * (sum of pointwise KL) / (B * C) = 4 * (KL0 + KL1) / 4
    assert float(value) == pytest.approx(KL0 + KL1, rel=1e-6)
    assert float(value) > 0


def test_kl_term_batchmean_averages_over_examples():
    value = losses.kl_term(_t(STUDENT), _t(TEACHER), temperature=2.0, reduction="batchmean")
    assert float(value) == pytest.approx(4 * (KL0 + KL1) / 2, rel=1e-6)


@pytest.mark.filterwarnings("ignore:reduction")
def test_kl_term_mean_matches_pytorch_kldivloss_mean_semantics():
    student = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    teacher = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    reference = torch.nn.KLDivLoss(reduction="mean")(F.log_softmax(student / 5, -1), F.softmax(teacher / 5, -1)) * 25
    assert float(losses.kl_term(student, teacher, 5.0, "mean")) == pytest.approx(float(reference), rel=1e-5)
    # batchmean is C times the mean form
    assert float(losses.kl_term(student, teacher, 5.0, "batchmean")) == pytest.approx(4 * float(reference), rel=1e-5)


def test_kl_term_is_zero_for_identical_logits():
    z = _t([[1.0, -2.0, 0.5]])
    assert float(losses.kl_term(z, z, 3.0)) == pytest.approx(0.0, abs=1e-7)


def test_kd_loss_mixes_kl_and_ce_with_alpha():
    labels = torch.tensor([0, 0])
    # CE: row 0 softmax([0, 0])[0] = 1/2; row 1 softmax([0, 2 ln3])[0] = 1/(1+9) = 1/10
    ce = (math.log(2.0) + math.log(10.0)) / 2
    kd = KL0 + KL1
    loss, parts = losses.kd_loss(_t(STUDENT), _t(TEACHER), labels, temperature=2.0, alpha=0.3)
    assert float(loss) == pytest.approx(0.3 * kd + 0.7 * ce, rel=1e-6)
    assert float(parts["kd"]) == pytest.approx(kd, rel=1e-6)
    assert float(parts["ce"]) == pytest.approx(ce, rel=1e-6)
    only_ce, _ = losses.kd_loss(_t(STUDENT), _t(TEACHER), labels, temperature=2.0, alpha=0.0)
    only_kd, _ = losses.kd_loss(_t(STUDENT), _t(TEACHER), labels, temperature=2.0, alpha=1.0, reduction="batchmean")
    assert float(only_ce) == pytest.approx(ce, rel=1e-6)
    assert float(only_kd) == pytest.approx(2 * kd, rel=1e-6)


def test_kd_loss_scales_kl_by_temperature_squared():
    # Temperature 1 on logits [ln3, 0] vs [0, 0] gives the same distributions as T=2 on doubled logits,
    # so the two KL terms differ exactly by the T^2 factor (4 / 1).
    at_t1 = losses.kl_term(_t([[0.0, 0.0]]), _t([[LN3, 0.0]]), temperature=1.0)
    at_t2 = losses.kl_term(_t([[0.0, 0.0]]), _t([[2 * LN3, 0.0]]), temperature=2.0)
    assert float(at_t1) == pytest.approx(KL0 / 2, rel=1e-6)
    assert float(at_t2) == pytest.approx(4 * float(at_t1), rel=1e-6)


def test_ce_loss_hand_value():
    logits = _t([[LN3, 0.0, 0.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 2])
    # row 0: p = 3/5; row 1: p = 1/3
    expected = (-math.log(3 / 5) - math.log(1 / 3)) / 2
    assert float(losses.ce_loss(logits, labels)) == pytest.approx(expected, rel=1e-6)


def test_confidence_signal_sums_each_rows_max_probability():
    logits = _t([[LN3, 0.0], [0.0, math.log(4.0)], [0.0, 0.0]])
    assert float(losses.confidence_signal(logits)) == pytest.approx(0.75 + 0.8 + 0.5, rel=1e-6)
    three = _t([[0.0, 0.0, 0.0]])
    assert float(losses.confidence_signal(three)) == pytest.approx(1 / 3, rel=1e-6)


# ------------------------------------------------------------------ gradient terms
def test_unit_vectors_normalise_and_keep_zero_vectors_zero():
    out = losses.unit_vectors(_t([[[3.0, 4.0], [0.0, 0.0]], [[0.0, -2.0], [1e-3, 0.0]]]))
    expected = [[[0.6, 0.8], [0.0, 0.0]], [[0.0, -1.0], [1.0, 0.0]]]
    assert torch.isfinite(out).all()
    assert torch.allclose(out, _t(expected), atol=1e-6)


# B=2, L=3, H=2; the last position of row 1 is padding.
MASK = [[1, 1, 1], [1, 1, 0]]
TEACHER_UNIT = [[[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], [[-1.0, 0.0], [0.8, -0.6], [0.0, 0.0]]]
STUDENT_GRAD = [[[2.0, 0.0], [3.0, 0.0], [0.0, -5.0]], [[1.0, 0.0], [0.3, 0.4], [7.0, 7.0]]]
# 2 - 2cos per real token: cos = 1, 0, -0.8, -1, 0  ->  0, 2, 3.6, 4, 2 ; mean over 5 real tokens
GRAD_LOSS = (0 + 2 + 3.6 + 4 + 2) / 5


def test_gradient_alignment_loss_hand_value_ignores_padding():
    value = losses.gradient_alignment_loss(_t(TEACHER_UNIT), _t(STUDENT_GRAD), torch.tensor(MASK))
    assert float(value) == pytest.approx(GRAD_LOSS, rel=1e-6)
    # whatever sits at the padded position must not change the loss
    other = [row[:] for row in STUDENT_GRAD]
    other[1] = [[1.0, 0.0], [0.3, 0.4], [-100.0, 3.0]]
    changed = losses.gradient_alignment_loss(_t(TEACHER_UNIT), _t(other), torch.tensor(MASK))
    assert float(changed) == pytest.approx(GRAD_LOSS, rel=1e-6)
    # without the mask the padded token (teacher 0, student unit) would add 1 and count as a 6th token
    unmasked = losses.gradient_alignment_loss(_t(TEACHER_UNIT), _t(STUDENT_GRAD), torch.ones(2, 3))
    assert float(unmasked) == pytest.approx((GRAD_LOSS * 5 + 1) / 6, rel=1e-6)


def test_gradient_alignment_loss_is_scale_invariant_and_zero_when_aligned():
    mask = torch.tensor(MASK)
    scaled = _t(STUDENT_GRAD) * 17.0
    assert float(losses.gradient_alignment_loss(_t(TEACHER_UNIT), scaled, mask)) == pytest.approx(GRAD_LOSS, rel=1e-6)
    aligned = _t(TEACHER_UNIT) * 3.0
    assert float(losses.gradient_alignment_loss(_t(TEACHER_UNIT), aligned, mask)) == pytest.approx(0.0, abs=1e-7)


def test_gradient_alignment_loss_zero_student_gradient_costs_one():
    teacher = _t([[[0.6, 0.8]]])
    assert float(losses.gradient_alignment_loss(teacher, torch.zeros(1, 1, 2), torch.ones(1, 1))) == pytest.approx(1.0)


SAL_MASK = [[1, 1, 0], [1, 1, 0]]


def test_token_saliency_is_masked_and_l2_normalised():
    grads = _t([[[3.0, 0.0], [0.0, 4.0], [9.0, 9.0]], [[0.0, 0.0], [0.0, 5.0], [9.0, 9.0]]])
    out = losses.token_saliency(grads, torch.tensor(SAL_MASK))
    # row 0 norms 3, 4, 0 (pad) -> /5 ; row 1 norms ~0, 5, pad -> [0, 1, 0]
    assert torch.allclose(out, _t([[0.6, 0.8, 0.0], [0.0, 1.0, 0.0]]), atol=1e-6)


def test_saliency_alignment_loss_hand_value():
    teacher = _t([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0]])
    grads = _t([[[3.0, 0.0], [0.0, 4.0], [9.0, 9.0]], [[0.0, 0.0], [0.0, 5.0], [9.0, 9.0]]])
    # row 0: student [0.6, 0.8, 0] -> 0.4^2 + 0.8^2 = 0.8 ; row 1: student [0, 1, 0] -> 0.6^2 + 0.2^2 = 0.4
    value = losses.saliency_alignment_loss(teacher, grads, torch.tensor(SAL_MASK))
    assert float(value) == pytest.approx((0.8 + 0.4) / 2, rel=1e-5)


def test_pkd_loss_normalises_cls_vectors_and_averages_over_all_elements():
    teacher = _t([[[3.0, 4.0], [1.0, 0.0]]])
    student = _t([[[4.0, 3.0], [0.0, 2.0]]])
    # units: T [.6,.8],[1,0]; S [.8,.6],[0,1]; squared diffs .04 .04 1 1 ; mean over 1*2*2
    assert float(losses.pkd_loss(teacher, student)) == pytest.approx(2.08 / 4, rel=1e-6)
    assert float(losses.pkd_loss(teacher, teacher * 10)) == pytest.approx(0.0, abs=1e-7)


def test_cls_gradient_loss_sums_layers_of_batch_means():
    teacher = _t([[[1.0, 0.0], [0.6, 0.8]], [[0.0, 1.0], [1.0, 0.0]]])  # [B=2, K=2, H=2]
    layer0 = _t([[5.0, 0.0], [1.0, 0.0]])  # distances 0, 2 -> mean 1
    layer1 = _t([[-3.0, -4.0], [0.0, 0.0]])  # distances 4, 1 (zero gradient) -> mean 2.5
    assert float(losses.cls_gradient_loss(teacher, [layer0, layer1])) == pytest.approx(3.5, rel=1e-6)
    stacked = torch.stack([layer0, layer1], dim=1)
    assert float(losses.cls_gradient_loss(teacher, stacked)) == pytest.approx(3.5, rel=1e-6)


def test_cosine_agreement_hand_value_ignores_padding():
    teacher = _t([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])
    student = _t([[[1.0, 1.0], [0.0, 2.0], [-1.0, 0.0]]])
    value = losses.cosine_agreement(teacher, student, torch.tensor([[1, 1, 0]]))
    assert float(value) == pytest.approx((1 / math.sqrt(2) + 1.0) / 2, rel=1e-6)


def test_topk_overlap_hand_values_with_padding_and_short_rows():
    teacher = _t([[0.9, 0.1, 0.5, 0.3, 0.2], [0.1, 0.9, 0.9, 0.9, 0.9]])
    student = _t([[0.8, 0.7, 0.1, 0.0, 0.05], [0.2, 0.0, 0.0, 5.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    # row 0: teacher top-2 {0, 2}, student {0, 1} -> 1/2 ; row 1 has one real token, k shrinks to 1 -> 1
    assert float(losses.topk_overlap(teacher, student, mask, k=2)) == pytest.approx(0.75)
    # k=3, row 0: teacher {0, 2, 3}, student {0, 1, 2} -> 2/3
    assert float(losses.topk_overlap(teacher[:1], student[:1], mask[:1], k=3)) == pytest.approx(2 / 3)
    # row with 2 real tokens and k=3: both tokens are in both top sets -> 1
    short_mask = torch.tensor([[1, 1, 0, 0, 0]])
    assert float(losses.topk_overlap(teacher[:1], student[:1], short_mask, k=3)) == pytest.approx(1.0)


def test_accuracy_f1_hand_values():
    predictions = np.array([0, 1, 1, 2, 0])
    gold = np.array([0, 1, 2, 2, 1])
    result = accuracy_f1(predictions, gold, num_labels=4)  # label 3 appears nowhere: skipped
    # F1: label 0 tp1 fp1 fn0 -> 2/3 ; label 1 tp1 fp1 fn1 -> 1/2 ; label 2 tp1 fp0 fn1 -> 2/3
    assert result["accuracy"] == pytest.approx(0.6)
    assert result["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    perfect = accuracy_f1(np.array([1, 0]), np.array([1, 0]), 2)
    assert perfect == {"accuracy": 1.0, "macro_f1": 1.0}
    # predicting one class for all: class 0 F1 = 2*2/(4+2) = 2/3, class 1 F1 = 0 -> macro 1/3
    constant = accuracy_f1(np.array([0, 0, 0, 0]), np.array([0, 0, 1, 1]), 2)
    assert constant["accuracy"] == pytest.approx(0.5)
    assert constant["macro_f1"] == pytest.approx(1 / 3)
    assert accuracy_f1(np.array([]), np.array([]), 2) == {"accuracy": 0.0, "macro_f1": 0.0}


# ------------------------------------------------------------------ gradchecks through the double backward
B, L, H, C = 2, 3, 4, 3
GEN = torch.Generator().manual_seed(1234)
EMB = torch.randn(B, L, H, generator=GEN, dtype=torch.float64)
GMASK = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.float64)
W1 = torch.randn(H, H, generator=GEN, dtype=torch.float64)
W2 = torch.randn(H, C, generator=GEN, dtype=torch.float64)
TEACHER_G = torch.randn(B, L, H, generator=GEN, dtype=torch.float64)


def _tiny_student(embeddings: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """Logits of a small differentiable model over E: a masked self-attention, tanh MLP, mean pool."""
    scores = embeddings @ embeddings.transpose(1, 2) / math.sqrt(H)
    scores = scores.masked_fill(GMASK[:, None, :] == 0, -1e9)
    mixed = torch.softmax(scores, dim=-1) @ embeddings
    hidden = torch.tanh(mixed @ w1)
    pooled = (hidden * GMASK[..., None]).sum(1) / GMASK.sum(1, keepdim=True)
    return pooled @ w2


def _student_input_gradients(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    embeddings = EMB.clone().requires_grad_(True)
    signal = losses.confidence_signal(_tiny_student(embeddings, w1, w2))
    (grad,) = torch.autograd.grad(signal, embeddings, create_graph=True)
    return grad


def test_double_backward_gradient_alignment_gradcheck_float64():
    teacher_unit = losses.unit_vectors(TEACHER_G) * GMASK[..., None]

    def loss_of_weights(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        loss = losses.gradient_alignment_loss(teacher_unit, _student_input_gradients(w1, w2), GMASK)
        assert loss.dtype == torch.float64
        return loss

    w1, w2 = W1.clone().requires_grad_(True), W2.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(loss_of_weights, (w1, w2), eps=1e-6, atol=1e-6, rtol=1e-4)
    # the loss really depends on the weights (not a constant that trivially passes)
    (g1, g2) = torch.autograd.grad(loss_of_weights(w1, w2), (w1, w2))
    assert g1.abs().sum() > 1e-6 and g2.abs().sum() > 1e-6


def test_double_backward_saliency_alignment_gradcheck_float64():
    teacher_saliency = losses.token_saliency(TEACHER_G, GMASK)

    def loss_of_weights(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        return losses.saliency_alignment_loss(teacher_saliency, _student_input_gradients(w1, w2), GMASK)

    w1, w2 = W1.clone().requires_grad_(True), W2.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(loss_of_weights, (w1, w2), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_first_order_gradchecks_of_the_pure_losses_float64():
    mask = GMASK
    teacher_unit = losses.unit_vectors(TEACHER_G)
    grads = torch.randn(B, L, H, dtype=torch.float64, generator=torch.Generator().manual_seed(5), requires_grad=True)
    assert torch.autograd.gradcheck(lambda g: losses.gradient_alignment_loss(teacher_unit, g, mask), (grads,))
    assert torch.autograd.gradcheck(
        lambda g: losses.saliency_alignment_loss(losses.token_saliency(TEACHER_G, mask), g, mask), (grads,)
    )
    cls = torch.randn(B, 2, H, dtype=torch.float64, generator=torch.Generator().manual_seed(6), requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: losses.pkd_loss(teacher_unit[:, :2], s), (cls,))
    assert torch.autograd.gradcheck(lambda s: losses.cls_gradient_loss(teacher_unit[:, :2], s), (cls,))
    logits = torch.randn(B, C, dtype=torch.float64, generator=torch.Generator().manual_seed(7), requires_grad=True)
    teacher_logits = torch.randn(B, C, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    labels = torch.tensor([0, 2])
    assert torch.autograd.gradcheck(
        lambda z: losses.kd_loss(z, teacher_logits, labels, temperature=3.0, alpha=0.4)[0], (logits,)
    )


def test_double_backward_gradcheck_on_a_tiny_bert_student_float64():
    """gradient_kd_cls on a real (tiny) BertForSequenceClassification, w.r.t. a small parameter subset."""
    from transformers import BertConfig, BertForSequenceClassification

    from gkd.config import Hyperparameters

    torch.manual_seed(0)
    config = BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=16, num_labels=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    config._attn_implementation = "eager"
    model = BertForSequenceClassification(config).double().eval()
    model.requires_grad_(False)
    batch = Batch(
        input_ids=torch.tensor([[2, 5, 7, 3], [2, 9, 3, 0]]),
        attention_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
        token_type_ids=torch.zeros(2, 4, dtype=torch.long),
        labels=torch.tensor([1, 0]),
        indices=torch.tensor([0, 1]),
    )
    gen = torch.Generator().manual_seed(3)
    targets = TeacherTargets(
        logits=torch.randn(2, 2, generator=gen, dtype=torch.float64),
        unit_gradients=losses.unit_vectors(torch.randn(2, 4, 8, generator=gen, dtype=torch.float64))
        * batch.attention_mask[..., None],
        cls_states=torch.randn(2, 3, 8, generator=gen, dtype=torch.float64),
        cls_unit_gradients=losses.unit_vectors(torch.randn(2, 3, 8, generator=gen, dtype=torch.float64)),
    )
    hp = Hyperparameters(temperature=2.0, alpha=0.5, beta=1.0, gamma=1.0)
    names = ["bert.encoder.layer.0.attention.self.query.bias", "bert.encoder.layer.1.output.dense.bias"]

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self) -> torch.Tensor:
            parts = student_loss_parts("gradient_kd_cls", hp, self.inner, batch, targets, [(1, 1)], True)
            assert parts.terms["grad"] > 0 and parts.terms["pkd"] > 0
            return parts.total

    wrapper = Wrapper()

    def loss_of(*params: torch.Tensor) -> torch.Tensor:
        loss = torch.func.functional_call(wrapper, {f"inner.{n}": p for n, p in zip(names, params, strict=True)}, ())
        assert loss.dtype == torch.float64
        return loss

    named = dict(model.named_parameters())
    params = tuple(named[n].detach().clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(loss_of, params, eps=1e-6, atol=1e-6, rtol=1e-4)
