"""`selfinstruct dedupe` end to end through the CLI."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
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


def _near_duplicate_lines(count: int, seed: int = 7) -> list[str]:
    """Instruction-like lines, a third of them a word or two away from a line just before (so
    often in the same block), some repeated exactly, some JSON records."""
    rng = random.Random(seed)
    vocabulary = [
        "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(3))
        for _ in range(400)
    ]
    lines: list[str] = []
    for n in range(count):
        roll = rng.random()
        if lines and roll < 0.3:
            words = rng.choice(lines[-12:]).removeprefix('{"instruction": "').split()
            words[rng.randrange(len(words))] = rng.choice(vocabulary)
            text = " ".join(w for w in words if not w.startswith(("{", '"')))
        elif lines and roll < 0.35:
            text = lines[-1]
        else:
            text = "Write " + " ".join(rng.choice(vocabulary) for _ in range(rng.randint(3, 9)))
        lines.append(json.dumps({"instruction": text, "n": n}) if roll > 0.9 else text)
    return lines


def _dedupe(args: list[str], input_text: str) -> tuple[int, str, str]:
    result = RUNNER.invoke(cli, ["dedupe", *args], input=input_text)
    return result.exit_code, result.stdout, result.stderr


def test_two_workers_write_the_same_bytes_as_one(tmp_path: Path) -> None:
    lines = _near_duplicate_lines(2000)
    source, seeds = tmp_path / "in.jsonl", tmp_path / "seeds.txt"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    seeds.write_text("\n".join(lines[:400:9]) + "\n", encoding="utf-8")
    outputs = []
    for workers in ("1", "2"):
        kept, rejected = tmp_path / f"kept{workers}", tmp_path / f"rejected{workers}"
        code, _, _ = _dedupe(
            [
                str(source),
                "--against",
                str(seeds),
                "--workers",
                workers,
                "--block-size",
                "97",
                "-o",
                str(kept),
                "--rejected",
                str(rejected),
            ],
            "",
        )
        assert code == 0
        outputs.append((kept.read_bytes(), rejected.read_bytes()))
    assert outputs[0] == outputs[1]
    kept_lines, rejected_lines = outputs[0][0].splitlines(), outputs[0][1].splitlines()
    assert len(kept_lines) + len(rejected_lines) == len(lines)
    assert len(rejected_lines) > len(lines) // 5  # the near-duplicates were found


@pytest.mark.parametrize(
    "options",
    [
        ["--threshold", "0"],
        ["--threshold", "1"],
        ["--threshold", "0.3", "--tokenizer", "characters"],
    ],
)
def test_two_workers_agree_at_the_edges(options: list[str]) -> None:
    lines = _near_duplicate_lines(300, seed=11) + ["!!!", "", "...", "!!!"] * 5
    text = "\n".join(lines) + "\n"
    one = _dedupe([*options, "--workers", "1"], text)
    two = _dedupe([*options, "--workers", "2", "--block-size", "31"], text)
    assert one[0] == two[0] == 0
    assert one[1] == two[1]


def test_bad_line_after_the_first_block_is_named_and_earlier_output_kept() -> None:
    lines = _near_duplicate_lines(60)
    lines[44] = '{"text": "no instruction field"}'
    text = "\n".join(lines) + "\n"
    one = _dedupe(["--workers", "1"], text)
    two = _dedupe(["--workers", "2", "--block-size", "10"], text)
    assert one[0] == two[0] == 2
    assert "stdin line 45" in two[2] and "'instruction'" in two[2]
    assert one[1] == two[1] and two[1]


def test_progress_goes_to_stderr_only() -> None:
    text = "\n".join(_near_duplicate_lines(700)) + "\n"
    plain = _dedupe(["--no-progress"], text)
    shown = _dedupe(["--progress"], text)
    assert shown[1] == plain[1]
    assert "lines," not in shown[1]
    assert "700 lines" in shown[2] and "kept" in shown[2]
    assert "700 lines" not in plain[2]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_lines_come_out_while_the_input_pipe_is_still_open(workers: str) -> None:
    rng = random.Random(3)
    distinct = [" ".join(f"w{rng.randrange(10**9)}" for _ in range(6)) for _ in range(130)]
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "dedupe", "--workers", workers, "--block-size", "50"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        process.stdin.write(("\n".join(distinct) + "\n").encode())
        process.stdin.flush()
        # The first block is answered while the input is still open.
        first = [process.stdout.readline().decode().rstrip("\n") for _ in range(50)]
        assert first == distinct[:50]
        process.stdin.close()
        rest = process.stdout.read().decode().splitlines()
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
    assert first + rest == distinct


HEAVY = ("numpy", "rapidfuzz", "sqlalchemy", "fastapi", "celery", "httpx", "openai", "pydantic")


@pytest.mark.parametrize("args", [["--help"], ["dedupe", "--help"]])
def test_help_loads_no_heavy_module(args: list[str]) -> None:
    probe = (
        "import sys\n"
        f"sys.argv = ['selfinstruct', *{args!r}]\n"
        "from app.cli import main\n"
        "try:\n    main()\n"
        "except SystemExit:\n    pass\n"
        "heavy = ('rich', 'yaml', 'app.config', 'app.selfinstruct.rouge', *"
        f"{HEAVY!r})\n"
        "print(sorted(m for m in heavy if m in sys.modules), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stderr.strip().splitlines()[-1] == "[]"
    assert "Usage" in done.stdout
