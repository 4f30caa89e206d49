"""The training loop on tiny real models: every method learns, and a stopped run resumes to identical weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from gkd.config import ConfigError, DistillConfig
from gkd.models.teacher import load_teacher
from gkd.training.callbacks import PhaseProgress, StepMetrics, TrainerCallback, TrainingProgress
from gkd.training.trainer import STATE_FILE, Trainer
from tests.support.factories import make_tiny_teacher, sentiment_rows, write_csv


class Recorder(TrainerCallback):
    def __init__(self) -> None:
        self.losses: list[float] = []
        self.terms: list[dict[str, float]] = []
        self.evaluations: list[dict[str, float]] = []
        self.checkpoints: list[str] = []
        self.begun: list[TrainingProgress] = []

    def on_train_begin(self, progress: TrainingProgress) -> None:
        self.begun.append(progress)

    def on_step(self, progress: TrainingProgress, metrics: StepMetrics) -> None:
        self.losses.append(metrics.loss)
        self.terms.append(metrics.terms)

    def on_evaluate(self, progress: TrainingProgress, metrics: dict[str, float]) -> None:
        self.evaluations.append(metrics)

    def on_checkpoint(self, progress: TrainingProgress, kind: str, path: Path) -> None:
        self.checkpoints.append(kind)


class StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def should_stop(self, progress: TrainingProgress) -> bool:
        return progress.step == self.step


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    return {
        "train": write_csv(root / "train.csv", sentiment_rows(40, seed=0)),
        "dev": write_csv(root / "dev.csv", sentiment_rows(16, seed=1)),
    }


def make_config(tmp: Path, teacher: Path, data: dict[str, Path], method: str, name: str,
                student: dict[str, Any] | None = None, **hp: Any) -> DistillConfig:
    hyperparameters = {"epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "warmup_ratio": 0.0,
                       "max_length": 32, "beta": 1.0, "gamma": 1.0, "seed": 3,
                       # these short runs ramp the gradient term in from step 0 on a fixed schedule (the library
                       # starts it once the accuracy guard sees the student agree with the teacher: tested below)
                       "gradient_start_ratio": 0.0, "gradient_warmup_ratio": 0.5, "accuracy_guard": False, **hp}
    return DistillConfig.parse({
        "method": method,
        "teacher": str(teacher),
        "student": student or {"num_layers": 2},
        "data": {"train": str(data["train"]), "dev": str(data["dev"])},
        "hyperparameters": hyperparameters,
        "output_dir": str(tmp / name),
        "cache_dir": str(tmp / "cache"),
        "device": "cpu",
    })


@pytest.fixture(scope="module")
def random_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_teacher(tmp_path_factory.mktemp("random_teacher"), num_layers=4)


@pytest.fixture(scope="module")
def trained_teacher(tmp_path_factory: pytest.TempPathFactory, random_teacher: Path, data) -> Path:
    """A 4-layer teacher fine-tuned with `ce` at full depth: it learns the cue words."""
    tmp = tmp_path_factory.mktemp("teacher_run")
    teacher_data = {"train": write_csv(tmp / "train.csv", sentiment_rows(160, seed=5)), "dev": data["dev"]}
    config = make_config(tmp, random_teacher, teacher_data, "ce", "teacher", student={"num_layers": 4, "dropout": 0.0},
                         epochs=6, learning_rate=2e-3, warmup_ratio=0.1, seed=0)
    result = Trainer(config).train()
    assert result.final_dir is not None
    assert result.final_metrics["accuracy"] >= 0.9, result.history
    return result.final_dir


def weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(output_dir / "state" / STATE_FILE, weights_only=False)["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


# ------------------------------------------------------------------ the gradient cap
@pytest.mark.parametrize("per_tensor", [True, False])
def test_gradient_cap_is_applied_and_changes_the_update(tmp_path: Path, trained_teacher: Path, data, per_tensor: bool):
    """At beta 10 the gradient term outweighs the logit loss, so the default cap must scale it down (factor < 1)
    and the weights must differ from the plain sum's."""
    recorder = Recorder()
    capped = make_config(tmp_path, trained_teacher, data, "gradient_kd", "capped", epochs=1, beta=10.0,
                         gradient_warmup_ratio=0.0, gradient_term_cap_per_tensor=per_tensor)
    Trainer(capped, [recorder]).train()
    scales = [terms["grad_cap_scale"] for terms in recorder.terms]
    assert all(0.0 <= s <= 1.0 for s in scales) and min(scales) < 0.5, scales
    plain = make_config(tmp_path, trained_teacher, data, "gradient_kd", "plain", epochs=1, beta=10.0,
                        gradient_warmup_ratio=0.0, gradient_term_cap=None)
    Trainer(plain).train()
    capped_weights, plain_weights = weights(tmp_path / "capped"), weights(tmp_path / "plain")
    assert any(not torch.equal(capped_weights[k], plain_weights[k]) for k in capped_weights)


