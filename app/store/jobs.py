"""The job state machine: every status, every legal move between them, and the writes that make a move.

    validating -> queued -> running -> succeeded | failed | cancelled
                     ^         |  \\-> cancelling -> cancelled | failed
                     +---------+  (a draining worker hands the job back)

    queued  -> paused                      (pause: a job no worker holds is parked at once)
    running -> pausing -> paused           (pause: the worker saves the training state at the next step)
    paused  -> queued                      (resume: it continues from the saved state)
    paused  -> cancelled; pausing -> cancelling

`pausing` is `running` with a pause pending, as `cancelling` is with a cancel pending: a worker still holds the
job (heartbeats, fencing). A training that ends while pausing ends `succeeded`. A paused job is unfinished (it keeps
its datasets, counts against the tenant's unfinished-jobs quota, cannot be deleted) but no worker holds it.
Terminal statuses never change; a terminal job may be deleted (`delete_finished`). Each move is one conditional
UPDATE (`transition`), so the API and workers racing on the same job cannot both win, and it records the status
event in the same transaction. The API routes, the worker and the sweeper ask this module; no other module writes
a job's status.

Fencing: every claim gets a token, the attempt number it set, and every write of the worker holding it starts with
`hold`, a conditional UPDATE that lands only while the job is still active under that token and worker. A worker
cut off past `stale_after_seconds` whose job another worker claimed meanwhile gets `FencedOff` at its next write,
inside the transaction it tried, so nothing of it lands (docs/reliability.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from app.store.events import append_event, status_event
from app.store.orm import Checkpoint, Job, JobEvent, utcnow

log = logging.getLogger(__name__)

JobStatus = Literal["validating", "queued", "running", "cancelling", "pausing", "paused", "succeeded", "failed",
                    "cancelled"]
STATUSES: tuple[str, ...] = get_args(JobStatus)
VALIDATING, QUEUED, RUNNING, CANCELLING, PAUSING, PAUSED, SUCCEEDED, FAILED, CANCELLED = STATUSES
TERMINAL_STATUSES = frozenset({SUCCEEDED, FAILED, CANCELLED})
ACTIVE_STATUSES = (RUNNING, CANCELLING, PAUSING)  # a worker holds the job (and sends heartbeats)
PAUSABLE_STATUSES = (QUEUED, RUNNING)
INITIAL_STATUS = QUEUED  # what POST /v1/jobs creates

TRANSITIONS: dict[str, frozenset[str]] = {
    VALIDATING: frozenset({QUEUED, CANCELLED, FAILED}),
    QUEUED: frozenset({RUNNING, PAUSED, CANCELLED, FAILED}),
    RUNNING: frozenset({QUEUED, CANCELLING, PAUSING, SUCCEEDED, FAILED, CANCELLED}),
    CANCELLING: frozenset({CANCELLED, FAILED}),
    PAUSING: frozenset({PAUSED, CANCELLING, SUCCEEDED, FAILED, CANCELLED}),
    PAUSED: frozenset({QUEUED, CANCELLED}),
    **{status: frozenset() for status in TERMINAL_STATUSES},
}
assert set(TRANSITIONS) == set(STATUSES)


def is_terminal_event(event: JobEvent) -> bool:
    """Whether `event` records the job's last status (an event stream ends after it)."""
    return event.type == "status" and event.data.get("status") in TERMINAL_STATUSES


def transition(
    session: Session,
    job_id: str,
    new_status: str,
    *,
    from_statuses: tuple[str, ...],
    message: str = "",
    values: dict[str, Any] | None = None,
) -> bool:
    """Atomically move a job from one of `from_statuses` to `new_status` and record the status event.

    A conditional UPDATE, so two processes racing on the same job cannot both win. Only moves of `TRANSITIONS`
    are accepted (anything else is a programming error: `ValueError`)."""
    illegal = [status for status in from_statuses if new_status not in TRANSITIONS[status]]
    if illegal:
        raise ValueError(f"a job cannot move from {illegal} to {new_status!r}")
    changes: dict[str, Any] = {"status": new_status, **(values or {})}
    if new_status in TERMINAL_STATUSES:
        changes.setdefault("finished_at", utcnow())
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(from_statuses))
        .values(**changes)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    status_event(session, job_id, new_status, message)
    return True


def record_created(session: Session, job_id: str) -> None:
    """The status event of a job just inserted with `INITIAL_STATUS` (same transaction)."""
    status_event(session, job_id, INITIAL_STATUS, f"job {INITIAL_STATUS}")


