"""Python client of the gkd service (HTTP only: importing it loads neither torch nor transformers).

    from gkd.client import Client

    client = Client()  # base URL and key from GKD_BASE_URL / GKD_API_KEY, or pass them
    train = client.datasets.upload("train.csv")
    teacher = client.models.find("example-teacher")
    job = client.jobs.create(teacher=teacher.id, training_dataset=train.id, student={"num_layers": 3})
    for event in client.jobs.stream(job.id):
        print(event.seq, event.type, event.message)
    best = next(c for c in client.checkpoints.list(job.id) if c.kind == "best")
    client.checkpoints.download(job.id, best.id, "student/")

`AsyncClient` has the same surface with coroutines and async iterators. See docs/client.md.
"""

from gkd.client._async import AsyncClient, AsyncPager
from gkd.client._http import DEFAULT_BASE_URL
from gkd.client._sync import Client, SyncPager
from gkd.client.errors import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    ChecksumError,
    ConflictError,
    GkdError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    UnsafeArchiveError,
    WaitTimeoutError,
)
from gkd.client.models import (
    TERMINAL_STATUSES,
    Checkpoint,
    Dataset,
    Deleted,
    Job,
    JobEstimate,
    JobEvent,
    Model,
    Page,
    Webhook,
    WebhookDelivery,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "TERMINAL_STATUSES",
    "APIConnectionError",
    "APITimeoutError",
    "AsyncClient",
    "AsyncPager",
    "AuthenticationError",
    "Checkpoint",
    "ChecksumError",
    "Client",
    "ConflictError",
    "Dataset",
    "Deleted",
    "GkdError",
    "InvalidRequestError",
    "Job",
    "JobEstimate",
    "JobEvent",
    "Model",
    "NotFoundError",
    "Page",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "SyncPager",
    "UnsafeArchiveError",
    "WaitTimeoutError",
    "Webhook",
    "WebhookDelivery",
]