# ------------------------------------------------------------------ trainable embeddings
def test_gradient_kd_trains_the_embeddings_unless_frozen(tmp_path: Path, trained_teacher: Path, data):
    """By default both the logit loss and the gradient term (through the double backward) reach the
    embeddings; with `student.embeddings: frozen` they stay the teacher's."""
    recorder = Recorder()
    for name, embeddings in (("default", None), ("frozen", "frozen")):
        config = make_config(tmp_path, trained_teacher, data, "gradient_kd", name, epochs=1,
                             student={"num_layers": 2, "embeddings": embeddings}, gradient_warmup_ratio=0.0)
        Trainer(config, [] if embeddings else [recorder]).train()
    key = "bert.embeddings.word_embeddings.weight"
    teacher_words = weights_of_teacher(trained_teacher)[key]
    assert torch.equal(weights(tmp_path / "frozen")[key], teacher_words)
    assert not torch.equal(weights(tmp_path / "default")[key], teacher_words)
    assert all("grad" in terms for terms in recorder.terms)


def weights_of_teacher(teacher: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(teacher / "model.safetensors"))


# ------------------------------------------------------------------ every method learns
@pytest.mark.parametrize("method", ["ce", "kd", "pkd", "gradient_kd", "gradient_kd_cls"])
def test_each_method_trains_and_its_loss_goes_down(tmp_path: Path, trained_teacher: Path, data, method: str):
    recorder = Recorder()
    # A fixed objective, followed exactly: with the (default) ramp the weight of the gradient term grows during
    # training, and the (default) cap follows a rescaled gradient; both are tested on their own.
    config = make_config(tmp_path, trained_teacher, data, method, "run", epochs=3, beta=10.0, gamma=10.0,
                         gradient_warmup_ratio=0.0, gradient_term_cap=None)
    result = Trainer(config, [recorder]).train()
    assert not result.stopped
    assert result.steps == len(recorder.losses) == 3 * 5
    assert all(torch.isfinite(torch.tensor(recorder.losses)))
    first, last = sum(recorder.losses[:3]) / 3, sum(recorder.losses[-3:]) / 3
    assert last < 0.9 * first, recorder.losses
    expected_terms = {"ce": {"ce"}, "kd": {"kd", "ce", "agree"}, "pkd": {"kd", "ce", "pkd", "agree"},
                      "gradient_kd": {"kd", "ce", "grad", "agree", "grad_weight"},
                      "gradient_kd_cls": {"kd", "ce", "pkd", "grad", "agree", "grad_weight"}}[method]
    assert set(recorder.terms[0]) == expected_terms
    if method in ("gradient_kd", "gradient_kd_cls"):
        # the gradient term itself is optimised
        grads = [t["grad"] for t in recorder.terms]
        assert sum(grads[-3:]) < sum(grads[:3]), grads
    # one evaluation per epoch, with the saliency agreement metrics when a teacher exists
    assert len(result.history) == 3 == len(recorder.evaluations)
    final = result.final_metrics
    assert 0.0 <= final["accuracy"] <= 1.0
    assert "teacher_agreement" in final and "saliency_agreement" in final and "saliency_top3_overlap" in final
    assert result.teacher_metrics["accuracy"] >= 0.8
    assert result.final_dir == tmp_path / "run" / "final" and result.best_dir == tmp_path / "run" / "best"
    assert recorder.checkpoints.count("final") == 1 and recorder.checkpoints.count("state") == 3


