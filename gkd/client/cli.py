"""Client commands of the `gkd` CLI, talking to a running service over HTTP (gkd.client):

    gkd datasets upload FILE [--name N] | list | get ID | delete ID
    gkd models list | upload PATH | delete ID   (next to the admin commands `gkd models import`, `delete --global`)
    gkd jobs submit --teacher T --train D [--dev D] [--method M] [--layers N] [--set KEY=VALUE ...] [--export onnx]
                    [--export onnx-int8] [--device cpu|gpu|auto] [--mlflow-experiment NAME] [--watch]
                    [--dry-run (estimate only)]
    gkd jobs list [--status S] | get ID | cancel ID | pause ID | resume ID | delete ID | events ID | watch ID
    gkd jobs download ID [--kind best|final|epoch-N|best-onnx|best-onnx-int8]
    gkd jobs metrics ID [-o FILE]          (every step's and evaluation's metrics as CSV)
    gkd webhooks create URL --event TYPE [--event TYPE ...] | list | delete ID | deliveries ID

Every command takes `--base-url` (env GKD_BASE_URL, default http://127.0.0.1:8000), `--api-key`
(env GKD_API_KEY), `--timeout` and `--json` (machine-readable output), on the command or on its group
(`gkd jobs --json list`). Exit status: 0 success, 1 an API or connection error (or, for `watch` and
`submit --watch`, a job that failed or was cancelled), 2 a usage error.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from gkd.client import Client, Job, JobEstimate
    from gkd.client._common import DownloadProgress

F = TypeVar("F", bound=Callable[..., Any])

_META = "gkd.client."
METHODS = ("gradient_kd", "gradient_kd_cls", "kd", "pkd", "ce", "finetune")
CHECKPOINT_KINDS = ("best", "final", "best-onnx", "best-onnx-int8")
EXPORT_FORMATS = ("onnx", "onnx-int8")
JOB_STATUSES = ("validating", "queued", "running", "cancelling", "pausing", "paused", "succeeded", "failed",
                "cancelled")


# ------------------------------------------------------------------------------------------ options


def _store(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value is not None and value is not False:
            ctx.meta[_META + name] = value

    return callback


def api_options(func: F) -> F:
    """--base-url, --api-key, --timeout and --json, accepted on a group and on its commands alike."""
    options = [
        click.option("--base-url", metavar="URL", expose_value=False, callback=_store("base_url"),
                     help="Service URL [env GKD_BASE_URL; default http://127.0.0.1:8000]."),
        click.option("--api-key", metavar="KEY", expose_value=False, callback=_store("api_key"),
                     help="API key [env GKD_API_KEY]."),
        click.option("--timeout", type=float, metavar="SECONDS", expose_value=False, callback=_store("timeout"),
                     help="Per-request timeout [30]."),
        click.option("--json", "as_json", is_flag=True, default=False, expose_value=False,
                     callback=_store("json"), help="Print machine-readable JSON."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _json_mode() -> bool:
    return bool(click.get_current_context().meta.get(_META + "json"))


def _client() -> Client:
    from gkd.client import Client

    meta = click.get_current_context().meta
    return Client(meta.get(_META + "base_url"), meta.get(_META + "api_key"), timeout=meta.get(_META + "timeout", 30.0))


def handle_errors(func: F) -> F:
    """Turn client errors into a message (JSON with --json) on stderr and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from gkd.client import GkdError

        try:
            return func(*args, **kwargs)
        except GkdError as exc:
            if _json_mode():
                click.echo(json.dumps({"error": {"type": exc.type or type(exc).__name__, "code": exc.code,
                                                 "message": exc.message, "param": exc.param,
                                                 "status_code": exc.status_code}}), err=True)
            else:
                click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(1)
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise click.UsageError(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------- output


def _emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def _dump(item: Any) -> Any:
    return item.to_dict() if hasattr(item, "to_dict") else item


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _show_list(items: Iterable[Any], columns: Sequence[str]) -> None:
    rows = [_dump(i) for i in items]
    if _json_mode():
        _emit_json({"object": "list", "data": rows})
    elif rows:
        _table(rows, columns)
    else:
        click.echo("(none)")


def _show_one(item: Any, fields: Sequence[str] | None = None) -> None:
    data = _dump(item)
    if _json_mode():
        _emit_json(data)
        return
    keys = fields or list(data)
    width = max(len(k) for k in keys)
    for key in keys:
        value = data.get(key)
        text = json.dumps(value, default=str) if isinstance(value, dict | list) else ("-" if value is None else value)
        click.echo(f"{key:<{width}}  {text}")


# ----------------------------------------------------------------------------------------- datasets


@click.group()
@api_options
def datasets() -> None:
    """Datasets on the service (upload, list, get, delete)."""


@datasets.command("upload")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", default=None, help="Display name (default: the file name).")
@api_options
@handle_errors
def datasets_upload(file: Path, name: str | None) -> None:
    """Upload FILE (CSV, TSV, JSONL or Parquet with text, optional text_pair, label)."""
    with _client() as client:
        dataset = client.datasets.upload(file, name=name)
    if _json_mode():
        _emit_json(dataset.to_dict())
        return
    click.echo(dataset.id)
    counts = ", ".join(f"{k}={v}" for k, v in dataset.validation.label_counts.items())
    click.echo(f"uploaded {dataset.name!r}: {dataset.rows} rows, labels {counts}", err=True)
    for warning in dataset.validation.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)


