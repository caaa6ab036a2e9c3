"""`selfinstruct dedupe` end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from app.cli import cli

RUNNER = CliRunner()


def test_keeps_first_of_near_duplicates_and_explains_rejections(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(
        '{"instruction": "Write a short poem about the sea.", "id": 1}\n'
        "Write a short poem about the ocean.\n"
        "\n"
        '{"instruction": "Summarize this article in one sentence.", "id": 3}\n',
        encoding="utf-8",
    )
    kept, rejected = tmp_path / "out.jsonl", tmp_path / "rejected.jsonl"
    result = RUNNER.invoke(
        cli, ["dedupe", str(source), "-o", str(kept), "--rejected", str(rejected)]
    )
    assert result.exit_code == 0, result.output
    assert kept.read_text().splitlines() == [
        '{"instruction": "Write a short poem about the sea.", "id": 1}',
        '{"instruction": "Summarize this article in one sentence.", "id": 3}',
    ]
    (dropped,) = [json.loads(line) for line in rejected.read_text().splitlines()]
    assert dropped["nearest"] == "Write a short poem about the sea."
    assert dropped["max_rouge"] > 0.7


def test_against_file_and_threshold(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"instruction": "Give three tips for staying healthy."}\n')
    result = RUNNER.invoke(
        cli,
        ["dedupe", "--against", str(seeds), "--threshold", "0.5"],
        input="Give three tips for staying happy.\nName the capital of France.\n",
    )
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == "Name the capital of France."


def test_bad_line_is_named(tmp_path: Path) -> None:
    result = RUNNER.invoke(cli, ["dedupe"], input='ok line here\n{"text": "no field"}\n')
    assert result.exit_code == 2
    assert "stdin line 2" in result.output and "'instruction'" in result.output
