"""Schemathesis hooks for test_fuzz_api.py, loaded by the CLI through SCHEMATHESIS_HOOKS.

JSON Schema cannot say everything that makes a request valid: that an uploaded file holds JSONL
records of its kind, that seed task ids and source names are unique within a request, that a
recipe's weights and stage 2 name its sources (stage 2 not all of them), and which seed set, job and dataset ids exist.
The API answers those with 422 (or 404) and says why. So that the positive_data_acceptance
check still tests everything the schema does say, positive cases get exactly those missing
facts filled in (ids made unique, references pointed at resources the test created, file
contents made valid); negative cases are sent as generated.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import schemathesis

FIXTURES_ENV = "SELFINSTRUCT_FUZZ_FIXTURES"

DATASET_FILES = {
    "instructions": b'{"instruction": "Name a colour.", "input": "", "output": "Red"}\n',
    "chat": b'{"messages": [{"role": "user", "content": "Hi"}, '
    b'{"role": "assistant", "content": "Hello"}]}\n',
    "text": b"A plain document.\n",
}
SEED_FILES = {
    "self_instruct": b'{"instruction": "Name a colour of the rainbow."}\n',
    "natural_instructions": json.dumps(
        {
            "Definition": ["Name a colour of the rainbow."],
            "Positive Examples": [{"input": "", "output": "Red"}],
        }
    ).encode(),
    "alpaca": b'[{"instruction": "Name a colour of the rainbow.", "output": "Red"}]',
    "lines": b"Name a colour of the rainbow.\n",
}


def _fixtures() -> dict[str, Any]:
    return json.loads(os.environ.get(FIXTURES_ENV, "{}"))


def _dataset_upload(body: dict[str, Any]) -> None:
    body["file"] = DATASET_FILES.get(str(body.get("kind", "instructions")), b"")


def _seed_upload(body: dict[str, Any]) -> None:
    body["file"] = SEED_FILES.get(str(body.get("format", "self_instruct")), b"")


def _job(body: dict[str, Any]) -> None:
    if body.get("seed_set_id") is not None:
        body["seed_set_id"] = _fixtures()["seed_set_id"]
    for n, task in enumerate(body.get("seed_tasks") or []):
        if isinstance(task, dict) and task.get("id") is not None:
            task["id"] = f"t{n}-{task['id']}"[:200]  # unique, and unlike "seed_task_<n>"


def _recipe(body: dict[str, Any]) -> None:
    fixtures = _fixtures()
    names = []
    for n, source in enumerate(body.get("sources") or []):
        source["name"] = f"s{n}"
        names.append(source["name"])
        if source.get("job_id") is not None:
            source["job_id"] = fixtures["job_id"]
        elif source.get("dataset_id") is not None:
            source["dataset_id"] = fixtures["datasets"][source.get("kind") or "instructions"]
    if isinstance(body.get("weights"), dict):
        body["weights"] = dict(zip(names, body["weights"].values(), strict=False))
    stage2 = body.get("stage2")
    if isinstance(stage2, dict) and isinstance(stage2.get("sources"), list):
        # At least one source stays in stage 1; with a single source there is no stage 2.
        later = names[: min(len(stage2["sources"]), len(names) - 1)]
        if later:
            stage2["sources"] = later
        else:
            del body["stage2"]


_FIXERS: dict[tuple[str, str], Callable[[dict[str, Any]], None]] = {
    ("POST", "/v1/datasets"): _dataset_upload,
    ("POST", "/v1/seed-sets"): _seed_upload,
    ("POST", "/v1/jobs"): _job,
    ("POST", "/v1/mixtures"): _recipe,
}


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    meta = case.meta
    fix = _FIXERS.get((case.method.upper(), case.operation.path))
    positive = meta is not None and meta.generation.mode.is_positive
    if fix is not None and positive and isinstance(case.body, dict):
        fix(case.body)
    return case


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    """Drop negative uploads whose file part was generated as a number, object or the like: a
    file part is bytes on the wire, so the server cannot tell it from a file with that text
    (the negative_data_rejection check cannot apply to it)."""
    meta = case.meta
    negative = meta is not None and meta.generation.mode.is_negative
    upload = (case.method.upper(), case.operation.path) in _UPLOADS
    if negative and upload and isinstance(case.body, dict) and "file" in case.body:
        return isinstance(case.body["file"], bytes | str)
    return True


_UPLOADS = {("POST", "/v1/datasets"), ("POST", "/v1/seed-sets")}
