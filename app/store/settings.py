"""Service settings, read from the environment (prefix `GKD_`); one `Settings` object per process.

Paths default under `GKD_HOME` (./var): the SQLite database, the embedded broker, storage and the teacher
cache, so `gkd serve` needs no server at all. Production points `GKD_DATABASE_URL` at PostgreSQL and
`GKD_BROKER_URL` at Redis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GKD_", extra="ignore")

    home: Path = Field(Path("var"), description="Data directory; other paths default under it.")
    database_url: str = Field("", description="SQLAlchemy URL; default sqlite:///<home>/gkd.db.")
    broker_url: str = Field("", description="Celery broker; default the embedded sqla+sqlite transport.")
    storage_dir: Path | None = Field(None, description="Datasets, models, checkpoints; default <home>/storage.")
    cache_dir: Path | None = Field(None, description="Teacher cache; default <home>/teacher_cache.")
    notify_url: str | None = Field(
        None, description="Redis URL for event wake-ups (pub/sub); default the broker URL when it is Redis."
    )

    # API
    host: str = "127.0.0.1"
    port: int = 8000
    migrate_on_start: bool = True
    max_dataset_bytes: int = Field(200 * 1024 * 1024, ge=1)
    max_dataset_rows: int = Field(5_000_000, ge=1)
    max_model_bytes: int = Field(4 * 1024 * 1024 * 1024, ge=1)
    max_extracted_bytes: int = Field(8 * 1024 * 1024 * 1024, ge=1)
    max_archive_members: int = Field(10_000, ge=1)
    max_archive_ratio: float = Field(
        200.0, ge=1, description="An uploaded model archive may unpack to at most this many times its own size."
    )
    max_request_bytes: int = Field(
        1024 * 1024, ge=1024,
        description="Largest body of a request other than a dataset or model upload (JSON bodies); a larger one, "
        "also chunked without Content-Length, is a 413 as soon as the bound is passed.")
    max_form_fields: int = Field(
        16, ge=2, description="Most parts of an upload form (the file, `name` and any others); more is a 413.")
    max_form_field_bytes: int = Field(
        64 * 1024, ge=1024,
        description="Largest non-file part of an upload form (e.g. `name`); larger is a 413.")
    max_header_bytes: int = Field(
        64 * 1024, ge=4096,
        description="Request line and headers of one request; more is a 431 and the connection closes (the server "
        "of `gkd serve` and `python -m app.server`).")
    graceful_shutdown_seconds: int = Field(
        20, ge=0,
        description="On SIGTERM the server stops accepting, lets requests finish this long, then cancels the rest "
        "(their temporary files are removed) and exits.")
    tmp_stale_seconds: float = Field(
        3600.0, gt=0,
        description="At start-up the API deletes entries of <storage>/tmp and checkpoint extractions "
        "(jobs/*/extracted/.extract-*) untouched this long (what a killed process left); a live upload writes on "
        "every chunk, so it never looks this old.")
    checkpoint_compresslevel: int = Field(
        0, ge=0, le=9, description="gzip level of checkpoint archives; 0 stores (weights barely compress)."
    )
    read_threads: int = Field(
        2, ge=1,
        description="Worker threads per API process for the polled reads (job status and list); a few threads "
        "keep the slowest requests fast under load, where many would contend for the GIL.",
    )
    page_limit_default: int = Field(20, ge=1)
    page_limit_max: int = Field(100, ge=1)
    sse_poll_seconds: float = Field(0.5, gt=0)
    sse_fallback_poll_seconds: float = Field(
        5.0, gt=0,
        description="Event streams subscribed to Redis wake-ups still read the database this often, as a safety "
        "net for a lost notification (worst-case extra delay of an event whose publish was lost).",
    )
    sse_keepalive_seconds: float = Field(15.0, gt=0)
    enqueue_timeout_seconds: float = Field(3.0, gt=0)
    api_key_cache_seconds: float = Field(
        2.0, ge=0,
        description="Each API process remembers a valid key's tenant this long, saving a database query per "
        "request; a revoked key is therefore refused within this many seconds, not at once. 0 disables the cache.",
    )

    # Capacity shared by the tenants (docs/design.md "Quotas and rate limits")
    quota_stored_bytes: int = Field(
        100 * 1024**3, ge=0, description="Default bytes a tenant may store: datasets, uploaded models, checkpoints.")
    quota_datasets: int = Field(1000, ge=0, description="Default number of datasets a tenant may keep.")
    quota_models: int = Field(100, ge=0, description="Default number of uploaded models a tenant may keep.")
    quota_active_jobs: int = Field(
        20, ge=0,
        description="Default number of a tenant's unfinished jobs (queued, running, cancelling, pausing, paused).")
    rate_limit: str = Field(
        "100/second", description="Requests per API key (per client address without one), in `limits` notation, "
        "several separated by `;` (e.g. `100/second;3000/minute`); empty: no limit.")
    rate_limit_lease: float = Field(
        0.05, ge=0, lt=1, description="Share of each rate limit an API process takes from Redis at once and spends "
        "locally (at least one request): one Redis round trip per lease instead of per request. A key may be refused "
        "up to (API processes - 1) x lease requests early in a window; never let past its limit. 0: one round trip "
        "per request.")
    rate_limit_storage: str | None = Field(
        None, description="Where rate counters live (`redis://...` or `memory://`); default the broker when it is "
        "Redis, else this process.")
    sse_streams_per_tenant: int = Field(
        100, ge=1, description="Event streams one tenant may hold open at once, across the API processes.")
    metrics_token: str | None = Field(
        None, description="When set, GET /metrics needs `Authorization: Bearer <token>` (or an address of "
        "metrics_allow).")
    metrics_allow: str = Field(
        "", description="Comma list of client addresses or networks (CIDR) allowed to GET /metrics without the "
        "token; empty: none (with a token) or anyone (without).")

    # Webhooks (docs/design.md "Webhooks")
    quota_webhooks: int = Field(10, ge=0, description="Webhook endpoints one tenant may keep.")
    webhook_allow_private: bool = Field(
        False, description="Allow webhook URLs whose host is or resolves to a loopback, private, link-local or "
        "otherwise non-public address (a local receiver in development and tests); off in production.")
    webhook_secret_key: str | None = Field(
        None, description="Fernet key (urlsafe base64, 32 bytes) that encrypts the endpoints' signing secrets in "
        "the database; default a key generated once in <home>/webhook_secret.key. Every API and worker process "
        "must use the same key.")
    webhook_queue: str = Field("webhooks", description="Celery queue of webhook deliveries (a worker of its own).")
    webhook_concurrency: int = Field(4, ge=1, description="Deliveries one webhook worker sends at once (threads).")
    webhook_max_attempts: int = Field(8, ge=1, description="Attempts of one delivery before it is `failed`.")
    webhook_backoff_seconds: float = Field(5.0, gt=0, description="Wait before the 2nd attempt; doubles after.")
    webhook_backoff_max_seconds: float = Field(3600.0, gt=0, description="Longest wait between two attempts.")
    webhook_timeout_seconds: float = Field(10.0, gt=0, description="One attempt's connect + read limit.")
    webhook_poll_seconds: float = Field(
        1.0, gt=0, description="How often a webhook worker looks for due deliveries (the outbox) and sends them.")
    # Admission: what one worker can run (docs/api.md "Admission control")
    worker_memory_bytes: int = Field(
        16 * 1024**3, ge=1,
        description="Memory one training process of a CPU job may use (a CPU worker's RAM divided by the jobs it "
        "runs at once); a job whose estimate (gkd.training.memory_estimate) is larger is refused with 422.")
    gpu_worker_memory_bytes: int | None = Field(
        None, ge=1, description="The same for a GPU job: one GPU's memory; default worker_memory_bytes.")
    worker_devices: int = Field(
        1, ge=1, le=256, description="Data-parallel processes a CPU worker gives one job (`devices` above it is "
        "a 422); a CPU worker runs one.")
    gpu_worker_devices: int = Field(
        8, ge=1, le=256, description="GPUs a GPU worker gives one job (`devices` above it is a 422).")

    # Worker
    task_queue: str = "training"
    max_attempts: int = Field(3, ge=1)
    visibility_timeout_seconds: int = Field(7 * 24 * 3600, ge=60, description="Above the longest job.")
    metrics_every_steps: int = Field(10, ge=1)
    phase_event_seconds: float = Field(2.0, ge=0, description="Least time between two progress events of one phase.")
    heartbeat_seconds: float = Field(10.0, gt=0)
    stale_after_seconds: float = Field(120.0, gt=0, description="A running job without heartbeat is lost.")
    sweeper_interval_seconds: float = Field(30.0, gt=0)
    requeue_after_seconds: float = Field(60.0, gt=0, description="Re-enqueue queued jobs older than this.")
    cancel_check_seconds: float = Field(0.5, ge=0)
    db_retry_attempts: int = Field(6, ge=1)
    worker_device: str = "auto"
    worker_num_threads: int | None = Field(None, ge=1)
    state_every_steps: int | None = Field(None, ge=1)
    broker_polling_seconds: float = Field(0.5, gt=0)

    # Deployment beyond one machine (docs/deploy.md)
    storage_backend: Literal["local", "s3"] = Field(
        "local", validation_alias=AliasChoices("GKD_STORAGE", "GKD_STORAGE_BACKEND", "storage_backend"),
        description="GKD_STORAGE: `local` (the storage directory) or `s3` (a bucket; the directory is its cache).",
    )
    s3_bucket: str = ""
    s3_prefix: str = Field("", description="Key prefix inside the bucket, e.g. `gkd/`.")
    s3_endpoint_url: str | None = Field(None, description="For MinIO, Ceph, R2...; unset for AWS.")
    s3_region: str | None = None
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    s3_multipart_threshold_bytes: int = Field(64 * 1024 * 1024, ge=5 * 1024 * 1024)
    s3_multipart_chunk_bytes: int = Field(16 * 1024 * 1024, ge=5 * 1024 * 1024)
    s3_presigned_downloads: bool = Field(False, description="Checkpoint downloads answer 307 to a presigned URL.")
    s3_presign_seconds: int = Field(3600, ge=60, le=7 * 24 * 3600)
    gpu_task_queue: str = Field("training-gpu", description="Queue of jobs with device `gpu`; cpu jobs use task_queue.")
    auto_device: Literal["cpu", "gpu"] = Field("cpu", description="Where jobs with device `auto` go.")
    worker_queues: str = Field("", description="Comma list of `cpu`,`gpu`; default from GKD_WORKER_DEVICE.")
    worker_metrics_port: int | None = Field(None, ge=1, le=65535, description="Serve worker /metrics on it.")
    mlflow_tracking_uri: str = Field(
        "", description="The MLflow tracking server jobs with an mlflow integration log to (tenants pick only the "
        "experiment); empty: jobs cannot ask for one. Workers need mlflow-skinny installed.")

    @field_validator("metrics_allow")
    @classmethod
    def _networks(cls, value: str) -> str:
        """Refuse a malformed address list at start-up, not on the first scrape."""
        import ipaddress

        for part in value.split(","):
            if part.strip():
                ipaddress.ip_network(part.strip(), strict=False)
        return value

    @field_validator("rate_limit")
    @classmethod
    def _limits(cls, value: str) -> str:
        if value.strip():
            from limits import parse_many

            parse_many(value)
        return value

    @model_validator(mode="after")
    def _fill_paths(self) -> Settings:
        home = self.home.expanduser().resolve()
        self.home = home
        if not self.database_url:
            self.database_url = f"sqlite:///{home / 'gkd.db'}"
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{home / 'broker.db'}"
        if self.storage_dir is None:
            self.storage_dir = home / "storage"
        if self.cache_dir is None:
            self.cache_dir = home / "teacher_cache"
        if self.notify_url is None and self.broker_url.startswith(("redis://", "rediss://")):
            self.notify_url = self.broker_url
        return self

    @property
    def storage(self) -> Path:
        assert self.storage_dir is not None
        return self.storage_dir

    @property
    def tmp_dir(self) -> Path:
        """Temporary uploads live on the storage volume so the final move is a rename."""
        return self.storage / "tmp"

    def ensure_dirs(self) -> None:
        for path in (self.home, self.storage, self.tmp_dir, self.cache_dir):
            assert path is not None
            path.mkdir(parents=True, exist_ok=True)
        for url in (self.database_url, self.broker_url):
            if "sqlite:///" in url:
                Path(url.split("sqlite:///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
