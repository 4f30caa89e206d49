"""A job's metrics events as CSV (`GET /v1/jobs/{id}/metrics.csv`), read in pages so memory stays flat.

Two passes over the same events, both bounded by the job's `last_seq` read before the first: the first collects
the metric names (the header: a step row and an evaluation row carry different names), the second writes one row
per event. Each page is its own short read, so a long download never holds a transaction open.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select

from app.store.db import sessionmaker_for
from app.store.orm import Job, JobEvent

PAGE = 500
# Columns every row has, first; the metric names follow in the order they were first seen.
LEADING = ("seq", "created_at", "kind", "step", "epoch")
_SKIPPED = frozenset({"step", "epoch", "eval"})


def _pages(database_url: str, job_id: str, last_seq: int) -> Iterator[list[tuple[int, Any, dict[str, Any]]]]:
    """(seq, created_at, data) of the job's metrics events up to `last_seq`, a page at a time."""
    after = 0
    sessions = sessionmaker_for(database_url)
    while after < last_seq:
        with sessions() as session:
            rows = session.execute(
                select(JobEvent.seq, JobEvent.created_at, JobEvent.data)
                .where(JobEvent.job_id == job_id, JobEvent.type == "metrics", JobEvent.seq > after,
                       JobEvent.seq <= last_seq)
                .order_by(JobEvent.seq)
                .limit(PAGE)
            ).all()
        if not rows:
            return
        yield [(r.seq, r.created_at, r.data or {}) for r in rows]
        after = rows[-1].seq


def last_seq_of(database_url: str, job_id: str) -> int:
    """The newest event number of the job when the download starts (the CSV covers events up to it)."""
    with sessionmaker_for(database_url)() as session:
        return int(session.scalar(select(Job.last_seq).where(Job.id == job_id)) or 0)


def _line(values: list[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


def _cell(value: Any) -> Any:
    return "" if value is None else value


def metrics_csv(database_url: str, job_id: str, last_seq: int) -> Iterator[str]:
    """The CSV text, a line at a time: header, then one row per metrics event (`kind` is `step` or `eval`)."""
    names: dict[str, None] = {}
    for page in _pages(database_url, job_id, last_seq):
        for _seq, _at, data in page:
            names.update((key, None) for key in data if key not in _SKIPPED)
    columns = list(names)
    yield _line([*LEADING, *columns])
    for page in _pages(database_url, job_id, last_seq):
        yield "".join(
            _line([seq, created_at.isoformat(), "eval" if data.get("eval") else "step", _cell(data.get("step")),
                   _cell(data.get("epoch")), *(_cell(data.get(name)) for name in columns)])
            for seq, created_at, data in page
        )
