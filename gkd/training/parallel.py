"""Data-parallel training of one run on several devices (`run.devices: N`, `gkd distill --devices N`): N
processes, one per GPU (NCCL) or per CPU share (gloo), started with `torch.multiprocessing`; the calling
process is rank 0. Each rank is an ordinary `Trainer` with the `DataParallel` strategy
(`gkd.training.strategy`, which also says why this is not `DistributedDataParallel` and how a step is shared).

Only rank 0 evaluates, exports checkpoints, saves training state and runs the callbacks; a stop asked for by
any callback on rank 0 stops every rank after the same step. The teacher cache is built by rank 0 first; the
other ranks then open the same memory-mapped files and read their rows.
"""

from __future__ import annotations

import datetime
import socket
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gkd.config import ConfigError, DistillConfig
from gkd.data.splits import Splits
from gkd.training.callbacks import TrainerCallback
from gkd.training.strategy import DataParallel
from gkd.training.trainer import Trainer, TrainResult


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
    if backend_for(config.run.device) == "nccl" and devices > torch.cuda.device_count():
        raise ConfigError(f"devices={devices} but only {torch.cuda.device_count()} GPUs are visible", "devices")


def _init_group(backend: str, rank: int, world_size: int, port: int) -> None:
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(minutes=30))


def _run_rank(rank: int, config: DistillConfig, world_size: int, port: int, backend: str,
              options: dict[str, Any]) -> None:
    """Entry point of ranks 1..N-1 (a spawned process)."""
    if config.run.num_threads:
        torch.set_num_threads(config.run.num_threads)
    _init_group(backend, rank, world_size, port)
    resume = options.pop("resume", True)
    try:
        Trainer(config, parallel=DataParallel(), **options).train(resume=resume)
    finally:
        dist.destroy_process_group()


def train_distributed(
    config: DistillConfig,
    devices: int | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    *,
    resume: bool = True,
    state_every_steps: int | None = None,
    examples: Splits | None = None,
) -> TrainResult:
    """Train `config` on `devices` processes (default `config.run.devices`); this process is rank 0 and runs
    `callbacks`.

    One device is the ordinary `Trainer`. Ranks 1..N-1 are spawned (fresh interpreters, CUDA-safe) and read the
    same files, so the teacher and data paths must be local to this machine.
    """
    devices = config.run.devices if devices is None else devices
    check_devices(config, devices)
    if devices == 1:
        return Trainer(config, callbacks, state_every_steps=state_every_steps, examples=examples).train(resume)
    return run_ranks(config, devices, backend_for(config.run.device), callbacks, resume=resume,
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
            trainer = Trainer(config, callbacks, state_every_steps=state_every_steps, examples=examples,
                              parallel=DataParallel())
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
