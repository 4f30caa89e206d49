"""Experiment trackers a run logs to (`DistillConfig.integrations`), each a `TrainerCallback`.

A tracker's package is imported only when a run asks for it, so the library works without any installed.
"""

from __future__ import annotations

from gkd.config import DistillConfig
from gkd.training.callbacks import TrainerCallback
from gkd.training.integrations.artifacts import artifact_uri_under


def integration_callbacks(config: DistillConfig) -> list[TrainerCallback]:
    """One callback per entry of `config.integrations`."""
    if not config.integrations:
        return []
    from gkd.training.integrations.mlflow import MlflowCallback

    return [MlflowCallback(config, entry, artifact_uri=artifact_uri_under(entry.artifact_base_uri))
            for entry in config.integrations]
