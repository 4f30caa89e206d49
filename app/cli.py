"""Service commands, contributed to `gkd` through the `gkd.commands` entry-point group: `serve`, `db upgrade`,
`keys create|revoke`, `tenants set-quota|show`, `models import`, `models delete --global` (`gkd worker` is the
worker's: worker/cli.py).

Without the entry points (a source checkout), `python -m app.cli COMMAND ...` runs the same commands.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from app.store.settings import Settings
from gkd.client.cli import api_options, delete_model_via_api, handle_errors, models_list, models_upload

LOCAL_TENANT = "local"
WORKER_MODULE = "worker.cli"  # `gkd serve` starts the local worker by module name: the API never imports it
BUILTIN_BASE = "all-MiniLM-L6-v2"
EXAMPLE_TEACHER = "example-teacher"


def _settings() -> Settings:
    settings = Settings()
    settings.ensure_dirs()
    return settings


def _fail(message: str) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(2)


# ----------------------------------------------------------------------------------------------- db


@click.group()
def db() -> None:
    """Database migrations."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION (idempotent)."""
    from app.store.db import upgrade

    settings = _settings()
    upgrade(settings.database_url, revision)
    click.echo(f"database at {revision}: {_redact(settings.database_url)}")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return url


# --------------------------------------------------------------------------------------------- keys


@click.group()
def keys() -> None:
    """API keys."""


@keys.command("create")
@click.option("--tenant", required=True, help="Tenant name; created if it does not exist.")
def keys_create(tenant: str) -> None:
    """Create an API key and print it (once: only its hash is stored)."""
    from app.store.db import session_scope, upgrade
    from app.store.keys import create_key

    settings = _settings()
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as session:
        plain, key = create_key(session, tenant)
    click.echo(plain)
    click.echo(f"key {key.prefix}... for tenant {tenant!r}; store it now, it is not shown again", err=True)


@keys.command("revoke")
@click.argument("key_or_prefix")
def keys_revoke(key_or_prefix: str) -> None:
    """Revoke a key, given in full or by its displayed prefix."""
    from app.store.db import session_scope
    from app.store.keys import revoke_key

    settings = _settings()
    try:
        with session_scope(settings.database_url) as session:
            revoked = revoke_key(session, key_or_prefix)
            prefixes = [k.prefix for k in revoked]
    except ValueError as exc:
        _fail(str(exc))
    if not prefixes:
        _fail(f"no active key matches {key_or_prefix!r}")
    click.echo(f"revoked {', '.join(p + '...' for p in prefixes)}")


# ------------------------------------------------------------------------------------------ tenants


@click.group()
def tenants() -> None:
    """Tenants and their quotas."""


def _bytes(value: str) -> int:
    """`10G`, `500M`, `64K` or plain bytes (powers of 1024)."""
    units = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    text = value.strip().upper().removesuffix("B").removesuffix("I")
    factor = units.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in units else text
    if not number.isdigit():
        raise click.BadParameter(f"{value!r} is not a byte count (e.g. 500M, 10G)")
    return int(number) * factor


def _quota_option(resource: str, help_: str) -> Any:
    return click.option(f"--{resource.replace('_', '-')}", resource, default=None, help=help_ + " 'default' resets "
                        "it to the deployment's GKD_QUOTA_" + resource.upper() + ".")


@tenants.command("set-quota")
@click.argument("tenant")
@_quota_option("stored_bytes", "Bytes of datasets, models and checkpoints, e.g. 50G.")
@_quota_option("datasets", "Datasets kept.")
@_quota_option("models", "Uploaded models kept.")
@_quota_option("active_jobs", "Unfinished jobs (queued, running, cancelling, pausing, paused).")
def tenants_set_quota(tenant: str, **values: str | None) -> None:
    """Set the quotas of TENANT (by name); what is not given stays as it is."""
    from app.store.db import session_scope, upgrade
    from app.store.orm import Tenant
    from app.store.quotas import set_quota

    changes: dict[str, int | None] = {}
    for resource, text in values.items():
        if text is None:
            continue
        if text.strip().lower() == "default":
            changes[resource] = None
        elif resource == "stored_bytes":
            changes[resource] = _bytes(text)
        elif text.strip().isdigit():
            changes[resource] = int(text)
        else:
            raise click.BadParameter(f"{text!r} is not a count", param_hint=f"--{resource.replace('_', '-')}")
    if not changes:
        _fail("nothing to set: give --stored-bytes, --datasets, --models or --active-jobs")
    settings = _settings()
    upgrade(settings.database_url)
    from sqlalchemy import select

    with session_scope(settings.database_url) as session:
        row = session.scalar(select(Tenant).where(Tenant.name == tenant))
        if row is None:
            _fail(f"no tenant named {tenant!r} (`gkd keys create --tenant {tenant}` creates it)")
        assert row is not None
        set_quota(session, row, changes)
    _show(settings, tenant)


@tenants.command("show")
@click.argument("tenant")
def tenants_show(tenant: str) -> None:
    """Print TENANT's quotas (its own or the default) and what it uses now, as JSON."""
    _show(_settings(), tenant)


