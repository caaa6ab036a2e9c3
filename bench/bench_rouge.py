"""Benchmarks for the exact ROUGE-L index: exactness against rouge-score, speed, greedy run, memory,
and `selfinstruct dedupe` on a 1,000,000-line file (`--sections large`).

    python bench/bench_rouge.py --seeds PATH/TO/self_instruct_seed_tasks.jsonl [--quick]

The seed file may also come from the SELFINSTRUCT_PAPER_SEEDS environment variable. Every other
text is generated here from fixed seeds, so two runs see the same data. Results are printed as
Markdown tables ready for BENCHMARKS.md; timings are medians of repeated runs.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import multiprocessing
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from rouge_score import rouge_scorer, tokenize

from app.selfinstruct.dedupe import dedupe_texts
from app.selfinstruct.rouge import RougeLIndex

THRESHOLD = 0.7

# --- generated instruction-like text --------------------------------------------------------------

_OPENERS = (
    "Write",
    "Generate",
    "Create",
    "Explain",
    "Describe",
    "List",
    "Classify",
    "Summarize",
    "Translate",
    "Rewrite",
    "Suggest",
    "Identify",
    "Find",
    "Give",
    "Compose",
    "Design",
    "Compare",
    "Edit",
    "Convert",
    "Provide",
    "Tell me",
    "Come up with",
    "Make",
    "Plan",
    "Recommend",
    "Analyze",
    "Predict",
    "Outline",
    "Evaluate",
    "Determine",
)
_FORMS = (
    "a short story",
    "a poem",
    "a list of",
    "an email",
    "a tweet",
    "a recipe",
    "a summary of",
    "an essay",
    "a product description for",
    "three examples of",
    "five tips for",
    "a dialogue between",
    "a headline for",
    "a question about",
    "an outline of",
    "a plan for",
    "the main idea of",
    "the difference between",
    "a definition of",
    "a review of",
    "a letter to",
    "a slogan for",
    "the steps to",
    "ten ideas for",
    "a joke about",
)
_FUNCTION = (
    "the the the the a a a of of of to to and and in for with on is that this given "
    "following your an as by it be are from at or can you what how which"
).split()
_ADJECTIVES = (
    "new old small large simple complex happy sad quick slow young ancient modern local global "
    "healthy creative funny serious short long common rare important useful difficult easy "
    "popular famous private public digital natural social personal financial historical "
    "scientific cultural political economic environmental technical musical visual friendly"
).split()
_NOUNS = (
    "dog cat city garden computer phone company customer student teacher book movie song "
    "recipe country river mountain planet language program website product service meeting "
    "budget vacation restaurant hotel team project market price story character game sport "
    "school university job interview resume email friend family child parent doctor patient "
    "car bicycle train airport ocean forest weather climate energy water food coffee tea "
    "breakfast dinner party wedding birthday holiday museum painting camera robot network "
    "database algorithm function variable sentence paragraph word number list table chart "
    "event history science art music theory experiment problem solution question answer"
).split()
_VERBS = (
    "learns travels explains improves describes changes builds finds helps loves avoids "
    "starts ends makes uses creates needs wants sells buys plays writes reads visits"
).split()
_SYLLABLES = (
    "ka lo mi ne ra to su vi ze po la me ni ro tu sa ve zi pa lu mo na ri te so va"
).split()
_NON_LATIN = (
    "这是一个关于天气的问题",
    "Напишите короткое стихотворение о зиме",  # noqa: RUF001
    "Γράψτε μια σύντομη ιστορία",
    "日本語の文章を要約してください",
    "اكتب قصة قصيرة عن قطة",
    "한국어로 번역해 주세요",
)
_PUNCTUATION = ("...", "?!", "---", "* * *", "()", "—", "!!!", "#", "¿?", ":-)")


def _zipf_choice(rng: random.Random, words: Sequence[str]) -> str:
    """Pick with Zipfian frequencies (the k-th word about 1/k as often as the first)."""
    rank = int(math.exp(rng.random() * math.log(len(words) + 1))) - 1
    return words[min(rank, len(words) - 1)]


def _rare_word(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))


class InstructionLikeTexts:
    """A seeded stream of instruction-like lines with the mix a generated pool shows.

    Mostly template sentences over a Zipfian vocabulary with a long tail of rare words; a share of
    near-duplicates (a few word edits of an earlier line); and a few lines with no Latin token.
    """

    def __init__(self, seed: int, *, near_duplicate_share: float = 0.15) -> None:
        self._rng = random.Random(seed)
        self._near_duplicate_share = near_duplicate_share
        self._history: list[str] = []
        shuffled_nouns = list(_NOUNS)
        self._rng.shuffle(shuffled_nouns)
        self._nouns = shuffled_nouns + [_rare_word(self._rng) for _ in range(4000)]
        self._adjectives = list(_ADJECTIVES) + [_rare_word(self._rng) for _ in range(800)]

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        rng = self._rng
        roll = rng.random()
        if roll < 0.01:
            text = rng.choice(_NON_LATIN)
        elif roll < 0.015:
            text = rng.choice(_PUNCTUATION)
        elif self._history and roll < 0.015 + self._near_duplicate_share:
            text = self._near_duplicate(rng.choice(self._history[-5000:]))
        else:
            text = self._fresh()
        self._history.append(text)
        return text

    def take(self, count: int) -> list[str]:
        return [next(self) for _ in range(count)]

    def _phrase(self) -> list[str]:
        rng = self._rng
        words = [rng.choice(("the", "a", "your", "this", "the"))]
        if rng.random() < 0.6:
            words.append(_zipf_choice(rng, self._adjectives))
        words.append(_zipf_choice(rng, self._nouns))
        return words

    def _fresh(self) -> str:
        rng = self._rng
        words = [*rng.choice(_OPENERS).split(), *rng.choice(_FORMS).split(), *self._phrase()]
        for _ in range(rng.choice((0, 0, 1, 1, 1, 2, 2, 3, 5))):
            glue = rng.choice(("that", "about", "for", "with", "in", "and", "when", "of"))
            words += [glue, *self._phrase()]
            if rng.random() < 0.3:
                words += [rng.choice(_VERBS), *self._phrase()]
        if rng.random() < 0.2:
            words += [rng.choice(_FUNCTION) for _ in range(rng.randint(1, 4))]
        text = " ".join(words)
        return text + rng.choice((".", ".", "?", ":", "", "!"))

    def _near_duplicate(self, original: str) -> str:
        rng = self._rng
        words = original.split()
        for _ in range(rng.randint(1, 3)):
            edit = rng.random()
            position = rng.randrange(len(words) + 1)
            if edit < 0.4 or len(words) < 2:
                words.insert(position, _zipf_choice(rng, self._nouns))
            elif edit < 0.7:
                del words[min(position, len(words) - 1)]
            else:
                words[min(position, len(words) - 1)] = _zipf_choice(rng, self._adjectives)
        text = " ".join(words)
        return text.upper() if rng.random() < 0.05 else text


def _fresh_words(rng: random.Random, count: int, taken: set[str]) -> list[str]:
    words: list[str] = []
    while len(words) < count:
        word = "q" + "".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(6))
        if word not in taken:
            taken.add(word)
            words.append(word)
    return words


def threshold_pairs(seed: int, count: int) -> list[tuple[str, str]]:
    """Pairs whose rational F-measure is exactly 0.7 (2·lcs/(la+lb) = 7/10).

    rouge-score's float for these lands on 0.7 or one unit above it depending on the lengths
    (la=8, lb=12, lcs=7 gives 0.7000000000000001), so they separate exact arithmetic from
    "almost the same" arithmetic at the paper's threshold.
    """
    rng = random.Random(seed)
    taken: set[str] = set()
    shapes = [
        (lcs, la, 10 * lcs // 7 * 2 - la)
        for lcs in (7, 14, 21)
        for la in range(lcs, 20 * lcs // 7 - lcs + 1)
    ]
    pairs = []
    for _ in range(count):
        lcs, la, lb = rng.choice(shapes)
        common = _fresh_words(rng, lcs, taken)
        first = _interleave(rng, common, _fresh_words(rng, la - lcs, taken))
        second = _interleave(rng, common, _fresh_words(rng, lb - lcs, taken))
        pairs.append((" ".join(first), " ".join(second)))
    return pairs


def _interleave(rng: random.Random, ordered: list[str], extra: list[str]) -> list[str]:
    """`ordered` kept in order with `extra` words scattered between them."""
    slots = sorted(rng.randrange(len(ordered) + 1) for _ in extra)
    out: list[str] = []
    extra_iter = iter(extra)
    slot_iter = iter(slots)
    next_slot = next(slot_iter, None)
    for position in range(len(ordered) + 1):
        while next_slot == position:
            out.append(next(extra_iter))
            next_slot = next(slot_iter, None)
        if position < len(ordered):
            out.append(ordered[position])
    return out


# --- baselines --------------------------------------------------------------------------------------

_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def paper_best(pool: Sequence[str], candidate: str) -> float:
    """The paper's path: rouge-score tokenises both texts again for every pair."""
    return max((_SCORER.score(candidate, item)["rougeL"].fmeasure for item in pool), default=0.0)


