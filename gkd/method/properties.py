"""What each method needs and computes, in one table (docs/methods.md, 'Objectives').

Config validation, the objective, the trainer, the teacher cache and the service ask this table instead of
comparing method names, so a method is described once: whether it learns from the teacher's logits, which
hidden states it compares, whether it differentiates input gradients (double backprop), and which
hyperparameter weighs its gradient term.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from gkd.config import Hyperparameters

Method = Literal["ce", "kd", "pkd", "gradient_kd", "gradient_kd_cls"]
GradientWeight = Literal["beta", "gamma"]


@dataclass(frozen=True)
class MethodProperties:
    """One training objective: `L = [CE or L_KD] (+ beta * L_PKD) (+ weight * gradient term)`."""

    name: str
    teacher_logits: bool  # L_KD: needs a fine-tuned teacher (live or cached targets); `ce` trains on labels alone
    pkd_term: bool  # + beta * L_PKD over the [CLS] states of mapped layers (needs the teacher's width)
    input_gradients: bool  # a gradient term built by double backprop (`create_graph=True`)
    cls_gradients: bool = False  # the gradient term adds the [CLS] gradients of mapped layers (gradient_kd_cls)
    gradient_weight: GradientWeight | None = None  # the hyperparameter that weighs the gradient term

    @property
    def hidden_states(self) -> bool:
        """Whether the student's forward must return hidden states (PKD, or [CLS] gradients of mapped layers)."""
        return self.pkd_term or self.cls_gradients

    @property
    def needs_teacher_width(self) -> bool:
        """Hidden states are compared vector by vector, so the student must be as wide as the teacher."""
        return self.hidden_states

    def gradient_term_weight(self, hp: Hyperparameters) -> float:
        """The weight of the gradient term (`beta` or `gamma`; 0 for a method without one)."""
        if self.gradient_weight is None:
            return 0.0
        return hp.beta_weight if self.gradient_weight == "beta" else float(hp.gamma)


PROPERTIES: dict[str, MethodProperties] = {
    p.name: p
    for p in (
        MethodProperties("ce", teacher_logits=False, pkd_term=False, input_gradients=False),
        MethodProperties("kd", teacher_logits=True, pkd_term=False, input_gradients=False),
        MethodProperties("pkd", teacher_logits=True, pkd_term=True, input_gradients=False),
        MethodProperties("gradient_kd", teacher_logits=True, pkd_term=False, input_gradients=True,
                         gradient_weight="beta"),
        MethodProperties("gradient_kd_cls", teacher_logits=True, pkd_term=True, input_gradients=True,
                         cls_gradients=True, gradient_weight="gamma"),
    )
}
METHODS: tuple[str, ...] = get_args(Method)
assert set(PROPERTIES) == set(METHODS), "every method of `Method` has one row in PROPERTIES"


def method_properties(method: str) -> MethodProperties:
    """The row of `method`; a `ValueError` names the known methods for anything else."""
    try:
        return PROPERTIES[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}") from None


def layer_map(teacher_layers: int, student_layers: int) -> list[tuple[int, int]]:
    """Student layer k -> teacher layer round(k * M / N) for k = 1..N-1 (GKD.md, hidden_states indexing)."""
    return [(k, math.floor(k * teacher_layers / student_layers + 0.5)) for k in range(1, student_layers)]
