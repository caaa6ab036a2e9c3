"""Mixtures over HTTP: a job's output, uploaded datasets of every kind, two stages, a manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import upload
from tests.support.stack import ServiceStack, wait_for_status

pytestmark = pytest.mark.integration

DIALOGUES = 24


def _jsonl(records: list[Any]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def _dataset(api: httpx.Client, kind: str, data: bytes, name: str) -> dict[str, Any]:
    response = api.post(
        "/v1/datasets",
        files={"file": (name, data, "application/x-ndjson")},
        data={"kind": kind, "name": name},
    )
    assert response.status_code == 201, response.text
    assert response.json()["kind"] == kind
    return response.json()


@pytest.fixture(scope="module")
def sources(api: httpx.Client, default_seeds: Path) -> dict[str, Any]:
    seed_set = upload(api, default_seeds)
    response = api.post(
        "/v1/jobs",
        json={"seed_set_id": seed_set["id"], "num_instructions": 10, "options": {"seed": 11}},
    )
    job = wait_for_status(api, response.json()["id"])
    assert job["status"] == "succeeded"
    dialogues = [
        {
            "messages": [
                {"role": "user", "content": "hi " * (i + 1)},
                {"role": "assistant", "content": "hello"},
            ]
        }
        if i % 2
        else {
            "conversations": [
                {"from": "human", "value": "hey " * (i + 1)},
                {"from": "gpt", "value": "yo"},
            ]
        }
        for i in range(DIALOGUES)
    ]
    tasks = [
        {
            "instruction": f"Answer question {i}.",
            "input": f"Question {i}?",
            "output": f"A{i}",
            "score": i,
        }
        for i in range(30)
    ]
    return {
        "job": job,
        "examples": job["progress"]["instances_accepted"],
        "chat": _dataset(api, "chat", _jsonl(dialogues), "dialogues.jsonl"),
        "tasks": _dataset(api, "instructions", _jsonl(tasks), "qa.jsonl"),
        "docs": _dataset(
            api, "text", "".join(f"Document number {i}.\n" for i in range(200)).encode(), "docs.txt"
        ),
    }


def _recipe(given: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    recipe = {
        "seed": 5,
        "format": "alpaca",
        "sources": [
            {"name": "generated", "job_id": given["job"]["id"]},
            {"name": "qa", "dataset_id": given["tasks"]["id"]},
            {"name": "docs", "dataset_id": given["docs"]["id"]},
            {"name": "dialogues", "dataset_id": given["chat"]["id"], "kind": "chat"},
        ],
        "cap": 12,
        "per_instruction_cap": 2,
        "invert_fraction": 1.0,
        "invert_cap": 4,
        "plain_text_ratio": 0.2,
        "stage2": {"sources": ["dialogues"], "replay_fraction": 0.25, "easy_to_hard": True},
    }
    return {**recipe, **overrides}


def _build(api: httpx.Client, recipe: dict[str, Any]) -> dict[str, Any]:
    response = api.post("/v1/mixtures", json=recipe)
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/v1/mixtures/{response.json()['id']}"
    mixture = wait_for_status(api, response.json()["id"], resource="mixtures")
    assert mixture["status"] == "succeeded", mixture
    return mixture


def _stage(api: httpx.Client, mixture: dict[str, Any], stage: int) -> list[dict[str, Any]]:
    response = api.get(f"/v1/mixtures/{mixture['id']}/stages/{stage}")
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


def test_two_stage_mixture_with_every_kind_of_source(
    api: httpx.Client, sources: dict[str, Any]
) -> None:
    mixture = _build(api, _recipe(sources))
    manifest = mixture["manifest"]
    assert mixture["stages"] == 2 and manifest["seed"] == 5
    counts = manifest["counts_per_source"]
    # qa: 30 distinct tasks, capped at 12; the job's examples: at most 2 per instruction, then 12.
    assert counts["qa"] == 12 and 0 < counts["generated"] <= 12
    first, second = _stage(api, mixture, 1), _stage(api, mixture, 2)
    summary1, summary2 = manifest["stages"]
    mixed = counts["qa"] + counts["generated"]
    assert summary1["inverted"] == 4  # invert_fraction 1, capped at 4 (every qa task has input)
    assert sum(r.get("inverted") is True for r in first) == 4  # swapped in, marked
    assert summary1["plain_text"] == round(mixed * 0.2 / 0.8)
    assert summary1["total"] == len(first) == mixed + summary1["plain_text"]
    assert sum(r["instruction"] == "" for r in first) == summary1["plain_text"]
    assert summary2["replayed"] == round(DIALOGUES * 0.25 / 0.75) == 8
    assert summary2["total"] == len(second) == DIALOGUES + 8
    assert sum("messages" in r for r in second) == DIALOGUES
    lengths = [len(json.dumps(r).split()) for r in second]
    assert lengths == sorted(lengths)  # easy to hard
    assert manifest["jobs"] == {"generated": "succeeded"}
    assert sum(manifest["counts_per_task"].values()) == mixed
    assert max(manifest["counts_per_task"].values()) <= 2


def test_same_recipe_same_mixture_and_llm_written_inversions(
    api: httpx.Client, sources: dict[str, Any]
) -> None:
    recipe = _recipe(sources, stage2=None, plain_text_ratio=0.0)
    one, two = _build(api, recipe), _build(api, recipe)
    assert _stage(api, one, 1) == _stage(api, two, 1)
    llm = _build(api, {**recipe, "invert_writer": "llm", "invert_cap": 10})
    usage = llm["manifest"]["llm_usage"]
    assert usage["requests"] == 10 and usage["completion_tokens"] > 0
    written = llm["manifest"]["inverted_by_llm"]
    assert 0 < written <= 10  # the fake model sometimes answers with a useless stub
    instructions = [r.get("instruction", "") for r in _stage(api, llm, 1)]
    assert (
        sum(
            i.startswith(("Given the result", "Starting from", "From the output"))
            for i in instructions
        )
        == written
    )


def test_a_rebuilt_mixture_answers_its_inversions_from_the_response_cache(
    api: httpx.Client, sources: dict[str, Any]
) -> None:
    recipe = {
        **_recipe(sources, stage2=None, plain_text_ratio=0.0, seed=17),
        "invert_writer": "llm",
        "invert_cap": 6,
        "llm": {"response_cache": "all"},
    }
    first, again = _build(api, recipe), _build(api, recipe)
    # The inversion prompt is built from the instruction alone, so two examples of one job
    # instruction share an answer already within the first build.
    assert first["manifest"]["llm_usage"]["requests"] == 6
    assert first["manifest"]["llm_usage"]["cache_hits"] < 6
    assert (
        again["manifest"]["llm_usage"]["cache_hits"]
        == again["manifest"]["llm_usage"]["requests"]
        == 6
    )
    assert _stage(api, first, 1) == _stage(api, again, 1)


@pytest.mark.parametrize("container", ["jsonl", "json", "parquet"])
def test_stages_load_with_datasets(
    api: httpx.Client,
    sources: dict[str, Any],
    container: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets

    mixture = _build(api, _recipe(sources, format="openai_chat"))
    for stage, summary in enumerate(mixture["manifest"]["stages"], start=1):
        response = api.get(
            f"/v1/mixtures/{mixture['id']}/stages/{stage}", params={"container": container}
        )
        assert response.status_code == 200, response.text
        path = tmp_path / f"stage{stage}.{container}"
        path.write_bytes(response.content)
        loaded = datasets.load_dataset(
            "parquet" if container == "parquet" else "json",
            data_files=str(path),
            split="train",
            cache_dir=str(tmp_path / "cache"),
        )
        assert loaded.num_rows == summary["total"]
        assert "messages" in loaded.column_names


def test_bad_uploads_and_recipes_are_clear_4xx(
    api: httpx.Client, sources: dict[str, Any], stack: ServiceStack
) -> None:
    bad = b'{"instruction": "a", "output": "b"}\n{"instruction": "c"\n{"instruction": "", "output": "x"}\n'
    response = api.post(
        "/v1/datasets", files={"file": ("bad.jsonl", bad)}, data={"kind": "instructions"}
    )
    assert response.status_code == 422
    assert [e["line"] for e in response.json()["errors"]] == [2, 3]
    assert "line 2" in response.json()["detail"]
    response = api.post(
        "/v1/datasets",
        files={"file": ("c.jsonl", b'{"messages": [{"role": "bot", "content": "x"}]}\n')},
        data={"kind": "chat"},
    )
    assert response.status_code == 422 and "role" in response.json()["detail"]

    cases = {
        "recipe.sources[1].dataset_id": _recipe(
            sources,
            sources=[
                {"name": "x", "job_id": sources["job"]["id"]},
                {"name": "y", "dataset_id": "00000000-0000-0000-0000-000000000000"},
            ],
            stage2=None,
        ),
        "sources.0.path": _recipe(sources, sources=[{"name": "x", "path": "a.jsonl"}], stage2=None),
        "recipe.sources[3].kind": _recipe(
            sources,
            sources=[
                *_recipe(sources)["sources"][:3],
                {"name": "dialogues", "dataset_id": sources["chat"]["id"], "kind": "text"},
            ],
        ),
        "stage2.sources": _recipe(sources, stage2={"sources": ["nope"]}),
        "recipe.llm.backend": _recipe(sources, invert_writer="llm", llm={"backend": "missing"}),
    }
    for field, recipe in cases.items():
        response = api.post("/v1/mixtures", json=recipe)
        assert response.status_code == 422, (field, response.text)
        assert field in response.text, (field, response.text)

    mixture = _build(api, _recipe(sources, stage2=None))
    assert api.get(f"/v1/mixtures/{mixture['id']}/stages/2").status_code == 404
    with stack.client(stack.create_key("someone else")) as other:
        assert other.get(f"/v1/mixtures/{mixture['id']}").status_code == 404
        assert other.get(f"/v1/datasets/{sources['chat']['id']}").status_code == 404
        response = other.post("/v1/mixtures", json=_recipe(sources, stage2=None))
        assert response.status_code == 422 and "not found" in response.text
