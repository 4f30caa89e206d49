"""Running one job: claim it, train it with `gkd.training.trainer.Trainer`, record events/checkpoints, finish it.

Every database write is one short transaction, retried on OperationalError with backoff
(`app.store.db.with_retries`), and followed by a Redis wake-up for SSE streams when configured. Status moves are
the store's (`app.store.jobs`); the worker only says which one it wants.

Fencing: once claimed, every write (events, heartbeat, checkpoint rows, the training state and exports before they
are written, uploads, the final status) starts with `jobs.hold` under the claim's token. A worker whose job was
taken over while it was cut off gets `jobs.FencedOff` at its next write and stops without writing anything more,
leaving the job's files to the worker that holds it now.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.store import estimates, jobs, quotas
from app.store.db import sessionmaker_for, with_retries
from app.store.events import append_event, notify
from app.store.ids import new_id
from app.store.job_config import config_for_job, work_dir
from app.store.orm import Checkpoint, Job, utcnow
from app.store.public_paths import public_text
from app.store.queue import send_job, send_run_job
from app.store.settings import Settings
from app.store.storage import get_storage
from app.store.storage.archive import pack_directory
from app.store.webhook_outbox import record_event
from gkd.training.finetune_settings import FINETUNE
from worker.publisher import BackgroundPublisher
from worker.teachers import discard_teacher, stage_teacher

log = logging.getLogger(__name__)

# The deployable copies of the best student a job's `export` asks for (gkd.deploy.run_export), stored like `best`.
EXPORT_KINDS = ("best-onnx", "best-onnx-int8")

# Set when this worker is asked to shut down (SIGTERM): the running job stops after its current step, saves
# its training state and goes back to the queue for another worker (`worker.tasks`, docs/deploy.md).
DRAIN = threading.Event()


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class PackedArchive:
    """A checkpoint archive this attempt packed: where it lies, its digest and size, and the step it holds."""

    path: str
    sha256: str
    size_bytes: int
    step: int


class JobContext:
    """Database access for one job, from the worker's side."""

    def __init__(self, settings: Settings, job_id: str) -> None:
        self.settings = settings
        self.job_id = job_id
        self.sessions = sessionmaker_for(settings.database_url)
        self.worker = ""  # set by `claim`: the claim's worker name and fencing token
        self.token = 0
        self.fenced = threading.Event()  # set when a fenced write (the heartbeat's included) found the claim gone

    def write(self, fn: Any, what: str = "job update") -> Any:
        """Run `fn(session)` in its own transaction with retries; notify SSE listeners after commit."""

        def once() -> Any:
            with self.sessions() as session:
                try:
                    result = fn(session)
                    session.commit()
                    return result
                except BaseException:
                    session.rollback()
                    raise

        result = with_retries(once, attempts=self.settings.db_retry_attempts, what=what)
        notify(self.settings.notify_url, self.job_id)
        return result

    def read(self, fn: Any) -> Any:
        def once() -> Any:
            with self.sessions() as session:
                return fn(session)

        return with_retries(once, attempts=self.settings.db_retry_attempts, what="job read")

    # ------------------------------------------------------------------------------------- claim
    def claim(self, worker: str) -> jobs.Claim | None:
        from gkd.versions import versions

        def tx(session: Session) -> jobs.Claim | None:
            return jobs.claim(session, self.job_id, worker, max_attempts=self.settings.max_attempts,
                              stale_after_seconds=self.settings.stale_after_seconds, versions=versions())

        claim = self.write(tx, "claim")
        if claim is not None:
            self.worker, self.token = worker, claim.token
        return claim

    def hold(self, session: Session) -> None:
        """The fence at the start of each of this worker's transactions (`jobs.hold`); remembers a failure."""
        try:
            jobs.hold(session, self.job_id, self.token, self.worker)
        except jobs.FencedOff:
            self.fenced.set()
            raise

    def fenced_write(self, fn: Any, what: str) -> Any:
        """`write` of `fn(session)` behind the fence: nothing of it lands once the claim is gone (`FencedOff`)."""

        def tx(session: Session) -> Any:
            self.hold(session)
            return fn(session)

        return self.write(tx, what)

    def check_fence(self) -> None:
        """Raise `FencedOff` before a file write when the claim is gone (a write of its own: the heartbeat)."""
        if self.fenced.is_set():
            raise jobs.FencedOff(self.job_id, self.token)
        self.fenced_write(lambda session: None, "fence check")

    def heartbeat(self) -> None:
        try:
            with_retries(lambda: self._plain(self.hold), attempts=2, what="heartbeat")
        except jobs.FencedOff:
            log.warning("job %s: heartbeat fenced off (token %d); the job stops at its next step", self.job_id,
                        self.token)

    def _plain(self, fn: Any) -> Any:
        with self.sessions() as session:
            result = fn(session)
            session.commit()
            return result

    def status(self) -> str | None:
        return self.read(lambda s: s.scalar(select(Job.status).where(Job.id == self.job_id)))

    def finish(self, status: jobs.Outcome, message: str, *, error: str | None = None,
               metrics: dict[str, Any] | None = None, on_success: Any = None) -> str:
        """Move to a terminal status; a pending cancel turns success into `cancelled`. Returns the status.
        `on_success(session)` runs in the same transaction when the job does end `succeeded` (a finetune job's
        new model row): it lands with the status or not at all."""
        values: dict[str, Any] = {"heartbeat_at": utcnow()}
        if error is not None:
            values["error"] = error
        if metrics is not None:
            values["metrics"] = metrics

        def tx(session: Session) -> str:
            ended = jobs.finish(session, self.job_id, status, message, values, token=self.token, worker=self.worker)
            if ended == jobs.SUCCEEDED and on_success is not None:
                on_success(session)
            return ended

        return self.write(tx, f"finish {status}")

    def park(self, step: int, progress: dict[str, Any], metrics: dict[str, Any]) -> bool:
        """The training state of a `pausing` job is saved: `pausing` -> `paused` with the progress and metrics it
        stopped at, freeing this worker. False when the job is no longer pausing (a cancel came first)."""
        values = {"progress": progress, "metrics": metrics}
        return bool(self.write(lambda session: jobs.park(session, self.job_id, self.worker, step, values,
                                                         token=self.token), "park"))

    def requeue(self, worker: str, step: int) -> str | None:
        """A draining worker hands the job back: `running` -> `queued`, the attempt not counted. Returns the
        job's queue kind, or None when the job is no longer running (e.g. being cancelled)."""
        return self.write(lambda session: jobs.hand_back(session, self.job_id, worker, step, token=self.token),
                          "requeue")