@datasets.command("list")
@click.option("--limit", type=int, default=None, help="Show at most this many (default: all).")
@api_options
@handle_errors
def datasets_list(limit: int | None) -> None:
    """Your datasets, newest first."""
    with _client() as client:
        items = _take(client.datasets.list(), limit)
    _show_list(items, ["id", "name", "format", "rows", "labels", "created_at"])


@datasets.command("get")
@click.argument("dataset_id")
@api_options
@handle_errors
def datasets_get(dataset_id: str) -> None:
    """One dataset with its validation report."""
    with _client() as client:
        _show_one(client.datasets.get(dataset_id))


@datasets.command("delete")
@click.argument("dataset_id")
@api_options
@handle_errors
def datasets_delete(dataset_id: str) -> None:
    """Delete a dataset (refused while an unfinished job uses it)."""
    with _client() as client:
        _show_one(client.datasets.delete(dataset_id))


def _take(items: Iterable[Any], limit: int | None) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if limit is not None and len(out) >= limit:
            break
        out.append(item)
    return out


# ----------------------------------------------------------------------------------------- webhooks
WEBHOOK_EVENT_TYPES = ("job.queued", "job.running", "job.succeeded", "job.failed", "job.cancelled", "job.paused",
                       "checkpoint.created")


@click.group()
@api_options
def webhooks() -> None:
    """Webhook endpoints: signed POSTs to your URL when your jobs change (create, list, get, delete, deliveries)."""


@webhooks.command("create")
@click.argument("url")
@click.option("--event", "events", multiple=True, required=True, type=click.Choice(WEBHOOK_EVENT_TYPES),
              help="An event type to send (repeat the option for several).")
@click.option("--description", default=None, help="A note for you.")
@api_options
@handle_errors
def webhooks_create(url: str, events: tuple[str, ...], description: str | None) -> None:
    """Register URL; prints the endpoint's id, and its signing secret (whsec_...) once, on stderr."""
    with _client() as client:
        webhook = client.webhooks.create(url, list(events), description=description)
    if _json_mode():
        _emit_json(webhook.to_dict())
        return
    click.echo(webhook.id)
    click.echo(f"signing secret (shown only now; keep it to verify the signatures): {webhook.secret}", err=True)


@webhooks.command("list")
@click.option("--limit", type=int, default=None, help="Show at most this many (default: all).")
@api_options
@handle_errors
def webhooks_list(limit: int | None) -> None:
    """Your webhook endpoints, newest first."""
    with _client() as client:
        items = _take(client.webhooks.list(), limit)
    _show_list(items, ["id", "url", "event_types", "created_at"])


