"""A job's dataset card: the README.md the Hugging Face Hub reads (YAML front matter, then a body).

Pure: the card is rendered from plain data (CardData) that the export service gathers, so every
field the Hub reads is unit-tested without a database.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

# The Hub's size buckets, as its dataset tagging uses them: n below each bound, else the next.
SIZE_CATEGORIES: tuple[tuple[float, str], ...] = (
    (1e3, "n<1K"),
    (1e4, "1K<n<10K"),
    (1e5, "10K<n<100K"),
    (1e6, "100K<n<1M"),
    (1e7, "1M<n<10M"),
    (1e8, "10M<n<100M"),
    (1e9, "100M<n<1B"),
    (1e10, "1B<n<10B"),
    (1e11, "10B<n<100B"),
    (1e12, "100B<n<1T"),
)
LARGEST_SIZE_CATEGORY = "n>1T"

# License identifiers the Hub knows (a subset of its list: the ones seed data tends to carry).
HUB_LICENSES = frozenset(
    {
        "apache-2.0", "mit", "bsd", "bsd-2-clause", "bsd-3-clause", "isc", "unlicense", "zlib",
        "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0",
        "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0",
        "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0",
        "cc-by-nc-sa-4.0", "cdla-sharing-1.0", "cdla-permissive-1.0", "cdla-permissive-2.0",
        "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0", "agpl-3.0", "gfdl",
        "mpl-2.0", "epl-1.0", "epl-2.0", "odc-by", "odbl", "pddl", "wtfpl", "openrail",
        "llama2", "llama3", "llama3.1", "llama3.2", "llama3.3", "gemma", "other", "unknown",
    }
)  # fmt: skip
_ALIASES = {"cc0": "cc0-1.0", "public-domain": "pddl", "apache": "apache-2.0"}
_UNSTATED = {"", "unknown", "none", "n/a"}

TASK_CATEGORY = "text-generation"


def size_category(rows: int) -> str:
    """The Hub's bucket for `rows` examples (1,000 is already "1K<n<10K")."""
    for bound, name in SIZE_CATEGORIES:
        if rows < bound:
            return name
    return LARGEST_SIZE_CATEGORY


def hub_license_id(name: str) -> str | None:
    """A license as the Hub names it ("CC BY-SA 4.0" -> "cc-by-sa-4.0"); None when unstated,
    "other" when it is not one the Hub knows."""
    slug = re.sub(r"[\s_]+", "-", name.strip().lower()).removeprefix("license-")
    slug = re.sub(r"-+", "-", slug.replace("apache-license", "apache")).strip("-")
    if slug in _UNSTATED:
        return None
    slug = _ALIASES.get(slug, slug)
    return slug if slug in HUB_LICENSES else "other"


@dataclass(frozen=True)
class LicenseChoice:
    license: str  # the Hub identifier for the front matter
    why: str  # a sentence for the card's body


def choose_license(
    seed_licenses: Iterable[str], *, bundled_seeds: bool, bundled_license: str
) -> LicenseChoice:
    """The seed tasks' own license when they state one (one for all of them), else the project's
    license for its bundled seed set, else "unknown"; seeds under several licenses are "other"."""
    stated = sorted({raw.strip() for raw in seed_licenses if hub_license_id(raw) is not None})
    if len(stated) == 1:
        return LicenseChoice(
            hub_license_id(stated[0]) or "unknown", f"the seed tasks' license ({stated[0]})"
        )
    if stated:
        return LicenseChoice("other", "the seed tasks carry several licenses: " + ", ".join(stated))
    if bundled_seeds:
        return LicenseChoice(bundled_license, "the license of the bundled seed tasks")
    return LicenseChoice("unknown", "the seed tasks state no license")


DEFAULT_LANGUAGE = "en"
_LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def seed_source_licenses(sources: Iterable[Mapping[str, Any] | None]) -> list[str]:
    """The licenses seed tasks state in their `source` (`"license": "mit"` or a list)."""
    return [name for source in sources if source for name in _strings(source.get("license"))]