def _show(settings: Settings, tenant: str) -> None:
    import json

    from sqlalchemy import select

    from app.store.db import session_scope
    from app.store.orm import Tenant
    from app.store.quotas import RESOURCES, quota_for, usage

    with session_scope(settings.database_url) as session:
        row = session.scalar(select(Tenant).where(Tenant.name == tenant))
        if row is None:
            _fail(f"no tenant named {tenant!r}")
        assert row is not None
        quota, used = quota_for(settings, row).as_dict(), usage(session, row.id).as_dict()
        own = {r: getattr(row, f"quota_{r}") is not None for r in RESOURCES}
    click.echo(json.dumps({"tenant": tenant, "quota": quota, "set_for_tenant": own, "usage": used}, indent=2))


# ------------------------------------------------------------------------------------------- models


@click.group()
def models() -> None:
    """Teacher models."""


@models.command("import")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", required=True, help="Display name.")
@click.option("--tenant", default=None, help="Owner tenant; omit to make the model global (all tenants).")
def models_import(path: Path, name: str, tenant: str | None) -> None:
    """Register a local Hugging Face directory (safetensors) as a teacher, in place."""
    from app.registry import RegistryError, import_directory
    from app.store.db import session_scope, upgrade
    from app.store.keys import get_or_create_tenant

    settings = _settings()
    upgrade(settings.database_url)
    try:
        with session_scope(settings.database_url) as session:
            tenant_id = get_or_create_tenant(session, tenant).id if tenant else None
            row = import_directory(session, path, name, tenant_id=tenant_id)
            model_id, layers, labels = row.id, row.num_layers, row.labels
    except RegistryError as exc:
        _fail(exc.message)
    click.echo(model_id)
    click.echo(f"registered {name!r}: {layers} layers, labels {labels or 'none (base encoder)'}", err=True)


@models.command("delete")
@click.argument("model_id")
@click.option("--global", "global_", is_flag=True,
              help="Delete a global model (operator: on the database, not through the API).")
@api_options
@handle_errors
def models_delete(model_id: str, global_: bool) -> None:
    """Delete a model with its stored files (refused while an unfinished job uses it); finished jobs keep their
    results. Without --global: one of your tenant's models, via the API; with it: a global model, for operators."""
    if not global_:
        delete_model_via_api(model_id)
        return
    from app.store import removal
    from app.store.db import session_scope, upgrade

    settings = _settings()
    upgrade(settings.database_url)
    try:
        with session_scope(settings.database_url) as session:
            row = _global_model(session, model_id)
            if row is None:
                _fail(f"no global model {model_id!r} (a tenant's model is deleted through the API, without --global)")
                return
            removal.delete_model(session, settings, row)
    except removal.InUse as exc:
        _fail(f"model {model_id} is used by unfinished job {exc.job_id}; cancel it or wait for it to finish")
    except removal.AlreadyRemoved:
        _fail(f"no global model {model_id!r}")
    click.echo(f"deleted global model {model_id}", err=True)


def _global_model(session: Any, model_id: str) -> Any:
    """The live global model with this id or name, or None."""
    from sqlalchemy import or_, select

    from app.store.orm import TeacherModel

    return session.scalar(select(TeacherModel).where(
        or_(TeacherModel.id == model_id, TeacherModel.name == model_id),
        TeacherModel.tenant_id.is_(None), TeacherModel.deleted_at.is_(None)).limit(1))


# Client commands over HTTP (gkd/client/cli.py): the teachers the API key can use, and uploads through the API.
models.add_command(models_list)
models.add_command(models_upload)


# -------------------------------------------------------------------------------------------- serve


def ensure_local_key(settings: Settings) -> str:
    """The plain key of tenant `local`, kept in <home>/local_api_key (0600) so every start prints the same."""
    from app.store.db import session_scope
    from app.store.keys import create_key, tenant_for_key

    key_file = settings.home / "local_api_key"
    with session_scope(settings.database_url) as session:
        if key_file.is_file():
            plain = key_file.read_text(encoding="utf-8").strip()
            if tenant_for_key(session, plain) is not None:
                return plain
        plain, _key = create_key(session, LOCAL_TENANT)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(plain + "\n")
    os.chmod(key_file, 0o600)
    return plain


def register_builtin_models(settings: Settings) -> list[str]:
    """The packaged MiniLM base encoder and, when built, the example teacher, as global models."""
    from app.registry import RegistryError, import_directory
    from app.store.db import session_scope

    found: list[str] = []
    candidates: list[tuple[str, Path]] = []
    try:
        from gkd.models.teacher import base_model_dir, example_teacher_dir

        candidates.append((BUILTIN_BASE, base_model_dir()))
        example = example_teacher_dir(settings.home)
        if example.is_dir():
            candidates.append((EXAMPLE_TEACHER, example))
    except Exception as exc:  # noqa: BLE001 - the service runs without them
        click.echo(f"note: built-in models unavailable: {exc}", err=True)
    for name, path in candidates:
        try:
            with session_scope(settings.database_url) as session:
                row = import_directory(session, path, name, source="builtin")
                found.append(f"{row.id} {name}")
        except RegistryError as exc:
            click.echo(f"note: {name} not registered: {exc.message}", err=True)
    return found


