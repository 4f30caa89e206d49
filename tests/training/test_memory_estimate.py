"""gkd.training.memory_estimate: the parameter counts match real models, and the estimate grows the way memory does
(units, monotonicity, the double-backward factor, the largest batch that fits)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gkd.models.teacher import describe_teacher
from gkd.training.memory_estimate import (
    CACHE_BATCH_SIZE,
    DOUBLE_BACKWARD_FACTOR,
    EVAL_BATCH_SIZE,
    FLOAT_BYTES,
    RUNTIME_BYTES,
    EncoderShape,
    JobShape,
    activation_bytes_per_example,
    encoder_parameters,
    estimate_job_memory,
    with_inferred_ffn,
)
from tests.support.factories import make_tiny_teacher

BERT_BASE = EncoderShape(layers=12, hidden=768, heads=12, vocab=30522, positions=512, embedding=768, labels=2)


def job(**changes: object) -> JobShape:
    values: dict[str, object] = {"teacher": BERT_BASE, "student": dataclasses.replace(BERT_BASE, layers=6),
                                 "batch_size": 32, "max_length": 128, "input_gradients": True}
    return JobShape(**{**values, **changes})  # type: ignore[arg-type]


def test_bert_base_has_its_published_parameter_count() -> None:
    # bert-base-uncased with a 2-class head (BertForSequenceClassification): 109,483,778 parameters
    assert encoder_parameters(BERT_BASE) == 109_483_778


@pytest.mark.parametrize(("layers", "hidden"), [(2, 32), (3, 48)])
def test_the_count_of_a_real_saved_model_is_met_and_its_ffn_width_is_inferred(tmp_path: Path, layers: int,
                                                                                hidden: int) -> None:
    teacher = make_tiny_teacher(tmp_path / "t", num_layers=layers, hidden=hidden)  # FFN 2 x hidden, not 4 x
    info = describe_teacher(teacher)
    shape = EncoderShape(layers=info.num_layers, hidden=info.hidden_size, heads=info.num_attention_heads,
                         vocab=info.vocab_size, positions=info.max_position_embeddings,
                         embedding=info.embedding_size, labels=len(info.labels))
    inferred = with_inferred_ffn(shape, info.num_parameters)
    assert inferred.ffn == 2 * hidden
    assert encoder_parameters(inferred) == info.num_parameters  # the safetensors count, exactly
    assert with_inferred_ffn(shape, 1).ffn == 4 * hidden  # a count no FFN width explains keeps the convention


def test_the_parts_are_in_bytes_of_fp32() -> None:
    estimate = estimate_job_memory(job())
    student = dataclasses.replace(BERT_BASE, layers=6)
    assert estimate.teacher_weights == FLOAT_BYTES * 109_483_778
    assert estimate.student_weights == FLOAT_BYTES * encoder_parameters(student)
    assert estimate.optimiser == 3 * estimate.student_weights  # gradient and two AdamW moments
    assert estimate.per_example == DOUBLE_BACKWARD_FACTOR * activation_bytes_per_example(student, 128)
    assert estimate.cache_build == CACHE_BATCH_SIZE * activation_bytes_per_example(BERT_BASE, 128)
    assert estimate.evaluation == EVAL_BATCH_SIZE * activation_bytes_per_example(student, 128)  # one backward
    assert estimate.runtime == RUNTIME_BYTES
    # gradient_kd at batch 64 x 128 tokens on BERT-base -> 6 layers: GiB, not MiB and not TiB
    assert 6 * 1024**3 < estimate.peak(64) < 24 * 1024**3


def test_the_estimate_grows_with_every_size_and_the_double_backward() -> None:
    base = estimate_job_memory(job())
    # below about 40 examples the teacher-cache build (64 examples through BERT-base) is the peak, then training
    assert base.peak(1) == base.peak(32) == base.teacher_stage
    assert base.peak(256) > base.peak(128) > base.peak(64) > base.teacher_stage
    b = 64
    assert estimate_job_memory(job(max_length=512)).peak(b) > base.peak(b)
    assert estimate_job_memory(job(student=dataclasses.replace(BERT_BASE, layers=8))).peak(b) > base.peak(b)
    wider = dataclasses.replace(BERT_BASE, layers=6, hidden=1024, heads=16)
    assert estimate_job_memory(job(student=wider)).peak(b) > base.peak(b)
    assert estimate_job_memory(job(teacher=dataclasses.replace(BERT_BASE, layers=24))).teacher_stage \
        > base.teacher_stage
    kd = estimate_job_memory(job(input_gradients=False))
    assert kd.per_example * DOUBLE_BACKWARD_FACTOR == base.per_example and kd.peak(b) < base.peak(b)
    frozen = estimate_job_memory(job(embeddings_trainable=False))
    assert frozen.optimiser < base.optimiser and frozen.student_weights == base.student_weights
    # attention grows with the square of the length: 4x the tokens is more than 4x the activations
    assert activation_bytes_per_example(BERT_BASE, 512) > 4 * activation_bytes_per_example(BERT_BASE, 128)
    # a teacher file with more weights than its config implies is counted by its weights
    assert estimate_job_memory(job(teacher_parameters=10**9)).teacher_weights == FLOAT_BYTES * 10**9


def test_largest_batch_is_the_boundary_of_the_budget() -> None:
    estimate = estimate_job_memory(job())
    for budget in (8 * 1024**3, 12 * 1024**3, 24 * 1024**3):
        largest = estimate.largest_batch(budget)
        assert largest >= 1
        assert estimate.peak(largest) <= budget < estimate.peak(largest + 1)
    assert estimate.largest_batch(estimate.fixed) == 0  # the models alone fill it
    assert estimate.largest_batch(estimate.teacher_stage - 1) == 0
    # an evaluation batch of a long input through a deep student can be the peak whatever the training batch
    deep = estimate_job_memory(job(teacher=dataclasses.replace(BERT_BASE, layers=2), max_length=512,
                                   input_gradients=False))
    assert deep.evaluation_stage > deep.teacher_stage and deep.peak(1) == deep.evaluation_stage
    assert deep.largest_batch(deep.evaluation_stage - 1) == 0
