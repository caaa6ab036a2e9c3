# ruff: noqa: RUF001  (Cyrillic letters are the point of the language tests)
"""On the real stack with two workers, what goes beyond the paper: reruns against a deterministic
backend, a rate limit shared by all workers, balancing, other languages, LLM judges and the
Unnatural-Instructions mode."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Row, Select, create_engine, select

from app.models import Instance, Instruction, LLMCall
from app.selfinstruct.balance import count_verbs
from app.selfinstruct.rouge import TOKENIZERS, RougeLIndex
from tests.integration.conftest import stack_env, started_stack, upload
from tests.support.fake_llm import FakeLLMConfig, FakeLLMServer
from tests.support.stack import ServiceStack, wait_for_status


@pytest.fixture(scope="module")
def deterministic_llm() -> Iterator[FakeLLMServer]:
    config = FakeLLMConfig(seed=5, deterministic=True, imitate_mix=True)
    with FakeLLMServer(config) as server:
        yield server


@pytest.fixture(scope="module")
def limited_llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(FakeLLMConfig(seed=6, latency_s=0.02)) as server:
        yield server


@pytest.fixture(scope="module")
def slow_steps_llm() -> Iterator[FakeLLMServer]:
    """Deterministic, with slow answers to steps 2 and 3: rounds are planned while instance
    tasks are still at work."""
    config = FakeLLMConfig(
        seed=5,
        deterministic=True,
        imitate_mix=True,
        slow_rate=0.5,
        slow_s=0.4,
        slow_kinds=("classify", "instances_input_first", "instances_output_first"),
    )
    with FakeLLMServer(config) as server:
        yield server


LIMITED_RPM = 600  # 10 requests/s with a burst of 10


@pytest.fixture(scope="module")
def stack(
    pg_url: str,
    broker_url: str,
    deterministic_llm: FakeLLMServer,
    limited_llm: FakeLLMServer,
    slow_steps_llm: FakeLLMServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceStack]:
    tmp = tmp_path_factory.mktemp("recipes")
    limited = {"base_url": limited_llm.base_url, "requests_per_minute": LIMITED_RPM}
    slow_steps = {"base_url": slow_steps_llm.base_url}
    env = stack_env(
        pg_url,
        broker_url,
        deterministic_llm,
        tmp,
        SELFINSTRUCT_BACKENDS=json.dumps({"limited": limited, "slow_steps": slow_steps}),
        SELFINSTRUCT_INSTRUCTIONS_PER_INSTANCE_TASK="2",  # instance tasks on both workers
    )
    # Rounds and instance tasks spread over two worker processes.
    with started_stack(env, tmp, workers=2) as running:
        yield running


@pytest.fixture(scope="module")
def api(stack: ServiceStack) -> Iterator[httpx.Client]:
    with stack.client(stack.create_key("recipes")) as client:
        yield client


def _examples(api: httpx.Client, job_id: str) -> Counter[tuple[str, str, str, bool]]:
    """The job's examples without their row ids."""
    response = api.get(f"/v1/jobs/{job_id}/examples.jsonl")
    assert response.status_code == 200
    rows = [json.loads(line) for line in response.text.splitlines()]
    return Counter(
        (r["instruction"], r["input"], r["output"], r["is_classification"]) for r in rows
    )


def _rows(pg_url: str, statement: Select[Any]) -> list[Row[Any]]:
    """Run one query against the stack's database, outside the API."""
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(statement).all())
    finally:
        engine.dispose()


def _prompt_hashes(pg_url: str, job_id: str) -> Counter[tuple[str, str | None]]:
    query = select(LLMCall.purpose, LLMCall.prompt_sha256).where(LLMCall.job_id == job_id)
    return Counter((purpose, digest) for purpose, digest in _rows(pg_url, query))


