"""The accuracy guard opens the gradient terms only once the student agrees with the teacher and backs them off
when agreement falls; the near-chance rule compares a student with what its teacher gains over the guess.
(The trainer side, and exact resume with the guard, are in test_trainer.py.)"""

from __future__ import annotations

import pytest

from gkd.training import accuracy_guard as guard_module
from gkd.training.accuracy_guard import AccuracyGuard, normalised_agreement
from gkd.training.run_warnings import majority_share, near_chance

BALANCED = [16, 16]  # the teacher's predictions in one batch: half each class


def feed(guard: AccuracyGuard, agreements: list[float], start: int = 0, counts: list[int] = BALANCED) -> None:
    for offset, agreement in enumerate(agreements):
        guard.observe(start + offset, agreement, counts)


def test_normalised_agreement_is_zero_at_the_majority_guess_and_one_at_full_agreement():
    assert normalised_agreement(0.87, 0.87) == 0.0
    assert normalised_agreement(1.0, 0.87) == pytest.approx(1.0)
    assert normalised_agreement(0.75, 0.5) == pytest.approx(0.5)
    assert normalised_agreement(0.3, 1.0) == 1.0  # a teacher with one class leaves nothing to learn first


def test_the_gate_stays_shut_while_the_student_guesses_the_majority_class():
    guard = AccuracyGuard(start_step=0, ramp_steps=10)
    feed(guard, [0.5] * 200)  # a balanced task, a student at chance
    assert guard.opened_at is None and guard.weight(200) == 0.0


def test_an_imbalanced_task_needs_more_than_the_majority_share_to_open():
    guard = AccuracyGuard(start_step=0, ramp_steps=10)
    feed(guard, [0.9] * 100, counts=[28, 4])  # 87.5 % majority: 0.9 agreement is barely above the guess
    assert guard.opened_at is None
    feed(guard, [1.0] * 100, start=100, counts=[28, 4])
    assert guard.opened_at is not None


def test_it_opens_no_earlier_than_the_start_step_then_ramps():
    guard = AccuracyGuard(start_step=10, ramp_steps=4)
    feed(guard, [1.0] * 9)
    assert guard.opened_at is None  # agreement is high, but the start ratio comes first
    feed(guard, [1.0], start=9)
    assert guard.opened_at == 10
    assert [guard.weight(step) for step in (9, 10, 12, 14, 20)] == [0.0, 0.0, 0.5, 1.0, 1.0]


def test_a_fall_in_agreement_halves_the_weight_once_per_cooldown():
    guard = AccuracyGuard(start_step=0, ramp_steps=0)
    feed(guard, [1.0] * 10)
    assert guard.opened_at is not None and guard.weight(10) == 1.0
    feed(guard, [0.5] * 10, start=10)  # the student drifts back towards chance
    assert guard.multiplier == guard_module.BACKOFF_FACTOR
    halved_at = guard.last_backoff
    assert halved_at is not None
    feed(guard, [0.5] * 3, start=20)
    assert guard.multiplier == guard_module.BACKOFF_FACTOR  # the cooldown holds a second halving back
    feed(guard, [0.45] * guard_module.COOLDOWN_STEPS, start=23)
    assert guard.multiplier <= guard_module.BACKOFF_FACTOR


def test_steady_agreement_never_backs_off():
    guard = AccuracyGuard(start_step=0, ramp_steps=0)
    feed(guard, [0.95, 0.97] * 100)
    assert guard.multiplier == 1.0


def test_the_state_round_trips():
    guard = AccuracyGuard(start_step=3, ramp_steps=5)
    feed(guard, [0.9, 0.8, 1.0, 1.0, 0.95, 1.0])
    again = AccuracyGuard.from_state(guard.state_dict())
    assert again == guard and again.weight(9) == guard.weight(9)


def test_near_chance_compares_the_student_with_what_the_teacher_gains():
    assert majority_share([0, 0, 0, 1]) == 0.75
    assert near_chance(0.76, 0.95, 0.75) is not None  # 5 % of the teacher's gain
    assert near_chance(0.85, 0.95, 0.75) is None  # half of it
    assert near_chance(0.5, 0.52, 0.5) is None  # the teacher itself is near chance: nothing to say
    assert near_chance(0.5, None, 0.5) is None
