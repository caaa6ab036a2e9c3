"""The project's own default seed tasks, shipped inside the package."""

from __future__ import annotations

from importlib import resources

from app.selfinstruct.seeds import parse_seed_jsonl
from app.selfinstruct.types import SeedTask

DEFAULT_SEED_RESOURCE = "seed_tasks.jsonl"
# Written for this project, so under its license (pyproject.toml); a dataset card grown from
# these seeds states it.
DEFAULT_SEED_LICENSE = "apache-2.0"


def load_default_seed_tasks() -> list[SeedTask]:
    """The default seed set, validated like any upload (a broken release fails loudly)."""
    data = resources.files(__name__).joinpath(DEFAULT_SEED_RESOURCE).read_bytes()
    # Our own file: the size limits guard against untrusted uploads and do not apply here.
    return parse_seed_jsonl(
        data, max_bytes=len(data), max_line_bytes=len(data), max_tasks=len(data)
    )
