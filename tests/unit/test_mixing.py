"""Mixing strategies: exact counts, caps, proportions, replay fractions, determinism."""

from __future__ import annotations

import random

import pytest

from app.selfinstruct.mixing import (
    allocate,
    cap_per_key,
    difficulty_by_length,
    invert,
    mix,
    mixing_rates,
    two_stages,
    with_plain_text,
)


def test_examples_proportional_with_cap() -> None:
    sizes = {"big": 10_000, "mid": 1_000, "small": 100}
    rates = mixing_rates(sizes, cap=2_000)
    assert rates == pytest.approx({"big": 2000 / 3100, "mid": 1000 / 3100, "small": 100 / 3100})
    assert allocate(sizes, rates, 3100) == {"big": 2000, "mid": 1000, "small": 100}


def test_temperature_flattens_and_weights_override() -> None:
    sizes = {"a": 900, "b": 100}
    assert mixing_rates(sizes, temperature=1.0)["a"] == pytest.approx(0.9)
    assert mixing_rates(sizes, temperature=2.0)["a"] == pytest.approx(30 / 40)
    assert mixing_rates(sizes, temperature=1e9)["a"] == pytest.approx(0.5, abs=1e-6)
    assert mixing_rates(sizes, weights={"a": 1, "b": 3}) == {"a": 0.25, "b": 0.75}


def test_allocation_never_exceeds_a_source_and_redistributes() -> None:
    counts = allocate({"a": 5, "b": 1000}, {"a": 0.5, "b": 0.5}, 100)
    assert counts == {"a": 5, "b": 95}
    assert allocate({"a": 3, "b": 4}, {"a": 0.5, "b": 0.5}, 100) == {"a": 3, "b": 4}


def test_mix_is_deterministic_and_exact() -> None:
    sources = {"x": list(range(50)), "y": list(range(100, 130))}
    first, counts = mix(sources, random.Random(1), total=40, weights={"x": 1, "y": 1})
    again, _ = mix(sources, random.Random(1), total=40, weights={"x": 1, "y": 1})
    assert first == again and counts == {"x": 20, "y": 20} and len(first) == 40
    assert len({item for _, item in first}) == 40


def test_cap_per_instruction() -> None:
    records = [{"instruction": f"task {i % 3}", "n": i} for i in range(30)]
    kept = cap_per_key(records, lambda r: r["instruction"], 4, random.Random(0))
    assert len(kept) == 12
    assert all(sum(r["instruction"] == f"task {t}" for r in kept) == 4 for t in range(3))


def test_plain_text_ratio() -> None:
    mixed = with_plain_text(["i"] * 80, ["t"] * 100, 0.2, random.Random(0))
    assert mixed.count("t") == 20 and mixed.count("i") == 80


def test_two_stages_with_replay_and_easy_to_hard() -> None:
    stage1 = [{"instruction": "a " * n, "input": "", "output": "x"} for n in range(1, 41)]
    stage2 = [{"instruction": "chat " * n, "input": "", "output": "y"} for n in range(1, 31)]
    first, second = two_stages(
        stage1, stage2, 0.25, random.Random(0), difficulty=difficulty_by_length
    )
    assert len(first) == 40 and len(second) == 40  # 10 replayed = 25 % of stage 2
    assert sum(r["output"] == "x" for r in second) == 10
    scores = [difficulty_by_length(r) for r in second]
    assert scores == sorted(scores)


def test_inversion() -> None:
    example = {
        "id": "e1",
        "instruction": "Answer the question.",
        "input": "What is 2+2?",
        "output": "4",
    }
    inverted = invert(example, random.Random(0))
    assert inverted is not None
    assert inverted["input"] == "4" and inverted["output"] == "What is 2+2?"
    assert inverted["inverted"] and inverted["inverted_from"] == "e1"
    assert invert({**example, "input": ""}, random.Random(0)) is None


