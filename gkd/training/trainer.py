"""The training loop: AdamW with linear warmup/decay, clipping, accumulation, evaluation, best-checkpoint
selection, callbacks, and exactly resumable state (`gkd.training.state`).

A run has four public seams: `setup()` loads everything and returns a `RunState` (the student, its optimiser,
the encoded data and teacher targets, where the loop stands); `step(run, group)` is one optimisation step over a
group of micro-batches; `loop(run)` runs the epochs, evaluating and saving as it goes; `finish(run, stopped)`
exports the final student, tests the best one and returns the `TrainResult`. `train()` is the four in order.

Everything that varies between uses (progress bars, events in a database, cancellation, uploads) is a
`TrainerCallback`; how this process shares the run with others (data parallelism) is a `Parallelism`
strategy (`gkd.training.strategy`). The loop itself only trains, evaluates and saves.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from gkd.config import ConfigError, DistillConfig, Hyperparameters
from gkd.data.batching import Batch, EncodedDataset, collate, encode_examples, epoch_batches, eval_batches
from gkd.data.labels import LabelMapError, label_map_for
from gkd.data.readers import label_names
from gkd.data.splits import Splits, load_splits
from gkd.evaluation.evaluate import evaluate_model
from gkd.evaluation.metrics import accuracy_f1
from gkd.export.checkpoint import export_student, portable_config
from gkd.method.gradient_cap import GradientCap, cap_bound, gradient_norms
from gkd.method.objective import TeacherTargets, model_inputs, student_loss_parts, teacher_targets
from gkd.method.precision import Precision, resolve_precision
from gkd.method.properties import layer_map, method_properties
from gkd.models.families import model_family
from gkd.models.student import build_student, continue_student, load_checkpoint
from gkd.models.teacher import Teacher, describe_teacher, load_teacher
from gkd.models.vocabulary import PrunedVocabulary, check_prunable, position_pad_id, prune_vocabulary
from gkd.training.accuracy_guard import AccuracyGuard
from gkd.training.allocator import reuse_freed_memory
from gkd.training.beta_auto import (
    FALLBACK_BETA,
    BetaChoice,
    ProbeScore,
    beta_candidates,
    choose_beta,
    probe_steps,
    snapshot,
)
from gkd.training.callbacks import StepMetrics, TrainerCallback, TrainingProgress, epoch_kind, phase_reporter
from gkd.training.estimates import total_steps as planned_steps
from gkd.training.integrations import integration_callbacks
from gkd.training.run_warnings import RunWarning, gradient_term_idle, majority_share, near_chance
from gkd.training.state import (
    STATE_FILE,
    LoopState,
    restore_training_state,
    save_training_state,
    seed_everything,
)
from gkd.training.strategy import SINGLE_PROCESS, Parallelism
from gkd.training.teacher_cache import TeacherCache, open_or_build, teacher_fingerprint

__all__ = ["STATE_FILE", "RunState", "TrainResult", "Trainer", "gradient_cap", "gradient_ramp", "linear_schedule",
           "make_optimizer", "resolve_device"]


@dataclass
class TrainResult:
    stopped: bool
    steps: int
    best_dir: Path | None
    final_dir: Path | None
    best_metrics: dict[str, float] = field(default_factory=dict)
    final_metrics: dict[str, float] = field(default_factory=dict)
    test_metrics: dict[str, float] | None = None
    teacher_metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from_step: int = 0
    labels: list[str] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)  # RunWarning.as_dict() of each
    exports: dict[str, Path] = field(default_factory=dict)  # checkpoint kind -> directory (`export`)
    beta_auto: dict[str, Any] | None = None  # BetaChoice.as_dict() of a `beta: "auto"` run


@dataclass
class RunState:
    """One run, set up: what `step()` trains and the loop updates. Every field is public and may be read; the
    benchmarks point `encoded["train"]` and `caches["train"]` at data of their own."""

    teacher: Teacher
    labels: list[str]
    encoded: dict[str, EncodedDataset]
    caches: dict[str, TeacherCache | None]  # per split; None: the teacher runs live (or there is no teacher)
    pad_id: int
    student: PreTrainedModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    layer_pairs: list[tuple[int, int]]  # (student layer, teacher layer) of the hidden-state terms
    vector_form: bool  # compare per-token gradient vectors (equal widths) or saliency scalars
    precision: Precision
    scaler: torch.amp.GradScaler  # fp16's loss scale for both backward passes (a pass-through otherwise)
    cap: GradientCap | None  # the gradient-term cap; its measurement schedule carries across steps
    guard: AccuracyGuard | None  # when the gradient terms start and how much they weigh (None: fixed ramp)
    total_steps: int
    num_epochs: int
    device: torch.device
    loop: LoopState = field(default_factory=LoopState)
    resumed_from: int = 0
    teacher_metrics: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    # `student.vocabulary: training_data`: the kept tokens, and the test split in the pruned tokenizer's ids
    vocabulary: PrunedVocabulary | None = None
    pruned_test: EncodedDataset | None = None
    # `beta: "auto"`: what was chosen (None until then), and the candidate a probe step is training with
    beta_choice: BetaChoice | None = None
    probing_beta: float | None = None

    def progress(self) -> TrainingProgress:
        return TrainingProgress(self.loop.step, self.total_steps, self.loop.epoch, self.num_epochs,
                                time.perf_counter() - self.started, self.resumed_from)

    def teacher_targets(self, batch: Batch, split: str = "train", with_gradients: bool = True) -> TeacherTargets:
        """The teacher's targets for `batch` of `split`: from its cache, or computed live."""
        cache = self.caches.get(split)
        if cache is not None:
            return cache.targets(batch, self.device)
        self.teacher.model.eval()
        return teacher_targets(self.teacher.model, batch, with_gradients=with_gradients)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but CUDA is not available", "device")
    return torch.device(name)


