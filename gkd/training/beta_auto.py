"""`beta: "auto"` (ours, not in the paper): the gradient term's weight picked per job by a short probe on dev.

When the gradient term is about to get weight for the first time (the accuracy guard opened it, or the fixed ramp
started), the trainer snapshots the run and measures where the gradient cap starts cutting the term
(`cap_bound`). It then trains a few probe steps from that same state once per candidate beta (fractions of that
bound, `beta_candidates`), each at the term's full weight, and scores each probed student on the dev split. Dev is
only evaluated, never trained on. The run is restored to the snapshot and continues with the winner. The probe
steps use the next batches of the training order and the teacher cache like any step.

The selection is pure (`choose_beta`): accuracy first, saliency second. Any candidate within `ACCURACY_TOLERANCE`
of the best dev accuracy may win, and among those the one with the highest saliency agreement wins; ties go to the
smaller beta. So the probe never buys saliency with accuracy beyond that tolerance. The choice is part of the
saved training state (`LoopState.beta_auto`): a run resumed after it continues with the same beta, and a run
killed during the probe repeats it from the same saved state, which is deterministic.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from gkd.config import AUTO_BETA_FALLBACK
from gkd.training.state import rng_state, set_rng_state

FRACTIONS = (0.1, 0.3, 1.0)  # candidates as fractions of the cap's bound: 1 is the most the cap lets through
UNCAPPED_CANDIDATES = (0.3, 1.0, 3.0)  # with `gradient_term_cap: null`, around today's numeric default 1
MAX_BETA = 1e6  # the setting's own upper bound
ACCURACY_TOLERANCE = 0.005  # dev accuracy a candidate may give up for saliency (half a point)
PROBE_EXAMPLES = 256  # training examples per candidate (8 steps at the default batch size)
FALLBACK_BETA = AUTO_BETA_FALLBACK  # when nothing can be probed: no dev split, no beta-weighted gradient term


@dataclass(frozen=True)
class ProbeScore:
    """One candidate's dev figures after its probe steps."""

    beta: float
    accuracy: float
    saliency_agreement: float | None


@dataclass
class BetaChoice:
    """What `"auto"` chose, and from what: recorded in events, the final metrics, gkd_card.json and the state."""

    chosen: float
    step: int  # the optimiser step the probe ran from
    probe_steps: int = 0
    cap_bound: float | None = None  # the beta at which the cap started cutting the term, where the probe began
    candidates: list[dict[str, Any]] = field(default_factory=list)  # ProbeScore as dicts, smallest beta first
    reason: str = "probe"  # "probe", or why no probe ran (then `chosen` is FALLBACK_BETA)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BetaChoice:
        return cls(**data)

    def describe(self) -> str:
        if self.reason != "probe":
            return f"beta auto: {self.chosen:g} ({self.reason})"
        figures = ", ".join(f"{c['beta']:g}: acc {c['accuracy']:.4f} sal {_figure(c['saliency_agreement'])}"
                            for c in self.candidates)
        return f"beta auto chose {self.chosen:g} at step {self.step} ({figures})"


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def choose_beta(scores: Sequence[ProbeScore], tolerance: float = ACCURACY_TOLERANCE) -> ProbeScore:
    """The winner: among the candidates within `tolerance` of the best dev accuracy, the highest saliency agreement
    (a missing or non-finite figure counts as lowest); ties go to the smaller beta."""
    if not scores:
        raise ValueError("no candidates to choose from")
    best_accuracy = max(score.accuracy for score in scores)
    eligible = [score for score in scores if score.accuracy >= best_accuracy - tolerance]

    def saliency(score: ProbeScore) -> float:
        value = score.saliency_agreement
        return value if value is not None and math.isfinite(value) else -math.inf

    return max(eligible, key=lambda score: (saliency(score), -score.beta))


def beta_candidates(bound: float | None) -> tuple[float, ...]:
    """The betas to probe. With the cap on, `bound` is the beta at which the gradient term's parameter gradient
    reaches the cap (measured where the probe starts): every beta above it is cut back to it, so a grid of fixed
    betas can be one candidate three times over (at the demo's cap factor of 0.04, 0.3, 1 and 3 all train alike).
    The candidates are fractions of it, to 3 significant digits; fixed values when the cap is off or unmeasured."""
    if bound is None or not math.isfinite(bound) or bound <= 0.0:
        return UNCAPPED_CANDIDATES
    return tuple(min(MAX_BETA, float(f"{fraction * bound:.3g}")) for fraction in FRACTIONS)


def probe_steps(batch_size: int, accumulation: int, available: int) -> int:
    """Optimiser steps per candidate: about `PROBE_EXAMPLES` examples, at least 1, at most the steps `available`."""
    per_step = batch_size * accumulation
    return max(1, min(available, math.ceil(PROBE_EXAMPLES / per_step)))


def snapshot(student: torch.nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler) -> Callable[[], None]:
    """Copy the student, optimiser, scheduler and RNG states; the returned function puts them back (any number of
    times) into the same objects. The trainer copies its own loop, cap and guard state beside it."""
    model_state = {name: tensor.detach().clone() for name, tensor in student.state_dict().items()}
    optimizer_state = copy.deepcopy(optimizer.state_dict())
    scheduler_state = copy.deepcopy(scheduler.state_dict())
    rngs = rng_state()

    def restore() -> None:
        student.load_state_dict(model_state)
        optimizer.load_state_dict(copy.deepcopy(optimizer_state))
        scheduler.load_state_dict(copy.deepcopy(scheduler_state))
        set_rng_state(rngs)

    return restore