class Heartbeat(threading.Thread):
    def __init__(self, ctx: JobContext) -> None:
        super().__init__(name=f"heartbeat-{ctx.job_id}", daemon=True)
        self.ctx = ctx
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.ctx.settings.heartbeat_seconds) and not self.ctx.fenced.is_set():
            try:
                self.ctx.heartbeat()
            except Exception as exc:  # noqa: BLE001 - the next beat tries again
                log.warning("heartbeat of %s failed: %s", self.ctx.job_id, exc)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)


def _clean(values: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe floats (NaN/inf become None)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        elif isinstance(value, float):
            value = round(value, 6)
        out[key] = value
    return out


def make_callback(ctx: JobContext) -> Any:
    from gkd.training.callbacks import PhaseProgress, TrainerCallback, phase_reporter

    class JobCallback(TrainerCallback):
        """Progress, metrics events, cancellation and checkpoint upload for one job."""

        def __init__(self) -> None:
            self.stop_asked = False  # the job left `running`: a cancel or a pause was asked
            self.draining = False
            self.last_check = 0.0
            self.last_step_time: float | None = None
            # A resumed attempt continues from what the previous attempt recorded.
            stored_progress, stored = ctx.read(
                lambda s: s.execute(select(Job.progress, Job.metrics).where(Job.id == ctx.job_id)).one())
            stored = stored or {}
            self.progress: dict[str, Any] = dict(stored_progress or {})  # the job's `progress`, with its `phase`
            self.training = False  # whether the steps have begun: then the phase is `training` between evaluations
            self.phase_key: tuple[str, str] | None = None  # the (phase, detail) of the last phase event
            self.phase_written = 0.0
            self.latest: dict[str, Any] = dict(stored.get("latest") or {})
            self.best: dict[str, Any] = dict(stored.get("best") or {})
            self.warnings: list[str] = list(stored.get("warnings") or [])  # codes of `warning` events
            self.beta_auto: dict[str, Any] | None = stored.get("beta_auto")  # what `beta: "auto"` chose
            self.best_archive: PackedArchive | None = None  # the `best` archive this attempt packed
            # Whether the gradient terms already have weight: a resumed attempt reads it from the last recorded step
            # (the step they started on is always recorded), so the start is announced once per job.
            self.gradient_started = (self.latest.get("grad_weight") or 0) > 0
            hyperparameters = ctx.read(lambda s: s.scalar(select(Job.hyperparameters).where(Job.id == ctx.job_id)))
            self.keep_epochs = int((hyperparameters or {}).get("n_checkpoints") or 0)
            hyperparameters = hyperparameters or {}
            self.rows_per_step = int(hyperparameters.get("batch_size") or 1) * int(
                hyperparameters.get("gradient_accumulation_steps") or 1)
            self.max_length = int(hyperparameters.get("max_length") or 0)
            self.calibration: estimates.CalibrationKey | None = ctx.read(
                lambda s: estimates.job_key(s, s.get(Job, ctx.job_id), worker_device_kind(ctx.settings)))
            self.calibrated_finish: str | None = None  # before the job's own steps: from the calibration
            storage = get_storage(ctx.settings)
            # With a bucket, checkpoints and the training state go up in the background while training goes on.
            def publish_file(source: Path, relative: str) -> None:
                ctx.check_fence()  # a fenced-off worker uploads nothing more
                storage.publish_file(source, relative)

            self.publisher = (BackgroundPublisher(publish_file, name=f"publish-{ctx.job_id}")
                              if storage.kind != "local" else None)

        def publish_pending(self) -> bool:
            """Wait until every checkpoint is uploaded and recorded (raising the error of one that failed);
            True when the newest training state is in the bucket too (a drained job resumes from it)."""
            if self.publisher is None:
                return True
            uploading = phase_reporter([self], "uploading", "uploads")
            uploading(0, None)
            done = self.publisher.flush()
            uploading(1, 1)
            return done

        def stop_publishing(self) -> None:
            """Finish the checkpoint uploads, drop a waiting state, stop the thread (never raises)."""
            if self.publisher is not None:
                self.publisher.close()

        # Metrics and progress share one transaction with the event. The write comes first (it takes the
        # job's row lock, or SQLite's write lock), the status is read after it, inside the same transaction:
        # if the job is being cancelled the transaction is rolled back (seq stays gapless) and training
        # stops, so no metrics event ever follows the `cancelling` event.
        def _record(self, progress: Any, message: str, data: dict[str, Any] | None,
                    note: tuple[str, dict[str, Any]] | None = None) -> None:
            """`note`: a `log` event (message, data) written in the same transaction, after the metrics event."""
            own_eta = progress.eta_seconds  # None until this attempt has done a step
            finish = estimates.finish_time(utcnow(), own_eta) if own_eta is not None else self.calibrated_finish
            self.progress = {**progress.as_dict(), "phase": self.progress.get("phase"),
                             "estimated_finish_at": finish}
            if self.training:  # between evaluations the job is training: the phase follows the steps
                self.progress["phase"] = PhaseProgress("training", progress.step, progress.total_steps,
                                                       progress.elapsed_seconds, "steps").as_dict()
                self.progress["phase"]["eta_seconds"] = self.progress["eta_seconds"]

            def tx(session: Session) -> bool:
                now = utcnow()
                ctx.hold(session)
                if data is not None:
                    append_event(session, ctx.job_id, "metrics", message, data)
                if note is not None:
                    append_event(session, ctx.job_id, "log", *note)
                else:
                    session.execute(update(Job).where(Job.id == ctx.job_id).values(heartbeat_at=now)
                                    .execution_options(synchronize_session=False))
                status = session.scalar(select(Job.status).where(Job.id == ctx.job_id))
                if status != jobs.RUNNING:
                    session.rollback()
                    return False
                session.execute(
                    update(Job).where(Job.id == ctx.job_id)
                    .values(progress=self.progress, metrics=self.metrics(),
                            heartbeat_at=now)
                    .execution_options(synchronize_session=False)
                )
                return True

            if not ctx.write(tx, "metrics"):
                self.stop_asked = True

        def metrics(self) -> dict[str, Any]:
            """The job's `metrics` column: latest and best figures, and the codes of its warnings (if any)."""
            return {"latest": self.latest, "best": self.best, **({"warnings": self.warnings} if self.warnings else {}),
                    **({"beta_auto": self.beta_auto} if self.beta_auto is not None else {})}

        def on_log(self, progress: Any, message: str, data: dict[str, Any]) -> None:
            """A `log` event with the trainer's decision (`beta: "auto"`'s choice), kept in the job's metrics too."""
            if "beta_auto" in data:
                self.beta_auto = data["beta_auto"]

            def tx(session: Session) -> None:
                append_event(session, ctx.job_id, "log", message, {**data, "step": progress.step})
                session.execute(update(Job).where(Job.id == ctx.job_id).values(metrics=self.metrics())
                                .execution_options(synchronize_session=False))

            ctx.fenced_write(tx, "log")

        def on_warning(self, progress: Any, code: str, message: str) -> None:
            if code not in self.warnings:
                self.warnings.append(code)

            def tx(session: Session) -> None:
                append_event(session, ctx.job_id, "warning", message, {"code": code, "step": progress.step})
                session.execute(update(Job).where(Job.id == ctx.job_id).values(metrics=self.metrics())
                                .execution_options(synchronize_session=False))

            ctx.fenced_write(tx, "warning")

        def on_phase(self, phase: PhaseProgress) -> None:
            """A `phase` event and the job's `progress.phase`: when a phase starts or ends, and at most every
            `phase_event_seconds` in between (a teacher cache reports each batch)."""
            key = (phase.phase, phase.detail)
            now = time.monotonic()
            recent = now - self.phase_written < ctx.settings.phase_event_seconds
            if key == self.phase_key and not phase.finished and recent:
                return
            self.phase_key, self.phase_written = key, now
            self.training = self.training or phase.phase == "training"
            data = phase.as_dict()
            self.progress = {**self.progress, "phase": data}
            values = dict(self.progress)

            def tx(session: Session) -> bool:
                append_event(session, ctx.job_id, "phase", phase.describe(), data)
                status = session.scalar(select(Job.status).where(Job.id == ctx.job_id))
                if status != jobs.RUNNING:  # being cancelled: no event after `cancelling`
                    session.rollback()
                    return False
                session.execute(update(Job).where(Job.id == ctx.job_id)
                                .values(progress=values, heartbeat_at=utcnow())
                                .execution_options(synchronize_session=False))
                return True

            if not ctx.fenced_write(tx, "phase"):
                self.stop_asked = True

        def on_train_begin(self, progress: Any) -> None:
            if self.calibration is not None:  # until its own steps say better: what jobs like it took
                key = self.calibration
                rate = ctx.read(lambda s: estimates.step_rate(s, key, self.max_length))
                left = rate.seconds_per_row * self.rows_per_step * max(0, progress.total_steps - progress.step)
                self.calibrated_finish = estimates.finish_time(utcnow(), left)
            if progress.resumed_from_step:
                message = f"training resumed from step {progress.resumed_from_step} of {progress.total_steps}"
            else:
                message = f"training started: {progress.total_steps} steps"
            ctx.fenced_write(lambda s: append_event(s, ctx.job_id, "log", message, progress.as_dict()), "log")
            self._record(progress, "", None)

        def on_train_end(self, progress: Any, stopped: bool) -> None:
            self.training = False  # what follows (testing, packing `final`, uploads) has phases of its own
            self.progress = {**self.progress, "estimated_finish_at": None}
            self.record_calibration(progress)

        def record_calibration(self, progress: Any) -> None:
            """This attempt's measured seconds per step and row, into the running mean estimates read."""
            steps = progress.step - progress.resumed_from_step
            if self.calibration is None or steps <= 0 or progress.elapsed_seconds <= 0:
                return
            key, rate = self.calibration, progress.elapsed_seconds / steps / self.rows_per_step
            try:
                ctx.fenced_write(lambda s: estimates.record(s, key, rate), "calibration")
            except jobs.FencedOff:
                raise
            except Exception:  # noqa: BLE001 - a lost measurement only makes later estimates rougher
                log.warning("job %s: could not record its step calibration", ctx.job_id, exc_info=True)

        def on_step(self, progress: Any, metrics: Any) -> None:
            from worker.metrics import WORKER_METRICS

            now = time.monotonic()
            WORKER_METRICS.step(now - self.last_step_time if self.last_step_time is not None else None)
            self.last_step_time = now
            values = _clean({**metrics.as_dict(), "step": progress.step, "epoch": progress.epoch})
            self.latest = {**self.latest, **values}
            note = self.gradient_start_note(progress.step, values.get("grad_weight"))
            every = ctx.settings.metrics_every_steps
            if (progress.step % every == 0 or progress.step == progress.total_steps or progress.step == 1
                    or note is not None):
                message = f"step {progress.step}/{progress.total_steps} loss {values.get('loss')}"
                self._record(progress, message, values, note)

        def gradient_start_note(self, step: int, weight: float | None) -> tuple[str, dict[str, Any]] | None:
            """The `log` event of the first step whose gradient terms have weight: the total loss gains a term
            there, and the dashboard marks the step on its loss curves (docs/dashboard.md)."""
            if self.gradient_started or not weight or weight <= 0:
                return None
            self.gradient_started = True
            return (f"gradient term started at step {step} (weight {weight:g}): the total loss includes it from here",
                    {"step": step, "gradient_term_started": True, "grad_weight": weight})

        def on_evaluate(self, progress: Any, metrics: dict[str, float]) -> None:
            values = _clean({**metrics, "step": progress.step, "epoch": progress.epoch, "eval": True})
            self.latest = {**self.latest, **{f"eval_{k}" if k in ("loss",) else k: v for k, v in values.items()
                                             if k != "eval"}}
            if not self.best or (values.get("accuracy") or 0) > (self.best.get("accuracy") or -1):
                self.best = {k: v for k, v in values.items() if k != "eval"}
            self._record(progress, f"evaluation at step {progress.step}: accuracy {values.get('accuracy')}",
                         values)

        def before_checkpoint(self, progress: Any, kind: str) -> None:
            ctx.check_fence()  # the state and exports lie in the job's shared storage: never overwrite the holder's

        def on_checkpoint(self, progress: Any, kind: str, path: Path) -> None:
            if kind not in ("best", "final", "state", *EXPORT_KINDS) and not is_epoch_kind(kind):
                return
            if kind == "state":  # the resumable training state follows the job to whichever worker resumes it
                if self.publisher is not None:
                    self.publisher.submit_state(Path(path), Path(path).relative_to(ctx.settings.storage).as_posix())
                return
            packed = self.best_archive
            archive: Path | None = None  # a newly packed archive, to be put in the bucket
            if kind == "final" and packed is not None and packed.step == progress.step:
                # Training ended on its best evaluation: the weights are the same, so one archive serves both
                # rows (same path and sha256) instead of packing and storing 60+ MB again.
                relative, sha, size = packed.path, packed.sha256, packed.size_bytes
            else:
                ctx.check_fence()
                archive = ctx.settings.storage / "jobs" / ctx.job_id / "checkpoints" / f"{kind}.tar.gz"
                packing = phase_reporter([self], "packing", "archives", kind)
                packing(0, 1)
                sha, size = pack_directory(Path(path), archive, ctx.settings.checkpoint_compresslevel)
                packing(1, 1)
                relative = archive.relative_to(ctx.settings.storage).as_posix()
                if kind == "best":
                    self.best_archive = PackedArchive(relative, sha, size, progress.step)
            card = Path(path) / "gkd_card.json"
            try:
                metrics = _clean(json.loads(card.read_text(encoding="utf-8")).get("metrics") or {})
            except (OSError, ValueError):
                metrics = dict(self.best) if kind == "best" else dict(self.latest)

            def tx(session: Session) -> list[str]:
                row = session.scalar(
                    select(Checkpoint).where(Checkpoint.job_id == ctx.job_id, Checkpoint.kind == kind)
                )
                if row is None:
                    row = Checkpoint(id=new_id("ckpt"), job_id=ctx.job_id, kind=kind, path=relative)
                    session.add(row)
                row.path, row.sha256, row.size_bytes = relative, sha, size
                row.step, row.metrics = progress.step, metrics
                row.created_at = utcnow()
                session.flush()
                pruned = prune_epoch_checkpoints(session, ctx.job_id, self.keep_epochs) if is_epoch_kind(kind) else []
                data: dict[str, Any] = {"checkpoint": row.id, "kind": kind, "step": progress.step, "sha256": sha,
                                        "size_bytes": size}
                if pruned:
                    data["pruned"] = [ckpt_id for ckpt_id, _ in pruned]
                append_event(session, ctx.job_id, "checkpoint", f"{kind} checkpoint at step {progress.step}", data)
                record_event(session, ctx.job_id, "checkpoint.created", {"job_id": ctx.job_id, **data})
                return [path for _, path in pruned]

            def record() -> None:
                for path in ctx.fenced_write(tx, "checkpoint"):  # the rows are gone: now their archives
                    try:
                        get_storage(ctx.settings).delete(path)
                    except Exception:  # noqa: BLE001 - a leftover archive is removed with the job
                        log.warning("could not remove the pruned checkpoint %s", path, exc_info=True)

            if self.publisher is None:  # local storage: the archive is already where the API reads it
                record()
            else:  # recorded once it is in the bucket, after the uploads queued before it
                self.publisher.submit_checkpoint(archive, relative, then=record)

        def should_stop(self, progress: Any) -> bool:
            if ctx.fenced.is_set():  # the heartbeat found the claim gone: stop before writing anything else
                raise jobs.FencedOff(ctx.job_id, ctx.token)
            if DRAIN.is_set():
                self.draining = True
                return True
            if self.stop_asked:
                return True
            now = time.monotonic()
            if now - self.last_check >= ctx.settings.cancel_check_seconds:
                self.last_check = now
                if ctx.status() != jobs.RUNNING:
                    self.stop_asked = True
            return self.stop_asked

    return JobCallback()


def worker_device_kind(settings: Settings) -> str:
    """The kind of worker this is for calibrations: `gpu` when it trains on CUDA, else `cpu`."""
    from gkd.training.trainer import resolve_device

    return "gpu" if resolve_device(settings.worker_device).type == "cuda" else "cpu"


def is_epoch_kind(kind: str) -> bool:
    """Whether `kind` names a per-epoch checkpoint (`epoch-N`, `hyperparameters.n_checkpoints`)."""
    return kind.startswith("epoch-") and kind[6:].isdigit()


def prune_epoch_checkpoints(session: Session, job_id: str, keep: int) -> list[tuple[str, str]]:
    """Delete the job's per-epoch checkpoint rows older than the newest `keep`; (id, stored path) of each."""
    rows = [row for row in session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)
                                           .order_by(Checkpoint.step.desc(), Checkpoint.created_at.desc()))
            if is_epoch_kind(row.kind)]
    stale = rows[max(keep, 0):]  # each epoch has an archive of its own (epoch-N.tar.gz), shared with no other row
    for row in stale:
        session.delete(row)
    session.flush()
    return [(row.id, row.path) for row in stale]


