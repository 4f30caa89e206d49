"""How a tracker names the trained student: a file:// URI in the library, the service's own URI in a job."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gkd.training.callbacks import CheckpointKind

ArtifactUri = Callable[[CheckpointKind, Path], str]


def local_artifact_uri(kind: CheckpointKind, path: Path) -> str:
    """Where a checkpoint lies, as a file:// URI (the library's runs)."""
    return Path(path).resolve().as_uri()


def artifact_uri_under(base: str | None) -> ArtifactUri:
    """`base` followed by the checkpoint's kind, or the local path when there is no base."""
    if base is None:
        return local_artifact_uri
    return lambda kind, path: f"{base}{kind}"
