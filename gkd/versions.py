"""Library versions recorded in checkpoints and job responses."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def versions() -> dict[str, str]:
    def get(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "unknown"

    return {"gkd": get("gkd"), "torch": get("torch"), "transformers": get("transformers")}
