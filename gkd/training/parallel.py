"""Data-parallel training of one run on several devices (`devices: N`): N processes, one per GPU (NCCL) or
per CPU share (gloo), started with `torch.multiprocessing`; the calling process is rank 0.

Why not `DistributedDataParallel`: the gradient terms of `gradient_kd` / `gradient_kd_cls` are built by
double backprop (`torch.autograd.grad(..., create_graph=True)` inside the loss, then `loss.backward()`).
DDP's reducer hooks do not support that: `backward(create_graph=True)` on a DDP output raises, and
`autograd.grad` inside a DDP forward gives wrong (unreduced or doubly reduced) gradients
(pytorch/pytorch#47562, #63812). So each rank runs the ordinary loss on its share of the step, calls
`loss.backward()`, and the gradients are then summed with one `all_reduce` per parameter. The shares are
weighted by their number of examples in the whole step, so the sum *is* the one-process gradient.

How a step (`batch_size` x `gradient_accumulation_steps` examples) is shared:
- with at least as many micro-batches in the step as ranks, whole micro-batches go round-robin to the
  ranks: every loss term is computed on exactly the same tensors as on one device, so the result equals
  one-process training with the same hyperparameters to float rounding;
- with fewer micro-batches than ranks, each micro-batch is split by examples. Every term that averages over
  examples (CE, KL, PKD, saliency form, [CLS] gradients) stays exact; the vector-form input-gradient term
  averages over *tokens*, and is then averaged per shard instead of over the whole micro-batch (the same
  approximation DDP makes for any token-averaged loss).

Only rank 0 evaluates, exports checkpoints, saves training state and runs the callbacks; a stop asked for
by any callback on rank 0 is broadcast so every rank leaves the loop after the same step. The teacher cache
is built by rank 0 first; the other ranks then open the same memory-mapped files and read their rows.
"""

from __future__ import annotations

import datetime
import socket
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import PreTrainedModel

from gkd.config import ConfigError, DistillConfig
from gkd.data.batching import EncodedDataset
from gkd.models.teacher import Teacher
from gkd.training.callbacks import StepMetrics, TrainerCallback, TrainingProgress
from gkd.training.teacher_cache import TeacherCache
from gkd.training.trainer import Splits, Trainer, TrainResult