def run_job(settings: Settings, job_id: str) -> str:
    """Claim and run one job; returns the status it ended with (or 'skipped')."""
    ctx = JobContext(settings, job_id)
    worker = worker_name()
    if DRAIN.is_set():  # shutting down: this delivery (perhaps our own hand-back) goes to another worker
        from worker.celery_app import celery

        ctx.read(lambda session: send_job(celery, settings, session, job_id))
        return "requeued"
    claim = ctx.claim(worker)
    if claim is None:
        if ctx.status() in jobs.TERMINAL_STATUSES:  # e.g. failed just now by the attempt limit: its scratch can go
            discard_work(settings, job_id)
        return "skipped"
    try:
        status = _run_claimed(ctx, worker)
    except jobs.FencedOff as exc:  # another worker holds the job now: its files are not ours to remove
        log.warning("%s", exc)
        return "fenced"
    if status in jobs.TERMINAL_STATUSES:
        discard_work(settings, job_id)
    return status


def discard_work(settings: Settings, job_id: str) -> None:
    """Remove a finished job's scratch: the exported `best`/`final` directories and the training state,
    several times the checkpoint's size, locally and in a bucket. The packed checkpoints are kept."""
    try:
        get_storage(settings).delete(work_dir(job_id))
    except Exception:  # noqa: BLE001 - a leftover directory is no reason to touch a finished job
        log.warning("could not remove the work directory of job %s", job_id, exc_info=True)