@webhooks.command("get")
@click.argument("webhook_id")
@api_options
@handle_errors
def webhooks_get(webhook_id: str) -> None:
    """One endpoint: its URL, event types and description (the secret was shown only at create)."""
    with _client() as client:
        _show_one(client.webhooks.get(webhook_id))


@webhooks.command("delete")
@click.argument("webhook_id")
@api_options
@handle_errors
def webhooks_delete(webhook_id: str) -> None:
    """Delete an endpoint; its pending deliveries are dropped."""
    with _client() as client:
        _show_one(client.webhooks.delete(webhook_id))


@webhooks.command("deliveries")
@click.argument("webhook_id")
@click.option("--limit", type=int, default=20, show_default=True, help="Show at most this many.")
@api_options
@handle_errors
def webhooks_deliveries(webhook_id: str, limit: int | None) -> None:
    """The endpoint's delivery log, newest first: status, attempts, last HTTP status, latency, error."""
    with _client() as client:
        items = _take(client.webhooks.deliveries(webhook_id), limit)
    _show_list(items, ["id", "event_type", "status", "attempts", "response_status", "latency_ms", "error",
                       "created_at"])


# ------------------------------------------------------------------------------------------- models
# `gkd models` is the service's group (app/cli.py, with the admin command `import`); these client commands are
# added to it there, so one `models` group offers import (local, admin), list, upload and delete (`--global`: admin).


@click.command("list")
@api_options
@handle_errors
def models_list() -> None:
    """Teacher models you can use (yours and global ones), via the API."""
    with _client() as client:
        items = list(client.models.list())
    _show_list(items, ["id", "name", "owner", "num_layers", "hidden_size", "num_parameters", "labels"])


@click.command("upload")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--name", default=None, help="Display name.")
@api_options
@handle_errors
def models_upload(path: Path, name: str | None) -> None:
    """Upload a teacher via the API: a .tar.gz/.zip, or a Hugging Face directory (packed on the fly)."""
    with _client() as client:
        model = client.models.upload(path, name=name)
    if _json_mode():
        _emit_json(model.to_dict())
    else:
        click.echo(model.id)
        click.echo(f"uploaded {model.name!r}: {model.num_layers} layers, labels {model.labels}", err=True)


def delete_model_via_api(model_id: str) -> None:
    """`gkd models delete ID` without `--global` (app/cli.py): one of the key's tenant's models, via the API."""
    with _client() as client:
        client.models.delete(model_id)
    if _json_mode():
        _emit_json({"id": model_id, "object": "model", "deleted": True})
    else:
        click.echo(f"deleted model {model_id}", err=True)


# --------------------------------------------------------------------------------------------- jobs


@click.group()
@api_options
def jobs() -> None:
    """Distillation jobs (submit, list, get, cancel, pause, resume, delete, events, watch, download, metrics)."""


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _apply_sets(body: dict[str, Any], items: Iterable[str]) -> None:
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        parts = key.split(".")
        if len(parts) == 1 and parts[0] not in ("name", "method"):
            parts = ["hyperparameters", *parts]  # --set epochs=1 means hyperparameters.epochs
        if parts[0] not in ("hyperparameters", "student", "metadata", "name", "method"):
            raise click.BadParameter(f"unknown section {parts[0]!r} in {key!r}", param_hint="--set")
        node = body
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise click.BadParameter(f"{key!r} is not a section", param_hint="--set")
        node[parts[-1]] = _parse_value(raw)


