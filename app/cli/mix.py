"""`selfinstruct mix RECIPE`: build a training mixture from JSONL files, with a manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from app.cli import cli

if TYPE_CHECKING:  # imported when the command runs, so `selfinstruct --help` stays quick
    from app.selfinstruct.recipes import Entry, InverseWriter, SourceKind


def read_source_file(path: Path, kind: SourceKind) -> list[dict[str, Any]]:
    from app.selfinstruct.recipes import DatasetFileError, parse_dataset

    try:
        return parse_dataset(path.read_bytes(), kind)
    except DatasetFileError as exc:
        raise typer.BadParameter(f"{path} {exc}") from exc


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)


def _llm_writer() -> InverseWriter:
    from app.config import get_settings
    from app.llm.openai_compat import build_llm_client
    from app.selfinstruct.options import GenerationOptions
    from app.services.mixtures import LLMInverseWriter

    options = GenerationOptions()
    return LLMInverseWriter(build_llm_client(get_settings(), options), options)


@cli.command("mix")
def mix_command(
    recipe_path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="YAML recipe.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output JSONL.")] = Path(
        "mixture.jsonl"
    ),
) -> None:
    """Mix sources (examples-proportional with a cap, temperature or fixed weights), cap examples
    per instruction, add inverted tasks and plain text, optionally a second stage with replay;
    writes OUTPUT, a second stage beside it (train.jsonl -> train.stage2.jsonl: the extension
    stays, so tools still read it as JSONL) and OUTPUT.manifest.json."""
    import yaml
    from pydantic import ValidationError

    from app.selfinstruct.recipes import Recipe, RecipeError, build_mixture

    try:
        recipe = Recipe.model_validate(yaml.safe_load(recipe_path.read_text(encoding="utf-8")))
    except (ValidationError, yaml.YAMLError) as exc:
        raise _fail(f"{recipe_path}: {exc}") from exc
    not_files = [s.name for s in recipe.sources if s.path is None]
    if not_files:
        raise _fail(f"sources {not_files}: the CLI reads files (path); use POST /v1/mixtures")
    kinds: dict[str, SourceKind] = {s.name: s.kind or "instructions" for s in recipe.sources}
    try:
        loaded = {
            s.name: read_source_file(recipe_path.parent / str(s.path), kinds[s.name])
            for s in recipe.sources
        }
        writer = _llm_writer() if recipe.invert_writer == "llm" else None
        mixture = build_mixture(recipe, loaded, kinds, write_inverse=writer)
    except (typer.BadParameter, OSError, RecipeError) as exc:
        raise _fail(str(exc)) from exc
    paths = [output] + [
        output.with_name(f"{output.stem}.stage{n}{output.suffix}")
        for n in range(2, len(mixture.stages) + 1)
    ]
    for path, stage, summary in zip(paths, mixture.stages, mixture.manifest["stages"], strict=True):
        _write(path, stage)
        summary["path"] = path.name
    manifest_path = output.with_name(output.name + ".manifest.json")
    manifest_path.write_text(json.dumps(mixture.manifest, indent=2, ensure_ascii=False))
    typer.echo(
        f"wrote {mixture.manifest['total']} records to {', '.join(map(str, paths))} "
        f"({mixture.manifest['counts_per_source']})",
        err=True,
    )


def _write(path: Path, entries: list[Entry]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for entry in entries:
            fh.write(json.dumps(entry.record, ensure_ascii=False) + "\n")