def make_optimizer(model: PreTrainedModel, hp: Hyperparameters) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases and LayerNorm weights; frozen parameters are left out."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim < 2 or "LayerNorm" in name else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel updates each tensor in one pass: on the CPU 10x faster than the default for-each
    # kernels (140 -> 14 ms per step for a 3-layer MiniLM student with its 30k-token embedding), same result.
    devices = {p.device.type for p in decay + no_decay}
    fused = bool(devices) and devices <= {"cpu", "cuda"}
    return torch.optim.AdamW(groups, lr=hp.learning_rate, fused=fused or None)


def linear_schedule(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """The learning-rate factor of step k: a linear warmup, then a linear decay to 0 at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def gradient_ramp(step: int, total_steps: int, warmup_ratio: float, start_ratio: float = 0.0) -> float:
    """The gradient terms' weight factor: 0 for the first `start_ratio` of training, then a linear ramp to 1 over
    the next `warmup_ratio` (a step to 1 when that ratio is 0)."""
    start = start_ratio * total_steps
    if step < start:
        return 0.0
    ramp_steps = warmup_ratio * total_steps
    return 1.0 if ramp_steps <= 0 else min(1.0, (step - start) / ramp_steps)


def gradient_cap(hp: Hyperparameters) -> GradientCap | None:
    """The run's gradient-term cap (None when `gradient_term_cap` is off)."""
    if hp.gradient_term_cap is None:
        return None
    return GradientCap(hp.gradient_term_cap, every=hp.gradient_term_cap_every,
                       per_tensor=hp.gradient_term_cap_per_tensor)


TEACHER_COUNT = "_teacher_predicted_"  # per-class counts of the teacher's predictions, summed across ranks


class SetupStopped(Exception):
    """A callback asked the run to stop while it was being set up (a cancel or a drain before the first step)."""


class Trainer:
    """Runs one `DistillConfig`. `examples` may supply the splits in memory (else files are read), `teacher` a
    loaded teacher; `parallel` is this process's part in a data-parallel run (`gkd.training.parallel`)."""

    def __init__(
        self,
        config: DistillConfig,
        callbacks: Sequence[TrainerCallback] = (),
        *,
        state_every_steps: int | None = None,
        examples: Splits | None = None,
        teacher: Teacher | None = None,
        parallel: Parallelism = SINGLE_PROCESS,
    ) -> None:
        if not parallel.is_main and config.run.cache == "refresh":  # only rank 0 rebuilds
            config = config.model_copy(update={"run": config.run.model_copy(update={"cache": "auto"})})
        self.config = config
        self.method = method_properties(config.method)
        self.parallel = parallel
        # The run's experiment trackers (`config.integrations`) follow the caller's callbacks.
        self.callbacks = [*callbacks, *integration_callbacks(config)] if parallel.is_main else []
        self.state_every_steps = state_every_steps
        self._examples = examples
        self._teacher = teacher
        self.output_dir = Path(config.run.output_dir)
        self.state_path = self.output_dir / "state" / STATE_FILE
        self.device = parallel.device(resolve_device(config.run.device))

    # ---------------------------------------------------------------- the run
    def train(self, resume: bool = True) -> TrainResult:
        """`setup`, `loop`, `finish`: resumes from `output_dir/state` when `resume` and a state is there. A stop
        asked for during set-up ends the run before its first step (`stopped`, nothing trained or saved)."""
        try:
            run = self.setup(resume)
        except SetupStopped:
            return TrainResult(stopped=True, steps=0, best_dir=None, final_dir=None)
        stopped = self.loop(run)
        return self.finish(run, stopped)

    def setup(self, resume: bool = True) -> RunState:
        """Apply the process settings, read and encode the data, load the teacher and its targets, build the student
        and its optimiser, and restore the saved training state when `resume` finds one."""
        config, hp = self.config, self.config.hyperparameters
        if config.run.num_threads:
            torch.set_num_threads(config.run.num_threads)
        if config.run.reuse_freed_memory:
            reuse_freed_memory()
        seed_everything(hp.seed)
        reading = phase_reporter(self.callbacks, "validating", "rows", "reading")
        reading(0, None)
        splits = self.load_splits()
        if not splits.get("train"):
            raise ConfigError("the training data has no rows", "data.train")
        rows = sum(len(part) for part in splits.values())
        reading(rows, rows)
        self.stop_point()
        loading = phase_reporter(self.callbacks, "loading_teacher", "models")
        loading(0, 1)
        teacher = self._teacher or self._load_teacher(splits)
        self._teacher = teacher
        loading(1, 1)
        if config.student.vocabulary == "training_data":
            check_prunable(teacher.tokenizer)  # refused now, not after training
        self.stop_point()
        splits = self._mapped_labels(teacher.labels, splits)
        labels = self._labels(teacher.labels, splits)
        if not teacher.labels and self.method.teacher_logits:
            raise ConfigError(f"method {config.method!r} needs a fine-tuned teacher with a classifier", "teacher")
        tokenising = phase_reporter(self.callbacks, "validating", "rows", "tokenising")
        tokenising(0, rows)
        encoded = {name: encode_examples(teacher.tokenizer, part, labels, hp.max_length)
                   for name, part in splits.items()}
        tokenising(rows, rows)
        self.stop_point()
        if len(encoded["train"]) == 0:
            raise ConfigError("no usable training rows (all empty or unlabelled)", "data.train")
        pad_id = int(teacher.tokenizer.pad_token_id or 0)
        # no targets or figures from a bare encoder's random head
        caches = self.teacher_sources(teacher, encoded, pad_id) if teacher.teaches else {}
        self.stop_point()
        run = self.start(teacher, labels, encoded, caches)
        if config.student.vocabulary == "training_data":  # every rank: each evaluates the pruned best on test
            self.prune_vocabulary(run, splits)
        self.stop_point()
        if resume and self.state_path.is_file():
            run.loop = restore_training_state(self.state_path, config, self.device, run.student, run.optimizer,
                                              run.scheduler)
            if run.cap is not None and run.loop.gradient_cap:
                run.cap.load_state_dict(run.loop.gradient_cap)
            if run.guard is not None and run.loop.accuracy_guard:
                run.guard = AccuracyGuard.from_state(run.loop.accuracy_guard)
            if run.loop.beta_auto:
                run.beta_choice = BetaChoice.from_dict(run.loop.beta_auto)
        run.resumed_from = run.loop.step
        if teacher.teaches and "dev" in run.encoded:
            judging = phase_reporter(self.callbacks, "evaluating", "rows", "teacher on dev")
            judging(0, len(run.encoded["dev"]))
            run.teacher_metrics = self._teacher_metrics(run)
            judging(len(run.encoded["dev"]), len(run.encoded["dev"]))
        run.started = time.perf_counter()
        return run

    def stop_point(self) -> None:
        """Between set-up phases (reading, loading the teacher, tokenising, the teacher cache, the student): raise
        `SetupStopped` when a callback asks to stop, so a cancel does not wait for a set-up of minutes. Every
        process calls it at the same points and gets the same answer (`Parallelism.any`)."""
        progress = TrainingProgress(0, 0, 0, self.config.hyperparameters.epochs, 0.0)
        if self.parallel.any(any([callback.should_stop(progress) for callback in self.callbacks])):
            raise SetupStopped

    def start(self, teacher: Teacher, labels: list[str], encoded: dict[str, EncodedDataset],
              caches: dict[str, TeacherCache | None]) -> RunState:
        """A fresh `RunState` on data already encoded: the student, its optimiser and schedule, precision and cap."""
        hp = self.config.hyperparameters
        student = self.build_student(teacher, labels)
        optimizer = make_optimizer(student, hp)
        total_steps = planned_steps(len(encoded["train"]), hp.batch_size, hp.gradient_accumulation_steps, hp.epochs)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, linear_schedule(total_steps, int(hp.warmup_ratio * total_steps)))
        precision = resolve_precision(self.config.run.precision, self.device)
        teacher_layers = model_family(teacher.model).num_layers(teacher.model.config)
        return RunState(
            teacher=teacher, labels=labels, encoded=encoded, caches=caches,
            pad_id=int(teacher.tokenizer.pad_token_id or 0), student=student, optimizer=optimizer,
            scheduler=scheduler, layer_pairs=layer_map(teacher_layers, self.config.student.num_layers),
            vector_form=self._vector_form(student, teacher), precision=precision, scaler=precision.grad_scaler(),
            cap=gradient_cap(hp), guard=self.accuracy_guard(total_steps), total_steps=total_steps,
            num_epochs=hp.epochs, device=self.device,
        )

    def prune_vocabulary(self, run: RunState, splits: Splits) -> None:
        """`student.vocabulary: training_data`: the tokens of the train and dev texts (never test), which the exports
        keep (`gkd.models.vocabulary`), and the test split tokenized as the pruned student will read it."""
        seen = [e for name in ("train", "dev") for e in splits.get(name) or () if e.text.strip()]
        pairs = [e.text_pair for e in seen] if any(e.text_pair for e in seen) else None
        reporter = phase_reporter(self.callbacks, "validating", "rows", "pruning vocabulary")
        reporter(0, len(seen))
        run.vocabulary = prune_vocabulary(run.teacher.tokenizer, [e.text for e in seen], pairs,
                                          keep_through=position_pad_id(run.student))
        reporter(len(seen), len(seen))
        if splits.get("test"):
            run.pruned_test = encode_examples(run.vocabulary.tokenizer, splits["test"], run.labels,
                                              self.config.hyperparameters.max_length)

    def accuracy_guard(self, total_steps: int) -> AccuracyGuard | None:
        """The run's accuracy guard: for methods with gradient terms, unless `accuracy_guard` is off."""
        hp = self.config.hyperparameters
        if not (hp.accuracy_guard and self.method.input_gradients and self.method.teacher_logits):
            return None
        return AccuracyGuard(start_step=hp.gradient_start_ratio * total_steps,
                             ramp_steps=hp.gradient_warmup_ratio * total_steps)

    # ---------------------------------------------------------------- beta "auto" (gkd.training.beta_auto)
    def beta_probe_impossible(self, run: RunState) -> str | None:
        """Why `beta: "auto"` cannot probe this run (then it weighs `FALLBACK_BETA`), or None when it can."""
        if self.method.gradient_weight != "beta":
            return f"method {self.config.method!r} has no gradient term weighed by beta"
        dev = run.encoded.get("dev")
        if dev is None or len(dev) == 0:
            return "no dev split to score the candidates on"
        if self.parallel.world_size > 1:
            return "data-parallel runs do not probe (only the main process holds the dev split)"
        return None

    def beta_probe_due(self, run: RunState) -> bool:
        """Whether the probe runs before the next step: `auto`, nothing chosen yet, and the gradient term is about
        to get weight for the first time."""
        return (self.config.hyperparameters.beta == "auto" and run.beta_choice is None
                and self.gradient_scale(run) > 0)

    def probe_beta(self, run: RunState, upcoming: Sequence[list[list[int]]]) -> BetaChoice:
        """Train a few steps of the `upcoming` groups from the current state once per candidate beta, at the
        gradient term's full weight; score each on dev; go back to the state and keep the winner. No callback
        hears of the probe steps: they are not the run's steps."""
        hp = self.config.hyperparameters
        count = probe_steps(hp.batch_size, hp.gradient_accumulation_steps, len(upcoming))
        restore_model = snapshot(run.student, run.optimizer, run.scheduler)
        loop_state = copy.deepcopy(run.loop)
        cap_state = copy.deepcopy(run.cap.state_dict()) if run.cap is not None else None
        guard_state = copy.deepcopy(run.guard.state_dict()) if run.guard is not None else None
        scaler_state = copy.deepcopy(run.scaler.state_dict()) if run.scaler.is_enabled() else None

        def restore() -> None:
            restore_model()
            run.loop = copy.deepcopy(loop_state)
            if run.cap is not None and cap_state is not None:
                run.cap.load_state_dict(copy.deepcopy(cap_state))
            if guard_state is not None:
                run.guard = AccuracyGuard.from_state(copy.deepcopy(guard_state))
            if scaler_state is not None:
                run.scaler.load_state_dict(copy.deepcopy(scaler_state))

        bound = self.cap_bound(run, upcoming[0][0]) if run.cap is not None else None
        candidates = beta_candidates(bound)
        probing = phase_reporter(self.callbacks, "training", "candidates", "beta auto probe")
        scores: list[ProbeScore] = []
        for done, beta in enumerate(candidates):
            probing(done, len(candidates))
            restore()
            run.probing_beta = beta
            run.student.train()
            try:
                for group in upcoming[:count]:
                    self.step(run, group, gradient_scale=1.0)
            except FloatingPointError:  # this candidate diverged: it scores below every other
                scores.append(ProbeScore(beta, 0.0, None))
                continue
            metrics = self.evaluate(run, run.student, "dev")
            scores.append(ProbeScore(beta, metrics["accuracy"], metrics.get("saliency_agreement")))
        probing(len(candidates), len(candidates))
        run.probing_beta = None
        restore()
        run.student.train()
        winner = choose_beta(scores)
        choice = BetaChoice(chosen=winner.beta, step=run.loop.step, probe_steps=count, cap_bound=bound,
                            candidates=[dataclasses.asdict(score) for score in scores])
        self.record_beta_choice(run, choice)
        return choice

    def cap_bound(self, run: RunState, indices: list[int]) -> float | None:
        """The beta at which the gradient term's parameter gradient reaches `gradient_term_cap` times the logit
        loss's, measured on the training batch `indices` (no parameter's `.grad` changes)."""
        assert run.cap is not None
        hp = self.config.hyperparameters.model_copy(update={"beta": 1.0})
        batch = collate(run.encoded["train"], indices, run.pad_id).to(self.device)
        targets = run.teacher_targets(batch, "train", True)
        run.student.train()
        with run.precision.autocast():
            parts = student_loss_parts(self.config.method, hp, run.student, batch, targets, run.layer_pairs,
                                       run.vector_form, gradient_scale=1.0, input_gradient_scale=run.scaler.get_scale())
        if parts.gradient is None:
            return None
        trainable = [p for p in run.student.parameters() if p.requires_grad]
        base_norm, extra_norm = gradient_norms(run.scaler.scale(parts.base), run.scaler.scale(parts.gradient),
                                               trainable)
        return cap_bound(base_norm, extra_norm, run.cap.cap)

    def record_beta_choice(self, run: RunState, choice: BetaChoice) -> None:
        """Keep the choice in the run and its saved state, and tell the callbacks (a `log` event in the service)."""
        run.beta_choice = choice
        run.loop.beta_auto = choice.as_dict()
        progress = run.progress()
        for callback in self.callbacks:
            callback.on_log(progress, choice.describe(), {"beta_auto": choice.as_dict()})

    def loop(self, run: RunState) -> bool:
        """Train the remaining epochs, evaluating after each (and every `eval_every_steps`) and saving the state;
        returns whether a callback stopped the run."""
        hp = self.config.hyperparameters
        phase_reporter(self.callbacks, "training", "steps")(run.loop.step, run.total_steps)
        for callback in self.callbacks:
            callback.on_train_begin(run.progress())
        if hp.beta == "auto" and run.beta_choice is None:
            reason = self.beta_probe_impossible(run)
            if reason is not None:
                self.record_beta_choice(run, BetaChoice(chosen=FALLBACK_BETA, step=run.loop.step, reason=reason))
        while run.loop.epoch < hp.epochs:
            groups = self.batch_groups(run)
            run.student.train()
            for position in range(run.loop.step_in_epoch, len(groups)):
                if self.beta_probe_due(run):
                    self.probe_beta(run, groups[position:])
                metrics = self.step(run, groups[position])
                snapshot = run.progress()
                for callback in self.callbacks:
                    callback.on_step(snapshot, metrics)
                if hp.eval_every_steps and run.loop.step % hp.eval_every_steps == 0 \
                        and run.loop.step_in_epoch < len(groups):
                    self.evaluate_and_select(run, snapshot)
                    run.student.train()
                if self.state_every_steps and run.loop.step % self.state_every_steps == 0:
                    self.save_state(run, snapshot)
                # every callback is asked (no short cut), and the answer is the same on every process
                if self.parallel.any(any([callback.should_stop(snapshot) for callback in self.callbacks])):
                    return True
            run.loop.epoch += 1
            run.loop.step_in_epoch = 0
            snapshot = run.progress()
            self.evaluate_and_select(run, snapshot)
            self.export_epoch(run, snapshot)
            self.save_state(run, snapshot)
        return False

    def finish(self, run: RunState, stopped: bool) -> TrainResult:
        """Save the state of a stopped run; else export `final` and test the best student. Ends the callbacks."""
        progress = run.progress()
        loop = run.loop
        result = TrainResult(
            stopped=stopped, steps=loop.step, best_dir=None, final_dir=None, best_metrics=loop.best,
            final_metrics=loop.history[-1]["metrics"] if loop.history else {}, teacher_metrics=run.teacher_metrics,
            history=loop.history, resumed_from_step=run.resumed_from, labels=run.labels,
            beta_auto=loop.beta_auto,
        )
        if stopped:
            self.save_state(run, progress)
        else:
            result.final_dir = self._export(run, "final", result.final_metrics, progress)
            if "test" in run.encoded:
                testing = phase_reporter(self.callbacks, "evaluating", "rows", "test")
                testing(0, len(run.encoded["test"]))
                best = self._load_best() or run.student
                result.test_metrics = self.evaluate_test(run, best)
                testing(len(run.encoded["test"]), len(run.encoded["test"]))
            result.warnings = [warning.as_dict() for warning in self.run_warnings(run)]
            for warning in result.warnings:
                for callback in self.callbacks:
                    callback.on_warning(progress, warning["code"], warning["message"])
        best_dir = self.output_dir / "best"
        result.best_dir = best_dir if best_dir.is_dir() else None
        if not stopped and result.best_dir is not None and self.config.export and self.parallel.is_main:
            result.exports = self._export_deployable(run, result.best_dir, progress)
        for callback in self.callbacks:
            callback.on_train_end(progress, stopped)
        return result

    def run_warnings(self, run: RunState) -> list[RunWarning]:
        """What the finished run must tell the user (`gkd.training.run_warnings`)."""
        found: list[RunWarning] = []
        dev = run.encoded.get("dev")
        if run.loop.best and dev is not None and len(dev):
            warning = near_chance(run.loop.best["accuracy"], run.teacher_metrics.get("accuracy"),
                                  majority_share(dev.labels))
            if warning is not None:
                found.append(warning)
        if run.guard is not None and run.guard.weight(run.loop.step - 1) == 0.0:  # the term never had any weight
            found.append(gradient_term_idle(run.loop.step))
        return found

    def _export_deployable(self, run: RunState, best_dir: Path, progress: TrainingProgress) -> dict[str, Path]:
        """The `export` formats of the best student (gkd.deploy), measured on dev; each is a checkpoint."""
        from gkd.deploy.run_export import export_best

        dev = run.encoded.get("dev")
        if dev is not None and run.vocabulary is not None:  # dev texts were kept: their ids map one to one
            dev = dataclasses.replace(dev, input_ids=[run.vocabulary.remap(ids) for ids in dev.input_ids])
        exported = export_best(best_dir, self.output_dir, list(self.config.export), dev,
                               self._teacher_predictions(run) if run.teacher.teaches else None)
        for kind, directory in exported:
            for callback in self.callbacks:
                callback.on_checkpoint(progress, kind, directory)
        return dict(exported)

    # ---------------------------------------------------------------- one step
    def batch_groups(self, run: RunState) -> list[list[list[int]]]:
        """The optimisation steps of the current epoch, each a group of micro-batches (indices into the train split),
        deterministic in (seed, epoch)."""
        hp = self.config.hyperparameters
        batches = epoch_batches(run.encoded["train"].lengths(), hp.batch_size, hp.seed, run.loop.epoch,
                                bucketing=hp.length_bucketing)
        return [batches[i : i + hp.gradient_accumulation_steps]
                for i in range(0, len(batches), hp.gradient_accumulation_steps)]

    def gradient_scale(self, run: RunState) -> float:
        """The gradient terms' weight factor of the next step: the accuracy guard's, or the fixed ramp's."""
        hp = self.config.hyperparameters
        if run.guard is not None:
            return run.guard.weight(run.loop.step)
        return gradient_ramp(run.loop.step, run.total_steps, hp.gradient_warmup_ratio, hp.gradient_start_ratio)

    def step_hyperparameters(self, run: RunState) -> Hyperparameters:
        """The hyperparameters a step trains with: `beta: "auto"` replaced by the candidate being probed or the
        choice (the fallback before either; the gradient term has no weight then)."""
        hp = self.config.hyperparameters
        if hp.beta != "auto":
            return hp
        beta = run.probing_beta if run.probing_beta is not None else (
            run.beta_choice.chosen if run.beta_choice is not None else FALLBACK_BETA)
        return hp.model_copy(update={"beta": beta})

    def step(self, run: RunState, group: list[list[int]], gradient_scale: float | None = None) -> StepMetrics:
        """One optimiser step over the micro-batches of `group` (this process's share of them); advances the loop.
        `gradient_scale` overrides the gradient terms' weight factor (the beta probe trains at full weight)."""
        hp = self.step_hyperparameters(run)
        if gradient_scale is None:
            gradient_scale = self.gradient_scale(run)
        # the teacher's predicted classes, which the accuracy guard's majority share is counted from
        teacher_counts = torch.zeros(len(run.labels), dtype=torch.long)
        cap, scaler, student = run.cap, run.scaler, run.student
        if cap is not None:
            cap.next_step()
        dataset = run.encoded["train"]
        total_examples = sum(len(indices) for indices in group)
        sums: dict[str, float] = {}
        run.optimizer.zero_grad(set_to_none=True)
        trainable = [p for p in student.parameters() if p.requires_grad]
        loss_scale = scaler.get_scale()  # once per step: it changes only at update(), and reading it syncs CUDA
        for indices in self.parallel.share(group):
            batch = collate(dataset, indices, run.pad_id).to(self.device)
            # before the gradient terms start (weight 0) a live teacher need not back-propagate either
            targets = (run.teacher_targets(batch, "train", self.method.input_gradients and gradient_scale > 0)
                       if self.method.teacher_logits else None)
            with run.precision.autocast():
                parts = student_loss_parts(self.config.method, hp, student, batch, targets, run.layer_pairs,
                                           run.vector_form, gradient_scale=gradient_scale,
                                           input_gradient_scale=loss_scale)
            share = len(indices) / total_examples
            if targets is not None and run.guard is not None:
                teacher_counts += torch.bincount(targets.logits.argmax(dim=-1).cpu(), minlength=len(run.labels))
            loss, terms = parts.total, dict(parts.terms)
            if parts.gradient is not None and cap is not None and gradient_scale > 0:
                # Both parts carry the same loss scale, so the cap's ratio of their gradients is unchanged.
                terms["grad_cap_scale"] = cap.backward(scaler.scale(parts.base), scaler.scale(parts.gradient),
                                                       trainable, extra_weight=gradient_scale, weight=share)
                if cap.measured_this_step and cap.last_cosine is not None:
                    terms["grad_cos"] = cap.last_cosine
            else:
                scaler.scale(loss * share).backward()
            for name, value in {"loss": float(loss.detach()), **terms}.items():
                sums[name] = sums.get(name, 0.0) + value * share
        if run.guard is not None:
            sums.update({f"{TEACHER_COUNT}{label}": float(n) for label, n in enumerate(teacher_counts.tolist())})
        sums = self.parallel.synchronise(student, sums)
        summed_counts = [int(sums.pop(f"{TEACHER_COUNT}{label}", 0.0)) for label in range(len(run.labels))]
        scaler.unscale_(run.optimizer)  # clip the true gradients (a no-op unless fp16)
        if hp.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(trainable, hp.max_grad_norm)
        scaler.step(run.optimizer)  # skipped by the scaler when a scaled gradient overflowed
        scaler.update()
        learning_rate = float(run.optimizer.param_groups[0]["lr"])
        run.scheduler.step()
        loss_value = sums.pop("loss")
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"the loss became {loss_value}; lower the learning rate or beta/gamma")
        run.loop.step += 1
        run.loop.step_in_epoch += 1
        run.loop.gradient_cap = cap.state_dict() if cap is not None else None
        if run.guard is not None and "agree" in sums:
            run.guard.observe(run.loop.step - 1, sums["agree"], summed_counts)
            run.loop.accuracy_guard = run.guard.state_dict()
        if self.method.input_gradients and (gradient_scale > 0 or run.guard is not None):
            sums["grad_weight"] = gradient_scale  # the gradient terms' weight factor (ramp x accuracy guard)
        return StepMetrics(loss=loss_value, terms=sums, learning_rate=learning_rate)

    # ---------------------------------------------------------------- set-up pieces
    def load_splits(self) -> Splits:
        """The run's examples (`examples` given to the trainer, else `data`'s files); only the main process keeps
        dev and test, which only it evaluates."""
        splits = self._examples if self._examples is not None else load_splits(self.config.data)
        return splits if self.parallel.is_main else {"train": splits["train"]}

    def build_student(self, teacher: Teacher, labels: list[str]) -> PreTrainedModel:
        """The student cut from `teacher` (`gkd.models.student`), or continued from `student.init.checkpoint`, with the
        run's labels, on the run's device; every process starts from the main process's weights."""
        if self.config.student.init_checkpoint is not None:
            student = continue_student(teacher, self.config, labels)
        else:
            student = build_student(teacher, self.config)
        student.config.id2label = dict(enumerate(labels))
        student.config.label2id = {name: i for i, name in enumerate(labels)}
        student = student.to(self.device)  # type: ignore[arg-type]  # transformers' to() stub is narrower
        self.parallel.broadcast_parameters(student)
        return student

    def teacher_sources(
        self, teacher: Teacher, encoded: dict[str, EncodedDataset], pad_id: int
    ) -> dict[str, TeacherCache | None]:
        """One cache per split unless caching is off (then targets are computed live each batch). The main process
        builds it first; the others then open the same memory-mapped files."""
        if not self.parallel.is_main:
            self.parallel.barrier()
        caches = self._teacher_caches(teacher, encoded, pad_id)
        if self.parallel.is_main:
            self.parallel.barrier()
        return caches

    def _teacher_caches(
        self, teacher: Teacher, encoded: dict[str, EncodedDataset], pad_id: int
    ) -> dict[str, TeacherCache | None]:
        run = self.config.run
        if run.cache == "off":
            return {name: None for name in encoded}

        fingerprint = teacher_fingerprint(teacher.path)
        caches: dict[str, TeacherCache | None] = {}
        for name, dataset in encoded.items():
            report = phase_reporter(self.callbacks, "teacher_cache", "batches", name)
            report(0, None)  # the number of batches is known once the build starts; a cache found is done at once
            cache, built = open_or_build(
                teacher.model, teacher.path, dataset, run.cache_dir, self.config.hyperparameters.max_length,
                refresh=run.cache == "refresh", device=self.device, pad_id=pad_id, progress=self._stoppable(report),
                fingerprint=fingerprint,
            )
            if not built:  # found on disk: nothing to wait for
                phase_reporter(self.callbacks, "teacher_cache", "batches", f"{name}, found")(0, 0)
            caches[name] = cache
        return caches

    def _stoppable(self, report: Callable[[int, int | None], None]) -> Callable[[int, int | None], None]:
        """`report` followed by a stop point after each batch of a cache build: a cache of many minutes can be
        cancelled (its partial files are removed). Alone only: the other ranks of a data-parallel run wait at a
        barrier meanwhile, so there the check comes after the build."""
        if self.parallel.world_size > 1:
            return report

        def report_then_check(done: int, total: int | None) -> None:
            report(done, total)
            self.stop_point()

        return report_then_check

    def _load_teacher(self, splits: Splits) -> Teacher:
        info = describe_teacher(self.config.teacher)
        labels = None if info.labels else label_names(e.label for e in splits["train"] if e.label)
        if not info.labels and self.method.teacher_logits:
            raise ConfigError(
                f"{self.config.teacher} has no classification head; only method 'ce' can start from it",
                "teacher",
            )
        return load_teacher(self.config.teacher, labels=labels, device=self.device)

    def _mapped_labels(self, teacher_labels: list[str], splits: Splits) -> Splits:
        """The splits with the data's label names replaced by the teacher's (`data.label_map`, gkd.data.labels)."""
        if not teacher_labels:
            return splits
        seen = {e.label for part in splits.values() for e in part if e.label is not None}
        try:
            mapping = label_map_for(seen, teacher_labels, self.config.data.label_map)
        except LabelMapError as exc:  # the map is at fault when there is one, else the data's labels
            raise ConfigError(exc.message, "data.label_map" if self.config.data.label_map else "data") from exc
        if not mapping:
            return splits
        return {name: [dataclasses.replace(e, label=mapping.get(e.label, e.label)) if e.label is not None else e
                       for e in part] for name, part in splits.items()}

    def _labels(self, teacher_labels: list[str], splits: Splits) -> list[str]:
        data_labels = label_names(e.label for e in splits["train"] if e.label is not None)
        if not teacher_labels:
            return data_labels
        seen = label_names(e.label for part in splits.values() for e in part)
        unknown = sorted(set(seen) - set(teacher_labels))
        if unknown:
            raise ConfigError(
                f"the data has labels {unknown} that the teacher does not know (teacher labels: {teacher_labels})",
                "data",
            )
        return teacher_labels

    def _vector_form(self, student: PreTrainedModel, teacher: Teacher) -> bool:
        form = self.config.hyperparameters.saliency_form
        # Each model's own family: a student started from another encoder may name its width differently.
        same_width = (model_family(student).hidden_size(student.config)
                      == model_family(teacher.model).hidden_size(teacher.model.config))
        return same_width if form == "auto" else form == "vector"

    # ---------------------------------------------------------------- evaluation and checkpoints
    def evaluate(self, run: RunState, model: PreTrainedModel, split: str = "dev") -> dict[str, float]:
        """Accuracy, macro-F1 and, with a teacher, teacher agreement and saliency agreement of `model` on `split`."""
        teaches = run.teacher.teaches

        def targets(batch: Batch) -> TeacherTargets:
            return run.teacher_targets(batch, split)

        return evaluate_model(model, run.encoded[split], run.labels, device=self.device, pad_id=run.pad_id,
                              targets=targets if teaches else None, vector_form=run.vector_form)

    def evaluate_test(self, run: RunState, best: PreTrainedModel) -> dict[str, float]:
        """The best student on test. A pruned student reads the test texts through its own tokenizer (unseen words
        split into kept pieces), so its figures are the exported model's; the teacher's targets belong to the full
        tokenization, so agreement with the teacher is then measured on dev only."""
        embedding = best.get_input_embeddings()
        pruned = (run.vocabulary is not None and isinstance(embedding, torch.nn.Embedding)
                  and embedding.num_embeddings == len(run.vocabulary.kept_ids))
        if not pruned or run.vocabulary is None or run.pruned_test is None:  # no pruned best on disk: the student
            return self.evaluate(run, best, "test")
        pad_id = int(run.vocabulary.tokenizer.pad_token_id or 0)
        return evaluate_model(best, run.pruned_test, run.labels, device=self.device, pad_id=pad_id,
                              vector_form=run.vector_form)

    def _teacher_metrics(self, run: RunState) -> dict[str, float]:
        """The teacher's dev accuracy (from the cache, or one no-grad pass when caching is off)."""
        predictions = self._teacher_predictions(run)
        if predictions is None:
            return {}
        return accuracy_f1(predictions, np.asarray(run.encoded["dev"].labels), len(run.labels))

    def _teacher_predictions(self, run: RunState) -> np.ndarray | None:
        """The teacher's predicted label ids on dev (from the cache, or one no-grad pass when caching is off)."""
        dataset = run.encoded.get("dev")
        if dataset is None or len(dataset) == 0:
            return None
        cache = run.caches.get("dev")
        if cache is not None:
            predictions = np.asarray(cache.logits[np.arange(len(dataset))]).argmax(axis=-1)
        else:
            predictions = np.zeros(len(dataset), dtype=np.int64)
            model = run.teacher.model
            with torch.no_grad():
                for indices in eval_batches(dataset.lengths(), 64):
                    batch = collate(dataset, indices, run.pad_id).to(self.device)
                    logits = model(**model_inputs(model, batch)).logits
                    predictions[indices] = logits.argmax(dim=-1).cpu().numpy()
        return predictions

    def evaluate_and_select(self, run: RunState, progress: TrainingProgress) -> None:
        """Evaluate on dev; export `best` when accuracy improved."""
        dev = run.encoded.get("dev")
        if dev is None or len(dev) == 0:
            return
        evaluating = phase_reporter(self.callbacks, "evaluating", "rows", "dev")
        evaluating(0, len(dev))
        metrics = self.evaluate(run, run.student, "dev")
        evaluating(len(dev), len(dev))
        run.loop.history.append({"step": run.loop.step, "epoch": progress.epoch, "metrics": metrics})
        for callback in self.callbacks:
            callback.on_evaluate(progress, metrics)
        if not run.loop.best or metrics["accuracy"] > run.loop.best.get("accuracy", -1.0):
            run.loop.best = {**metrics, "step": float(run.loop.step)}
            self._export(run, "best", metrics, progress)

    def export_epoch(self, run: RunState, progress: TrainingProgress) -> None:
        """`hyperparameters.n_checkpoints`: export the student after this epoch as `epoch-N` and remove the
        exported epochs older than the newest `n_checkpoints` (the callbacks prune what they stored themselves)."""
        keep = self.config.hyperparameters.n_checkpoints
        if not keep:
            return
        history = run.loop.history
        metrics = history[-1]["metrics"] if history and history[-1]["step"] == run.loop.step else {}
        self._export(run, epoch_kind(run.loop.epoch), metrics, progress)
        if self.parallel.is_main:
            for old in range(1, run.loop.epoch - keep + 1):
                stale = self.output_dir / epoch_kind(old)
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)

    def _export(self, run: RunState, kind: str, metrics: dict[str, float], progress: TrainingProgress) -> Path:
        directory = self.output_dir / kind
        if not self.parallel.is_main:
            return directory
        card = {
            "method": self.config.method,
            "checkpoint": kind,
            "step": progress.step,
            "epoch": progress.epoch,
            "metrics": metrics,
            "config": portable_config(self.config),  # names, not this machine's paths
            "paper": "Gradient Knowledge Distillation, Wang, Li, Sun, arXiv 2211.01071",
        }
        if run.loop.beta_auto is not None:  # what `beta: "auto"` chose, and the dev figures it chose from
            card["beta_auto"] = run.loop.beta_auto
        for callback in self.callbacks:
            callback.before_checkpoint(progress, "best" if kind == "best" else "final")
        export_student(run.student, run.teacher.tokenizer, run.labels, directory, card, run.vocabulary)
        for callback in self.callbacks:
            callback.on_checkpoint(progress, kind, directory)
        return directory

    def _load_best(self) -> PreTrainedModel | None:
        best = self.output_dir / "best"
        return load_checkpoint(best, self.device) if best.is_dir() else None

    def save_state(self, run: RunState, progress: TrainingProgress) -> None:
        """Write the resumable training state (the main process only) and tell the callbacks."""
        if not self.parallel.is_main:
            return
        for callback in self.callbacks:
            callback.before_checkpoint(progress, "state")
        save_training_state(self.state_path, self.config, run.loop, run.student, run.optimizer, run.scheduler)
        for callback in self.callbacks:
            callback.on_checkpoint(progress, "state", self.state_path)