def test_mix_command_writes_mixture_and_manifest(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from typer.testing import CliRunner

    from app.cli import cli

    generated = tmp_path / "generated.jsonl"
    generated.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"g{i}",
                    "instruction": f"Task {i % 10}",
                    "input": f"in {i}",
                    "output": f"out {i}",
                }
            )
            + "\n"
            for i in range(100)
        )
    )
    other = tmp_path / "other.jsonl"
    other.write_text(
        "".join(
            json.dumps({"instruction": f"Other {i}", "input": "", "output": "x"}) + "\n"
            for i in range(20)
        )
    )
    (tmp_path / "docs.txt").write_text("".join(f"Plain document {i}.\n" for i in range(50)))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "seed: 3\nformat: openai_chat\ncap: 30\nper_instruction_cap: 5\nplain_text_ratio: 0.1\n"
        "sources:\n  - {name: generated, path: generated.jsonl}\n  - {name: other, path: other.jsonl}\n"
        "  - {name: docs, path: docs.txt, kind: text}\n"
    )
    out = tmp_path / "mix.jsonl"
    result = CliRunner().invoke(cli, ["mix", str(recipe), "-o", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "mix.jsonl.manifest.json").read_text())
    # generated: 100 examples, capped to 5 per task (50), then source cap 30; other: 20.
    assert manifest["counts_per_source"] == {"generated": 30, "other": 20}
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    plain = manifest["stages"][0]["plain_text"]
    assert manifest["total"] == len(lines) == 50 + plain
    assert plain == round(50 * 0.1 / 0.9)
    assert sum(r["messages"][0]["role"] == "assistant" for r in lines) == plain
    again = tmp_path / "again.jsonl"
    CliRunner().invoke(cli, ["mix", str(recipe), "-o", str(again)])
    assert again.read_text() == out.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: []\n")
    assert CliRunner().invoke(cli, ["mix", str(bad)]).exit_code == 2


def test_mix_command_two_stages_with_chat_and_replay(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from typer.testing import CliRunner

    from app.cli import cli

    (tmp_path / "tasks.jsonl").write_text(
        "".join(
            json.dumps({"instruction": f"Task {i}", "input": "", "output": "o " * (i + 1)}) + "\n"
            for i in range(40)
        )
    )
    (tmp_path / "chat.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": "hi " * (i + 1)},
                        {"role": "assistant", "content": "hello"},
                    ]
                }
            )
            + "\n"
            for i in range(30)
        )
    )
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "seed: 1\nformat: alpaca\n"
        "sources:\n  - {name: tasks, path: tasks.jsonl}\n  - {name: dialogues, path: chat.jsonl, kind: chat}\n"
        "stage2: {sources: [dialogues], replay_fraction: 0.25, easy_to_hard: true}\n"
    )
    out = tmp_path / "train.jsonl"
    result = CliRunner().invoke(cli, ["mix", str(recipe), "-o", str(out)])
    assert result.exit_code == 0, result.output
    stage1 = [json.loads(x) for x in out.read_text().splitlines()]
    stage2 = [json.loads(x) for x in (tmp_path / "train.stage2.jsonl").read_text().splitlines()]
    assert len(stage1) == 40 and all("instruction" in r for r in stage1)
    assert len(stage2) == 40 and sum("messages" in r for r in stage2) == 30  # 10 replayed = 25 %
    manifest = json.loads((tmp_path / "train.jsonl.manifest.json").read_text())
    assert manifest["stages"][1]["replayed"] == 10
    assert manifest["stages"][1]["path"] == "train.stage2.jsonl"
    lengths = [len(json.dumps(r).split()) for r in stage2]
    assert lengths == sorted(lengths)
    # The README names the files as the CLI writes them (for -o train.jsonl).
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    for written in ("train.jsonl", "train.stage2.jsonl", "train.jsonl.manifest.json"):
        assert (tmp_path / written).exists()
        assert f"`{written}`" in readme, written