def test_rerun_repeats_the_recipe_and_the_accepted_set(
    api: httpx.Client, stack: ServiceStack, pg_url: str, default_seeds: Path
) -> None:
    seed_set = upload(api, default_seeds)
    body = {"seed_set_id": seed_set["id"], "num_instructions": 24}  # no seed: the job draws one
    first = api.post("/v1/jobs", json=body).json()
    first = wait_for_status(api, first["id"], timeout_s=180)
    assert first["status"] == "succeeded", stack.logs()
    assert first["seed_set_hash"] == seed_set["content_hash"]
    assert len(first["template_version"]) == 12 and first["rerun_of"] is None

    response = api.post(f"/v1/jobs/{first['id']}/rerun")
    assert response.status_code == 202, response.text
    second = response.json()
    assert response.headers["location"] == f"/v1/jobs/{second['id']}"
    assert second["rerun_of"] == first["id"] and second["id"] != first["id"]
    assert second["rng_seed"] == first["rng_seed"] == second["options"]["seed"]
    recipe = api.get(f"/v1/jobs/{second['id']}/report").json()["recipe"]
    assert recipe["rerun_of"] == first["id"] and recipe["rng_seed"] == first["rng_seed"]
    assert recipe["seed_set_hash"] == seed_set["content_hash"] and recipe["mode"] == "paper"
    for field in ("seed_set_id", "seed_set_hash", "template_version", "num_instructions"):
        assert second[field] == first[field]
    assert {**first["options"], "seed": None} == {**second["options"], "seed": None}

    second = wait_for_status(api, second["id"], timeout_s=180)
    assert second["status"] == "succeeded", stack.logs()
    first_examples = _examples(api, first["id"])
    assert sum(first_examples.values()) >= 24
    assert _examples(api, second["id"]) == first_examples
    # Every call was the same prompt, recorded by its hash.
    calls = _prompt_hashes(pg_url, first["id"])
    assert all(digest for _, digest in calls) and calls == _prompt_hashes(pg_url, second["id"])
    # The report of a rerun names its origin too.
    assert json.loads(api.get(f"/v1/jobs/{second['id']}").text)["rerun_of"] == first["id"]


def test_rerun_of_an_unknown_or_foreign_job_is_404(api: httpx.Client, stack: ServiceStack) -> None:
    response = api.post("/v1/jobs/00000000-0000-0000-0000-000000000000/rerun")
    assert response.status_code == 404 and "not found" in response.json()["detail"]
    assert api.post("/v1/jobs/not-a-uuid/rerun").status_code == 422
    mine = api.get("/v1/jobs").json()["items"]
    assert mine, "the first test left jobs behind"
    with stack.client(stack.create_key("someone else")) as other:
        assert other.post(f"/v1/jobs/{mine[0]['id']}/rerun").status_code == 404


def test_rate_limit_holds_across_workers(
    api: httpx.Client, stack: ServiceStack, limited_llm: FakeLLMServer, default_seeds: Path
) -> None:
    seed_set = upload(api, default_seeds)
    limited_llm.reset()
    body = {
        "seed_set_id": seed_set["id"],
        "num_instructions": 16,
        "options": {"backend": "limited"},
    }
    response = api.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job = response.json()
    job = wait_for_status(api, job["id"], timeout_s=180)
    assert job["status"] == "succeeded", stack.logs()
    arrivals = sorted(limited_llm.arrivals)
    rate = LIMITED_RPM / 60
    assert len(arrivals) >= 3 * rate, "enough requests to leave the burst behind"
    # A token bucket of one second: at most rate + burst in any second, rate on average.
    most = max(sum(1 for t in arrivals[i:] if t - start < 1.0) for i, start in enumerate(arrivals))
    assert most <= 2 * rate + 1, most
    assert (len(arrivals) - rate) / (arrivals[-1] - arrivals[0]) <= rate * 1.05


def _accepted_texts(pg_url: str, job_id: str) -> list[str]:
    query = select(Instruction.text).where(
        Instruction.job_id == job_id, Instruction.accepted.is_(True)
    )
    return [text for (text,) in _rows(pg_url, query)]