def request_cancel(session: Session, job_id: str) -> bool:
    """Cancel a job no worker holds (not started, or paused), or ask its worker to stop (`cancelling`); False when
    it had finished."""
    return transition(
        session, job_id, CANCELLED, from_statuses=(VALIDATING, QUEUED), message="job cancelled before it started"
    ) or transition(
        session, job_id, CANCELLED, from_statuses=(PAUSED,), message="job cancelled while paused"
    ) or transition(
        session, job_id, CANCELLING, from_statuses=(RUNNING, PAUSING),
        message="cancellation requested; waiting for the worker",
    )


def request_pause(session: Session, job_id: str) -> bool:
    """Park a queued job (`paused` at once: a worker that receives its task skips it), or ask the running job's
    worker to save its training state and let go (`pausing`). False when the job is in neither status."""
    return transition(
        session, job_id, PAUSED, from_statuses=(QUEUED,), message="job paused before a worker took it",
        values={"enqueued_at": None},
    ) or transition(
        session, job_id, PAUSING, from_statuses=(RUNNING,),
        message="pause requested; the worker saves the training state at its next step",
    )


def resume(session: Session, job_id: str) -> bool:
    """Queue a paused job again (the caller enqueues it after the commit); it continues from its saved training
    state. False when the job is not paused."""
    return transition(session, job_id, QUEUED, from_statuses=(PAUSED,),
                      message="job resumed; queued again", values={"enqueued_at": None})


def park(session: Session, job_id: str, worker: str, step: int, values: dict[str, Any] | None = None, *,
         token: int) -> bool:
    """The worker of a `pausing` job has saved its training state and lets go: `paused` with `values` (the progress
    and metrics it stopped at), the attempt not counted (pausing is no failure). False when the job is no longer
    pausing (e.g. being cancelled); `FencedOff` when it is not ours."""
    hold(session, job_id, token, worker)
    job = session.get(Job, job_id)
    return job is not None and transition(
        session, job_id, PAUSED, from_statuses=(PAUSING,),
        message=f"job paused at step {step}; its training state is saved and it resumes from there",
        values={**(values or {}), "worker": None, "attempts": max(0, job.attempts - 1), "heartbeat_at": None},
    )


class FencedOff(Exception):
    """The worker's claim on a job is no longer valid (another worker claimed it, or it ended): it must stop and
    write nothing more."""

    def __init__(self, job_id: str, token: int) -> None:
        super().__init__(f"job {job_id}: the claim with fencing token {token} was superseded; stopping")
        self.job_id, self.token = job_id, token


