"""Alembic migrations (the first revision creates the whole schema)."""