def _finish_finetune(ctx: JobContext, result: Any, metrics: dict[str, Any]) -> str:
    """A finetune job's end: its best checkpoint becomes a model of the tenant with the `succeeded` status, or
    the job fails saying why (a full quota) and leaves no model behind."""
    try:
        staged = stage_teacher(ctx, result)
    except jobs.FencedOff:
        raise
    except Exception as exc:  # noqa: BLE001 - the training is done but its model cannot be stored
        log.exception("job %s: the fine-tuned model could not be stored", ctx.job_id)
        message = public_text(str(exc) or type(exc).__name__, ctx.settings)
        return ctx.finish(jobs.FAILED, f"job failed: {message}", error=f"{type(exc).__name__}: {message}",
                          metrics=metrics)
    message = f"job succeeded after {result.steps} steps: model {staged.model_id} is its fine-tuned teacher"
    try:
        status = ctx.finish(jobs.SUCCEEDED, message, metrics=metrics, on_success=staged.register)
    except quotas.QuotaExceeded as exc:  # the job is still running: nothing of that transaction landed
        discard_teacher(ctx.settings, staged.relative)
        return ctx.finish(jobs.FAILED, f"job failed: {exc.message}", error=f"QuotaExceeded: {exc.message}",
                          metrics=metrics)
    except BaseException:
        discard_teacher(ctx.settings, staged.relative)
        raise
    if status != jobs.SUCCEEDED:  # cancelled at the last moment: no row was inserted
        discard_teacher(ctx.settings, staged.relative)
    return status