def test_gradient_kd_beats_chance_and_agrees_with_teacher(tmp_path: Path, trained_teacher: Path, data):
    config = make_config(tmp_path, trained_teacher, data, "gradient_kd", "run", epochs=4, beta=10.0)
    result = Trainer(config).train()
    assert result.best_metrics["accuracy"] >= 0.75, result.history
    assert result.best_metrics["teacher_agreement"] >= 0.75


@pytest.mark.parametrize("method", ["pkd", "gradient_kd_cls"])
def test_cache_off_and_auto_give_nearly_the_same_run(tmp_path: Path, trained_teacher: Path, data, method: str):
    runs = {}
    for cache in ("auto", "off"):
        config = make_config(tmp_path, trained_teacher, data, method, cache, epochs=1)
        config.run.cache = cache
        recorder = Recorder()
        Trainer(config, [recorder]).train()
        runs[cache] = recorder.losses
    assert runs["auto"] == pytest.approx(runs["off"], rel=2e-2, abs=1e-3)
    assert (tmp_path / "cache").is_dir()


# ------------------------------------------------------------------ exact resume
RESUME_CASES = {
    # name: (method, student spec, extra hyperparameters, stop after this optimiser step)
    "kd-dropout-mid-epoch": ("kd", {"num_layers": 2, "dropout": 0.1}, {}, 3),
    "kd-dropout-epoch-boundary": ("kd", {"num_layers": 2, "dropout": 0.1}, {}, 5),
    "gradient_kd-mid-epoch": ("gradient_kd", {"num_layers": 2}, {}, 2),
    "gradient_kd_cls-dropout-epoch-boundary": ("gradient_kd_cls", {"num_layers": 2, "dropout": 0.1}, {}, 5),
    "accumulation-mid-epoch": ("kd", {"num_layers": 2, "dropout": 0.1}, {"gradient_accumulation_steps": 2}, 2),
    "gradient_kd-accuracy-guard": ("gradient_kd", {"num_layers": 2}, {"accuracy_guard": True}, 4),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_stop_and_resume_gives_exactly_the_weights_of_a_straight_run(
    tmp_path: Path, random_teacher: Path, data, case: str
):
    method, student, extra, stop_step = RESUME_CASES[case]
    straight_config = make_config(tmp_path, random_teacher, data, method, "straight", student, **extra)
    straight = Trainer(straight_config).train()
    assert not straight.stopped

    config = make_config(tmp_path, random_teacher, data, method, "resumed", student, **extra)
    first = Trainer(config, [StopAt(stop_step)]).train()
    assert first.stopped and first.steps == stop_step
    assert first.final_dir is None and not (tmp_path / "resumed" / "final").exists()
    stopped_weights = weights(tmp_path / "resumed")
    # the stop really happened before the end: weights differ from the finished run
    assert any(not torch.equal(stopped_weights[k], v) for k, v in weights(tmp_path / "straight").items())

    recorder = Recorder()
    second = Trainer(config, [recorder]).train(resume=True)
    assert not second.stopped
    assert second.resumed_from_step == stop_step
    assert recorder.begun[0].step == stop_step
    assert second.steps == straight.steps
    assert len(recorder.losses) == straight.steps - stop_step
    assert_same_weights(weights(tmp_path / "straight"), weights(tmp_path / "resumed"))
    assert [h["step"] for h in second.history] == [h["step"] for h in straight.history]
    assert second.final_metrics == straight.final_metrics


def test_dropout_makes_runs_seed_dependent(tmp_path: Path, random_teacher: Path, data):
    """Guards the resume test above: with dropout the RNG matters, so restoring it is what makes runs equal."""
    student = {"num_layers": 2, "dropout": 0.1}
    a = make_config(tmp_path, random_teacher, data, "kd", "a", student, epochs=1)
    Trainer(a, [StopAt(2)]).train()
    # same initial weights and batches, but the dropout masks come from a different RNG position
    b = make_config(tmp_path, random_teacher, data, "kd", "b", student, epochs=1)
    torch.manual_seed(12345)
    trainer = Trainer(b, [StopAt(2)])
    original = trainer.build_student

    def prepare(*args: Any, **kwargs: Any):
        model = original(*args, **kwargs)
        torch.manual_seed(999)  # perturb the RNG after the student is built
        return model

    trainer.build_student = prepare  # type: ignore[method-assign]
    trainer.train()
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_without_state_starts_fresh_and_resume_false_ignores_state(tmp_path: Path, random_teacher: Path, data):
    config = make_config(tmp_path, random_teacher, data, "kd", "run", epochs=1)
    first = Trainer(config, [StopAt(2)]).train()
    assert first.stopped
    recorder = Recorder()
    again = Trainer(config, [recorder]).train(resume=False)
    assert again.resumed_from_step == 0 and len(recorder.losses) == 5


def test_resume_with_a_changed_hyperparameter_is_refused(tmp_path: Path, random_teacher: Path, data):
    config = make_config(tmp_path, random_teacher, data, "kd", "run")
    assert Trainer(config, [StopAt(2)]).train().stopped
    changed = make_config(tmp_path, random_teacher, data, "kd", "run", learning_rate=5e-4)
    with pytest.raises(ConfigError) as info:
        Trainer(changed).train(resume=True)
    assert info.value.param == "hyperparameters"
    other_method = make_config(tmp_path, random_teacher, data, "gradient_kd", "run")
    with pytest.raises(ConfigError) as info:
        Trainer(other_method).train(resume=True)
    assert info.value.param == "method"


def test_a_state_saved_with_the_earlier_null_defaults_resumes(tmp_path: Path, random_teacher: Path, data):
    """Training states hold the config as earlier versions dumped it (student dropout and embeddings null for the
    default): they are read through today's models, so the same run resumes instead of being refused."""
    config = make_config(tmp_path, random_teacher, data, "kd", "run", epochs=1)
    assert Trainer(config, [StopAt(2)]).train().stopped
    path = tmp_path / "run" / "state" / STATE_FILE
    state = torch.load(path, weights_only=False)
    state["config"]["student"].update(dropout=None, embeddings=None)
    for key in ("output_dir", "device", "cache_dir", "num_threads", "precision", "cache", "reuse_freed_memory"):
        state["config"][key] = state["config"]["run"][key]  # the earlier layout: run settings at the top level
    del state["config"]["run"]
    torch.save(state, path)
    resumed = Trainer(config).train(resume=True)
    assert resumed.resumed_from_step == 2 and resumed.steps == 5


def test_in_memory_examples_and_teacher_are_used(tmp_path: Path, random_teacher: Path, data):
    from gkd.data.readers import read_examples

    splits = {"train": read_examples(data["train"]).examples, "dev": read_examples(data["dev"]).examples[:6]}
    teacher = load_teacher(random_teacher)
    config = make_config(tmp_path, tmp_path / "does-not-exist", data, "kd", "run", epochs=1)
    config.run.cache = "off"
    result = Trainer(config, examples=splits, teacher=teacher).train()
    assert result.steps == 5 and result.labels == ["negative", "positive"]


def test_unknown_labels_in_data_are_refused(tmp_path: Path, random_teacher: Path, data):
    rows = sentiment_rows(8) + [{"text": "a movie", "label": "neutral"}]
    bad = {"train": write_csv(tmp_path / "bad.csv", rows), "dev": data["dev"]}
    with pytest.raises(ConfigError) as info:
        Trainer(make_config(tmp_path, random_teacher, bad, "kd", "run")).train()
    assert info.value.param == "data" and "neutral" in info.value.message


class CrashAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, progress: TrainingProgress, metrics: StepMetrics) -> None:
        if progress.step == self.step:
            raise RuntimeError("worker lost")


