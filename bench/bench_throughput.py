"""Throughput benchmarks against an OpenAI-compatible server that answers after a fixed latency.

    python bench/bench_throughput.py [--latency 0.2] [--sections concurrency,modes,workers]

- concurrency: steps 2 and 3 (`instances._classify_and_generate`: our client, parsers and
  filters) with C requests in flight, for C = 8, 32, 128; achieved requests/s against the ideal
  C/L, and the CPU time of this process per accepted example.
- modes: whole jobs driven in this process (real pipeline code, SQLite), paper mode against
  batched mode: requests, prompt and completion tokens per accepted instruction, CPU per example.
- workers: the real stack (PostgreSQL, Redis, API, Celery) with 1, 2 and 4 worker processes;
  accepted examples per second of wall time. Needs TEST_DATABASE_URL and TEST_REDIS_URL
  (`eval "$(bash scripts/test-services.sh)"`).

The server answers with the test suite's simulated base model (varied, sometimes faulty text) and
counts tokens as words; it sleeps exactly L per request, asynchronously, in its own process.
"""

import argparse
import asyncio
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from harness import ROOT, fresh_services, read_body, running_stack, send_json, start_backend

# --- the fixed-latency server (runs in its own process) -------------------------------------------

# For the paper-scale job: the tests' model writes tasks from about fifty templates, which run
# out of ROUGE-distinct tasks after a few thousand; a model that writes 52,000 needs more words.
VERBS = (
    "Write", "Draft", "Create", "Design", "Compose", "Prepare", "Outline", "Sketch", "Produce",
    "Suggest", "Propose", "Develop", "Plan", "Invent", "Craft", "Devise", "Put together",
    "Come up with", "Edit", "Improve",
)  # fmt: skip
ADJECTIVES = (
    "cheerful", "gloomy", "short", "detailed", "playful", "serious", "surprising", "calm",
    "nostalgic", "sarcastic", "hopeful", "practical", "whimsical", "urgent", "gentle", "bold",
    "rhyming", "step-by-step", "one-page", "two-part", "minimalist", "dramatic", "scientific",
    "child-friendly", "vintage", "futuristic", "heartfelt", "witty", "formal", "casual",
    "skeptical", "enthusiastic", "mysterious", "cozy", "energetic", "sober", "colourful",
    "provocative", "diplomatic", "rustic", "elegant", "clumsy", "optimistic", "bittersweet",
)  # fmt: skip
ARTIFACTS = (
    "checklist", "riddle", "haiku", "press release", "FAQ", "budget", "itinerary", "rubric",
    "recipe", "glossary", "toast", "memo", "pitch", "sonnet", "timeline", "syllabus",
    "flashcard set", "survey", "menu", "puzzle", "tagline", "bedtime story", "job ad",
    "newsletter", "travel guide", "workout plan", "meal plan", "debate outline", "lab report",
    "user manual", "podcast script", "comic strip", "museum label", "wedding speech",
    "cover letter", "trivia round", "fable", "sales email", "grant proposal", "book review",
    "song chorus", "safety briefing", "quiz", "shopping list", "thank-you note", "eulogy",
    "interview guide", "mission statement", "road trip playlist", "escape room clue",
)  # fmt: skip
LINKS = ("about", "on", "explaining", "celebrating", "questioning", "inspired by", "covering")
EXTRAS = (
    "for {audience}", "that mentions {topic2}", "in under {count} words", "with a twist ending",
    "set in {year}", "with {number} sections", "using only short sentences", "in {language}",
    "without the word {word}", "from the point of view of {thing}", "for a {style} audience",
)  # fmt: skip
WORDS = ("very", "thing", "nice", "good", "really", "stuff", "maybe", "always", "never", "big")
LABELS = (
    "positive or negative", "true or false", "formal or informal", "fact or opinion",
    "urgent or routine", "beginner or expert", "question or statement", "helpful or unhelpful",
)  # fmt: skip


