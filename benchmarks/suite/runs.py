"""One student run of the suite, in a worker process of its own (one torch thread)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any


def execute(run: dict[str, Any], task_info: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """Train one student with the library's defaults plus the suite's bounds and overrides; return its record."""
    import torch

    from benchmarks.suite.observe import RunObserver
    from gkd.config import DistillConfig
    from gkd.training.trainer import Trainer

    torch.set_num_threads(1)
    for name, value in settings.get("patches", {}).items():  # experiments on a library constant
        import importlib

        module_name, _, attribute = name.rpartition(".")
        setattr(importlib.import_module(module_name), attribute, value)
    splits = dict(task_info["splits"])
    if "student_train" in splits:  # a short-job budget: students see only the first rows
        splits["train"] = splits.pop("student_train")
    files = {name: record["file"] for name, record in splits.items()}
    work = Path(settings["home"]) / "runs" / run["key"].replace("|", "_")
    shutil.rmtree(work, ignore_errors=True)
    raw: dict[str, Any] = {
        "method": run["method"],
        "teacher": task_info["teacher"]["dir"],
        "student": {"num_layers": run["layers"]},
        "data": files,
        "hyperparameters": {"epochs": settings["epochs"], "max_length": settings["max_length"], "seed": run["seed"]},
        "run": {"output_dir": str(work), "cache_dir": str(Path(settings["home"]) / "teacher_cache"),
                "num_threads": 1},
    }
    for key, value in settings["overrides"].items():
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    config = DistillConfig.parse(raw)
    observer = RunObserver()
    started = time.perf_counter()
    try:
        result = Trainer(config, [observer]).train(resume=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        **run,
        "seconds": time.perf_counter() - started,
        "steps": result.steps,
        "test": result.test_metrics or {},
        "best_dev": result.best_metrics,
        "teacher_dev": result.teacher_metrics,
        **({"beta_auto": result.beta_auto} if result.beta_auto is not None else {}),  # what `beta: "auto"` chose
        **observer.summary(),
    }
