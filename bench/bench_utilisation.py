"""How much of a backend one job keeps busy: a server that serves at most C requests at once.

    eval "$(bash scripts/test-services.sh)"
    python bench/bench_utilisation.py --slots 8,32,128 --latency 0.2,1 --instructions 300
    python bench/bench_utilisation.py --slots 64 --latency 0.2 --refuse-above 40   # a 429 server

The server is a process of its own (a bare ASGI app on uvicorn) that serves at most C completion
requests at once and queues the rest, as vLLM does; each takes a latency drawn from a lognormal
distribution with median L (sigma 0.5: generation lengths vary), and the server records when each
request held a slot. With `--refuse-above K` it instead answers 429 at once to any request that
arrives while K are being served, without announcing K anywhere.

The job runs on the real stack (PostgreSQL, Redis, the API and two `selfinstruct worker`
processes with their default pool), with default settings unless `--env NAME=VALUE` says
otherwise. Utilisation = busy slot-seconds / (C x wall), over the whole job (submission to
finish) and over its middle 60 %; both are measured by the server.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import platform
import random
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from harness import (
    CpuMeter,
    child_pids,
    fresh_services,
    pids_named,
    read_body,
    running_stack,
    send_json,
    start_backend,
)

SIGMA = 0.5  # lognormal spread: p90 is about 1.9 x the median, p99 about 3.2 x


# --- the server (its own process) ------------------------------------------------------------------


def serve(port: int, slots: int, median_s: float, refuse_above: int | None, seed: int,
          diverse: bool = False) -> None:  # fmt: skip
    import uvicorn

    from tests.support import fake_llm
    from tests.support.fake_llm import answer_for, apply_limits, prompt_kind

    if diverse:  # a vocabulary large enough for tens of thousands of distinct instructions
        from bench_throughput import diverse_instruction

        fake_llm.new_instruction = diverse_instruction  # type: ignore[assignment]

    rng = random.Random(seed)
    gate = asyncio.Semaphore(slots)
    # (slot taken, given back, prompt kind, model), monotonic; each job of a run asks for a model
    # of its own, which tells the jobs' requests apart
    busy: list[tuple[float, float, str, str]] = []
    counts = {"requests": 0, "refused": 0, "serving": 0, "peak_waiting": 0, "waiting": 0,
              "repeats": 0}  # fmt: skip
    refused_at: list[float] = []  # monotonic
    # request bodies served, with when the first arrived and was answered: one seen again is work
    # sent twice
    seen: dict[str, tuple[float, float]] = {}
    repeats_by_kind: dict[str, int] = {}
    repeats: list[tuple[str, float, float, float]] = []  # kind, first arrived, answered, again

    def reply(body: dict[str, Any], chat: bool) -> dict[str, Any]:
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        text = answer_for(prompt, prompt_kind(prompt), random.Random(f"{prompt}:{rng.random()}"))
        stop = body.get("stop") or []
        text, finish = apply_limits(
            text, [stop] if isinstance(stop, str) else stop, int(body.get("max_tokens") or 16)
        )
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split())}
        item: dict[str, Any] = (
            {"message": {"role": "assistant", "content": text}}
            if chat
            else {"text": text, "logprobs": None}
        )
        item.update(index=0, finish_reason=finish)
        return {"id": "x", "object": "text_completion", "created": 0, "model": "bench",
                "choices": [item], "usage": usage}  # fmt: skip

    async def complete(body: dict[str, Any], chat: bool) -> tuple[int, dict[str, Any]]:
        counts["requests"] += 1
        arrived = time.monotonic()
        if refuse_above is not None and counts["serving"] >= refuse_above:
            counts["refused"] += 1
            refused_at.append(time.monotonic())
            return 429, {"error": {"message": "Rate limit reached", "type": "rate_limit"}}
        counts["waiting"] += 1
        counts["peak_waiting"] = max(counts["peak_waiting"], counts["waiting"])
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        async with gate:
            counts["waiting"] -= 1
            counts["serving"] += 1
            taken = time.monotonic()
            try:
                await asyncio.sleep(median_s * math.exp(rng.gauss(0.0, SIGMA)))
            finally:
                counts["serving"] -= 1
                busy.append((taken, time.monotonic(), prompt_kind(prompt), body.get("model", "")))
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        if digest in seen:
            counts["repeats"] += 1
            kind = prompt_kind(prompt)
            repeats_by_kind[kind] = repeats_by_kind.get(kind, 0) + 1
            repeats.append((kind, *seen[digest], arrived))
        else:
            seen[digest] = (arrived, time.monotonic())
        return 200, reply(body, chat)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = await read_body(receive)
        path, status = scope["path"], 200
        if path == "/v1/models":
            answer: Any = {"object": "list", "data": [{"id": "bench", "object": "model"}]}
        elif path == "/stats":
            answer = {"now": time.monotonic(), "busy": busy, "repeats_by_kind": repeats_by_kind,
                      "refused_at": refused_at, "repeat_times": repeats, **counts}  # fmt: skip
        else:
            status, answer = await complete(
                json.loads(raw), chat=path.endswith("/chat/completions")
            )
        await send_json(send, status, answer)

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", backlog=8192,
                access_log=False)  # fmt: skip


class SlotServer:
    def __init__(self, slots: int, median_s: float, refuse_above: int | None = None,
                 diverse: bool = False) -> None:  # fmt: skip
        from app.apiserver import free_port

        self.slots = slots
        self.port = free_port()
        command = [sys.executable, __file__, "--serve", str(self.port), "--slots", str(slots),
                   "--latency", str(median_s)]  # fmt: skip
        if refuse_above is not None:
            command += ["--refuse-above", str(refuse_above)]
        if diverse:
            command.append("--diverse")
        self.proc = start_backend(command, self.base_url, "slot server")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"http://127.0.0.1:{self.port}/stats", timeout=30).json()

    def now(self) -> float:
        return float(self.stats()["now"])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def utilisation(busy: list[list[Any]], slots: int, start: float, end: float) -> float:
    """Busy slot-seconds within [start, end] over slots x (end - start)."""
    held = sum(max(0.0, min(b, end) - max(a, start)) for a, b, *_ in busy)
    return held / (slots * (end - start)) if end > start else 0.0


def refused_share(stats: dict[str, Any], start: float, end: float) -> float:
    """429s among the requests that arrived within [start, end] (served ones by slot time)."""
    refused = sum(1 for at in stats["refused_at"] if start <= at <= end)
    served = sum(1 for taken, *_ in stats["busy"] if start <= taken <= end)
    return refused / max(1, refused + served)


def share_by_model(busy: list[list[Any]], slots: int, start: float, end: float) -> dict[str, float]:
    """Each model's (each job's) busy slot-seconds within [start, end] / (C x that time)."""
    held: dict[str, float] = {}
    for a, b, _, model in busy:
        held[model] = held.get(model, 0.0) + max(0.0, min(b, end) - max(a, start))
    return {model: round(h / (slots * (end - start)), 3) for model, h in sorted(held.items())}


def held_by_kind(busy: list[list[Any]], start: float, end: float) -> dict[str, float]:
    """Mean slots held within [start, end] by each kind of prompt (step 1, classify, ...)."""
    held: dict[str, float] = {}
    for a, b, kind, _ in busy:
        held[kind] = held.get(kind, 0.0) + max(0.0, min(b, end) - max(a, start))
    return {k: round(v / (end - start), 1) for k, v in sorted(held.items())} if end > start else {}


def held_timeline(busy: list[list[Any]], start: float, end: float) -> list[dict[str, float]]:
    """Mean slots held by kind in each tenth of [start, end]: where in the job a kind falls
    short (the ramp, the middle, the tail)."""
    tenth = (end - start) / 10
    return [held_by_kind(busy, start + n * tenth, start + (n + 1) * tenth) for n in range(10)]


class LimitSampler(threading.Thread):
    """The backend's concurrency limit and requests in flight, as /v1/backends shows them, twice a
    second: what the workers learnt, seen from the outside. Times are time.monotonic(), the
    machine-wide clock the slot server stamps with too."""

    def __init__(self, api_url: str) -> None:
        super().__init__(daemon=True)
        self.api_url = api_url
        self.samples: list[tuple[float, int, int]] = []  # server time, limit, in flight
        self._halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.api_url, timeout=10) as api:
            while not self._halt.wait(0.5):
                try:
                    rows = api.get("/v1/backends").json()
                    at = time.monotonic()
                except (httpx.HTTPError, ValueError):
                    continue
                for row in rows:
                    if row.get("concurrency_limit") is not None:
                        self.samples.append((at, row["concurrency_limit"], row["in_flight"]))
                        break

    def stop(self) -> None:
        self._halt.set()
        self.join(15)

    def median_limit(self, start: float, end: float) -> float | None:
        limits = sorted(limit for at, limit, _ in self.samples if start <= at <= end)
        return limits[len(limits) // 2] if limits else None

    def timeline(self, start: float, end: float, points: int = 10) -> list[int]:
        """The limit at `points` evenly spaced moments of the job."""
        out = []
        for n in range(points):
            moment = start + (end - start) * n / max(1, points - 1)
            before = [limit for at, limit, _ in self.samples if at <= moment]
            out.append(before[-1] if before else 0)
        return out


# --- one run on the real stack ---------------------------------------------------------------------


def job_model(n: int, jobs: int) -> dict[str, str]:
    """With several jobs, each asks the server for a model of its own name (the server serves
    any), so the server can tell each job's share; one job keeps the default."""
    return {"model": f"bench-job-{n + 1}"} if jobs > 1 else {}