def quickstart(url: str, key: str, data_dir: str = "var/data/movie_reviews") -> str:
    """The README's curl quickstart, with this server's URL and key filled in."""
    return "\n".join(
        [
            f"export GKD_BASE_URL={url} GKD_API_KEY={key}",
            'AUTH="Authorization: Bearer $GKD_API_KEY"',
            "curl -s $GKD_BASE_URL/v1/models -H \"$AUTH\" | jq '.data[] | {id, name, labels, layers: .num_layers}'",
            f"TRAIN=$(curl -s $GKD_BASE_URL/v1/datasets -H \"$AUTH\" -F file=@{data_dir}/train.csv | jq -r .id)",
            f"DEV=$(curl -s $GKD_BASE_URL/v1/datasets -H \"$AUTH\" -F file=@{data_dir}/dev.csv | jq -r .id)",
            "JOB=$(curl -s $GKD_BASE_URL/v1/jobs -H \"$AUTH\" -H 'Content-Type: application/json' -d '{",
            '  "teacher": "example-teacher", "method": "gradient_kd", "student": {"num_layers": 3},',
            '  "training_dataset": "\'$TRAIN\'", "validation_dataset": "\'$DEV\'",',
            '  "hyperparameters": {"epochs": 1, "max_length": 64}}\' | jq -r .id)',
            "curl -sN $GKD_BASE_URL/v1/jobs/$JOB/events/stream -H \"$AUTH\"",
            "curl -s $GKD_BASE_URL/v1/jobs/$JOB -H \"$AUTH\" | jq '{status, metrics}'",
            "CKPT=$(curl -s $GKD_BASE_URL/v1/jobs/$JOB/checkpoints -H \"$AUTH\" "
            "| jq -r '.data[] | select(.kind == \"best\") | .id')",
            "curl -s $GKD_BASE_URL/v1/jobs/$JOB/checkpoints/$CKPT/content -H \"$AUTH\" -o student.tar.gz",
            "mkdir -p student && tar -xzf student.tar.gz -C student && ls student",
        ]
    )


@click.command()
@click.option("--host", default=None, help="Bind address (default GKD_HOST, 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Port (default GKD_PORT, 8000).")
@click.option("--no-worker", is_flag=True, help="Do not start the local Celery worker subprocess.")
def serve(host: str | None, port: int | None, no_worker: bool) -> None:
    """Run the API (and one local worker): migrations, built-in models, a local key, then uvicorn.

    The server refuses request headers over GKD_MAX_HEADER_BYTES (431) and, on Ctrl-C or SIGTERM, waits at most
    GKD_GRACEFUL_SHUTDOWN_SECONDS for running requests."""
    from app import server
    from app.main import create_app
    from app.store.db import upgrade

    settings = _settings()
    if host:
        settings.host = host
    if port:
        settings.port = port
    upgrade(settings.database_url)
    settings.migrate_on_start = False
    registered = register_builtin_models(settings)
    key = ensure_local_key(settings)
    url = f"http://{settings.host}:{settings.port}"

    worker_proc: subprocess.Popen[bytes] | None = None
    webhook_proc: subprocess.Popen[bytes] | None = None
    if not no_worker:
        env = {**os.environ, "GKD_HOME": str(settings.home), "GKD_DATABASE_URL": settings.database_url,
               "GKD_BROKER_URL": settings.broker_url}
        cmd = [sys.executable, "-m", WORKER_MODULE, "--name", "gkd-local@%h"]
        worker_proc = subprocess.Popen(cmd, env=env)
        # Webhook deliveries have a worker of their own, so they never wait behind a training job.
        webhook_proc = subprocess.Popen([sys.executable, "-m", WORKER_MODULE, "--name", "gkd-webhooks@%h"],
                                        env={**env, "GKD_WORKER_QUEUES": "webhooks"})

    click.echo(f"gkd API on {url}  (docs: {url}/docs)")
    for line in registered:
        click.echo(f"model {line}")
    click.echo(f"local API key (tenant {LOCAL_TENANT!r}): {key}")
    click.echo("worker: " + (f"pid {worker_proc.pid}, webhooks pid {webhook_proc.pid}"
                             if worker_proc and webhook_proc else "none (--no-worker)"))
    click.echo("quickstart:\n" + quickstart(url, shlex.quote(key) if " " in key else key))
    # uvicorn raises the signal that stopped it again once it has shut down; with SIGTERM's default action that
    # would end this process before the `finally` below, leaving the workers running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.run(create_app(settings), settings)  # header bound and shutdown timeout: app.server
    finally:
        for proc in (worker_proc, webhook_proc):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()


@click.group()
def cli() -> None:
    """Service commands (also available as `gkd serve`, `gkd db`, ... when installed)."""


for _command in (serve, db, keys, tenants, models):
    cli.add_command(_command)

if __name__ == "__main__":
    cli()
