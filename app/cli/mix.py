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
from app.selfinstruct.mixing import cap_per_key, invert, mix, two_stages, with_plain_text


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    path: Path
    kind: Literal["instructions", "chat", "text"] = "instructions"


class Stage2(BaseModel):
    """A second training stage: its own sources plus a replay of stage-1 examples."""

    model_config = ConfigDict(extra="forbid")
    sources: list[str] = Field(min_length=1, description="Names of sources used in stage 2 only.")
    replay_fraction: float = Field(0.0, ge=0, lt=1, description="Share of stage 2 replayed.")
    easy_to_hard: bool = False


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
    stage2: Stage2 | None = None


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
            if kind == "chat" and not isinstance(record.get("messages"), list):
                raise typer.BadParameter(f"{path} line {number}: needs a 'messages' list")
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
    try:
        loaded = {s.name: _read_jsonl(base / s.path, s.kind) for s in recipe.sources}
    except (typer.BadParameter, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    kinds = {s.name: s.kind for s in recipe.sources}
    later = set(recipe.stage2.sources) if recipe.stage2 else set()
    unknown = later - set(loaded)
    if unknown:
        typer.echo(f"error: stage2.sources: unknown source(s) {sorted(unknown)}", err=True)
        raise typer.Exit(code=2)
    first, manifest = _stage_one(recipe, loaded, kinds, later, rng)
    _write(output, first)
    if recipe.stage2 is not None:
        second = [
            r for name in recipe.stage2.sources for r in _render(recipe, kinds[name], loaded[name])
        ]
        first_stage, second = two_stages(
            first,
            second,
            recipe.stage2.replay_fraction,
            rng,
            difficulty=_record_length if recipe.stage2.easy_to_hard else None,
        )
        if recipe.stage2.easy_to_hard:
            _write(output, first_stage)
        stage2_path = output.with_name(output.stem + ".stage2" + output.suffix)
        _write(stage2_path, second)
        manifest["stage2"] = {
            "path": stage2_path.name,
            "total": len(second),
            "replayed": len(second) - sum(len(loaded[n]) for n in recipe.stage2.sources),
        }
    output.with_name(output.name + ".manifest.json").write_text(json.dumps(manifest, indent=2))
    typer.echo(
        f"wrote {manifest['total']} records to {output} ({manifest['counts_per_source']})", err=True
    )


def _render(recipe: Recipe, kind: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if kind == "instructions":
        return [convert(r, recipe.format) for r in records]
    if kind == "text":
        return [{"text": r.get("text", "")} for r in records]
    return list(records)  # chat dialogues pass through as they are


def _stage_one(
    recipe: Recipe,
    loaded: dict[str, list[dict[str, Any]]],
    kinds: dict[str, str],
    later: set[str],
    rng: random.Random,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    now = {n: r for n, r in loaded.items() if n not in later}
    mixable = {n: r for n, r in now.items() if kinds[n] != "text"}
    texts = [rec for n, records in now.items() if kinds[n] == "text" for rec in records]
    if recipe.per_instruction_cap:
        mixable = {
            n: cap_per_key(r, lambda x: x["instruction"], recipe.per_instruction_cap, rng)
            if kinds[n] == "instructions"
            else r
            for n, r in mixable.items()
        }
    mixture, counts = mix(
        mixable,
        rng,
        total=recipe.total,
        cap=recipe.cap,
        temperature=recipe.temperature,
        weights=recipe.weights,
    )
    records = [_render(recipe, kinds[n], [r])[0] for n, r in mixture]
    inverted = [
        x
        for n, r in mixture
        if kinds[n] == "instructions"
        and rng.random() < recipe.invert_fraction
        and (x := invert(r, rng))
    ]
    records += [convert(x, recipe.format) for x in inverted]
    final = with_plain_text(records, _render(recipe, "text", texts), recipe.plain_text_ratio, rng)
    manifest = {
        "recipe": json.loads(recipe.model_dump_json()),
        "counts_per_source": counts,
        "inverted": len(inverted),
        "plain_text": len(final) - len(records),
        "total": len(final),
        "tasks": len({r["instruction"] for n, r in mixture if kinds[n] == "instructions"}),
    }
    return final, manifest


def _record_length(record: dict[str, Any]) -> float:
    return float(len(json.dumps(record, ensure_ascii=False).split()))


def _write(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
