"""Shape rules of a student, without torch: what `gkd.models.families` builds and what the service's admission
control (app/admission.py) predicts must be the same numbers."""

from __future__ import annotations


def student_heads(hidden: int, teacher_heads: int) -> int:
    """A student of width `hidden` gets the largest head count <= the teacher's that divides it."""
    heads = max(1, min(teacher_heads, hidden))
    while hidden % heads:
        heads -= 1
    return heads