def alpaca_best(pool_tokens: Sequence[list[str]], candidate: str) -> float:
    """Alpaca's path: the pool is tokenised once, every pair runs rouge-score's LCS table."""
    tokens = _SCORER._tokenizer.tokenize(candidate)
    return max(
        (rouge_scorer._score_lcs(tokens, item).fmeasure for item in pool_tokens), default=0.0
    )


def _brute_force_row(args: tuple[list[list[str]], list[str]]) -> tuple[float, int | None]:
    pool_tokens, tokens = args
    best, item = 0.0, None
    for position, other in enumerate(pool_tokens):
        score = rouge_scorer._score_lcs(other, tokens).fmeasure
        if score > best:
            best, item = score, position
    return best, item


# --- sections ---------------------------------------------------------------------------------------


@dataclass
class Timing:
    median_s: float
    runs: list[float]


def timed(function: Callable[[], object], repeats: int) -> Timing:
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        runs.append(time.perf_counter() - started)
    return Timing(statistics.median(runs), runs)


def exactness_texts(seeds: Sequence[str], count: int) -> list[str]:
    """Seeds, generated lines with near-duplicates, non-Latin and punctuation-only lines, and
    pairs that land exactly on the threshold, interleaved in a fixed order."""
    generated = InstructionLikeTexts(seed=11, near_duplicate_share=0.25).take(count)
    pairs = threshold_pairs(seed=12, count=max(50, count // 20))
    texts = list(seeds) + generated
    for first, second in pairs:
        texts.insert(random.Random(len(texts)).randrange(len(texts) + 1), first)
        texts.append(second)
    return texts


def run_exactness(seeds: Sequence[str], count: int, workers: int) -> dict[str, int]:
    """Greedy run in input order; every candidate's decision, max score and nearest item must
    equal rouge-score brute force against everything kept before it."""
    texts = exactness_texts(seeds, count)
    index = RougeLIndex()
    kept_tokens: list[list[str]] = []
    kept_texts: list[str] = []
    differences = {"decisions": 0, "scores": 0, "items": 0, "dedupe_decisions": 0}
    rejected = 0
    dedupe_verdicts = list(dedupe_texts(texts, threshold=THRESHOLD))
    with multiprocessing.Pool(workers) as pool:
        chunk = 64
        for start in range(0, len(texts), chunk):
            # Brute force for a chunk runs in parallel against the pool as it stood before the
            # chunk; candidates inside the chunk are then checked against earlier chunk members.
            batch = texts[start : start + chunk]
            batch_tokens = [tokenize.tokenize(t, None) for t in batch]
            frozen = list(kept_tokens)
            rows = pool.map(_brute_force_row, [(frozen, tokens) for tokens in batch_tokens])
            for offset, (text, tokens, (score, item)) in enumerate(
                zip(batch, batch_tokens, rows, strict=True)
            ):
                extra = kept_tokens[len(frozen) :]
                for position, other in enumerate(extra, start=len(frozen)):
                    s = rouge_scorer._score_lcs(other, tokens).fmeasure
                    if s > score:
                        score, item = s, position
                match = index.best(text)
                differences["scores"] += match.score != score
                differences["items"] += match.item != item
                keep = score <= THRESHOLD
                differences["decisions"] += index.exceeds(text, THRESHOLD) == keep
                differences["dedupe_decisions"] += dedupe_verdicts[start + offset].kept != keep
                if keep:
                    index.add(text)
                    kept_tokens.append(tokens)
                    kept_texts.append(text)
                else:
                    rejected += 1
    return {"texts": len(texts), "kept": len(kept_texts), "rejected": rejected, **differences}


def _all_best(index: RougeLIndex, queries: Sequence[str]) -> None:
    for query in queries:
        index.best(query)


def _all_exceed(index: RougeLIndex, queries: Sequence[str]) -> None:
    for query in queries:
        index.exceeds(query, THRESHOLD)


def _each(function: Callable[[str], float], queries: Sequence[str]) -> None:
    for query in queries:
        function(query)


def run_speed(
    pool_sizes: Sequence[int], candidates: int, brute_candidates: int
) -> list[dict[str, float]]:
    """Candidates per second against a fixed pool: the index (best and exceeds) vs baselines."""
    stream = InstructionLikeTexts(seed=21)
    pool: list[str] = []
    rows = []
    for size in pool_sizes:
        pool.extend(stream.take(size - len(pool)))
        queries = InstructionLikeTexts(seed=size).take(candidates)
        index = RougeLIndex(pool)
        index.best(queries[0])  # builds the posting lists once, as a long-lived worker has them
        best = timed(partial(_all_best, index, queries), repeats=3)
        exceeds = timed(partial(_all_exceed, index, queries), repeats=3)
        sample = queries[:brute_candidates]
        pool_tokens = [tokenize.tokenize(t, None) for t in pool]
        paper = timed(partial(_each, partial(paper_best, pool), sample), repeats=1)
        alpaca = timed(partial(_each, partial(alpaca_best, pool_tokens), sample), repeats=1)
        rows.append(
            {
                "pool": size,
                "index_best_per_s": candidates / best.median_s,
                "index_exceeds_per_s": candidates / exceeds.median_s,
                "paper_per_s": len(sample) / paper.median_s,
                "alpaca_per_s": len(sample) / alpaca.median_s,
                "brute_sample": len(sample),
            }
        )
        print(f"  pool {size}: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def _job_path(seeds: Sequence[str], texts: Sequence[str]) -> int:
    """The generation job's order of calls: best() for every candidate, add() when kept."""
    index = RougeLIndex(seeds)
    kept = 0
    for text in texts:
        if index.best(text).score <= THRESHOLD:
            index.add(text)
            kept += 1
    return kept


def _record(results: list[int], run: Callable[[], int]) -> None:
    results.append(run())


def run_greedy(seeds: Sequence[str], count: int, workers: Sequence[int]) -> list[dict[str, Any]]:
    """Whole greedy runs from the seeds: `dedupe_texts` (exceeds(), then best() on rejects) with
    each number of workers (the same verdicts), and the job's path (best() on every candidate)."""
    texts = InstructionLikeTexts(seed=31).take(count)
    runs: list[tuple[str, int, Callable[[], int]]] = [
        ("dedupe_texts", n, partial(_dedupe_kept, texts, seeds, n)) for n in workers
    ]
    runs.append(("best() per candidate", 1, lambda: _job_path(seeds, texts)))
    rows: list[dict[str, Any]] = []
    for name, n, run in runs:
        results: list[int] = []
        timing = timed(partial(_record, results, run), repeats=3)
        rows.append({"path": name, "workers": n, "texts": count, "kept": results[-1],
                     "median_s": timing.median_s})  # fmt: skip
        print(f"  greedy {name}: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def _dedupe_kept(texts: Sequence[str], seeds: Sequence[str], workers: int) -> int:
    return sum(v.kept for v in dedupe_texts(texts, against=seeds, workers=workers))


def _current_rss_kb() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _memory_child(size: int) -> None:
    texts = InstructionLikeTexts(seed=41).take(size)
    gc.collect()
    before = _current_rss_kb()
    index = RougeLIndex(texts)
    index.best(texts[-1])
    index.exceeds(texts[0], THRESHOLD)
    gc.collect()
    after = _current_rss_kb()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before_kb": before, "after_kb": after, "peak_kb": peak}))


def run_memory(size: int) -> dict[str, float]:
    """Peak resident memory of a fresh process holding a pool of `size` texts."""
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(size)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    sizes = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "pool": size,
        "peak_mb": sizes["peak_kb"] / 1024,
        "resident_mb": sizes["after_kb"] / 1024,
        "index_mb": (sizes["after_kb"] - sizes["before_kb"]) / 1024,
    }


def _tree_rss_kb(root: int) -> tuple[int, int]:
    """Resident memory of `root` and its descendants, summed and of the largest, from /proc."""
    total = largest = 0
    pending = [root]
    while pending:
        pid = pending.pop()
        try:
            with open(f"/proc/{pid}/statm") as fh:
                rss = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as fh:
                    pending += [int(child) for child in fh.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue  # it ended meanwhile
        total, largest = total + rss, max(largest, rss)
    return total, largest


def run_large_file(seeds: Sequence[str], count: int, workers: int) -> dict[str, Any]:
    """`selfinstruct dedupe` as a user runs it on a file of `count` JSONL lines (with the seeds
    as --against): wall time, kept lines, and the peak resident memory of the command's process
    tree (sampled every 0.2 s) and of its largest process."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        source, against, out = Path(tmp, "in.jsonl"), Path(tmp, "seeds.jsonl"), Path(tmp, "kept")
        with source.open("w", encoding="utf-8") as fh:
            for text in itertools.islice(InstructionLikeTexts(seed=51), count):
                fh.write(json.dumps({"instruction": text}) + "\n")
        against.write_text("".join(json.dumps({"instruction": t}) + "\n" for t in seeds))
        command = [sys.executable, "-m", "app", "dedupe", str(source), "--against",
                   str(against), "-o", str(out), "--workers", str(workers), "--no-progress"]  # fmt: skip
        started = time.perf_counter()
        process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        peak_total = peak_largest = 0
        while process.poll() is None:
            total, largest = _tree_rss_kb(process.pid)
            peak_total, peak_largest = max(peak_total, total), max(peak_largest, largest)
            time.sleep(0.2)
        wall_s = time.perf_counter() - started
        _, errors = process.communicate()
        if process.returncode:
            sys.exit(f"dedupe failed: {errors}")
        with out.open(encoding="utf-8") as fh:
            kept = sum(1 for _ in fh)
        return {"lines": count, "workers": workers, "kept": kept, "wall_s": wall_s,
                "input_mb": source.stat().st_size / 2**20, "peak_tree_mb": peak_total / 1024,
                "peak_process_mb": peak_largest / 1024}  # fmt: skip


# --- report -----------------------------------------------------------------------------------------


def _load_seeds(path: str | None) -> list[str]:
    path = path or os.environ.get("SELFINSTRUCT_PAPER_SEEDS")
    if not path:
        sys.exit("give --seeds PATH (the paper's seed tasks JSONL) or SELFINSTRUCT_PAPER_SEEDS")
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line)["instruction"] for line in fh if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds")
    parser.add_argument("--quick", action="store_true", help="Small sizes, for a smoke run.")
    parser.add_argument(
        "--sections",
        default="exactness,speed,greedy,memory",
        help="Comma-separated; also `large` (the 1,000,000-line file).",
    )
    parser.add_argument(
        "--greedy-workers",
        default="1,2",
        help="Comma-separated process counts for the greedy run (dedupe --workers).",
    )
    parser.add_argument("--large-lines", type=int, default=1_000_000)
    parser.add_argument(
        "--large-workers", default="2", help="Comma-separated dedupe --workers for `large`."
    )
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        _memory_child(args.memory_child)
        return
    seeds = _load_seeds(args.seeds)
    sections = set(args.sections.split(","))
    quick = args.quick
    print(f"python {platform.python_version()}, {platform.machine()}, cpus {os.cpu_count()}")
    print(f"command: python bench/bench_rouge.py {' '.join(sys.argv[1:])}\n")
    if "exactness" in sections:
        result = run_exactness(seeds, 800 if quick else 5200, workers=os.cpu_count() or 1)
        print("### Exactness against rouge-score brute force\n")
        print(
            "| texts | kept | rejected | decision diffs | score diffs | item diffs | dedupe diffs |"
        )
        print("|---|---|---|---|---|---|---|")
        print(
            f"| {result['texts']} | {result['kept']} | {result['rejected']} | "
            f"{result['decisions']} | {result['scores']} | {result['items']} | "
            f"{result['dedupe_decisions']} |\n",
            flush=True,
        )
    if "speed" in sections:
        sizes = [1000, 5000] if quick else [1000, 10_000, 50_000, 100_000, 200_000]
        rows = run_speed(sizes, candidates=200 if quick else 1000, brute_candidates=3)
        print("### Candidates per second on one core (medians of 3 runs)\n")
        print(
            "| pool | index best() | index exceeds() | rouge-score, paper path | "
            "rouge-score, Alpaca path | exceeds() vs paper | exceeds() vs Alpaca |"
        )
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['pool']:,} | {r['index_best_per_s']:,.0f} | {r['index_exceeds_per_s']:,.0f} "
                f"| {r['paper_per_s']:.2f} | {r['alpaca_per_s']:.2f} "
                f"| {r['index_exceeds_per_s'] / r['paper_per_s']:,.0f}x "
                f"| {r['index_exceeds_per_s'] / r['alpaca_per_s']:,.0f}x |"
            )
        print(
            f"\nBrute force is timed on {rows[0]['brute_sample']} candidates per pool size "
            "against the whole pool and expressed per candidate.\n",
            flush=True,
        )
    if "greedy" in sections:
        workers = [int(n) for n in args.greedy_workers.split(",")]
        greedy_rows = run_greedy(seeds, 5000 if quick else 52_000, workers)
        print("### Whole greedy run (in input order, against the 175 seeds)\n")
        print("| path | workers | texts | kept | median seconds (3 runs) | vs the first row |")
        print("|---|---|---|---|---|---|")
        first_s = greedy_rows[0]["median_s"]
        for row in greedy_rows:
            print(f"| {row['path']} | {row['workers']} | {row['texts']:,} | {row['kept']:,} "
                  f"| {row['median_s']:.1f} | {first_s / row['median_s']:.2f}x |")  # fmt: skip
        print()
    if "large" in sections:
        print("### `selfinstruct dedupe` on a large file (against the 175 seeds)\n")
        print("| lines | input MB | workers | kept | wall s | lines/s | peak RSS, all processes "
              "(MB) | peak RSS, largest process (MB) |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        for n in [int(w) for w in args.large_workers.split(",")]:
            r = run_large_file(seeds, args.large_lines // (100 if quick else 1), n)
            print(f"| {r['lines']:,} | {r['input_mb']:.0f} | {r['workers']} | {r['kept']:,} "
                  f"| {r['wall_s']:.0f} | {r['lines'] / r['wall_s']:,.0f} "
                  f"| {r['peak_tree_mb']:.0f} | {r['peak_process_mb']:.0f} |", flush=True)  # fmt: skip
        print()
    if "memory" in sections:
        result = run_memory(10_000 if quick else 100_000)
        print("### Memory\n")
        print("| pool | resident, whole process (MB) | peak (MB) | added by the index (MB) |")
        print("|---|---|---|---|")
        print(
            f"| {result['pool']:,} | {result['resident_mb']:.0f} | {result['peak_mb']:.0f} "
            f"| {result['index_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