def test_crash_resumes_from_the_periodic_state(tmp_path: Path, random_teacher: Path, data):
    student = {"num_layers": 2, "dropout": 0.1}
    straight = make_config(tmp_path, random_teacher, data, "kd", "straight", student)
    Trainer(straight).train()
    config = make_config(tmp_path, random_teacher, data, "kd", "crashed", student)
    with pytest.raises(RuntimeError, match="worker lost"):
        Trainer(config, [CrashAt(7)], state_every_steps=3).train()
    saved = torch.load(tmp_path / "crashed" / "state" / STATE_FILE, weights_only=False)
    assert saved["loop"]["step"] == 6 and saved["loop"]["step_in_epoch"] == 1
    resumed = Trainer(config, state_every_steps=3).train()
    assert resumed.resumed_from_step == 6
    assert_same_weights(weights(tmp_path / "straight"), weights(tmp_path / "crashed"))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("method", ["gradient_kd", "gradient_kd_cls"])
def test_half_precision_autocast_runs_the_double_backward_on_cpu(tmp_path: Path, random_teacher: Path, data,
                                                                 method: str, precision: str):
    """fp16 runs with the loss scaler (gkd.method.precision): the gradient term is still there, and finite."""
    config = make_config(tmp_path, random_teacher, data, method, "run", epochs=1)
    config.run.precision = precision
    recorder = Recorder()
    result = Trainer(config, [recorder]).train()
    assert result.steps == 5
    assert all(torch.isfinite(torch.tensor(recorder.losses)))
    assert all(t["grad"] > 0 for t in recorder.terms[1:])  # step 0 is the start of the ramp: weight 0


