"""The method table (gkd.method.properties): one row per method, matching the objectives of docs/methods.md."""

from __future__ import annotations

import typing

import pytest

from gkd.config import DistillConfig, Hyperparameters
from gkd.method.properties import METHODS, PROPERTIES, Method, method_properties


def test_every_method_has_one_row_in_the_documented_order():
    assert METHODS == ("ce", "kd", "pkd", "gradient_kd", "gradient_kd_cls") == typing.get_args(Method)
    assert list(PROPERTIES) == list(METHODS)
    assert typing.get_args(DistillConfig.model_fields["method"].annotation) == METHODS


@pytest.mark.parametrize(
    ("method", "teacher", "pkd", "gradients", "hidden", "weight"),
    [
        ("ce", False, False, False, False, None),
        ("kd", True, False, False, False, None),
        ("pkd", True, True, False, True, None),
        ("gradient_kd", True, False, True, False, "beta"),
        ("gradient_kd_cls", True, True, True, True, "gamma"),
    ],
)
def test_rows_match_the_objectives(method, teacher, pkd, gradients, hidden, weight):
    row = method_properties(method)
    assert (row.teacher_logits, row.pkd_term, row.input_gradients, row.hidden_states, row.gradient_weight) == (
        teacher, pkd, gradients, hidden, weight)
    assert row.needs_teacher_width == hidden
    hp = Hyperparameters(beta=2.0, gamma=0.5)
    assert row.gradient_term_weight(hp) == {"beta": 2.0, "gamma": 0.5, None: 0.0}[weight]


def test_unknown_method_names_the_known_ones():
    with pytest.raises(ValueError, match="gradient_kd_cls"):
        method_properties("distil")