def _dataset_ref(client: Client, value: str | None, label: str, upload: bool = True) -> str | None:
    """A dataset id as is, or a local file uploaded now (unless `upload` is False: a dry run stores nothing)."""
    if value is None:
        return None
    if value.startswith("ds_") and not Path(value).exists():
        return value
    path = Path(value)
    if not path.is_file():
        raise click.BadParameter(f"{value!r} is neither a ds_ id nor a file", param_hint=label)
    if not upload:
        raise click.BadParameter(f"a dry run stores nothing: upload {value!r} first (gkd datasets upload) and pass "
                                 "its ds_ id", param_hint=label)
    dataset = client.datasets.upload(path)
    if not _json_mode():
        click.echo(f"uploaded {path} as {dataset.id} ({dataset.rows} rows)", err=True)
    return dataset.id


def _init_value(text: str) -> Any:
    if text in ("bottom", "every_other", "random"):
        return text
    if text.startswith("ckpt_"):  # continue from a finished job's checkpoint
        return {"checkpoint": text}
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError as exc:
        raise click.BadParameter("bottom, every_other, random, a list like 0,2,4 or a ckpt_ id",
                                 param_hint="--init") from exc


@jobs.command("submit")
@click.option("--teacher", required=True, help="Teacher model id (mdl_...) or name, e.g. example-teacher; with "
              "--method finetune, the base encoder to fine-tune.")
@click.option("--train", "train", required=True, help="Training dataset id (ds_...) or a local file to upload.")
@click.option("--dev", default=None, help="Validation dataset id or local file (default: held out of --train).")
@click.option("--method", type=click.Choice(METHODS), default="gradient_kd", show_default=True,
              help="A distillation method, or finetune: make a teacher of --teacher on --train (a new model).")
@click.option("--layers", type=int, default=None, help="Student layers (student.num_layers).")
@click.option("--init", "init", default=None,
              help="Student init: bottom, every_other, random, 0,2,4, or a checkpoint id (ckpt_...) to continue from.")
@click.option("--name", default=None, help="Job name.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="hyperparameters.KEY=VALUE (or student./metadata.); repeatable; values parsed as JSON.")
@click.option("--export", "export", multiple=True, type=click.Choice(EXPORT_FORMATS),
              help="Also make the best student as ONNX (checkpoint best-onnx) and/or int8 ONNX (best-onnx-int8).")
@click.option("--mlflow-experiment", default=None, metavar="NAME",
              help="Log the job to the service's MLflow server under this experiment (docs/integrations.md).")
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default=None,
              help="Worker queue (default: the service's, auto).")
@click.option("--idempotency-key", default=None, help="Default: a random key, so a retry makes no second job.")
@click.option("--watch", is_flag=True, help="Follow the job until it finishes (exit 1 unless it succeeds).")
@click.option("--dry-run", is_flag=True,
              help="Check the job and print its estimate (steps, teacher cache, seconds per worker kind) "
                   "instead of submitting it; nothing is stored.")
@api_options
@handle_errors
def jobs_submit(teacher: str, train: str, dev: str | None, method: str, layers: int | None, init: str | None,
                name: str | None, sets: tuple[str, ...], export: tuple[str, ...], mlflow_experiment: str | None,
                device: str | None,
                idempotency_key: str | None, watch: bool, dry_run: bool) -> None:
    """Submit a distillation job, or a fine-tuning that makes a teacher (--method finetune); with --dry-run,
    estimate it."""
    body: dict[str, Any] = {"method": method, "student": {}, "hyperparameters": {}, "metadata": {}}
    if layers is not None:
        body["student"]["num_layers"] = layers
    if init is not None:
        body["student"]["init"] = _init_value(init)
    if name is not None:
        body["name"] = name
    _apply_sets(body, sets)
    integrations = [{"type": "mlflow", "experiment": mlflow_experiment}] if mlflow_experiment else None
    with _client() as client:
        teacher_id = client.models.find(teacher).id
        if dry_run:
            estimate = client.jobs.estimate(
                teacher=teacher_id,
                training_dataset=_dataset_ref(client, train, "--train", upload=False),  # type: ignore[arg-type]
                validation_dataset=_dataset_ref(client, dev, "--dev", upload=False),
                method=body["method"],
                student=body["student"] or None,
                hyperparameters=body["hyperparameters"] or None,
                export=list(dict.fromkeys(export)) or None,
                device=device,
                integrations=integrations,
            )
            _print_estimate(estimate)
            return
        job = client.jobs.create(
            teacher=teacher_id,
            training_dataset=_dataset_ref(client, train, "--train"),  # type: ignore[arg-type]
            validation_dataset=_dataset_ref(client, dev, "--dev"),
            method=body["method"],
            student=body["student"] or None,
            hyperparameters=body["hyperparameters"] or None,
            metadata=body["metadata"] or None,
            name=body.get("name"),
            idempotency_key=idempotency_key,
            export=list(dict.fromkeys(export)) or None,
            device=device,
            integrations=integrations,
        )
        if not watch:
            if _json_mode():
                _emit_json(job.to_dict())
            else:
                click.echo(job.id)
                click.echo(f"submitted {job.method} job, status {job.status}; follow it with: gkd jobs watch {job.id}",
                           err=True)
            return
        if not _json_mode():
            click.echo(f"submitted {job.id}", err=True)
        final = watch_job(client, job.id, as_json=_json_mode())
    _exit_with(final)