CallbackFactory = Callable[[], Sequence[TrainerCallback]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def backend_for(device: str) -> str:
    """NCCL when the run is on CUDA, gloo otherwise."""
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return "nccl"
    return "gloo"


def check_devices(config: DistillConfig, devices: int) -> None:
    if devices < 1:
        raise ConfigError("devices must be at least 1", "devices")
    if backend_for(config.device) == "nccl" and devices > torch.cuda.device_count():
        raise ConfigError(f"devices={devices} but only {torch.cuda.device_count()} GPUs are visible", "devices")


class _SyncedCallbacks(TrainerCallback):
    """All of rank 0's callbacks behind one object, so `should_stop` is asked exactly once per step on every
    rank (the trainer's `any(...)` would short-circuit) and its answer is the same everywhere."""

    def __init__(self, inner: Sequence[TrainerCallback], device: torch.device) -> None:
        self.inner = list(inner)
        self.device = device

    def on_prepare(self, stage: str, done: int, total: int) -> None:
        for callback in self.inner:
            callback.on_prepare(stage, done, total)

    def on_train_begin(self, progress: TrainingProgress) -> None:
        for callback in self.inner:
            callback.on_train_begin(progress)

    def on_step(self, progress: TrainingProgress, metrics: StepMetrics) -> None:
        for callback in self.inner:
            callback.on_step(progress, metrics)

    def on_evaluate(self, progress: TrainingProgress, metrics: dict[str, float]) -> None:
        for callback in self.inner:
            callback.on_evaluate(progress, metrics)

    def on_checkpoint(self, progress: TrainingProgress, kind: Any, path: Any) -> None:
        for callback in self.inner:
            callback.on_checkpoint(progress, kind, path)

    def should_stop(self, progress: TrainingProgress) -> bool:
        local = [callback.should_stop(progress) for callback in self.inner]  # every one asked, no short-cut
        flag = torch.tensor([1.0 if any(local) else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def on_train_end(self, progress: TrainingProgress, stopped: bool) -> None:
        for callback in self.inner:
            callback.on_train_end(progress, stopped)


class DistributedTrainer(Trainer):
    """`Trainer` for one rank of a data-parallel run; the process group must be initialised."""

    def __init__(self, config: DistillConfig, callbacks: Sequence[TrainerCallback] = (), **kwargs: Any) -> None:
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        if self.rank != 0 and config.cache == "refresh":
            config = config.model_copy(update={"cache": "auto"})  # only rank 0 rebuilds
        super().__init__(config, (), **kwargs)
        if dist.get_backend() == "nccl":
            self.device = torch.device("cuda", self.rank)
            torch.cuda.set_device(self.device)
        self.callbacks = [_SyncedCallbacks(callbacks if self.rank == 0 else (), self.device)]

    # Only rank 0 evaluates and tests: the other ranks keep the training split alone.
    def _load_splits(self) -> Splits:
        splits = super()._load_splits()
        return splits if self.rank == 0 else {"train": splits["train"]}

    def _teacher_sources(
        self, teacher: Teacher, encoded: dict[str, EncodedDataset], pad_id: int
    ) -> dict[str, TeacherCache | None]:
        if self.rank == 0:
            caches = super()._teacher_sources(teacher, encoded, pad_id)
            dist.barrier()
            return caches
        dist.barrier()  # rank 0 has written the cache; open the same files
        return super()._teacher_sources(teacher, encoded, pad_id)

    def _prepare_student(self, teacher: Teacher, labels: list[str]) -> PreTrainedModel:
        student = super()._prepare_student(teacher, labels)
        with torch.no_grad():
            for tensor in [*student.parameters(), *student.buffers()]:
                dist.broadcast(tensor.data, src=0)
        return student

    def _save_state(self, *args: Any, **kwargs: Any) -> None:
        if self.rank == 0:
            super()._save_state(*args, **kwargs)

    def _export(self, student: PreTrainedModel, tokenizer: Any, labels: list[str], kind: str,
                metrics: dict[str, float], progress: TrainingProgress) -> Any:
        if self.rank == 0:
            return super()._export(student, tokenizer, labels, kind, metrics, progress)
        return self.output_dir / kind

    def _shares(self, group: list[list[int]]) -> list[list[int]]:
        """This rank's micro-batches of one optimisation step (see the module docstring)."""
        if len(group) >= self.world_size:
            return group[self.rank :: self.world_size]
        return [part for part in (indices[self.rank :: self.world_size] for indices in group) if part]

    def _micro_batches(self, group: list[list[int]]) -> list[list[int]]:
        return self._shares(group)

    def _synchronise(self, student: PreTrainedModel, sums: dict[str, float]) -> dict[str, float]:
        """Sum gradients and the logged loss terms over the ranks (each share is weighted by the step's size)."""
        self._all_reduce_gradients(student)
        gathered: list[dict[str, float]] = [{} for _ in range(self.world_size)]
        dist.all_gather_object(gathered, sums)
        total: dict[str, float] = {}
        for part in gathered:
            for name, value in part.items():
                total[name] = total.get(name, 0.0) + value
        return total

    @staticmethod
    def _all_reduce_gradients(model: torch.nn.Module) -> None:
        """Sum every trainable parameter's gradient over the ranks (a rank without data adds zeros).
        The shares were already weighted by the whole step's example count, so the sum is the mean."""
        for parameter in model.parameters():
            if not parameter.requires_grad:
                continue
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)


def _init_group(backend: str, rank: int, world_size: int, port: int) -> None:
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(minutes=30))


def _run_rank(rank: int, config: DistillConfig, world_size: int, port: int, backend: str,
              options: dict[str, Any]) -> None:
    """Entry point of ranks 1..N-1 (a spawned process)."""
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    _init_group(backend, rank, world_size, port)
    resume = options.pop("resume", True)
    try:
        DistributedTrainer(config, **options).train(resume=resume)
    finally:
        dist.destroy_process_group()


def train_distributed(
    config: DistillConfig,
    devices: int,
    callbacks: Sequence[TrainerCallback] = (),
    *,
    resume: bool = True,
    state_every_steps: int | None = None,
    examples: Splits | None = None,
) -> TrainResult:
    """Train `config` on `devices` processes; this process is rank 0 and runs `callbacks`.

    `devices == 1` is the ordinary `Trainer`. Ranks 1..N-1 are spawned (fresh interpreters, CUDA-safe) and
    read the same files, so the teacher and data paths must be local to this machine.
    """
    check_devices(config, devices)
    if devices == 1:
        return Trainer(config, callbacks, state_every_steps=state_every_steps, examples=examples).train(resume)
    return run_ranks(config, devices, backend_for(config.device), callbacks, resume=resume,
                     state_every_steps=state_every_steps, examples=examples)


def run_ranks(
    config: DistillConfig,
    devices: int,
    backend: str,
    callbacks: Sequence[TrainerCallback] = (),
    *,
    resume: bool = True,
    state_every_steps: int | None = None,
    examples: Splits | None = None,
) -> TrainResult:
    """`devices` ranks on the process-group `backend`, this process rank 0, without `train_distributed`'s checks
    (the GPU check runs gloo on CUDA tensors, two ranks on one GPU, which NCCL refuses)."""
    port = free_port()
    options: dict[str, Any] = {"state_every_steps": state_every_steps, "examples": examples, "resume": resume}
    # Ranks 1..N-1 are started first: rank 0's init_process_group waits for them.
    context = mp.start_processes(
        _spawned_rank, args=(config, devices, port, backend, options), nprocs=devices - 1, join=False,
        start_method="spawn",
    )
    try:
        _init_group(backend, 0, devices, port)
        try:
            trainer = DistributedTrainer(config, callbacks, state_every_steps=state_every_steps, examples=examples)
            result = trainer.train(resume)
        finally:
            dist.destroy_process_group()
        while not context.join(timeout=60):
            pass
        return result
    except BaseException:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
        raise


def _spawned_rank(index: int, config: DistillConfig, world_size: int, port: int, backend: str,
                  options: dict[str, Any]) -> None:
    _run_rank(index + 1, config, world_size, port, backend, dict(options))