def card_languages(sources: Iterable[Mapping[str, Any] | None]) -> list[str]:
    """The language codes seed tasks state in their `source` (`"language": "de"` or a list),
    in first-seen order; English when none does, as the paper's prompts and filters are."""
    codes: dict[str, None] = {}
    for source in sources:
        for code in _strings((source or {}).get("language")):
            if _LANGUAGE_CODE.match(code.strip()):
                codes[code.strip()] = None
    return list(codes) or [DEFAULT_LANGUAGE]


@dataclass(frozen=True)
class DataFile:
    split: str
    path: str  # relative to the card, e.g. "data/train.jsonl"
    rows: int


@dataclass
class CardData:
    """What the card says, gathered from a job, its seed set, progress and report."""

    job_id: str
    pretty_name: str
    status: str
    stopped_reason: str | None
    data_files: Sequence[DataFile]
    record_format: str
    license: LicenseChoice
    languages: Sequence[str]
    mode: str
    backend: str
    model: str | None
    rng_seed: int
    template_version: str | None
    num_instructions: int
    seed_set_name: str
    seed_tasks: int
    seed_set_hash: str
    changed_options: Mapping[str, Any] = field(default_factory=dict)
    llm_requests: int = 0
    llm_errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    instructions_accepted: int = 0
    instructions_rejected: Mapping[str, int] = field(default_factory=dict)
    instructions_over_target: int = 0
    instances_accepted: int = 0
    instances_rejected: Mapping[str, int] = field(default_factory=dict)
    report: Mapping[str, Any] | None = None  # QualityReport as JSON, when it could be built
    finished: bool = True

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.data_files)


def front_matter(card: CardData) -> dict[str, Any]:
    """The metadata the Hub reads; `configs` tells `load_dataset` where each split is."""
    meta: dict[str, Any] = {"pretty_name": card.pretty_name, "license": card.license.license}
    if card.languages:
        meta["language"] = list(card.languages)
    meta["size_categories"] = [size_category(card.rows)]
    meta["task_categories"] = [TASK_CATEGORY]
    meta["tags"] = ["self-instruct", "synthetic"]
    meta["configs"] = [
        {
            "config_name": "default",
            "data_files": [{"split": f.split, "path": f.path} for f in card.data_files],
        }
    ]
    return meta


def render_card(card: CardData) -> str:
    """README.md: YAML front matter between `---` lines, then the body in Markdown."""
    yaml_text = yaml.safe_dump(
        front_matter(card), sort_keys=False, allow_unicode=True, default_flow_style=False
    )
    return f"---\n{yaml_text}---\n\n" + "\n\n".join(_body(card)) + "\n"


def _body(card: CardData) -> list[str]:
    sections = [f"# {card.pretty_name}", _summary(card), _recipe(card), _counts(card)]
    if card.report is not None:
        sections.append(_figures(card.report))
    sections += [_loading(card), _license_section(card)]
    return sections


def _summary(card: CardData) -> str:
    text = (
        f"{card.rows} instruction-following examples ({card.record_format} records) generated "
        f"with Self-Instruct from {card.seed_tasks} seed tasks, by job `{card.job_id}`."
    )
    if not card.finished:
        text += (
            f"\n\n**Partial export:** the job was {card.status} when this card was written; "
            "it holds the examples accepted so far."
        )
    elif card.status != "succeeded":
        reason = f" ({card.stopped_reason})" if card.stopped_reason else ""
        text += f"\n\nThe job ended as {card.status}{reason}; these are the examples it kept."
    return text


def _recipe(card: CardData) -> str:
    rows = [
        ("mode", card.mode),
        ("backend", card.backend),
        ("model", card.model or "the backend's default model"),
        ("target instructions", str(card.num_instructions)),
        ("RNG seed", str(card.rng_seed)),
        ("prompt templates", card.template_version or "unrecorded"),
        ("seed set", f"{card.seed_set_name} ({card.seed_tasks} tasks, sha256 {card.seed_set_hash[:12]})"),
    ]  # fmt: skip
    rows += [(name, _value(value)) for name, value in _flatten(card.changed_options)]
    return "## Recipe\n\nOptions not listed have their defaults.\n\n" + _table(
        ("setting", "value"), rows
    )


