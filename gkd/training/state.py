"""The resumable training state: where the loop stands, and the file that lets a run continue exactly.

Resuming is exact: the order of batches is a pure function of (seed, epoch) (`gkd.data.batching`), and the
saved state holds model, optimiser, scheduler, all RNG states and the position inside the epoch, so
"2 epochs" and "1 epoch, stop, resume, 1 epoch" end with the same weights. A state is only resumed by a run
with the same method, student and hyperparameters; sections written by earlier versions are read through
today's models first, so a default that became explicit (null dropout now 0.0) compares equal.
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import torch

from gkd.config import ConfigError, DistillConfig, Hyperparameters, StudentSpec

STATE_FILE = "training_state.pt"
# The config sections a saved state must share with the run that resumes it, and how each is read back.
RESUME_KEYS: dict[str, type[pydantic.BaseModel] | None] = {
    "method": None, "student": StudentSpec, "hyperparameters": Hyperparameters,
}


@dataclass
class LoopState:
    """Where the loop stands; saved with the weights so a resumed run continues from the same step."""

    epoch: int = 0
    step: int = 0
    step_in_epoch: int = 0
    best: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    gradient_cap: dict[str, Any] | None = None  # GradientCap.state_dict(): its measurement schedule
    accuracy_guard: dict[str, Any] | None = None  # AccuracyGuard.state_dict(): when the gradient terms opened
    beta_auto: dict[str, Any] | None = None  # BetaChoice.as_dict(): what `beta: "auto"` chose (gkd.training.beta_auto)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoopState:
        return cls(**data)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same directory, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_training_state(
    path: Path,
    config: DistillConfig,
    loop: LoopState,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        "loop": loop.as_dict(),
        "config": config.model_dump(mode="json"),
    }
    save_atomic(state, path)


def _comparable(key: str, value: Any) -> Any:
    model = RESUME_KEYS[key]
    if model is None or not isinstance(value, dict):
        return value
    try:
        return model.model_validate(value).model_dump(mode="json")
    except pydantic.ValidationError:
        return value  # unreadable today: compares unequal, so the state is refused


def check_resumable(saved: dict[str, Any], config: DistillConfig, where: Path) -> None:
    """Refuse a state saved by a run with another method, student or hyperparameters (`ConfigError`)."""
    current = config.model_dump(mode="json")
    for key in RESUME_KEYS:
        if _comparable(key, saved.get(key)) != current.get(key):
            raise ConfigError(
                f"the saved training state in {where} was made with another {key}; "
                "use a new output_dir or delete the state",
                key,
            )


def restore_training_state(
    path: Path,
    config: DistillConfig,
    device: torch.device,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> LoopState:
    """Load the state at `path` into model, optimiser, scheduler and the RNGs; return where the loop stood."""
    state = torch.load(path, map_location=device, weights_only=False)
    check_resumable(state.get("config", {}), config, path.parent)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return LoopState.from_dict(state["loop"])
