"""Shared fixtures: the fake OpenAI-compatible server and the paper's seed file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_llm import FakeLLMConfig, FakeLLMServer

REPO_ROOT = Path(__file__).resolve().parents[1]
PAPER_SEEDS = REPO_ROOT.parent / "shared" / "data" / "self_instruct_seed_tasks.jsonl"
DEFAULT_SEEDS = REPO_ROOT / "app" / "data" / "seed_tasks.jsonl"


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(FakeLLMConfig(seed=7)) as server:
        yield server


@pytest.fixture(scope="session")
def paper_seeds() -> Path:
    if not PAPER_SEEDS.exists():
        pytest.skip(f"the paper's seed file is not present at ../shared/data ({PAPER_SEEDS.name})")
    return PAPER_SEEDS


@pytest.fixture(scope="session")
def default_seeds() -> Path:
    return DEFAULT_SEEDS