def hold(session: Session, job_id: str, token: int, worker: str) -> None:
    """Check the fence and refresh the heartbeat in one conditional UPDATE, the first statement of a worker's write
    (it takes the job's row lock, or SQLite's write lock, so the check holds until the caller commits). Raises
    `FencedOff` when the job is no longer active under `token` held by `worker`."""
    held = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempts == token, Job.worker == worker, Job.status.in_(ACTIVE_STATUSES))
        .values(heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if held != 1:
        raise FencedOff(job_id, token)


@dataclass
class Claim:
    attempt: int
    resumed: bool

    @property
    def token(self) -> int:
        """The fencing token of this claim: the attempt number, which every later claim raises."""
        return self.attempt


def claim(session: Session, job_id: str, worker: str, *, max_attempts: int, stale_after_seconds: float,
          versions: dict[str, str]) -> Claim | None:
    """Take a job for `worker`: a queued one, or one whose worker stopped sending heartbeats (it resumes). None for a
    duplicate delivery; a job whose worker was lost while cancelling ends `cancelled`, one that used up its attempts
    ends `failed`. Runs inside the caller's transaction, holding the job's row."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None:
        log.warning("job %s does not exist; dropping the task", job_id)
        return None
    now = utcnow()
    if job.status == PAUSED:
        return None  # parked: the task of its resume brings it back
    if job.status in TERMINAL_STATUSES or (job.status in ACTIVE_STATUSES and not _stale(job.heartbeat_at, now,
                                                                                         stale_after_seconds)):
        return None  # finished, or another worker holds it: a duplicate delivery
    if job.status == CANCELLING:
        transition(session, job.id, CANCELLED, from_statuses=(CANCELLING,),
                   message="job cancelled (its worker was lost)")
        return None
    if job.status == PAUSING:  # lost after the pause was asked: park it; it resumes from its last saved state
        transition(session, job.id, PAUSED, from_statuses=(PAUSING,),
                   message="job paused (its worker was lost; it resumes from its last saved training state)",
                   values={"worker": None, "heartbeat_at": None})
        return None
    if job.attempts >= max_attempts:
        transition(
            session, job.id, FAILED, from_statuses=(QUEUED, RUNNING),
            message=f"job failed: gave up after {job.attempts} attempts",
            values={"error": f"the job's worker was lost {job.attempts} times; gave up after "
                             f"{max_attempts} attempts"},
        )
        return None
    seen_status, attempt = job.status, job.attempts + 1
    claimed = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == seen_status, Job.attempts == job.attempts)
        .values(status=RUNNING, attempts=attempt, worker=worker, heartbeat_at=now,
                started_at=job.started_at or now, versions=versions, error=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    if claimed != 1:
        return None
    if seen_status == QUEUED:
        status_event(session, job.id, RUNNING, f"job running on {worker} (attempt {attempt})")
    else:  # a stale `running` job: this worker resumes it
        append_event(session, job.id, "log", f"worker {worker} resumes the job (attempt {attempt})",
                     {"attempt": attempt, "worker": worker})
    return Claim(attempt=attempt, resumed=seen_status != QUEUED)


def _stale(heartbeat_at: datetime | None, now: datetime, stale_after_seconds: float) -> bool:
    return heartbeat_at is None or heartbeat_at < now - timedelta(seconds=stale_after_seconds)


Outcome = Literal["succeeded", "failed", "cancelled"]


def finish(session: Session, job_id: str, outcome: Outcome, message: str, values: dict[str, Any], *,
           token: int, worker: str) -> str:
    """End a running job with `outcome`; a pending cancel turns success into `cancelled` (a pending pause does not:
    the training is done). Returns the status the job has afterwards. Raises `FencedOff` when the claim `token` of
    `worker` no longer holds the job."""
    hold(session, job_id, token, worker)
    if outcome == SUCCEEDED and transition(session, job_id, SUCCEEDED, from_statuses=(RUNNING, PAUSING),
                                           message=message, values=values):
        return SUCCEEDED
    if outcome in (SUCCEEDED, CANCELLED) and transition(
        session, job_id, CANCELLED, from_statuses=ACTIVE_STATUSES, message="job cancelled", values=values
    ):
        return CANCELLED
    if outcome == FAILED and transition(session, job_id, FAILED, from_statuses=ACTIVE_STATUSES, message=message,
                                        values=values):
        return FAILED
    return str(session.scalar(select(Job.status).where(Job.id == job_id)))


def hand_back(session: Session, job_id: str, worker: str, step: int, *, token: int) -> str | None:
    """A draining worker gives its running job back to the queue, the attempt not counted. Returns the job's queue
    kind, or None when the job is no longer running (e.g. being cancelled); `FencedOff` when it is not ours."""
    hold(session, job_id, token, worker)
    job = session.get(Job, job_id)
    if job is None or not transition(
        session, job_id, QUEUED, from_statuses=(RUNNING,),
        message=f"worker {worker} is shutting down; the job is queued again and resumes from step {step}",
        values={"worker": None, "attempts": max(0, job.attempts - 1), "heartbeat_at": None, "enqueued_at": utcnow()},
    ):
        return None
    return job.queue_kind


def job_needing_checkpoints_of(session: Session, job_id: str) -> str | None:
    """An unfinished job whose student continues from one of `job_id`'s checkpoints (it would lose its start),
    or None. Holds those checkpoint rows (PostgreSQL) so a job created meanwhile is seen or waits."""
    ids = list(session.scalars(select(Checkpoint.id).where(Checkpoint.job_id == job_id).with_for_update()))
    if not ids:
        return None
    return session.scalar(select(Job.id).where(Job.init_checkpoint_id.in_(ids),
                                               Job.status.not_in(TERMINAL_STATUSES)).limit(1))


def job_files(job_id: str) -> str:
    """Everything a job stored, relative to the storage root: its checkpoint archives and its scratch."""
    return f"jobs/{job_id}"


def delete_finished(session: Session, job_id: str) -> bool:
    """Delete a terminal job's row with its events and checkpoint rows (the caller then removes `job_files`).
    False when the job is not terminal: a conditional DELETE, so a job that a worker still holds is never lost."""
    gone = session.execute(
        delete(Job).where(Job.id == job_id, Job.status.in_(TERMINAL_STATUSES))
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if gone != 1:
        return False
    # Explicit, not only ON DELETE CASCADE: a SQLite connection without foreign keys on leaves no orphans either.
    session.execute(delete(JobEvent).where(JobEvent.job_id == job_id).execution_options(synchronize_session=False))
    session.execute(delete(Checkpoint).where(Checkpoint.job_id == job_id)
                    .execution_options(synchronize_session=False))
    return True