def _flatten(options: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested options as dotted names; mode, backend, model and seed are in the table already."""
    pairs: list[tuple[str, Any]] = []
    for name, value in options.items():
        dotted = f"{prefix}{name}"
        if not prefix and name in ("mode", "backend", "model", "seed"):
            continue
        if isinstance(value, Mapping) and value:
            pairs += _flatten(value, dotted + ".")
        else:
            pairs.append((dotted, value))
    return pairs


def _value(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) if value else "(none)"
    return "on (defaults)" if isinstance(value, Mapping) else str(value)


def _counts(card: CardData) -> str:
    rows = [
        ("LLM requests", str(card.llm_requests)),
        ("LLM requests failed", str(card.llm_errors)),
        ("tokens (prompt + completion)", f"{card.prompt_tokens} + {card.completion_tokens}"),
        ("instructions accepted", str(card.instructions_accepted)),
        ("instructions rejected", str(sum(card.instructions_rejected.values()))),
        ("instructions past the target (surplus)", str(card.instructions_over_target)),
        ("instances accepted", str(card.instances_accepted)),
        ("instances rejected", str(sum(card.instances_rejected.values()))),
    ]
    text = "## Counts\n\n" + _table(("", "count"), rows)
    for kind, reasons in (
        ("instructions", card.instructions_rejected),
        ("instances", card.instances_rejected),
    ):
        if reasons:
            ranked = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
            text += f"\n\nRejected {kind} by reason:\n\n" + _table(
                ("reason", "count"), [(r, str(n)) for r, n in ranked]
            )
    return text


def _figures(report: Mapping[str, Any]) -> str:
    """The report's main figures: similarity to seeds and to earlier instructions, lengths,
    the mix of tasks, the most frequent root verbs, cost."""
    rows: list[tuple[str, str]] = []
    rouge = report.get("rouge_l", {})
    for name, label in (
        ("to_nearest_seed", "ROUGE-L to the nearest seed task"),
        ("to_nearest_earlier_instruction", "ROUGE-L to the nearest earlier instruction"),
    ):
        if name in rouge:
            rows.append((label, _median_mean(rouge[name])))
    for name, histogram in report.get("lengths", {}).items():
        rows.append((name.replace("_", " "), _median_mean(histogram)))
    for name in ("classification_share", "empty_input_share"):
        if report.get(name) is not None:
            rows.append((name.replace("_", " "), f"{report[name]:.3f}"))
    usage = report.get("usage", {})
    if usage.get("tokens_per_accepted_example") is not None:
        rows.append(("tokens per accepted example", f"{usage['tokens_per_accepted_example']:.1f}"))
    if usage.get("cost") is not None:
        rows.append(("cost (backend's prices)", f"{usage['cost']:.4f}"))
    text = "## Quality report\n\n" + _table(("figure", "median / mean"), rows)
    verbs = report.get("verbs", {}).get("top_verbs", [])[:10]
    if verbs:
        text += "\n\nMost frequent root verbs (with their top direct objects):\n\n" + _table(
            ("verb", "count", "objects"),
            [
                (v["verb"], str(v["count"]), ", ".join(f"{o} ({n})" for o, n in v["objects"][:5]))
                for v in verbs
            ],
        )
    return text


def _median_mean(histogram: Mapping[str, Any]) -> str:
    median, mean = histogram.get("median"), histogram.get("mean")
    if median is None or mean is None:
        return "-"
    return f"{median:.3g} / {mean:.3g}"


def _loading(card: CardData) -> str:
    splits = ", ".join(f"`{f.split}` ({f.rows} rows, `{f.path}`)" for f in card.data_files)
    return (
        "## Load it\n\n"
        f"Splits: {splits}.\n\n"
        "```python\n"
        "from datasets import load_dataset\n\n"
        'dataset = load_dataset("path/to/this/folder")  # or "user/name" once on the Hub\n'
        f'print(dataset["{card.data_files[0].split if card.data_files else "train"}"][0])\n'
        "```"
    )


def _license_section(card: CardData) -> str:
    model = card.model or "the backend's default model"
    return (
        "## License\n\n"
        f"`{card.license.license}`: {card.license.why}. The instructions, inputs and outputs "
        f"were written by {model}; its terms of use may apply to them as well."
    )


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
