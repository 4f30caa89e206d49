"""Make a teacher: fine-tune a bare pretrained encoder on labelled data (`gkd teacher finetune`).

Users sometimes arrive with a base encoder rather than a fine-tuned classifier, and every task needs
its own teacher. Fine-tuning is the `ce` method at the encoder's full depth with a fresh classifier,
run by the same `Trainer` as a distillation (progress, best-on-dev selection, resumable state); the
result is an ordinary Hugging Face classifier directory whose `gkd_card.json` says how it was made.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gkd.checksums import sha256_file
from gkd.config import DistillConfig
from gkd.data.readers import Example
from gkd.export.checkpoint import CARD_NAME
from gkd.training.callbacks import TrainerCallback
from gkd.training.finetune_settings import (
    FINETUNE_EPOCHS,
    FINETUNE_LEARNING_RATE,
    FINETUNE_MAX_LENGTH,
    TRAINED_AS,
    finetune_student,
)


def teacher_card(best_card: dict[str, Any], made: dict[str, Any]) -> dict[str, Any]:
    """The fine-tuned teacher's `gkd_card.json`: the best checkpoint's card without the run's own paths (`config`),
    and `made`, which says how the teacher was made."""
    return {**{k: v for k, v in best_card.items() if k != "config"}, **made}


def install_teacher(best_dir: Path, out: Path, made: dict[str, Any]) -> dict[str, Any]:
    """Copy the best checkpoint to `out` with its teacher card; returns the card. `out` is replaced atomically:
    it holds either what it held before or the new teacher, never half of one."""
    staging = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(best_dir, staging)
    card = teacher_card(json.loads((staging / CARD_NAME).read_text(encoding="utf-8")), made)
    (staging / CARD_NAME).write_text(json.dumps(card, indent=2), encoding="utf-8")
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return card


def result_card(result: Any) -> dict[str, Any]:
    """What a finished fine-tuning measured, for the teacher's card (a `TrainResult`)."""
    return {
        "best_step": int(result.best_metrics["step"]) if "step" in result.best_metrics else None,
        "dev_accuracy": result.best_metrics.get("accuracy"),
        "dev_macro_f1": result.best_metrics.get("macro_f1"),
        "test_accuracy": (result.test_metrics or {}).get("accuracy"),
        "test_macro_f1": (result.test_metrics or {}).get("macro_f1"),
        "labels": result.labels,
    }


@dataclass(frozen=True)
class FinetuneResult:
    directory: Path
    card: dict[str, Any]


def _data_entry(path: Path) -> dict[str, str]:
    """A data file as the card names it: its name, and its digest when it is a file here."""
    return {"file": path.name, **({"sha256": sha256_file(path)} if path.is_file() else {})}


def finetune_teacher(
    base: str | Path,
    train: str | Path,
    out: str | Path,
    *,
    dev: str | Path | None = None,
    test: str | Path | None = None,
    epochs: int = FINETUNE_EPOCHS,
    learning_rate: float = FINETUNE_LEARNING_RATE,
    max_length: int = FINETUNE_MAX_LENGTH,
    batch_size: int = 32,
    seed: int = 42,
    work_dir: str | Path | None = None,
    examples: dict[str, list[Example]] | None = None,
    card: dict[str, Any] | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    num_threads: int | None = None,
    device: str = "auto",
) -> FinetuneResult:
    """Fine-tune `base` (all its layers, a fresh classifier) on `train`, keep the best-on-dev epoch in `out`.

    Without `dev`, a seeded 10 % of `train` is held out. `examples` may hand the splits over in memory (the
    files then only name the data in the card). `out` is replaced atomically: it holds either the previous
    teacher or the new one, never half of one."""
    from gkd.models.teacher import describe_teacher
    from gkd.training.trainer import Trainer

    base, out = Path(base), Path(out)
    depth = describe_teacher(base).num_layers
    work = Path(work_dir) if work_dir is not None else out.with_name(f".{out.name}.work")
    shutil.rmtree(work, ignore_errors=True)
    data = {"train": str(train), "dev": str(dev) if dev else None, "test": str(test) if test else None}
    config = DistillConfig.parse({
        "method": TRAINED_AS,
        "teacher": str(base),
        "student": finetune_student(depth),
        "data": data,
        "hyperparameters": {"epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
                            "max_length": max_length, "seed": seed},
        "output_dir": str(work),
        "cache": "off",
        "device": device,
        "num_threads": num_threads,
    })
    result = Trainer(config, callbacks, examples=examples).train(resume=False)
    if result.best_dir is None:
        raise RuntimeError("fine-tuning produced no checkpoint (no dev rows to select one?)")
    made = {
        "made_by": "gkd teacher finetune",
        "base_model": str(base),
        "data": {name: _data_entry(Path(path)) for name, path in data.items() if path},
        "rows": {name: len(part) for name, part in (examples or {}).items()} or None,
        "epochs": epochs,
        "learning_rate": learning_rate,
        "max_length": max_length,
        "seed": seed,
        **result_card(result),
        **(card or {}),
    }
    full_card = install_teacher(Path(result.best_dir), out, made)
    shutil.rmtree(work, ignore_errors=True)
    return FinetuneResult(out, full_card)
