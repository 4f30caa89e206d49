"""`beta: "auto"`: the pure choice (accuracy first, saliency second), and the trainer's probe: it picks what the
choice says, records it (callbacks, result, gkd_card.json, saved state), leaves no trace in the run beyond the
chosen beta, trains only on the training order, and resumes exactly, also from a crash during the probe."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from gkd.config import ConfigError, DistillConfig, Hyperparameters
from gkd.training import beta_auto
from gkd.training.beta_auto import BetaChoice, ProbeScore, beta_candidates, choose_beta, probe_steps
from gkd.training.callbacks import TrainerCallback, TrainingProgress
from gkd.training.trainer import STATE_FILE, RunState, Trainer
from tests.support.factories import make_tiny_teacher, sentiment_rows, write_csv


# ------------------------------------------------------------------ the pure choice
def test_the_highest_saliency_within_the_accuracy_tolerance_wins():
    scores = [ProbeScore(0.3, 0.800, 0.30), ProbeScore(1.0, 0.798, 0.45), ProbeScore(3.0, 0.802, 0.40)]
    assert choose_beta(scores).beta == 1.0


def test_saliency_is_never_bought_with_accuracy_beyond_the_tolerance():
    scores = [ProbeScore(0.3, 0.80, 0.30), ProbeScore(1.0, 0.79, 0.90), ProbeScore(3.0, 0.70, 0.95)]
    assert choose_beta(scores).beta == 0.3
    assert choose_beta(scores, tolerance=0.02).beta == 1.0


def test_ties_go_to_the_smaller_beta_and_missing_saliency_counts_lowest():
    assert choose_beta([ProbeScore(3.0, 0.8, 0.5), ProbeScore(0.3, 0.8, 0.5)]).beta == 0.3
    scores = [ProbeScore(0.3, 0.8, None), ProbeScore(1.0, 0.8, math.nan), ProbeScore(3.0, 0.8, -0.1)]
    assert choose_beta(scores).beta == 3.0
    with pytest.raises(ValueError):
        choose_beta([])


def test_probe_steps_cover_about_the_probe_budget_and_never_run_past_the_epoch():
    assert probe_steps(32, 1, 100) == math.ceil(beta_auto.PROBE_EXAMPLES / 32)
    assert probe_steps(8, 2, 100) == math.ceil(beta_auto.PROBE_EXAMPLES / 16)
    assert probe_steps(1024, 1, 100) == 1
    assert probe_steps(8, 1, 3) == 3


def test_candidates_are_fractions_of_the_cap_bound_or_fixed_without_a_cap():
    assert beta_candidates(0.04) == (0.004, 0.012, 0.04)
    assert beta_candidates(12.3456) == (1.23, 3.7, 12.3)
    assert beta_candidates(1e9)[-1] == beta_auto.MAX_BETA
    for unmeasured in (None, 0.0, math.inf, math.nan):
        assert beta_candidates(unmeasured) == beta_auto.UNCAPPED_CANDIDATES


def test_the_choice_round_trips_and_describes_itself():
    choice = BetaChoice(chosen=1.0, step=4, probe_steps=2,
                        candidates=[{"beta": 0.3, "accuracy": 0.7, "saliency_agreement": None}])
    assert BetaChoice.from_dict(json.loads(json.dumps(choice.as_dict()))) == choice
    assert "chose 1" in choice.describe() and "0.3: acc 0.7000 sal -" in choice.describe()


# ------------------------------------------------------------------ the setting
def test_beta_takes_a_number_or_auto_and_the_numeric_default_is_unchanged():
    assert Hyperparameters().beta == 1.0 and Hyperparameters().beta_weight == 1.0
    auto = Hyperparameters.model_validate({"beta": "auto"})
    assert auto.beta == "auto" and auto.beta_weight == 1.0
    assert Hyperparameters.model_validate({"beta": 0.25}).beta_weight == 0.25
    for bad in ("fast", -1.0, 1e7, None):
        with pytest.raises(ConfigError) as error:
            DistillConfig.parse({"teacher": "t", "data": {"train": "x.csv"}, "hyperparameters": {"beta": bad}})
        assert error.value.param == "hyperparameters.beta"


# ------------------------------------------------------------------ the trainer
class Log(TrainerCallback):
    def __init__(self) -> None:
        self.entries: list[tuple[int, str, dict[str, Any]]] = []
        self.steps = 0

    def on_log(self, progress: TrainingProgress, message: str, data: dict[str, Any]) -> None:
        self.entries.append((progress.step, message, data))

    def on_step(self, progress: TrainingProgress, metrics: Any) -> None:
        self.steps += 1


class CrashOnChoice(TrainerCallback):
    def on_log(self, progress: TrainingProgress, message: str, data: dict[str, Any]) -> None:
        raise RuntimeError("worker lost during the probe")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_teacher(tmp_path_factory.mktemp("teacher"), num_layers=4)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    return {"train": write_csv(root / "train.csv", sentiment_rows(48, seed=0)),
            "dev": write_csv(root / "dev.csv", sentiment_rows(16, seed=1))}


def config_for(tmp: Path, teacher: Path, data: dict[str, Path], name: str, method: str = "gradient_kd",
               **hp: Any) -> DistillConfig:
    """6 steps per epoch; the gradient term ramps in from step 0 on the fixed schedule, so the probe runs before
    step 1 (after one step of plain KD)."""
    return DistillConfig.parse({
        "method": method, "teacher": str(teacher), "student": {"num_layers": 2},
        "data": {"train": str(data["train"]), "dev": str(data["dev"])},
        "hyperparameters": {"epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "warmup_ratio": 0.0,
                            "max_length": 32, "seed": 3, "gradient_start_ratio": 0.0,
                            "gradient_warmup_ratio": 0.5, "accuracy_guard": False, "beta": "auto", **hp},
        "output_dir": str(tmp / name), "cache_dir": str(tmp / "cache"), "device": "cpu",
    })


def saved(output_dir: Path) -> dict[str, Any]:
    return torch.load(output_dir / "state" / STATE_FILE, weights_only=False)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


class ScriptedDev(Trainer):
    """Scores the probed candidates, in order, from a script instead of the real dev figures: a constructed case."""

    def __init__(self, config: DistillConfig, script: list[tuple[float, float]]) -> None:
        super().__init__(config)
        self.script = script
        self.probed: list[float] = []

    def evaluate(self, run: RunState, model: Any, split: str = "dev") -> dict[str, float]:
        if run.probing_beta is None:
            return super().evaluate(run, model, split)
        accuracy, saliency = self.script[len(self.probed)]
        self.probed.append(run.probing_beta)
        return {"accuracy": accuracy, "saliency_agreement": saliency}


def test_the_probe_picks_the_candidate_with_the_best_score(tmp_path: Path, teacher: Path, data):
    # the largest has the best saliency within half a point of the best accuracy; the middle one has more saliency
    # but gives up a point
    script = [(0.810, 0.20), (0.800, 0.90), (0.806, 0.50)]
    trainer = ScriptedDev(config_for(tmp_path, teacher, data, "scripted"), script)
    result = trainer.train()
    assert result.beta_auto is not None
    bound = result.beta_auto["cap_bound"]
    assert bound is not None and bound > 0
    assert trainer.probed == list(beta_candidates(bound))
    assert result.beta_auto["chosen"] == trainer.probed[2]
    assert [(c["beta"], c["accuracy"], c["saliency_agreement"]) for c in result.beta_auto["candidates"]] == [
        (beta, *figures) for beta, figures in zip(trainer.probed, script, strict=True)]


def test_the_choice_is_recorded_in_events_result_card_and_state(tmp_path: Path, teacher: Path, data):
    log = Log()
    result = Trainer(config_for(tmp_path, teacher, data, "auto"), [log]).train()
    assert log.steps == result.steps == 12  # the probe's steps are not the run's
    [(step, message, payload)] = log.entries
    choice = payload["beta_auto"]
    assert step == 1 and choice["step"] == 1 and choice["reason"] == "probe"
    betas = [c["beta"] for c in choice["candidates"]]
    assert betas == list(beta_candidates(choice["cap_bound"])) and choice["chosen"] in betas
    assert f"chose {choice['chosen']:g}" in message
    assert all(0.0 <= c["accuracy"] <= 1.0 and c["saliency_agreement"] is not None for c in choice["candidates"])
    # below the cap's bound the candidates train differently (above it, they would all be cut to the same step)
    assert len({c["saliency_agreement"] for c in choice["candidates"]}) == 3
    assert choice["probe_steps"] == 5  # 256 examples at batch 8 would be 32 steps; 5 remain in the epoch
    assert result.beta_auto == choice
    for kind in ("best", "final"):
        card = json.loads((tmp_path / "auto" / kind / "gkd_card.json").read_text())
        assert card["beta_auto"] == choice and card["config"]["hyperparameters"]["beta"] == "auto"
    assert saved(tmp_path / "auto")["loop"]["beta_auto"] == choice


def test_the_probe_leaves_no_trace_but_the_chosen_beta(tmp_path: Path, teacher: Path, data):
    """An auto run ends bit-identical to a run given the chosen beta as a number: the probe's steps, its dev
    evaluations and the restore change nothing else (weights, optimiser, schedule, RNGs, cap, loop)."""
    auto = Trainer(config_for(tmp_path, teacher, data, "auto")).train()
    assert auto.beta_auto is not None
    chosen = auto.beta_auto["chosen"]
    numeric = Trainer(config_for(tmp_path, teacher, data, "numeric", beta=chosen)).train()
    assert numeric.beta_auto is None
    assert_same_weights(saved(tmp_path / "auto")["model"], saved(tmp_path / "numeric")["model"])
    assert auto.history == numeric.history
    # ... and another candidate would have ended elsewhere: the choice is what makes the run
    other = next(c["beta"] for c in auto.beta_auto["candidates"] if c["beta"] != chosen)
    Trainer(config_for(tmp_path, teacher, data, "other", beta=other)).train()
    assert any(not torch.equal(a, b) for a, b in zip(saved(tmp_path / "other")["model"].values(),
                                                     saved(tmp_path / "numeric")["model"].values(), strict=True))


def test_the_probe_trains_only_on_the_next_groups_of_the_training_order(tmp_path: Path, teacher: Path, data):
    seen: list[list[list[int]]] = []

    class Watching(Trainer):
        def probe_beta(self, run: RunState, upcoming: Sequence[list[list[int]]]) -> BetaChoice:
            seen.extend(upcoming)
            order = self.batch_groups(run)
            assert list(upcoming) == order[run.loop.step_in_epoch:]
            return super().probe_beta(run, upcoming)

    Watching(config_for(tmp_path, teacher, data, "watched")).train()
    train_rows = 48
    assert seen and all(0 <= index < train_rows for group in seen for batch in group for index in batch)


@pytest.mark.parametrize(("stop_step", "probes_again"), [(1, True), (4, False)])
def test_a_run_stopped_before_or_after_the_choice_resumes_exactly(tmp_path: Path, teacher: Path, data,
                                                                  stop_step: int, probes_again: bool):
    class StopAt(TrainerCallback):
        def should_stop(self, progress: TrainingProgress) -> bool:
            return progress.step == stop_step

    straight = Trainer(config_for(tmp_path, teacher, data, "straight")).train()
    config = config_for(tmp_path, teacher, data, "resumed")
    first = Trainer(config, [StopAt()]).train()
    assert first.stopped and first.steps == stop_step
    log = Log()
    second = Trainer(config, [log]).train()
    assert second.resumed_from_step == stop_step
    # stopped before the probe (step 1 is plain KD), it probes on resuming; after it, the choice came back with the
    # state and there is no second probe
    assert len(log.entries) == (1 if probes_again else 0)
    assert second.beta_auto == straight.beta_auto
    assert_same_weights(saved(tmp_path / "straight")["model"], saved(tmp_path / "resumed")["model"])
    assert second.final_metrics == straight.final_metrics


def test_a_worker_killed_during_the_probe_repeats_it_to_the_same_result(tmp_path: Path, teacher: Path, data):
    straight = Trainer(config_for(tmp_path, teacher, data, "straight")).train()
    config = config_for(tmp_path, teacher, data, "crashed")
    with pytest.raises(RuntimeError, match="during the probe"):
        Trainer(config, [CrashOnChoice()], state_every_steps=1).train()
    assert saved(tmp_path / "crashed")["loop"]["beta_auto"] is None  # the last state came before the choice
    resumed = Trainer(config, state_every_steps=1).train()
    assert resumed.resumed_from_step == 1
    assert resumed.beta_auto == straight.beta_auto
    assert_same_weights(saved(tmp_path / "straight")["model"], saved(tmp_path / "crashed")["model"])


def test_auto_weighs_one_without_a_probe_where_beta_weighs_no_gradient_term(tmp_path: Path, teacher: Path, data):
    log = Log()
    auto = Trainer(config_for(tmp_path, teacher, data, "pkd-auto", method="pkd"), [log]).train()
    [(_, message, payload)] = log.entries
    assert payload["beta_auto"]["reason"].startswith("method 'pkd'") and payload["beta_auto"]["candidates"] == []
    assert "beta auto: 1" in message and auto.beta_auto == payload["beta_auto"]
    Trainer(config_for(tmp_path, teacher, data, "pkd-one", method="pkd", beta=1.0)).train()
    assert_same_weights(saved(tmp_path / "pkd-auto")["model"], saved(tmp_path / "pkd-one")["model"])


def test_with_the_accuracy_guard_the_probe_runs_where_the_guard_opens_the_term(tmp_path: Path, teacher: Path, data):
    class Weights(Log):
        def __init__(self) -> None:
            super().__init__()
            self.weights: list[float] = []

        def on_step(self, progress: TrainingProgress, metrics: Any) -> None:
            self.weights.append(metrics.terms.get("grad_weight", 0.0))

    # a teacher that knows the task (fine-tuned with `ce`), so the student comes to agree with it and the guard opens
    teacher_data = {"train": write_csv(tmp_path / "teacher-train.csv", sentiment_rows(160, seed=5)), "dev": data["dev"]}
    taught = Trainer(DistillConfig.parse({
        "method": "ce", "teacher": str(teacher), "student": {"num_layers": 4, "dropout": 0.0}, "data": {
            "train": str(teacher_data["train"]), "dev": str(teacher_data["dev"])},
        "hyperparameters": {"epochs": 6, "batch_size": 8, "learning_rate": 2e-3, "warmup_ratio": 0.1, "max_length": 32,
                            "seed": 0},
        "output_dir": str(tmp_path / "teacher"), "cache_dir": str(tmp_path / "cache"), "device": "cpu"})).train()
    assert taught.final_dir is not None
    watcher = Weights()
    result = Trainer(config_for(tmp_path, taught.final_dir, data, "guarded", epochs=6, accuracy_guard=True),
                     [watcher]).train()
    first_weighted = next(i for i, weight in enumerate(watcher.weights) if weight > 0)  # the step index, 0-based
    assert first_weighted > 1  # the guard held the term back for a while
    [(step, _, payload)] = watcher.entries
    assert payload["beta_auto"]["step"] == step == first_weighted  # probed just before that step
    assert result.beta_auto == payload["beta_auto"]