def test_balancing_steers_the_mix_and_caps_verbs(
    api: httpx.Client, stack: ServiceStack, pg_url: str, default_seeds: Path
) -> None:
    seed_set = upload(api, default_seeds)  # about a quarter of its tasks are classification
    base = {"seed_set_id": seed_set["id"], "num_instructions": 60}
    balance = {"classification_share": 0.6, "max_per_verb": 5}
    plain = api.post("/v1/jobs", json={**base, "options": {"seed": 1}}).json()
    steered = api.post("/v1/jobs", json={**base, "options": {"seed": 1, "balance": balance}})
    assert steered.status_code == 202, steered.text
    plain = wait_for_status(api, plain["id"], timeout_s=240)
    steered = wait_for_status(api, steered.json()["id"], timeout_s=240)
    assert plain["status"] == steered["status"] == "succeeded", stack.logs()
    assert plain["progress"]["balance"] is None

    shown = steered["progress"]["balance"]
    share = shown["classification_share"]
    assert share["target"] == 0.6 and share["known"] == 60
    assert shown["input_share"]["target"] is None and shown["input_share"]["known"] > 0
    assert shown["max_per_verb"] == 5 and shown["rejected_at_verb_cap"] > 0
    assert shown["rejected_at_verb_cap"] == steered["progress"]["instructions_rejected"]["verb_cap"]

    def classification_share(job: dict) -> float:  # type: ignore[type-arg]
        rows = [
            json.loads(line)
            for line in api.get(f"/v1/jobs/{job['id']}/examples.jsonl").text.splitlines()
        ]
        tasks = {r["instruction"]: r["is_classification"] for r in rows}
        return sum(tasks.values()) / len(tasks)

    unsteered = classification_share(plain)
    assert unsteered < 0.45
    # Steering is feedback through the prompts: how close it gets depends on how faithfully the
    # model imitates them and on step 2 lagging behind step 1; it must move the mix a lot.
    assert share["actual"] >= unsteered + 0.15, (share, unsteered)
    assert max(count_verbs(_accepted_texts(pg_url, steered["id"])).values()) <= 5
    assert max(count_verbs(_accepted_texts(pg_url, plain["id"])).values()) > 5


def test_a_balanced_job_reruns_the_same(
    api: httpx.Client, stack: ServiceStack, pg_url: str, default_seeds: Path
) -> None:
    """Its prompts are steered by steps 2 and 3, which run on both workers at their own pace."""
    seed_set = upload(api, default_seeds)
    balance = {"classification_share": 0.6, "input_share": 0.7, "max_per_verb": 8}
    body = {"seed_set_id": seed_set["id"], "num_instructions": 40}
    options = {"seed": 3, "balance": balance, "backend": "slow_steps"}
    first = api.post("/v1/jobs", json={**body, "options": options}).json()
    first = wait_for_status(api, first["id"], timeout_s=240)
    assert first["status"] == "succeeded", stack.logs()
    second = api.post(f"/v1/jobs/{first['id']}/rerun").json()
    second = wait_for_status(api, second["id"], timeout_s=240)
    assert second["status"] == "succeeded", stack.logs()
    assert sorted(_accepted_texts(pg_url, second["id"])) == sorted(
        _accepted_texts(pg_url, first["id"])
    )
    assert _examples(api, second["id"]) == _examples(api, first["id"])
    assert _prompt_hashes(pg_url, second["id"]) == _prompt_hashes(pg_url, first["id"])


def test_bad_balance_options_are_422(api: httpx.Client, default_seeds: Path) -> None:
    seed_set = upload(api, default_seeds)
    for options, needle in [
        ({"balance": {"classification_share": 2}}, "classification_share"),
        ({"balance": {"max_per_verb": 0}}, "max_per_verb"),
        ({"balance": {"colour": "red"}}, "colour"),
        ({"mode": "batched", "balance": {"input_share": 0.5}}, "batched mode"),
    ]:
        body = {"seed_set_id": seed_set["id"], "num_instructions": 5, "options": options}
        response = api.post("/v1/jobs", json=body)
        assert response.status_code == 422, response.text
        assert needle in response.text


# --- other languages -----------------------------------------------------------------------

