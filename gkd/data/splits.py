"""Seeded, stratified splits: the train/dev split of a run (`split_train_dev`, `load_splits`) and the
helpers the movie-review benchmark's split shares with it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gkd.data.readers import DataError, Example, label_names, read_examples

if TYPE_CHECKING:
    from gkd.config import DataSpec

Splits = dict[str, list[Example]]


def row_key(seed: int, salt: str, index: int) -> bytes:
    """A per-row random key that is the same on every Python version, platform and hash seed."""
    return hashlib.blake2b(f"{seed}\x00{salt}\x00{index}".encode(), digest_size=8).digest()


def take_stratified(
    examples: Sequence[Example], fraction: float, seed: int, salt: str
) -> tuple[list[Example], list[Example]]:
    """Split off about `fraction` of every label (largest remainders, so totals round correctly).

    Each label keeps at least one row in the first part, and a positive fraction takes at least one
    row when any label can spare one, so a tiny dataset still gets a (tiny) dev set.
    """
    groups: dict[str | None, list[int]] = {}
    for index, example in enumerate(examples):
        groups.setdefault(example.label, []).append(index)
    order = label_names(k for k in groups if k is not None) + ([None] if None in groups else [])
    total = int(len(examples) * fraction + 0.5)
    if fraction > 0 and total == 0:
        total = 1
    quota = {key: min(int(len(groups[key]) * fraction), len(groups[key]) - 1) for key in order}
    remainders = sorted(
        order, key=lambda k: (-(len(groups[k]) * fraction - int(len(groups[k]) * fraction)), order.index(k))
    )
    missing = total - sum(quota.values())
    while missing > 0:
        spare = [k for k in remainders if quota[k] < len(groups[k]) - 1]
        if not spare:
            break
        for key in spare[:missing]:
            quota[key] += 1
        missing -= min(missing, len(spare))
    taken: set[int] = set()
    for key in order:
        ranked = sorted(groups[key], key=lambda index: row_key(seed, salt, index))
        taken.update(ranked[: quota[key]])
    kept = [e for i, e in enumerate(examples) if i not in taken]
    split = [e for i, e in enumerate(examples) if i in taken]
    return kept, split


def split_train_dev(
    examples: Sequence[Example], dev_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Deterministic stratified train/dev split; both parts keep the input order.

    The same seed gives the same split on any machine (row keys come from blake2b, not `random` or
    `hash`), every label keeps at least one training row when it has any, and dev gets about
    `dev_fraction` of every label.
    """
    if not 0.0 <= dev_fraction < 1.0:
        raise DataError(f"dev_fraction must be in [0, 1), got {dev_fraction}", param="dev_fraction")
    return take_stratified(examples, dev_fraction, seed, "dev")


# --------------------------------------------------------------------------------------------------
# the movie-review benchmark (shared/docs/DATA.md)


def load_splits(spec: DataSpec) -> Splits:
    """The examples of a run's `data` section: `train`, `dev` (the dev file, else `dev_fraction` of the training
    rows split off with `split_seed`) and, when given, `test`. Training and every view of a run's dev examples
    (`dev_split`) take them from here, so they see the same rows."""
    train = read_examples(spec.train).examples
    splits: Splits = {}
    if spec.dev:
        splits["train"], splits["dev"] = train, read_examples(spec.dev).examples
    else:
        splits["train"], splits["dev"] = split_train_dev(train, spec.dev_fraction, spec.split_seed)
    if spec.test:
        splits["test"] = read_examples(spec.test).examples
    return splits


def dev_split(spec: DataSpec) -> list[Example]:
    """The dev examples `load_splits` gives a run, reading only the file they come from."""
    if spec.dev:
        return read_examples(spec.dev).examples
    return split_train_dev(read_examples(spec.train).examples, spec.dev_fraction, spec.split_seed)[1]
