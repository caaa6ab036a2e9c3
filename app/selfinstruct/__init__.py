"""The Self-Instruct algorithm as pure code: no I/O, no Celery, no SQL, no HTTP."""
