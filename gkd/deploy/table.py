"""The side-by-side table of `gkd evaluate` and benchmarks/deploy.py: one row per model, plain text."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def _mb(size: float) -> str:
    return f"{size / 1e6:.1f} MB"


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def comparison_table(rows: Sequence[dict[str, Any]]) -> str:
    """Accuracy, macro-F1, size, ms/example at batch 1, examples/s at batch 32 (teacher agreement when measured)."""
    agree = any("teacher_agreement" in r for r in rows)
    header = ["model", "runtime", "accuracy", "macro-F1", "size", "ms/ex (b=1)", "ex/s (b=32)"]
    header += ["teacher agr."] if agree else []
    body = []
    for r in rows:
        cells = [str(r["model"]), r["runtime"], _num(r["accuracy"] * 100, ".2f") + " %",
                 _num(r["macro_f1"] * 100, ".2f") + " %", _mb(r["size_bytes"]),
                 _num(r["ms_per_example_batch1"], ".2f"), _num(r["examples_per_second_batch32"], ".1f")]
        if agree:
            value = r.get("teacher_agreement")
            cells.append("-" if value is None else f"{value * 100:.1f} %")
        body.append(cells)
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths,
             strict=True))) for line in [header, *body]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])