def test_gradient_term_is_ramped_in(tmp_path: Path, trained_teacher: Path, data):
    """gradient_warmup_ratio: the gradient term's weight grows linearly from 0; at weight 0 it is not computed."""
    from gkd.training.trainer import gradient_ramp as ramp

    assert ramp(0, 100, 0.5) == 0.0 and ramp(25, 100, 0.5) == 0.5 and ramp(50, 100, 0.5) == 1.0
    assert ramp(0, 100, 0.0) == 1.0
    recorder = Recorder()
    config = make_config(tmp_path, trained_teacher, data, "gradient_kd", "ramp", epochs=1, beta=10.0,
                         gradient_warmup_ratio=1.0)
    Trainer(config, [recorder]).train()
    first, second = recorder.terms[0], recorder.terms[1]
    # step 0 has weight 0: the total is exactly the KD loss, and no double backprop ran
    assert "grad" not in first
    assert abs(recorder.losses[0] - (0.5 * first["kd"] + 0.5 * first["ce"])) < 1e-5
    assert second["grad"] > 0 and recorder.losses[1] > 0.5 * second["kd"] + 0.5 * second["ce"]


def test_gradient_term_starts_after_gradient_start_ratio():
    from gkd.training.trainer import gradient_ramp as ramp

    # off for the first 20 of 100 steps, then a ramp over 30 steps
    assert ramp(0, 100, 0.3, 0.2) == 0.0 and ramp(19, 100, 0.3, 0.2) == 0.0
    assert ramp(20, 100, 0.3, 0.2) == 0.0 and ramp(35, 100, 0.3, 0.2) == 0.5 and ramp(50, 100, 0.3, 0.2) == 1.0
    assert ramp(20, 100, 0.0, 0.2) == 1.0 and ramp(99, 100, 0.3, 0.2) == 1.0


