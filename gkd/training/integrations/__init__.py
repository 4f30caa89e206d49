"""Experiment trackers a run logs to (`DistillConfig.integrations`), each a `TrainerCallback`.

A tracker's package is imported only when a run asks for it, so the library works without any installed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gkd.config import DistillConfig
from gkd.training.callbacks import CheckpointKind, TrainerCallback

ArtifactUri = Callable[[CheckpointKind, Path], str]


def local_artifact_uri(kind: CheckpointKind, path: Path) -> str:
    """Where a checkpoint lies, as a file:// URI (the library's runs); the service passes its own."""
    return Path(path).resolve().as_uri()


def artifact_uri_under(base: str | None) -> ArtifactUri:
    """`base` followed by the checkpoint's kind, or the local path when there is no base."""
    if base is None:
        return local_artifact_uri
    return lambda kind, path: f"{base}{kind}"


def integration_callbacks(config: DistillConfig) -> list[TrainerCallback]:
    """One callback per entry of `config.integrations`."""
    if not config.integrations:
        return []
    from gkd.training.integrations.mlflow import MlflowCallback

    return [MlflowCallback(config, entry, artifact_uri=artifact_uri_under(entry.artifact_base_uri))
            for entry in config.integrations]
