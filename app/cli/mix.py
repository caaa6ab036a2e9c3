"""`selfinstruct mix RECIPE`: build a training mixture from JSONL sources, with a manifest."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.cli import cli
from app.selfinstruct.formats import ExportFormat, convert
from app.selfinstruct.mixing import cap_per_key, invert, mix, with_plain_text


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    path: Path
    kind: Literal["instructions", "text"] = "instructions"


class Recipe(BaseModel):
    """What to mix and how; every choice is recorded in the manifest."""

    model_config = ConfigDict(extra="forbid")
    seed: int = 0
    format: ExportFormat = ExportFormat.ALPACA
    sources: list[Source] = Field(min_length=1)
    total: int | None = Field(None, ge=1)
    cap: int | None = Field(None, ge=1, description="Per-source cap K.")
    temperature: float = Field(1.0, gt=0)
    weights: dict[str, float] | None = None
    per_instruction_cap: int | None = Field(None, ge=1)
    invert_fraction: float = Field(0.0, ge=0, le=1, description="Share of examples to invert.")
    plain_text_ratio: float = Field(0.0, ge=0, lt=1)


def _read_jsonl(path: Path, kind: str) -> list[dict[str, Any]]:
    records = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            if kind == "text" and not line.lstrip().startswith("{"):
                records.append({"text": line.rstrip("\n")})
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise typer.BadParameter(f"{path} line {number}: invalid JSON ({exc.msg})") from exc
            if kind == "instructions" and not {"instruction", "output"} <= set(record):
                raise typer.BadParameter(f"{path} line {number}: needs 'instruction' and 'output'")
            records.append(record)
    return records


@cli.command("mix")
def mix_command(
    recipe_path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="YAML recipe.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output JSONL.")] = Path(
        "mixture.jsonl"
    ),
) -> None:
    """Mix sources (examples-proportional with a cap, temperature or fixed weights), cap examples
    per instruction, add inverted tasks and plain text; writes OUTPUT and OUTPUT.manifest.json."""
    try:
        recipe = Recipe.model_validate(yaml.safe_load(recipe_path.read_text(encoding="utf-8")))
    except (ValidationError, yaml.YAMLError) as exc:
        typer.echo(f"error: {recipe_path}: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    rng = random.Random(recipe.seed)
    base = recipe_path.parent
    loaded = {s.name: _read_jsonl(base / s.path, s.kind) for s in recipe.sources}
    instructions = {s.name: loaded[s.name] for s in recipe.sources if s.kind == "instructions"}
    texts = [r for s in recipe.sources if s.kind == "text" for r in loaded[s.name]]
    if recipe.per_instruction_cap:
        instructions = {
            name: cap_per_key(records, lambda r: r["instruction"], recipe.per_instruction_cap, rng)
            for name, records in instructions.items()
        }
    mixture, counts = mix(
        instructions,
        rng,
        total=recipe.total,
        cap=recipe.cap,
        temperature=recipe.temperature,
        weights=recipe.weights,
    )
    records = [convert(r, recipe.format) for _, r in mixture]
    inverted = [
        x for _, r in mixture if rng.random() < recipe.invert_fraction and (x := invert(r, rng))
    ]
    records += [convert(x, recipe.format) for x in inverted]
    text_records = [{"text": t.get("text", "")} for t in texts]
    final = with_plain_text(records, text_records, recipe.plain_text_ratio, rng)
    with output.open("w", encoding="utf-8") as fh:
        for record in final:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    manifest = {
        "recipe": json.loads(recipe.model_dump_json()),
        "counts_per_source": counts,
        "inverted": len(inverted),
        "plain_text": len(final) - len(records),
        "total": len(final),
        "tasks": len({r["instruction"] for _, r in mixture}),
    }
    output.with_name(output.name + ".manifest.json").write_text(json.dumps(manifest, indent=2))
    typer.echo(f"wrote {len(final)} records to {output} ({counts})", err=True)