def _print_estimate(estimate: JobEstimate) -> None:
    """`submit --dry-run`: the estimate as JSON, or one line per worker kind."""
    if _json_mode():
        _emit_json(estimate.to_dict())
        return
    cache = "exists" if estimate.teacher_cache_exists else "to be built first (not in the estimate)"
    click.echo(f"{estimate.total_steps} steps ({estimate.steps_per_epoch} per epoch); teacher cache {cache}")
    for kind, seconds in estimate.estimated_seconds.items():
        basis = estimate.basis.get(kind, "default")
        note = "measured on this service" if basis == "measured" else "rough default, nothing measured yet"
        click.echo(f"  {kind}: about {_duration(seconds)} ({note})")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


JOB_COLUMNS = ["id", "status", "method", "teacher", "name", "created_at"]


@jobs.command("list")
@click.option("--status", type=click.Choice(JOB_STATUSES), default=None)
@click.option("--limit", type=int, default=None, help="Show at most this many (default: all).")
@api_options
@handle_errors
def jobs_list(status: str | None, limit: int | None) -> None:
    """Your jobs, newest first."""
    with _client() as client:
        items = _take(client.jobs.list(status=status), limit)
    _show_list(items, JOB_COLUMNS)


@jobs.command("get")
@click.argument("job_id")
@api_options
@handle_errors
def jobs_get(job_id: str) -> None:
    """One job: status, progress, metrics, error."""
    with _client() as client:
        _show_one(client.jobs.get(job_id))


@jobs.command("cancel")
@click.argument("job_id")
@api_options
@handle_errors
def jobs_cancel(job_id: str) -> None:
    """Cancel a job, also a paused one (409 when it already finished)."""
    with _client() as client:
        _show_status(client.jobs.cancel(job_id))


@jobs.command("pause")
@click.argument("job_id")
@api_options
@handle_errors
def jobs_pause(job_id: str) -> None:
    """Pause a job: a queued one at once, a running one once its worker saved the training state (`pausing`,
    then `paused`); the worker is free for other jobs. 409 when it finished or is being cancelled."""
    with _client() as client:
        _show_status(client.jobs.pause(job_id))


@jobs.command("resume")
@click.argument("job_id")
@api_options
@handle_errors
def jobs_resume(job_id: str) -> None:
    """Queue a paused job again; it continues from the step it paused at (409 unless it is paused)."""
    with _client() as client:
        _show_status(client.jobs.resume(job_id))


def _show_status(job: Job) -> None:
    """A job after a status change: `ID STATUS`, or the whole job with --json."""
    if _json_mode():
        _emit_json(job.to_dict())
    else:
        click.echo(f"{job.id} {job.status}")


@jobs.command("delete")
@click.argument("job_id")
@api_options
@handle_errors
def jobs_delete(job_id: str) -> None:
    """Delete a finished job with its events, checkpoints and files (refused while it is active)."""
    with _client() as client:
        _show_one(client.jobs.delete(job_id))