SEEDS_BY_LANGUAGE = {
    "zh": [
        ("写一首关于大海的短诗。", "", "蓝色的海浪轻轻拍打着沙滩。"),
        ("把下面的句子翻译成英文。", "我喜欢喝茶。", "I like drinking tea."),
        ("列出三种常见的水果。", "", "苹果、香蕉、橙子。"),
        ("判断下面这句话的情感是积极还是消极。", "今天的天气真好！", "积极"),
        ("用一句话解释什么是光合作用。", "", "植物利用阳光把水和二氧化碳变成养分。"),
        ("给这篇短文起一个标题。", "小猫在院子里追蝴蝶，玩了一下午。", "追蝴蝶的小猫"),
        ("推荐一本适合儿童阅读的书并说明理由。", "", "《小王子》，故事简单又有深意。"),
        ("写出下面词语的反义词。", "高兴", "难过"),
    ],
    "ru": [
        ("Напишите короткое стихотворение о море.", "", "Волна поёт, и ветер вторит ей."),
        ("Переведите предложение на английский язык.", "Я люблю чай.", "I love tea."),
        ("Назовите три столицы европейских стран.", "", "Париж, Берлин, Мадрид."),
        ("Определите тональность отзыва: положительная или отрицательная.",
         "Отличный сервис, всем советую!", "Положительная"),
        ("Объясните простыми словами, что такое инфляция.", "",
         "Это когда цены растут и деньги покупают меньше."),
        ("Придумайте заголовок для этой заметки.", "В городе открылся новый парк.",
         "Новый парк для горожан"),
        ("Составьте список покупок для завтрака.", "", "Хлеб, масло, яйца, молоко."),
        ("Исправьте ошибки в предложении.", "Я пошол в магазин.", "Я пошёл в магазин."),
    ],
    "de": [
        ("Schreiben Sie ein kurzes Gedicht über das Meer.", "", "Die Wellen flüstern leise."),
        ("Übersetzen Sie den Satz ins Englische.", "Ich trinke gern Tee.", "I like tea."),
        ("Nennen Sie drei Hauptstädte in Europa.", "", "Paris, Madrid, Wien."),
        ("Bestimmen Sie, ob die Bewertung positiv oder negativ ist.",
         "Das Essen war kalt und teuer.", "Negativ"),
        ("Erklären Sie in einem Satz, was Photosynthese ist.", "",
         "Pflanzen machen aus Licht, Wasser und Kohlendioxid Zucker."),
        ("Finden Sie eine passende Überschrift für den Text.",
         "Im Zoo wurde ein Elefantenbaby geboren.", "Nachwuchs im Zoo"),
        ("Schreiben Sie eine höfliche Absage für eine Einladung.", "",
         "Vielen Dank, leider kann ich nicht kommen."),
        ("Korrigieren Sie die Rechtschreibung im Satz.", "Ich hab das gewust.",
         "Ich habe das gewusst."),
    ],
}  # fmt: skip
LANGUAGE_OPTIONS = {
    "zh": {"dedupe_tokenizer": "characters", "reject_non_ascii_start": False},
    "ru": {"dedupe_tokenizer": "unicode_words", "reject_non_ascii_start": False},
    "de": {"dedupe_tokenizer": "unicode_words"},  # starts with ASCII, umlauts inside
}
SCRIPT_CHECKS = {
    "zh": lambda text: any("\u4e00" <= c <= "\u9fff" for c in text),
    "ru": lambda text: any("\u0400" <= c <= "\u04ff" for c in text),
    "de": lambda text: text[:1].isascii(),
}


def _seed_tasks(language: str) -> list[dict]:  # type: ignore[type-arg]
    return [
        {"instruction": text, "instances": [{"input": given, "output": answer}]}
        for text, given, answer in SEEDS_BY_LANGUAGE[language]
    ]


@pytest.mark.parametrize("language", ["zh", "ru", "de"])
def test_seeds_in_other_languages_work_end_to_end(
    api: httpx.Client, pg_url: str, language: str
) -> None:
    options = {"seed": 2, **LANGUAGE_OPTIONS[language]}
    body = {"seed_tasks": _seed_tasks(language), "num_instructions": 12, "options": options}
    response = api.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job = wait_for_status(api, response.json()["id"], timeout_s=180)
    assert job["status"] == "succeeded", job
    assert job["progress"]["instructions_accepted"] == 12
    # The model echoed and spliced the seeds: dedupe in the job's own tokens caught copies.
    assert job["progress"]["instructions_rejected"].get("near_duplicate", 0) > 0
    instructions = _accepted_texts(pg_url, job["id"])
    assert len(instructions) == 12 and all(map(SCRIPT_CHECKS[language], instructions))
    rows = [
        json.loads(line)
        for line in api.get(f"/v1/jobs/{job['id']}/examples.jsonl").text.splitlines()
    ]
    assert rows and {r["instruction"] for r in rows} <= set(instructions)
    tokenize = TOKENIZERS[options["dedupe_tokenizer"]]
    seeds = [text for text, _, _ in SEEDS_BY_LANGUAGE[language]]
    for position, text in enumerate(instructions):
        others = RougeLIndex([*seeds, *instructions[:position]], tokenizer=tokenize)
        assert others.best(text).score <= 0.7
    # The report measures ROUGE-L in the job's tokens too: copies of seeds would show as 1.0.
    report = api.get(f"/v1/jobs/{job['id']}/report").json()
    assert report["instructions"]["accepted"] == 12
    assert report["rouge_l"]["to_nearest_seed"]["max"] <= 0.7


