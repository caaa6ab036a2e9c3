"""How far a preview's projection is from the job that follows it.

    eval "$(bash scripts/test-services.sh)"
    python bench/bench_projection.py --targets 200,1000,5000
    python bench/bench_projection.py --targets 40 --preview 10 --local-model

For each target N, on the real stack (PostgreSQL, Redis, the API, two `selfinstruct worker`
processes with their default pool) against the slot server of bench_utilisation.py (C slots,
lognormal latencies of median L, the larger vocabulary of bench_throughput.py so that thousands
of distinct instructions exist): a preview of the default 20 instructions (`--preview`) with default settings,
then the full job of N that names it (`from_preview`). The table sets the preview's projected
requests, tokens and wall time (expected, and the 95 % range) beside what the job used, as the
job's status reports them; "error" is (projected - actual) / actual.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_utilisation import SlotServer
from harness import fresh_services, running_stack


class LocalModel:
    """The bundled model served by llama.cpp, started as `selfinstruct run` starts it."""

    def __init__(self) -> None:
        from app.localmodel import LocalModelServer

        self._server = LocalModelServer(Path(tempfile.mkdtemp()))
        self._server.start()
        self.base_url = self._server.base_url

    def stop(self) -> None:
        self._server.stop()


def run_pair(
    server: SlotServer | LocalModel, target: int, seed: int, preview_n: int
) -> dict[str, Any]:
    """A preview, then the job of `target` that follows it; their status bodies and walls."""
    from tests.support.stack import wait_for_status

    with (
        fresh_services(server.base_url) as env,
        # Two workers, each with the CLI's default pool.
        running_stack(env, 2) as (_stack, api, seed_set_id),
    ):
        body = {"seed_set_id": seed_set_id, "num_instructions": target, "options": {"seed": seed}}
        response = api.post("/v1/jobs/preview", json={**body, "preview_instructions": preview_n})
        response.raise_for_status()
        started = time.monotonic()
        preview = wait_for_status(api, response.json()["id"], timeout_s=600)
        preview_wall = time.monotonic() - started
        response = api.post("/v1/jobs", json={**body, "from_preview": preview["id"]})
        response.raise_for_status()
        started = time.monotonic()
        job = wait_for_status(api, response.json()["id"], timeout_s=7200)
        job_wall = time.monotonic() - started
    return {"preview": preview, "preview_wall": preview_wall, "job": job, "job_wall": job_wall}


def error(projected: float, actual: float) -> str:
    return f"{(projected - actual) / actual:+.0%}" if actual else "n/a"


def row(name: str, interval: dict[str, float] | None, actual: float) -> str:
    if interval is None:
        return f"| {name} | n/a | | {actual:,.0f} | |"
    low, expected, high = interval["low"], interval["expected"], interval["high"]
    inside = "yes" if low <= actual <= high else "no"
    return (f"| {name} | {expected:,.0f} | {low:,.0f} - {high:,.0f} | {actual:,.0f} | "
            f"{error(expected, actual)} | {inside} |")  # fmt: skip


def breakdown(name: str, progress: dict[str, Any]) -> str:
    """Step-1 tokens per step-1 request, and the rest per accepted instruction: the two rates
    the projection scales, so a miss shows which of them moved between preview and job."""
    step1 = max(progress["step1_requests"], 1)
    accepted = max(progress["instructions_accepted"], 1)
    other = progress["llm_requests"] - progress["step1_requests"]
    other_c = progress["completion_tokens"] - progress["step1_completion_tokens"]
    other_p = progress["prompt_tokens"] - progress["step1_prompt_tokens"]
    return (f"<!-- {name}: step 1 {progress['step1_requests']} requests, "
            f"{progress['step1_prompt_tokens'] / step1:.0f} prompt and "
            f"{progress['step1_completion_tokens'] / step1:.0f} completion tokens each; "
            f"others {other / accepted:.2f} requests, {other_p / accepted:.0f} prompt and "
            f"{other_c / accepted:.0f} completion tokens per accepted instruction -->")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="200,1000,5000")
    parser.add_argument("--slots", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--preview", type=int, default=20, help="preview_instructions")
    parser.add_argument("--local-model", action="store_true",
                        help="the bundled local model instead of the slot server")  # fmt: skip
    args = parser.parse_args()
    backend = "the local model" if args.local_model else f"C = {args.slots}, L = {args.latency:g} s"
    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs; {backend}; "
          f"previews of {args.preview} with default settings")  # fmt: skip
    for target in (int(t) for t in args.targets.split(",")):
        server = LocalModel() if args.local_model else SlotServer(args.slots, args.latency,
                                                                   diverse=True)  # fmt: skip
        try:
            result = run_pair(server, target, args.seed, args.preview)
        finally:
            server.stop()
        preview, job = result["preview"], result["job"]
        projection = preview.get("projection")
        if preview["status"] != "succeeded" or not projection or job["status"] != "succeeded":
            print(f"\n{target}: preview {preview['status']}, job {job['status']}: "
                  f"{preview.get('error') or job.get('error')}")  # fmt: skip
            continue
        progress = job["progress"]
        print(f"\n#### {target} instructions (preview {result['preview_wall']:.0f} s, "
              f"job {result['job_wall']:.0f} s, {progress['cache_hits']} cache hits)\n")  # fmt: skip
        print("| measure | projected | 95 % range | actual | error | in range |")
        print("|---|---|---|---|---|---|")
        print(row("LLM requests", projection["requests"], progress["llm_requests"]))
        print(row("prompt tokens", projection["prompt_tokens"], progress["prompt_tokens"]))
        print(row("completion tokens", projection["completion_tokens"],
                  progress["completion_tokens"]))  # fmt: skip
        print(row("wall s", projection.get("wall_seconds"), result["job_wall"]))
        print(breakdown("preview", preview["progress"]))
        print(breakdown("job", progress))
        yields = projection["yield"]
        print(f"<!-- preview yield: {yields['accepted_per_step1_request']}; rejections "
              f"{yields['rejection_reasons']}; job rejections "
              f"{progress['instructions_rejected']} -->", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
