"""`selfinstruct dedupe`: the paper's ROUGE-L near-duplicate filter for any instruction dataset."""

from __future__ import annotations

import json
import sys
from collections import deque
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, TextIO

import typer

from app.cli import cli


class DedupeInputError(ValueError):
    """A line of the input that has no usable text; the message names the line."""


def _text_of(line: str, line_no: int, field: str, source: str) -> str:
    """The text to compare: a JSON object's field, or the whole line for plain text."""
    stripped = line.strip()
    if not stripped.startswith("{"):
        return stripped
    try:
        record = json.loads(stripped)
    except json.JSONDecodeError as exc:
        raise DedupeInputError(f"{source} line {line_no}: invalid JSON ({exc.msg})") from exc
    value = record.get(field) if isinstance(record, dict) else None
    if not isinstance(value, str):
        raise DedupeInputError(
            f"{source} line {line_no}: field '{field}' is missing or not a string"
        )
    return value


def _records(stream: TextIO, field: str, source: str) -> Iterator[tuple[str, str]]:
    """(raw line, text) for every non-blank line."""
    for line_no, line in enumerate(stream, start=1):
        if line.strip():
            yield line.rstrip("\n"), _text_of(line, line_no, field, source)


def _against_texts(path: Path, field: str) -> list[str]:
    with path.open(encoding="utf-8") as fh:
        return [text for _, text in _records(fh, field, str(path))]


@cli.command()
def dedupe(
    input_file: Annotated[
        Path | None, typer.Argument(help="JSONL or plain text, one item per line (default stdin).")
    ] = None,
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.7,
    against: Annotated[
        Path | None, typer.Option(help="Texts every line is also compared with (e.g. seed tasks).")
    ] = None,
    field: Annotated[str, typer.Option(help="JSON field holding the text.")] = "instruction",
    against_field: Annotated[
        str | None, typer.Option(help="Field in --against (default: --field).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Kept lines (default stdout).")
    ] = None,
    rejected: Annotated[
        Path | None, typer.Option(help="Write dropped lines with their score and nearest text.")
    ] = None,
    tokenizer: Annotated[
        str,
        typer.Option(
            help="rouge_score (the paper's; a-z and 0-9 only), unicode_words (any script) or "
            "characters (one token per character for Chinese, Japanese, Thai)."
        ),
    ] = "rouge_score",
) -> None:
    """Greedy near-duplicate removal in input order, with rouge-score's exact ROUGE-L decisions.

    A line is kept when its highest ROUGE-L F-measure against the --against texts and the lines
    kept so far is at most the threshold; kept lines are written unchanged.
    """
    from app.selfinstruct.rouge import TOKENIZERS  # numpy: imported when a command runs

    source = str(input_file) if input_file else "stdin"
    if tokenizer not in TOKENIZERS:
        typer.echo(f"error: --tokenizer must be one of {', '.join(TOKENIZERS)}", err=True)
        raise typer.Exit(code=2)
    try:
        seeds = _against_texts(against, against_field or field) if against else []
        with (
            input_file.open(encoding="utf-8") if input_file else nullcontext(sys.stdin) as src,
            output.open("w", encoding="utf-8") if output else nullcontext(sys.stdout) as out,
            rejected.open("w", encoding="utf-8") if rejected else nullcontext(None) as rej,
        ):
            kept, dropped = _run(src, out, rej, seeds, threshold, field, source, tokenizer)
    except (DedupeInputError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    typer.echo(f"kept {kept}, dropped {dropped} (threshold {threshold})", err=True)


def _run(
    src: TextIO,
    out: TextIO,
    rej: TextIO | None,
    seeds: list[str],
    threshold: float,
    field: str,
    source: str,
    tokenizer: str = "rouge_score",
) -> tuple[int, int]:
    # Lines are read lazily; the verdict for line k is produced before line k+1 is read.
    pending: deque[str] = deque()

    def texts() -> Iterator[str]:
        for raw, text in _records(src, field, source):
            pending.append(raw)
            yield text

    kept = dropped = 0
    from app.selfinstruct.dedupe import dedupe_texts

    verdicts = dedupe_texts(
        texts(),
        threshold=threshold,
        against=seeds,
        explain_rejections=rej is not None,
        tokenizer=tokenizer,  # type: ignore[arg-type]
    )
    for verdict in verdicts:
        raw = pending.popleft()
        if verdict.kept:
            kept += 1
            out.write(raw + "\n")
            continue
        dropped += 1
        if rej is not None:
            rej.write(
                json.dumps(
                    {"line": raw, "max_rouge": verdict.max_rouge, "nearest": verdict.nearest}
                )
                + "\n"
            )
    return kept, dropped