@jobs.command("metrics")
@click.argument("job_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the CSV to this file instead of standard output.")
@api_options
@handle_errors
def jobs_metrics(job_id: str, output: Path | None) -> None:
    """Every step's and evaluation's metrics of a job as CSV (the numbers of its metrics events)."""
    with _client() as client:
        text = client.jobs.metrics_csv(job_id, output)
    if output is None:
        click.echo(text, nl=False)
    else:
        click.echo(f"wrote {output}", err=True)


@jobs.command("events")
@click.argument("job_id")
@click.option("--after", type=int, default=None, help="Only events after this seq.")
@api_options
@handle_errors
def jobs_events(job_id: str, after: int | None) -> None:
    """The job's event log so far."""
    with _client() as client:
        items = list(client.jobs.events(job_id, after=after))
    _show_list(items, ["seq", "created_at", "type", "message"])


@jobs.command("watch")
@click.argument("job_id")
@api_options
@handle_errors
def jobs_watch(job_id: str) -> None:
    """Follow a job live (progress bar, ETA, latest loss/accuracy) until it finishes; exit 1 unless it
    succeeded. With --json: one JSON event per line, then the final job."""
    with _client() as client:
        final = watch_job(client, job_id, as_json=_json_mode())
    _exit_with(final)


def _exit_with(final: Job) -> None:
    """The end of a watched job: the model a finetune job made, then exit 0 if it succeeded, else 1."""
    if final.fine_tuned_model and not _json_mode():
        click.echo(f"fine-tuned model: {final.fine_tuned_model} (use it as --teacher of your next jobs)", err=True)
    sys.exit(0 if final.status == "succeeded" else 1)


@contextlib.contextmanager
def download_bar(description: str, size: int | None, *, disable: bool = False,
                 file: Any = None) -> Iterator[DownloadProgress]:
    """A byte progress bar on stderr, as a `progress(received, total)` callback for a checkpoint download."""
    from tqdm import tqdm

    bar = tqdm(total=size or None, unit="B", unit_scale=True, unit_divisor=1024, desc=description,
               file=file or sys.stderr, disable=disable, dynamic_ncols=True, leave=True)

    def progress(received: int, total: int | None) -> None:
        if received < bar.n:  # a broken download is retried from its first byte
            bar.reset(total=bar.total)
        if total and bar.total != total:
            bar.total = total
        bar.update(received - bar.n)

    try:
        yield progress
    finally:
        bar.close()


def _set_bar(bar: Any, description: str, done: int, total: int | None, unit: str) -> None:
    """Point the one bar at a phase (or the training steps): its name, units, done and total. The name is kept on
    the bar as `gkd_phase` (a disabled tqdm has no `desc`)."""
    if getattr(bar, "gkd_phase", None) != description or getattr(bar, "unit", None) != unit:
        bar.gkd_phase = description
        bar.set_description_str(description, refresh=False)  # set_description adds ": ", tqdm adds another
        bar.unit = unit
        bar.reset(total=total)
    elif total is not None and bar.total != total:
        bar.total = total
    if done != bar.n:
        bar.n = done
    bar.refresh()