def stack_pids(stack: Any, server: SlotServer) -> dict[str, Callable[[], list[int]]]:
    """The processes whose CPU a run counts, by part (worker pool children included)."""
    workers = [w.pid for w in stack.workers]
    return {
        "api": lambda: [stack.api.pid],
        "workers": lambda: workers + [c for w in workers for c in child_pids(w)],
        "llm server": lambda: [server.proc.pid],
        "postgres": lambda: pids_named("postgres"),
        "redis": lambda: pids_named("redis-server"),
    }


def run_job(server: SlotServer, instructions: int, options: dict[str, Any],
            env_extra: dict[str, str], jobs: int = 1, warm_up: int = 0) -> dict[str, Any]:  # fmt: skip
    """`warm_up`: instructions of a job run to its end first on the same stack, so that the
    measured job starts at the limit the workers learnt for this backend (what every job after a
    backend's first one sees: the learnt limit is kept in Redis) instead of the slow start's."""
    from tests.support.stack import wait_for_status

    with (
        fresh_services(server.base_url, env_extra) as env,
        # Two workers, each with the CLI's default pool.
        running_stack(env, 2) as (stack, api, seed_set_id),
    ):
        if warm_up:
            first = api.post(
                "/v1/jobs",
                json={
                    "seed_set_id": seed_set_id,
                    "num_instructions": warm_up,
                    "options": {"seed": 101, **options},
                },
            ).json()["id"]
            wait_for_status(api, first, timeout_s=3600)  # fmt: skip
        before = server.stats()
        cpu = CpuMeter(stack_pids(stack, server))
        start = server.now()
        ids = [
            api.post("/v1/jobs", json={"seed_set_id": seed_set_id,
                                       "num_instructions": instructions,
                                       "options": {"seed": 3 + n, **job_model(n, jobs),
                                                   **options}}).json()["id"]
            for n in range(jobs)
        ]  # fmt: skip
        sampler = LimitSampler(stack.url)
        sampler.start()
        finished = [wait_for_status(api, i, timeout_s=3600) for i in ids]
        end = server.now()
        cpu_used = cpu.used()
        sampler.stop()
        loads = (
            api.get("/v1/backends").json()
            if "/v1/backends" in api.get("/openapi.json").text
            else None
        )
    stats = server.stats()
    wall = end - start
    middle = (start + 0.2 * wall, start + 0.8 * wall)
    return {
        "status": [j["status"] for j in finished],
        "wall_s": wall,
        "served_s": sum(b[1] - b[0] for b in stats["busy"]),
        "whole": utilisation(stats["busy"], server.slots, start, end),
        "middle": utilisation(stats["busy"], server.slots, *middle),
        "middle_by_kind": held_by_kind(stats["busy"], *middle),
        "middle_by_job": share_by_model(stats["busy"], server.slots, *middle),
        "held_timeline": held_timeline(stats["busy"], start, end),
        "cpu": cpu_used,
        "requests": stats["requests"] - before["requests"],
        "refused": stats["refused"] - before["refused"],
        "refused_middle_share": refused_share(stats, *middle),
        "peak_waiting": stats["peak_waiting"],  # the warm-up job's included
        "accepted": sum(j["progress"]["instructions_accepted"] for j in finished),
        "backends": loads,
        "limit_middle": sampler.median_limit(*middle),
        "limit_timeline": sampler.timeline(start, end),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", default="8,32,128")
    parser.add_argument("--latency", default="0.2,1")
    parser.add_argument("--instructions", type=int, default=300)
    parser.add_argument("--mode", default="paper")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--refuse-above", type=int, default=None)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the stack")
    parser.add_argument("--option", action="append", default=[], help="NAME=JSON, a job option")
    parser.add_argument("--diverse", action="store_true",
                        help="a larger vocabulary, for jobs of tens of thousands of instructions")  # fmt: skip
    parser.add_argument("--warm-up", type=int, default=0, metavar="N",
                        help="run a job of N instructions first, then measure the next one")  # fmt: skip
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, int(args.slots), float(args.latency), args.refuse_above, seed=1,
              diverse=args.diverse)  # fmt: skip
        return
    env_extra = dict(item.split("=", 1) for item in args.env)
    options = {"mode": args.mode}
    options.update({k: json.loads(v) for k, v in (o.split("=", 1) for o in args.option)})
    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs; mode {args.mode}, "
          f"{args.instructions} instructions x {args.jobs} job(s), warm-up job {args.warm_up}; "
          f"env {env_extra or 'defaults'}; "
          f"options {options}")  # fmt: skip
    print("\n| C | L | wall s | whole job | middle 60 % | requests | 429s | peak queued |")
    print("|---|---|---|---|---|---|---|---|")
    for latency in (float(x) for x in args.latency.split(",")):
        for slots in (int(x) for x in args.slots.split(",")):
            server = SlotServer(slots, latency, args.refuse_above, args.diverse)
            try:
                result = run_job(server, args.instructions, options, env_extra,
                                 args.jobs, args.warm_up)  # fmt: skip
            finally:
                server.stop()
            print(f"| {slots} | {latency:g} s | {result['wall_s']:.0f} | {result['whole']:.2f} | "
                  f"{result['middle']:.2f} | {result['requests']} | {result['refused']} | "
                  f"{result['peak_waiting']} |", flush=True)  # fmt: skip
            print(f"<!-- slots held in the middle 60 % by kind: {result['middle_by_kind']} -->")
            if args.jobs > 1:
                print(f"<!-- each job's share of the server in the middle 60 %: "
                      f"{result['middle_by_job']} -->")  # fmt: skip
            print(f"<!-- CPU over the job: {result['cpu']} -->")
            ideal = result["requests"] * latency / slots
            print(f"<!-- wall {result['wall_s']:.0f} s against the ideal: requests x L / C = "
                  f"{ideal:.0f} s ({result['wall_s'] / ideal:.2f}x), served slot-seconds / C = "
                  f"{result['served_s'] / slots:.0f} s; accepted {result['accepted']}; "
                  f"status {result['status']} -->")  # fmt: skip
            if result["backends"]:
                print(f"<!-- backends at the end: {result['backends']} -->")
            if args.refuse_above is not None:
                print(
                    f"<!-- 429s: {result['refused'] / max(1, result['requests']):.1%} of the job's "
                    f"requests, {result['refused_middle_share']:.1%} in the middle 60 % -->"
                )
            print(f"<!-- limit: median {result['limit_middle']} in the middle 60 %; at tenths of "
                  f"the job {result['limit_timeline']} -->", flush=True)  # fmt: skip
            tenths = [{k[:12]: round(v) for k, v in held.items()}
                      for held in result["held_timeline"]]  # fmt: skip
            print(f"<!-- slots held by kind in each tenth of the job: {tenths} -->", flush=True)


if __name__ == "__main__":
    main()
