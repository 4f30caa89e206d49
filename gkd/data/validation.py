"""Checking a dataset for training: `validate_examples` reports what is suspicious (empty texts, duplicates,
conflicting labels) or unusable (no rows, one label) without raising. The service stores the report with the
dataset, so it is JSON-serialisable and cheap to compute.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from gkd.data.readers import Example, ExampleSet, list_names, quoted

# How many rows to hand the tokenizer at once when measuring lengths: bounds memory, keeps it batched.
_TOKENIZE_BATCH = 1024


class ValidationReport(BaseModel):
    """What `validate_examples` found; returned by the service as a dataset's `validation` object.

    `errors` make the data unusable for training; `warnings` are worth a look but do not block a job.
    """

    rows: int = 0
    errors: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    label_counts: dict[str, int] = Field(default_factory=dict)
    empty_rows: int = 0
    duplicate_rows: int = 0
    over_max_length: int = 0
    unknown_columns: list[str] = Field(default_factory=list)
    labels: list[str] = Field(default_factory=list)


def _count_over_length(examples: Sequence[Example], tokenizer: Any, max_length: int) -> int:
    """Rows whose full tokenisation (special tokens included) would be truncated at max_length."""
    over = 0
    for start in range(0, len(examples), _TOKENIZE_BATCH):
        batch = examples[start : start + _TOKENIZE_BATCH]
        texts = [e.text for e in batch]
        pairs = [e.text_pair or "" for e in batch] if any(e.text_pair is not None for e in batch) else None
        # verbose=False: the "sequence longer than the model maximum" warning is exactly what we count.
        encoded = tokenizer(texts, pairs, truncation=False, add_special_tokens=True, verbose=False)
        over += sum(len(ids) > max_length for ids in encoded["input_ids"])
    return over


def validate_examples(
    examples: ExampleSet | Sequence[Example], *, tokenizer: Any | None = None, max_length: int | None = None
) -> ValidationReport:
    """Check a dataset for training; never raises for data problems, it reports them.

    Empty texts are counted (the trainer drops them), exact duplicates and texts seen with different
    labels are warnings; no rows or fewer than two labels are errors. `over_max_length` needs both a
    Hugging Face tokenizer and `max_length`.
    """
    if not isinstance(examples, ExampleSet):
        examples = ExampleSet(examples=list(examples), format="jsonl", has_pair=False, unknown_columns=[])
    rows = examples.examples
    errors: list[str] = []
    warnings: list[str] = []

    labels = examples.labels()
    counts = Counter(e.label for e in rows if e.label is not None)
    label_counts = {label: counts[label] for label in labels}
    if not rows:
        errors.append("the dataset has no rows")
    elif labels and len(labels) < 2:
        errors.append(f"a classifier needs at least 2 distinct labels, found only {labels[0]!r}")
    unlabelled = sum(e.label is None for e in rows)
    if labels and unlabelled:
        warnings.append(f"{unlabelled} rows have no label")
    for label in labels:
        if label_counts[label] < 2:
            warnings.append(f"label {label!r} has only {label_counts[label]} example")

    empty_rows = sum(not e.text.strip() for e in rows)
    if empty_rows:
        warnings.append(f"{empty_rows} rows have empty text; they are dropped for training")

    duplicate_rows = len(rows) - len(set(rows))
    if duplicate_rows:
        warnings.append(f"{duplicate_rows} rows are exact duplicates of earlier rows")

    # The same text (and pair: NLI reuses premises) with different labels: noisy or mislabelled data.
    seen_labels: dict[tuple[str, str | None], set[str]] = {}
    conflicting: list[tuple[str, str | None]] = []
    for e in rows:
        if e.label is None:
            continue
        key = (e.text, e.text_pair)
        previous = seen_labels.setdefault(key, set())
        if previous and e.label not in previous and len(previous) == 1:
            conflicting.append(key)
        previous.add(e.label)
    if conflicting:
        warnings.append(
            f"{len(conflicting)} texts appear with conflicting labels (e.g. {quoted(conflicting[0][0])})"
        )

    if examples.unknown_columns:
        warnings.append(f"unknown columns are ignored: {list_names(examples.unknown_columns)}")

    over = 0
    if tokenizer is not None and max_length is not None and rows:
        over = _count_over_length(rows, tokenizer, max_length)
        if over:
            warnings.append(
                f"{over} rows are longer than max_length={max_length} tokens and will be truncated"
            )

    return ValidationReport(
        rows=len(rows),
        errors=errors,
        warnings=warnings,
        label_counts=label_counts,
        empty_rows=empty_rows,
        duplicate_rows=duplicate_rows,
        over_max_length=over,
        unknown_columns=list(examples.unknown_columns),
        labels=labels,
    )