def watch_job(client: Client, job_id: str, *, as_json: bool = False, file: Any = None) -> Job:
    """Stream the job's events to a tqdm bar (or JSON lines); return the final job. Before the first step the bar
    follows the job's phase (validating, loading the teacher, building the teacher cache with its ETA), then the
    training steps."""
    from tqdm import tqdm

    job = client.jobs.get(job_id)
    out = file or sys.stderr
    bar = tqdm(total=job.progress.total_steps, unit="step", desc="waiting", file=out, disable=as_json,
               dynamic_ncols=True, leave=True)
    postfix: dict[str, str] = {}
    phase_seen: tuple[str, str] | None = None
    try:
        for event in client.jobs.stream(job.id):
            if as_json:
                click.echo(json.dumps(event.to_dict(), default=str))
                continue
            data = event.data
            if event.type == "phase":
                key = (str(data.get("phase")), str(data.get("detail") or ""))
                if key != phase_seen:  # one line per phase; the bar shows how far it is
                    bar.write(f"[{event.seq}] phase: {event.message}", file=out)
                    phase_seen = key
                if key[0] != "training":
                    name = key[0].replace("_", " ") + (f" ({key[1]})" if key[1] else "")
                    total = data.get("total")
                    _set_bar(bar, name, int(data.get("done") or 0), total if isinstance(total, int) else None,
                             str(data.get("unit") or "it"))
                continue
            step = data.get("step")
            total = data.get("total_steps")
            if event.type in ("metrics", "log") and isinstance(step, int):
                _set_bar(bar, "training", max(step, bar.n if getattr(bar, "gkd_phase", "") == "training" else 0),
                         total if isinstance(total, int) and total > 0 else bar.total, "step")
            if event.type == "metrics":
                if data.get("eval"):
                    if "accuracy" in data:
                        postfix["acc"] = f"{data['accuracy']:.4f}"
                elif "loss" in data:
                    postfix["loss"] = f"{data['loss']:.4f}"
                bar.set_postfix(postfix, refresh=False)
                bar.refresh()
            elif event.type in ("status", "checkpoint", "warning") or (event.type == "log" and event.message):
                bar.write(f"[{event.seq}] {event.type}: {event.message}", file=out)
            if event.type == "status" and data.get("status") in ("pausing", "paused", "queued"):
                # the stream goes on while the job is paused: it ends when the job, once resumed, finishes
                _set_bar(bar, str(data["status"]), bar.n, bar.total, str(getattr(bar, "unit", "step")))
    finally:
        bar.close()
    final = client.jobs.get(job.id)
    if as_json:
        click.echo(json.dumps(final.to_dict(), default=str))
    else:
        best = final.metrics.get("best") or {}
        accuracy = best.get("accuracy")
        summary = f"{final.id} {final.status}"
        if accuracy is not None:
            summary += f", best dev accuracy {accuracy:.4f}"
        if final.error:
            summary += f": {final.error}"
        click.secho(summary, fg="green" if final.status == "succeeded" else "red", err=True)
    return final


@jobs.command("download")
@click.argument("job_id")
@click.option("--kind", type=click.Choice(list(CHECKPOINT_KINDS)), default=None,
              help="Which checkpoint [default: best, else final]; best-onnx and best-onnx-int8 when the job asked "
              "for --export.")
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Target directory [default: ./JOB_ID-KIND].")
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check.")
@api_options
@handle_errors
def jobs_download(job_id: str, kind: str | None, dest: Path | None, no_verify: bool) -> None:
    """Download a checkpoint (with a progress bar on stderr) and unpack it as a Hugging Face model directory."""
    with _client() as client:
        checkpoints = {c.kind: c for c in client.checkpoints.list(job_id)}
        wanted = [kind] if kind else ["best", "final"]
        chosen = next((checkpoints[k] for k in wanted if k in checkpoints), None)
        if chosen is None:
            have = ", ".join(sorted(k for k in checkpoints if k)) or "none"
            click.secho(f"error: job {job_id} has no {' or '.join(wanted)} checkpoint (has: {have})", fg="red",
                        err=True)
            sys.exit(1)
        target = dest or Path(f"{job_id}-{chosen.kind}")
        with download_bar(f"{chosen.kind} {chosen.id}", chosen.size_bytes, disable=_json_mode()) as progress:
            path = client.checkpoints.download(job_id, chosen.id, target, verify=not no_verify, progress=progress)
    if _json_mode():
        _emit_json({"path": str(path), "checkpoint": chosen.to_dict()})
    else:
        click.echo(str(path))
        click.echo(f"{chosen.kind} checkpoint {chosen.id} (step {chosen.step}, metrics "
                   f"{json.dumps(chosen.metrics)})", err=True)
