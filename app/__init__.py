"""The gkd HTTP service: a thin FastAPI shell around the `gkd` library (see docs/design.md)."""