def test_optimizer_uses_the_fused_adamw_kernel_with_the_same_update_as_the_default():
    from transformers import BertConfig, BertForSequenceClassification

    from gkd.training.trainer import make_optimizer

    config = DistillConfig.parse({"method": "kd", "teacher": "unused", "data": {"train": "unused.csv"},
                                  "hyperparameters": {"learning_rate": 1e-3}})
    bert = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    fused_model = BertForSequenceClassification(bert)
    plain_model = BertForSequenceClassification(bert)
    plain_model.load_state_dict(fused_model.state_dict())
    hp = config.hyperparameters
    fused = make_optimizer(fused_model, hp)
    assert all(group["fused"] for group in fused.param_groups)
    # the same parameter groups, stepped by the default for-each kernel
    plain = torch.optim.AdamW([{"params": g["params"], "weight_decay": g["weight_decay"]}
                               for g in make_optimizer(plain_model, hp).param_groups], lr=1e-3, foreach=True)
    ids = torch.randint(0, 50, (4, 6))
    for _ in range(3):
        for model, optimizer in ((fused_model, fused), (plain_model, plain)):
            optimizer.zero_grad()
            model(input_ids=ids, labels=torch.tensor([0, 1, 0, 1])).loss.backward()
            optimizer.step()
    for (name, a), b in zip(fused_model.named_parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


# ------------------------------------------------------------------ the accuracy guard and run warnings
class Watcher(TrainerCallback):
    def __init__(self) -> None:
        self.weights: list[float] = []
        self.warnings: list[tuple[str, str]] = []

    def on_step(self, progress: TrainingProgress, metrics: StepMetrics) -> None:
        self.weights.append(metrics.terms.get("grad_weight", 0.0))

    def on_warning(self, progress: TrainingProgress, code: str, message: str) -> None:
        self.warnings.append((code, message))


def test_the_trainer_starts_the_gradient_term_once_the_student_agrees(tmp_path: Path, trained_teacher: Path, data):
    watcher = Watcher()
    config = make_config(tmp_path, trained_teacher, data, "gradient_kd", "guarded", epochs=6, accuracy_guard=True)
    result = Trainer(config, [watcher]).train()
    assert watcher.weights[0] == 0.0  # the student starts at chance: no gradient term yet
    assert max(watcher.weights) > 0.0, watcher.weights  # ... and once it agrees, the term runs
    assert not [code for code, _ in watcher.warnings if code == "gradient_term_not_started"]
    assert result.best_metrics["accuracy"] >= 0.75, result.history


def test_a_student_that_cannot_learn_gets_warnings_not_a_silent_success(tmp_path: Path, trained_teacher: Path, data):
    watcher = Watcher()
    # a randomly initialised student that (almost) does not move: it guesses
    config = make_config(tmp_path, trained_teacher, data, "gradient_kd", "stuck", {"num_layers": 2, "init": "random"},
                         epochs=1, learning_rate=1e-9, accuracy_guard=True, seed=7)
    result = Trainer(config, [watcher]).train()
    codes = [code for code, _ in watcher.warnings]
    assert "gradient_term_not_started" in codes
    assert [w["code"] for w in result.warnings] == codes
    assert max(watcher.weights) == 0.0
    assert result.best_metrics["accuracy"] <= majority_share_of(data["dev"]) + 0.05  # it guessed ...
    assert "student_near_chance" in codes  # ... and the run says so


def majority_share_of(path: Path) -> float:
    import csv

    with path.open(newline="", encoding="utf-8") as handle:
        labels = [row["label"] for row in csv.DictReader(handle)]
    return max(labels.count(label) for label in set(labels)) / len(labels)


class PhaseRecorder(TrainerCallback):
    def __init__(self) -> None:
        self.phases: list[PhaseProgress] = []
        self.first_step_at: int | None = None

    def on_phase(self, progress: PhaseProgress) -> None:
        self.phases.append(progress)

    def on_step(self, progress: TrainingProgress, metrics: StepMetrics) -> None:
        if self.first_step_at is None:
            self.first_step_at = len(self.phases)


def test_every_phase_before_the_first_step_reports_its_progress(tmp_path: Path, random_teacher: Path, data):
    """No silent wait: reading, the teacher and each split's teacher cache (per batch, with an ETA) come before the
    first step; a second run finds the caches and says so."""
    recorder = PhaseRecorder()
    config = make_config(tmp_path, random_teacher, data, "gradient_kd", "phases", epochs=1, batch_size=4)
    Trainer(config, [recorder]).train()
    before = recorder.phases[: recorder.first_step_at]
    names = [p.phase for p in before]
    assert names[:2] == ["validating", "validating"] and names.index("loading_teacher") < names.index("teacher_cache")
    assert names[-1] == "training" and before[-1].total is not None and before[-1].done == 0
    train_cache = [p for p in before if p.phase == "teacher_cache" and p.detail == "train"]
    assert train_cache[0].total is None and train_cache[-1].finished and train_cache[-1].unit == "batches"
    assert [p.done for p in train_cache[1:]] == list(range(1, train_cache[-1].total + 1))  # 40 rows / 64 a batch
    assert train_cache[1].eta_seconds is not None and "building the teacher cache (train)" in train_cache[1].describe()
    assert {p.detail for p in before if p.phase == "teacher_cache"} == {"train", "dev"}
    after = [p for p in recorder.phases[recorder.first_step_at:] if p.phase == "evaluating"]
    assert after and after[-1].finished and after[-1].detail == "dev"

    again = PhaseRecorder()
    Trainer(make_config(tmp_path, random_teacher, data, "gradient_kd", "phases2", epochs=1, batch_size=4),
            [again]).train()
    found = [p for p in again.phases if p.phase == "teacher_cache" and p.finished]
    assert sorted(p.detail for p in found) == ["dev, found", "train, found"]


class StopAfterPhase(PhaseRecorder):
    """Asks to stop once a phase event matching `phase` (and `done`, when given) was seen: a cancel during set-up."""

    def __init__(self, phase: str, done: int | None = None) -> None:
        super().__init__()
        self.phase, self.done = phase, done
        self.asked = 0

    def should_stop(self, progress: TrainingProgress) -> bool:
        self.asked += 1
        return any(p.phase == self.phase and (self.done is None or p.done == self.done) for p in self.phases)


@pytest.mark.parametrize("phase", ["validating", "loading_teacher"])
def test_a_stop_asked_during_set_up_ends_the_run_before_the_next_phase(tmp_path: Path, random_teacher: Path, data,
                                                                       phase: str):
    """Issue 20 finding 7: a cancel during set-up is honoured at the next phase, not after minutes of set-up."""
    stopper = StopAfterPhase(phase)
    config = make_config(tmp_path, random_teacher, data, "gradient_kd", "setup-stop", epochs=1, batch_size=4)
    result = Trainer(config, [stopper]).train()
    assert result.stopped and result.steps == 0 and result.final_dir is None
    seen = [p.phase for p in stopper.phases]
    assert "teacher_cache" not in seen and "training" not in seen, seen
    assert stopper.first_step_at is None
    assert not (tmp_path / "setup-stop" / "state").exists()


def test_a_stop_asked_during_the_teacher_cache_leaves_no_cache(tmp_path: Path, random_teacher: Path, data):
    """A cache build is checked after each batch; the half-built cache is removed, so a later run builds it anew."""
    stopper = StopAfterPhase("teacher_cache", done=1)
    config = make_config(tmp_path, random_teacher, data, "gradient_kd", "cache-stop", epochs=1, batch_size=4)
    result = Trainer(config, [stopper]).train()
    assert result.stopped and result.steps == 0
    assert "training" not in [p.phase for p in stopper.phases]
    assert not list((tmp_path / "cache").rglob("meta.json"))  # no complete cache was left behind
    again = PhaseRecorder()
    assert not Trainer(make_config(tmp_path, random_teacher, data, "gradient_kd", "cache-again", epochs=1,
                                   batch_size=4), [again]).train().stopped
    assert "train, found" not in [p.detail for p in again.phases]