def _run_claimed(ctx: JobContext, worker: str) -> str:
    """Train a claimed job and move it to its next status (terminal, or back to the queue when draining)."""
    settings, job_id = ctx.settings, ctx.job_id
    heartbeat = Heartbeat(ctx)
    heartbeat.start()
    callback = None
    try:
        try:
            from gkd.training.parallel import train_distributed

            config = config_for_job(settings, job_id)
            callback = make_callback(ctx)
            # data-parallel on this worker's GPUs (NCCL) or CPU processes (gloo) when the job asks for devices > 1
            result = train_distributed(config, config.run.devices, [callback],
                                       state_every_steps=settings.state_every_steps)
            state_uploaded = callback.publish_pending()
        except jobs.FencedOff:
            raise
        except Exception as exc:  # noqa: BLE001 - any training error ends the job `failed`, with its message
            log.exception("job %s failed", job_id)
            if callback is not None:
                callback.stop_publishing()  # its checkpoint events come before the terminal status
            if ctx.status() == jobs.CANCELLING:
                # cancelled while it was failing (e.g. an allocation error while building a model): the caller's
                # cancel is what ends it; the error is in the worker's log
                return ctx.finish(jobs.CANCELLED, "job cancelled")
            # the library names the files it read: show them relative to the tenant's ids (app.store.public_paths)
            message = public_text(getattr(exc, "message", None) or str(exc) or type(exc).__name__, settings)
            return ctx.finish(jobs.FAILED, f"job failed: {message}", error=f"{type(exc).__name__}: {message}")
        metrics = {
            "latest": {**callback.latest, **_clean(dict(result.final_metrics))},
            "best": _clean(dict(result.best_metrics)) or callback.best,
            **({"warnings": callback.warnings} if callback.warnings else {}),
            **({"beta_auto": result.beta_auto} if result.beta_auto is not None else {}),
        }
        if result.stopped:  # a drain, a pause or a cancel stopped it, its training state saved
            stale_state = "" if state_uploaded else "the newest training state is not in the bucket; "
            if callback.draining and not callback.stop_asked:
                kind = ctx.requeue(worker, result.steps)
                if kind is not None:
                    from worker.celery_app import celery

                    if stale_state:
                        log.warning("job %s: %sthe next worker resumes from an earlier one", job_id, stale_state)
                    send_run_job(celery, settings, job_id, kind)  # if this fails, the sweeper re-enqueues it
                    return "requeued"
            if ctx.park(result.steps, callback.progress, metrics):  # paused: its scratch stays for the resume
                if stale_state:
                    log.warning("job %s: %sits resume starts from an earlier one", job_id, stale_state)
                return jobs.PAUSED
            return ctx.finish(jobs.CANCELLED, "job cancelled", metrics=metrics)
        # Trained to the end: `succeeded`, also when a pause came late; a pending cancel makes it `cancelled`.
        if ctx.read(lambda session: session.scalar(select(Job.method).where(Job.id == job_id))) == FINETUNE:
            return _finish_finetune(ctx, result, metrics)
        return ctx.finish(jobs.SUCCEEDED, f"job succeeded after {result.steps} steps", metrics=metrics)
    finally:
        if callback is not None:
            callback.stop_publishing()  # before the scratch is removed, locally and in the bucket
        heartbeat.stop()
