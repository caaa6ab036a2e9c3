"""`selfinstruct dedupe`: the paper's ROUGE-L near-duplicate filter for any instruction dataset."""

from __future__ import annotations

import io
import json
import os
import stat
import sys
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TextIO

import typer

from app.cli import cli
from app.cli.consoles import stderr_console

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

# Progress redraws after this many lines, not after each.
_PROGRESS_EVERY = 256


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
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, help="Processes checking candidates (default: all cores); same output."
        ),
    ] = None,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress", help="A progress bar on stderr (default: if a terminal)."
        ),
    ] = None,
    block_size: Annotated[int | None, typer.Option(min=1, hidden=True)] = None,
) -> None:
    """Greedy near-duplicate removal in input order, with rouge-score's exact ROUGE-L decisions.

    A line is kept when its highest ROUGE-L F-measure against the --against texts and the lines
    kept so far is at most the threshold; kept lines are written unchanged. The input is read
    as a stream: memory grows with the kept lines only.
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
            settings = _Settings(
                seeds, threshold, field, source, tokenizer, workers or _cores(), block_size
            )
            show = sys.stderr.isatty() if progress is None else progress
            with _progress_bar(src if show else None) as bar:
                kept, dropped = _run(src, out, rej, settings, bar)
    except (DedupeInputError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    typer.echo(f"kept {kept}, dropped {dropped} (threshold {threshold})", err=True)


def _cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class _Settings:
    seeds: list[str]
    threshold: float
    field: str
    source: str
    tokenizer: str
    workers: int
    block_size: int | None


def _is_pipe(stream: TextIO) -> bool:
    """Whether reading may wait for a writer (pipe, terminal): then answered lines are flushed
    before each read, so a consumer downstream sees them as they are decided."""
    try:
        return not stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError, io.UnsupportedOperation):
        return True


class _Bar:
    """Progress on stderr: bytes of a file (or lines of a stream), kept and dropped."""

    def __init__(self, bar: Progress, task: TaskID) -> None:
        self._bar, self._task = bar, task
        self.read = self.lines = 0

    def line(self, raw: str) -> None:
        self.lines += 1
        self.read += len(raw.encode("utf-8", "replace")) + 1

    def show(self, kept: int, dropped: int, *, done: bool = False) -> None:
        total = self._bar.tasks[0].total
        read = total if done and total else self.read  # blank lines are not counted as read
        self._bar.update(self._task, completed=read, lines=self.lines, kept=kept, dropped=dropped)


@contextmanager
def _progress_bar(src: TextIO | None) -> Iterator[_Bar | None]:
    """A bar over `src`, or None when not asked for."""
    if src is None:
        yield None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    try:
        total: int | None = os.fstat(src.fileno()).st_size or None
    except (OSError, ValueError, io.UnsupportedOperation):
        total = None
    columns = (
        TextColumn("dedupe"),
        BarColumn(bar_width=24),
        TextColumn("{task.percentage:>3.0f}%" if total else ""),
        TextColumn(
            "{task.fields[lines]:,} lines, {task.fields[kept]:,} kept, "
            "{task.fields[dropped]:,} dropped"
        ),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=stderr_console(), transient=False) as bar:
        task = bar.add_task("dedupe", total=total, lines=0, kept=0, dropped=0)
        yield _Bar(bar, task)


def _run(
    src: TextIO, out: TextIO, rej: TextIO | None, settings: _Settings, bar: _Bar | None = None
) -> tuple[int, int]:
    # Lines are read lazily: at most one block of lines ahead of the verdicts (one line with
    # --workers 1), so memory does not grow with the input.
    pending: deque[str] = deque()
    flush = _is_pipe(src)
    kept = dropped = 0
    unflushed = False

    def texts() -> Iterator[str]:
        nonlocal unflushed
        records = _records(src, settings.field, settings.source)
        while True:
            if flush and unflushed:  # the next read may wait: let the decided lines out first
                out.flush()
                unflushed = False
            record = next(records, None)
            if record is None:
                return
            if bar is not None:
                bar.line(record[0])
            pending.append(record[0])
            yield record[1]

    from app.selfinstruct.dedupe import dedupe_texts  # numpy: imported when a command runs

    verdicts = dedupe_texts(
        texts(),
        threshold=settings.threshold,
        against=settings.seeds,
        explain_rejections=rej is not None,
        tokenizer=settings.tokenizer,  # type: ignore[arg-type]
        workers=settings.workers,
        block_size=settings.block_size,
    )
    for verdict in verdicts:
        raw = pending.popleft()
        if verdict.kept:
            kept += 1
            out.write(raw + "\n")
            unflushed = True
        else:
            dropped += 1
            if rej is not None:
                rej.write(
                    json.dumps(
                        {"line": raw, "max_rouge": verdict.max_rouge, "nearest": verdict.nearest}
                    )
                    + "\n"
                )
        if bar is not None and (kept + dropped) % _PROGRESS_EVERY == 0:
            bar.show(kept, dropped)
    if bar is not None:
        bar.show(kept, dropped, done=True)
    return kept, dropped