def test_chinese_seeds_with_the_papers_filters_are_all_rejected(api: httpx.Client) -> None:
    """The paper's non-ASCII start filter rejects every Chinese task: the job cannot progress."""
    options = {"seed": 2, "max_rounds_without_progress": 2}
    body = {"seed_tasks": _seed_tasks("zh"), "num_instructions": 5, "options": options}
    job = wait_for_status(api, api.post("/v1/jobs", json=body).json()["id"], timeout_s=120)
    assert job["status"] == "failed" and "no new instruction" in job["error"]
    assert set(job["progress"]["instructions_rejected"]) <= {
        "starts_with_non_ascii",
        "too_short",
        "truncated_response",
    }


# --- LLM judges ------------------------------------------------------------------------------


def test_judges_filter_score_and_count_their_tokens(
    api: httpx.Client,
    stack: ServiceStack,
    pg_url: str,
    limited_llm: FakeLLMServer,
    default_seeds: Path,
) -> None:
    seed_set = upload(api, default_seeds)
    limited_llm.reset()
    judges = {
        "instruction": {},
        "answer": {"backend": "limited", "threshold": 2},  # a judge on its own backend
        "faithfulness": {"threshold": 3},
    }
    options = {"judges": judges, "seed": 3}
    body = {"seed_set_id": seed_set["id"], "num_instructions": 20, "options": options}
    response = api.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job = wait_for_status(api, response.json()["id"], timeout_s=240)
    assert job["status"] == "succeeded", stack.logs()
    progress = job["progress"]
    assert progress["instructions_accepted"] == 20
    assert progress["instructions_rejected"]["judge_dropped"] > 0
    assert progress["instances_rejected"]["judge_low_score"] > 0
    assert progress["instances_rejected"]["judge_unfaithful"] > 0
    assert limited_llm.counts["judge_answer"] > 0  # the answer judge ran where it was told
    assert not {k for k in limited_llm.counts if k.startswith("judge_") and k != "judge_answer"}

    instructions = _rows(
        pg_url,
        select(Instruction.text, Instruction.accepted, Instruction.reason, Instruction.judge_note)
        .where(Instruction.job_id == job["id"]),
    )  # fmt: skip
    instances = _rows(
        pg_url,
        select(Instance.input, Instance.accepted, Instance.reason, Instance.answer_score,
               Instance.faithfulness_score).where(Instance.job_id == job["id"]),
    )  # fmt: skip
    calls = _rows(
        pg_url,
        select(LLMCall.purpose, LLMCall.prompt_tokens, LLMCall.completion_tokens)
        .where(LLMCall.job_id == job["id"]),
    )  # fmt: skip
    for text, accepted, reason, note in instructions:
        if accepted:
            assert not any(w in text.lower() for w in ("brainstorm", "ideas")) and note
        if reason == "judge_dropped":
            assert note == "too open-ended to check an answer."
    graded = [i for i in instances if i.reason is None or i.reason.startswith("judge_")]
    assert graded
    for given, accepted, reason, answer, faithful in graded:
        if accepted:  # an unreadable grade keeps the example, without a score
            assert answer is None or answer >= 2
            assert faithful is None or faithful == 3
            assert given.strip() or faithful is None  # faithfulness only for inputs
        elif reason == "judge_low_score":
            assert answer == 1
        else:
            assert reason == "judge_unfaithful" and faithful in (1, 2)
    # The judges' tokens are part of the job's usage, and so of its budget.
    purposes = {purpose for purpose, _, _ in calls}
    assert {"judge_instruction", "judge_answer", "judge_faithfulness"} <= purposes
    assert progress["prompt_tokens"] == sum(p for _, p, _ in calls)

    report = api.get(f"/v1/jobs/{job['id']}/report").json()
    assert report["recipe"]["options"]["judges"]["answer"]["backend"] == "limited"
    judged = report["judges"]
    assert judged["instructions_dropped"] == progress["instructions_rejected"]["judge_dropped"]
    assert judged["answer"]["1"] >= progress["instances_rejected"]["judge_low_score"]
    assert set(judged["faithfulness"]) <= {"1", "2", "3"} and judged["faithfulness"]["3"] > 0

    rows = [
        json.loads(line)
        for line in api.get(f"/v1/jobs/{job['id']}/examples.jsonl").text.splitlines()
    ]
    assert rows and all("judge" in row for row in rows)
    assert any("answer_score" in row["judge"] for row in rows)