def diverse_instruction(
    rng: random.Random, *, classification: bool, classification_share: float = 0.2
) -> str:
    from tests.support import fake_llm as fake

    def extra() -> str:
        return rng.choice(EXTRAS).format(
            audience=rng.choice(fake.AUDIENCES), topic2=rng.choice(fake.TOPICS),
            count=rng.randrange(20, 400, 10), year=rng.randrange(1700, 2100),
            number=rng.choice(fake.NUMBERS), language=rng.choice(fake.LANGUAGES),
            word=rng.choice(WORDS), thing=rng.choice(fake.THINGS), style=rng.choice(fake.STYLES),
        )  # fmt: skip

    adjective, artifact = rng.choice(ADJECTIVES), rng.choice(ARTIFACTS)
    topic = rng.choice(fake.TOPICS)
    if classification or rng.random() < classification_share:
        return f"Classify each {adjective} {artifact} {rng.choice(LINKS)} {topic} as {rng.choice(LABELS)}, {extra()}."
    article = "an" if adjective[0] in "aeiou" else "a"
    return f"{rng.choice(VERBS)} {article} {adjective} {artifact} {rng.choice(LINKS)} {topic} {extra()}."


def serve(port: int, latency_s: float, diverse: bool = False) -> None:
    """A bare ASGI app rather than FastAPI: at 600 requests/s the server shares the 2 cores with
    the client under test, so its own CPU per request must stay small."""
    import json

    import uvicorn

    from tests.support import fake_llm
    from tests.support.fake_llm import answer_for, apply_limits, prompt_kind

    if diverse:
        fake_llm.new_instruction = diverse_instruction  # type: ignore[assignment]
    counter = {"n": 0}

    def reply(body: dict[str, Any], chat: bool) -> dict[str, Any]:
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        counter["n"] += 1
        rng = random.Random(f"{prompt}:{counter['n']}")
        text = answer_for(prompt, prompt_kind(prompt), rng)
        stop = body.get("stop") or []
        text, finish = apply_limits(
            text, [stop] if isinstance(stop, str) else stop, int(body.get("max_tokens") or 16)
        )
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split())}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if chat:
            item: dict[str, Any] = {"message": {"role": "assistant", "content": text}}
        else:
            item = {"text": text, "logprobs": None}
        item.update(index=0, finish_reason=finish)
        kind = "chat.completion" if chat else "text_completion"
        return {
            "id": "x",
            "object": kind,
            "created": 0,
            "model": "bench",
            "choices": [item],
            "usage": usage,
        }

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        raw = await read_body(receive)
        if path == "/v1/models":
            answer: dict[str, Any] = {
                "object": "list",
                "data": [{"id": "bench", "object": "model"}],
            }
        else:
            await asyncio.sleep(latency_s)
            answer = reply(json.loads(raw), chat=path.endswith("/chat/completions"))
        await send_json(send, 200, answer)

    uvicorn.run(
        app, host="127.0.0.1", port=port, log_level="warning", backlog=4096, access_log=False
    )


