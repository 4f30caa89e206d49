"""How a dataset's label names meet a teacher's (docs/methods.md, "Labels").

Hugging Face classifiers often name their classes `LABEL_0`, `LABEL_1`... (transformers' default) while datasets
label rows `0`, `1`...; other teachers have names the data spells differently. A run maps the data's labels onto
the teacher's: an explicit `label_map` first, else integer labels `i` onto `LABEL_i` when the teacher has exactly
those names, else the names must already be the teacher's. The student keeps the teacher's names.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence


class LabelMapError(ValueError):
    """The data's labels do not fit the teacher's; `message` says how to map them."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _integer(label: str) -> int | None:
    return int(label) if label.isascii() and label.isdigit() else None


def label_map_for(data_labels: Iterable[str], teacher_labels: Sequence[str],
                  explicit: Mapping[str, str] | None = None) -> dict[str, str]:
    """The mapping from the data's label names to the teacher's (an empty dict: the names already match)."""
    data, known = sorted(set(data_labels)), set(teacher_labels)
    if explicit:
        unknown_targets = sorted({target for target in explicit.values() if target not in known})
        if unknown_targets:
            raise LabelMapError(f"label_map maps to {unknown_targets}, which are not the teacher's labels "
                                f"{list(teacher_labels)}")
        mapping = {label: explicit.get(label, label) for label in data}
    elif set(data) <= known:
        return {}
    else:
        indices = [_integer(label) for label in data]
        mapping = {label: f"LABEL_{i}" for label, i in zip(data, indices, strict=True) if i is not None}
        if len(mapping) < len(data) or not set(mapping.values()) <= known:
            mapping = {}
    unmapped = sorted(label for label in data if mapping.get(label, label) not in known)
    if unmapped:
        raise LabelMapError(f"the data's labels {unmapped} are not the teacher's labels {list(teacher_labels)}; "
                            f"{hint(data, teacher_labels)}")
    return {label: target for label, target in mapping.items() if label != target}


def hint(data_labels: Sequence[str], teacher_labels: Sequence[str]) -> str:
    """A copy-paste `label_map` (the data's labels in order against the teacher's, to be checked by the user)."""
    data = sorted(data_labels, key=lambda label: (_integer(label) is None, _integer(label) or 0, label))
    example = dict(zip(data, teacher_labels, strict=False))
    return f"set label_map to say which is which, e.g. \"label_map\": {json.dumps(example)}"

