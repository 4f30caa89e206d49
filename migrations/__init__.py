"""Alembic migrations of the service database (run by `gkd db upgrade` and at API start-up)."""