class LatencyServer:
    def __init__(self, latency_s: float, *, diverse: bool = False) -> None:
        from app.apiserver import free_port

        self.port = free_port()
        command = [sys.executable, __file__, "--serve", str(self.port), "--latency", str(latency_s)]
        command += ["--diverse"] if diverse else []
        self.proc = start_backend(command, self.base_url, "latency server")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def cpu_s(self) -> float:
        """CPU time the server process has used so far (user + system)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# --- concurrency --------------------------------------------------------------------------------


def bench_concurrency(server: LatencyServer, latency_s: float, repeats: int) -> None:
    from app.config import get_settings
    from app.llm.openai_compat import OpenAICompatClient
    from app.selfinstruct.options import GenerationOptions
    from app.services import instances

    print(f"\n### Requests in flight (L = {latency_s * 1000:.0f} ms)\n")
    print(
        "| C | requests | ideal C/L req/s | achieved req/s (median) | fraction of C/L "
        "| CPU ms per accepted example | server CPU ms per request |"
    )
    print("|---|---|---|---|---|---|---|")
    options = GenerationOptions()
    rng = random.Random(1)
    from tests.support.fake_llm import new_instruction

    for concurrency in (8, 32, 128):
        os.environ["SELFINSTRUCT_LLM_CONCURRENCY"] = str(concurrency)
        get_settings.cache_clear()
        client = OpenAICompatClient(
            base_url=server.base_url,
            api_key="x",
            model="bench",
            endpoint="completions",
            max_retries=0,
            timeout_s=60,
        )
        n = concurrency * 8
        pending = [(uuid.uuid4(), new_instruction(rng, classification=False)) for _ in range(n)]
        rates, cpus, server_cpus = [], [], []
        for _ in range(repeats):
            cpu0, t0, server0 = time.process_time(), time.perf_counter(), server.cpu_s()
            results = instances._classify_and_generate(client, pending, options)
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            requests = sum(len(r.records) for r in results)
            accepted = sum(1 for r in results for d in r.decisions if d.accepted)
            rates.append(requests / wall)
            cpus.append(cpu / max(1, accepted) * 1000)
            server_cpus.append((server.cpu_s() - server0) / requests * 1000)
        ideal = concurrency / latency_s
        rate = statistics.median(rates)
        print(
            f"| {concurrency} | {requests} | {ideal:.0f} | {rate:.0f} | {rate / ideal:.2f} | {statistics.median(cpus):.2f} "
            f"| {statistics.median(server_cpus):.2f} |"
        )


def bench_client(server: LatencyServer, repeats: int) -> None:
    """CPU per request: bare httpx and the openai SDK (the client we used before) as baselines,
    then ours, one request at a time and 64 at once."""
    import openai

    from app.llm.base import LLMRequest
    from app.llm.openai_compat import OpenAICompatClient

    client = OpenAICompatClient(
        base_url=server.base_url, api_key="x", model="bench", endpoint="completions", max_retries=0
    )
    request = LLMRequest(prompt="Task: Say hi.\nIs it classification?", max_tokens=3, stop=("\n",))
    body = {"model": "bench", "prompt": request.prompt, "max_tokens": 3, "stop": ["\n"]}
    bare = httpx.Client(base_url=server.base_url)
    sdk = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    calls = {
        "httpx POST + json (baseline)": lambda: bare.post("/completions", json=body).json(),
        "openai SDK, sync (baseline)": lambda: sdk.completions.create(**body),
        "ours, one at a time": lambda: client.complete(request),
        "ours, 64 at once (per request)": lambda: client.complete_many([request] * 64, 64),
    }
    print("\n### CPU per request (server in another process)\n")
    print("| client | CPU ms per request (median) |")
    print("|---|---|")
    for name, call in calls.items():
        per_call = 64 if "64 at once" in name else 1
        samples = []
        for _ in range(repeats):
            cpu0 = time.process_time()
            for _ in range(300 // per_call):
                call()
            samples.append((time.process_time() - cpu0) / (300 // per_call * per_call) * 1000)
        print(f"| {name} | {statistics.median(samples):.2f} |")


# --- modes: whole jobs in this process -------------------------------------------------------------


def _run_job(mode: str, target: int) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    from app.data import load_default_seed_tasks
    from app.db import session_scope
    from app.selfinstruct.options import GenerationOptions
    from app.services import completion, instances, jobs, pipeline
    from app.services.llm import llm_for
    from app.services.seed_sets import create_seed_set

    with session_scope() as session:
        seed_set = create_seed_set(session, name="bench", tasks=load_default_seed_tasks())
        job = jobs.create_job(
            session,
            seed_set_id=seed_set.id,
            num_instructions=target,
            options=GenerationOptions(seed=5, mode=mode),  # type: ignore[arg-type]
        )
        job_id = job.id
    cpu0, t0 = time.process_time(), time.perf_counter()
    round_no: int | None = 1
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = []
        while round_no is not None:
            result = pipeline.run_round(job_id, round_no, llm_for)
            futures += [
                pool.submit(instances.generate_instances, job_id, b, llm_for)
                for b in result.instance_batches
            ]
            round_no = result.next_round
        for future in futures:
            future.result()
    completion.finalize_if_complete(job_id)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    with session_scope() as session:
        read = jobs.job_read(session, jobs.get_job(session, job_id))
    progress = read.progress
    return {
        "status": read.status,
        "wall": wall,
        "cpu": cpu,
        "accepted": progress.instructions_accepted,
        "examples": progress.instances_accepted,
        "requests": progress.llm_requests,
        "prompt": progress.prompt_tokens,
        "completion": progress.completion_tokens,
    }


def bench_modes(server: LatencyServer, target: int) -> None:
    from app.config import get_settings
    from app.db import reset_engine
    from app.migrate import upgrade_database
    from app.services.llm import reset_llm_clients

    tmp = Path(tempfile.mkdtemp())
    url = f"sqlite:///{tmp / 'bench.db'}"
    os.environ.update(
        {"DATABASE_URL": url, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "x"}
    )
    os.environ.pop("SELFINSTRUCT_LLM_CONCURRENCY", None)
    get_settings.cache_clear()
    reset_engine()
    reset_llm_clients()
    upgrade_database(url)
    print(
        f"\n### Paper mode against batched mode ({target} accepted instructions, SQLite, in process)\n"
    )
    print(
        "| mode | requests | prompt tokens / accepted instruction | completion tokens / accepted instruction | examples | wall s | CPU ms per example |"
    )
    print("|---|---|---|---|---|---|---|")
    for mode in ("paper", "batched"):
        r = _run_job(mode, target)
        assert r["status"] == "succeeded", r
        print(
            f"| {mode} | {r['requests']} | {r['prompt'] / r['accepted']:.0f} | {r['completion'] / r['accepted']:.0f} "
            f"| {r['examples']} | {r['wall']:.1f} | {r['cpu'] / r['examples'] * 1000:.1f} |"
        )


def bench_export(examples: int) -> None:
    """Peak memory while streaming a job's examples out, against the size of the data."""

    from sqlalchemy import insert

    from app.config import get_settings
    from app.db import reset_engine, session_scope
    from app.migrate import upgrade_database
    from app.models import Instance, InstancesState, Instruction, Job, SeedSet

    tmp = Path(tempfile.mkdtemp())
    url = f"sqlite:///{tmp / 'export.db'}"
    os.environ["DATABASE_URL"] = url
    get_settings.cache_clear()
    reset_engine()
    upgrade_database(url)
    job_id = uuid.uuid4()
    rng = random.Random(0)
    words = "the a model task answer input output list write explain short long".split()
    with session_scope() as session:
        seed_set = SeedSet(name="x", content_hash="0", task_count=0)
        session.add(seed_set)
        session.flush()
        session.add(
            Job(
                id=job_id,
                seed_set_id=seed_set.id,
                num_instructions=examples,
                options={},
                rng_seed=0,
            )
        )
        session.flush()
        for start in range(0, examples, 5000):
            ids = [uuid.uuid4() for _ in range(5000)]
            session.execute(
                insert(Instruction),
                [
                    {
                        "id": i,
                        "job_id": job_id,
                        "round": start + n,
                        "slot": 0,
                        "accepted": True,
                        "text": " ".join(rng.choices(words, k=12)),
                        "instances_state": InstancesState.DONE,
                    }
                    for n, i in enumerate(ids)
                ],
            )
            session.execute(
                insert(Instance),
                [
                    {
                        "job_id": job_id,
                        "instruction_id": i,
                        "position": 0,
                        "accepted": True,
                        "input": " ".join(rng.choices(words, k=30)),
                        "output": " ".join(rng.choices(words, k=60)),
                    }
                    for i in ids
                ],
            )
    print(f"\n### Streaming export of {examples:,} examples (SQLite)\n")
    print("| format | container | bytes out | RSS after imports MB | peak RSS MB |")
    print("|---|---|---|---|---|")
    for fmt, container in (("raw", "jsonl"), ("openai_chat", "jsonl"), ("alpaca", "parquet")):
        out = subprocess.run(
            [sys.executable, __file__, "--export-one", url, str(job_id), fmt, container],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        size, base, peak = (int(x) for x in out[-3:])
        print(f"| {fmt} | {container} | {size:,} | {base / 1024:.0f} | {peak / 1024:.0f} |")


def export_one(url: str, job_id: str, fmt: str, container: str) -> None:
    """In a fresh process, so its peak RSS is the export's alone."""
    import resource

    os.environ["DATABASE_URL"] = url
    from app.selfinstruct.formats import ExportFormat
    from app.services.export import export_stream

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    size = sum(len(c) for c in export_stream(uuid.UUID(job_id), ExportFormat(fmt), container))  # type: ignore[arg-type]
    print(size, base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


# --- workers: the real stack ----------------------------------------------------------------------


def _run_on_stack(server: LatencyServer, workers: int, jobs: int, target: int) -> tuple[float, int]:
    """`jobs` concurrent jobs on a fresh database with `workers` worker processes: wall seconds
    until all finished, and their accepted examples."""
    from tests.support.stack import wait_for_status

    with (
        fresh_services(server.base_url) as env,
        running_stack(env, workers, concurrency=1) as (_, api, seed_set_id),
    ):
        t0 = time.perf_counter()
        ids = [
            api.post(
                "/v1/jobs",
                json={
                    "seed_set_id": seed_set_id,
                    "num_instructions": target,
                    "options": {"seed": 2 + n},
                },
            ).json()["id"]
            for n in range(jobs)
        ]
        finished = [wait_for_status(api, i, timeout_s=1800) for i in ids]
        wall = time.perf_counter() - t0
    assert all(j["status"] == "succeeded" for j in finished), finished
    return wall, sum(j["progress"]["instances_accepted"] for j in finished)


def bench_workers(server: LatencyServer, target: int, repeats: int = 1) -> None:
    from tests.support import services

    if services.postgres_admin_url() is None or services.redis_url() is None:
        print("\n(workers: skipped, TEST_DATABASE_URL and TEST_REDIS_URL are not set)")
        return
    print(
        f"\n### Worker processes (real PostgreSQL and Redis; {target} instructions per job; "
        f"median of {repeats})\n"
    )
    print("| worker processes | concurrent jobs | wall s | examples | examples/s | speed-up |")
    print("|---|---|---|---|---|---|")
    base = None
    for workers, jobs in ((1, 1), (2, 1), (4, 1), (1, 4), (2, 4), (4, 4)):
        runs = [_run_on_stack(server, workers, jobs, target) for _ in range(repeats)]
        wall, examples = sorted(runs, key=lambda run: run[1] / run[0])[len(runs) // 2]
        rate = examples / wall
        base = base or rate
        print(f"| {workers} | {jobs} | {wall:.1f} | {examples} | {rate:.1f} | {rate / base:.2f}x |")


def _peak_rss_mb(pgid: int) -> list[tuple[int, str, float]]:
    """(pid, command, peak resident MB) of the process `pgid` and every process in its group."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid and int(stat.parent.name) != pgid:
                continue
            status = (stat.parent / "status").read_text()
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
        peak = next(
            int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")
        )
        found.append((int(stat.parent.name), cmd, peak / 1024))
    return sorted(found)


def bench_scale(server: LatencyServer, target: int, workers: int, per_round: int) -> None:
    """One paper-mode job of `target` accepted instructions on the real stack."""
    from tests.support import services

    if services.postgres_admin_url() is None or services.redis_url() is None:
        print("\n(scale: skipped, TEST_DATABASE_URL and TEST_REDIS_URL are not set)")
        return
    env_extra = {
        "SELFINSTRUCT_INSTRUCTIONS_PER_INSTANCE_TASK": "50",
        "SELFINSTRUCT_LLM_CONCURRENCY": "64",
    }
    timeline = []
    with (
        fresh_services(server.base_url, env_extra) as env,
        running_stack(env, workers, concurrency=1) as (stack, api, seed_set_id),
    ):
        t0 = time.perf_counter()
        job = api.post(
            "/v1/jobs",
            json={
                "seed_set_id": seed_set_id,
                "num_instructions": target,
                "options": {"seed": 7, "requests_per_round": per_round},
            },
        ).json()
        next_mark = target / 10
        while True:
            job = api.get(f"/v1/jobs/{job['id']}").json()
            accepted = job["progress"]["instructions_accepted"]
            if accepted >= next_mark:
                timeline.append((accepted, time.perf_counter() - t0))
                next_mark += target / 10
            if job["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(2)
        wall = time.perf_counter() - t0
        peaks = [("api", _peak_rss_mb(stack.api.pid))] if stack.api else []
        peaks += [(f"worker {n}", _peak_rss_mb(w.pid)) for n, w in enumerate(stack.workers)]
    peaks.append(("LLM server (bench)", _peak_rss_mb(server.proc.pid)))
    progress = job["progress"]
    print(
        f"\n### Paper-scale job ({target} instructions, {workers} worker processes, "
        f"requests_per_round {per_round})\n"
    )
    print(
        f"status {job['status']}, wall {wall / 60:.1f} min, instructions accepted "
        f"{progress['instructions_accepted']}, examples {progress['instances_accepted']}, "
        f"LLM requests {progress['llm_requests']}, dedupe {progress['dedupe_seconds']:.0f} s "
        f"({progress['dedupe_seconds'] / wall:.1%} of the wall time)\n"
    )
    print("| accepted instructions | minutes since start |")
    print("|---|---|")
    for accepted, at in timeline:
        print(f"| {accepted} | {at / 60:.1f} |")
    print("\n| process | peak RSS MB |")
    print("|---|---|")
    for role, procs in peaks:
        for n, (_pid, _cmd, peak) in enumerate(procs):  # the group leader comes first
            print(f"| {role}{', pool child' if n else ''} | {peak:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--sections", default="concurrency,modes,workers")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--target", type=int, default=200, help="Instructions per job (modes).")
    parser.add_argument("--workers-target", type=int, default=150)
    parser.add_argument("--scale-target", type=int, default=52_000)
    parser.add_argument("--scale-workers", type=int, default=2)
    parser.add_argument("--scale-requests-per-round", type=int, default=16)
    parser.add_argument("--export-examples", type=int, default=100_000)
    parser.add_argument("--export-one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--diverse", action="store_true", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.export_one:
        export_one(*rest)
        return
    if args.serve:
        serve(args.serve, args.latency, args.diverse)
        return
    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs")
    server = LatencyServer(args.latency)
    try:
        sections = args.sections.split(",")
        if "client" in sections:
            instant = LatencyServer(0.0)  # CPU per request does not depend on the latency
            try:
                bench_client(instant, args.repeats)
            finally:
                instant.stop()
        if "concurrency" in sections:
            bench_concurrency(server, args.latency, args.repeats)
        if "modes" in sections:
            bench_modes(server, args.target)
        if "export" in sections:
            bench_export(args.export_examples)
        if "workers" in sections:
            bench_workers(server, args.workers_target, args.repeats)
        if "scale" in sections:
            diverse = LatencyServer(args.latency, diverse=True)
            try:
                bench_scale(
                    diverse, args.scale_target, args.scale_workers, args.scale_requests_per_round
                )
            finally:
                diverse.stop()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