def test_bad_judge_options_are_422(api: httpx.Client, default_seeds: Path) -> None:
    seed_set = upload(api, default_seeds)
    for judges, needle in [
        ({"answer": {"backend": "nowhere"}}, "options.judges.answer.backend"),
        ({"instruction": {"prompt": "Rate {output}"}}, "unknown placeholder {output}"),
        ({"answer": {"threshold": 0}}, "threshold"),
        ({"mood": {}}, "mood"),
    ]:
        body = {"seed_set_id": seed_set["id"], "num_instructions": 5, "options": {"judges": judges}}
        response = api.post("/v1/jobs", json=body)
        assert response.status_code == 422, response.text
        assert needle in response.text


# --- Unnatural-Instructions mode ---------------------------------------------------------------


def test_unnatural_mode_stores_cores_and_linked_reformulations(
    api: httpx.Client, stack: ServiceStack, pg_url: str, default_seeds: Path
) -> None:
    seed_set = upload(api, default_seeds)
    options = {"mode": "unnatural", "reformulations": 3, "seed": 4}
    body = {"seed_set_id": seed_set["id"], "num_instructions": 15, "options": options}
    response = api.post("/v1/jobs", json=body)
    assert response.status_code == 202, stack.logs()
    job = wait_for_status(api, response.json()["id"], timeout_s=240)
    assert job["status"] == "succeeded", stack.logs()
    progress = job["progress"]
    assert progress["instructions_accepted"] == 15  # the target counts cores
    assert progress["reformulations_accepted"] > 0
    assert progress["reformulations_rejected"].get("near_duplicate", 0) > 0
    assert progress["instructions_rejected"].get("near_duplicate", 0) > 0  # same dedupe

    rows = [
        json.loads(line)
        for line in api.get(f"/v1/jobs/{job['id']}/examples.jsonl").text.splitlines()
    ]
    assert len(rows) == progress["instances_accepted"]
    report = api.get(f"/v1/jobs/{job['id']}/report").json()
    assert report["reformulations"] == progress["reformulations_accepted"]
    assert report["instructions"]["accepted"] == 15 and report["recipe"]["mode"] == "unnatural"
    cores = {r["instruction_id"]: r for r in rows if r["variant"] == "core"}
    reformulations = [r for r in rows if r["variant"] == "reformulation"]
    assert cores and len(reformulations) == progress["reformulations_accepted"]
    assert all(core["core_id"] == core_id for core_id, core in cores.items())
    for row in reformulations:
        core = cores[row["core_id"]]  # linked to a stored core with its input and output
        assert (row["input"], row["output"], row["constraints"]) == (
            core["input"],
            core["output"],
            core["constraints"],
        )
        assert row["instruction"] != core["instruction"]
    assert any(r["constraints"].startswith("The output should be one of") for r in cores.values())
    # Training formats take every example, cores and reformulations alike.
    alpaca = api.get(
        f"/v1/jobs/{job['id']}/export", params={"format": "alpaca", "container": "jsonl"}
    )
    assert alpaca.status_code == 200 and len(alpaca.text.splitlines()) == len(rows)
    # The ROUGE pool holds the cores: no two accepted cores are near-duplicates.
    cores = (
        select(Instruction.text)
        .where(
            Instruction.job_id == job["id"],
            Instruction.accepted.is_(True),
            Instruction.variant == 0,
        )
        .order_by(Instruction.round, Instruction.slot)
    )
    core_texts = [text for (text,) in _rows(pg_url, cores)]
    assert len(core_texts) == 15
    for position, text in enumerate(core_texts):
        assert RougeLIndex(core_texts[:position]).best(text).score <= 0.7


@pytest.mark.parametrize("mode", ["unnatural", "batched"])
def test_modes_that_show_instances_need_seeds_with_instances(api: httpx.Client, mode: str) -> None:
    tasks = [{"instruction": "Name a colour."}, {"instruction": "Write a haiku about rain."}]
    body = {"seed_tasks": tasks, "num_instructions": 5, "options": {"mode": mode}}
    response = api.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    assert "options.mode" in response.text and "instances" in response.text
