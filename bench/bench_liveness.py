"""A worker killed with SIGKILL mid-job, default settings: how long until the job moves again,
and how many requests the backend sees twice.

    eval "$(bash scripts/test-services.sh)"
    python bench/bench_liveness.py --trials 3 --instructions 300 --slots 32 --latency 1

The real stack (PostgreSQL, Redis, the API and two `selfinstruct worker` processes with their
default pool) runs one paper-mode job against the slot server of bench_utilisation.py, which
serves at most C requests at once with lognormal latencies around L and counts every request
body it has already served once (a repeat: work sent twice). Once the job has stored a few
rounds, the worker whose pool process holds the job's round claim is killed, pool and all, with
SIGKILL while its round is in flight. Measured from outside the job's worker:
- seconds from the kill until the job stores its next instruction round (the round holder's
  work is what a dead worker stalls; the other worker goes on with instances regardless);
- repeats at the server, against a run without a kill on the same settings;
- the requests unanswered at the server at the moment of the kill, being served or queued (the
  most a kill should lose).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from bench_utilisation import SlotServer
from harness import fresh_services, running_stack


def _round_claim(engine: Any, job_id: str) -> tuple[object, str | None, int]:
    from sqlalchemy import select

    from app.models import Job

    with engine.connect() as conn:
        row = conn.execute(
            select(Job.round_claim_token, Job.round_claimed_by, Job.rounds_completed).where(
                Job.id == job_id
            )
        ).one()
    return row[0], row[1], row[2]


def _worker_holding(stack: Any, holder: str | None) -> Any:
    """The worker whose process group holds the pool process `host:pid`."""
    if not holder:
        return None
    try:
        group = os.getpgid(int(holder.rsplit(":", 1)[1]))
    except (ProcessLookupError, ValueError):
        return None
    return next((w for w in stack.workers if w.poll() is None and w.pid == group), None)


def run_once(server: SlotServer, instructions: int, kill: bool, seed: int) -> dict[str, Any]:
    """One job; `seed` differs per run: the server counts a body any earlier run sent as a
    repeat, and a job's first rounds (seeds only) are the same for the same seed."""
    from sqlalchemy import create_engine

    from tests.support.stack import wait_for_status

    before = server.stats()
    result: dict[str, Any] = {"kill": kill}
    with fresh_services(server.base_url) as env:
        engine = create_engine(env["DATABASE_URL"])
        try:
            with running_stack(env, 2) as (stack, api, seed_set_id):
                body = {"seed_set_id": seed_set_id, "num_instructions": instructions,
                        "options": {"seed": seed}}  # fmt: skip
                job_id = api.post("/v1/jobs", json=body).json()["id"]
                if kill:
                    result |= _kill_and_time(stack, server, engine, job_id)
                job = wait_for_status(api, job_id, timeout_s=3600)
        finally:
            engine.dispose()
    result["status"] = job["status"]
    result["accepted"] = job["progress"]["instructions_accepted"]
    after = server.stats()
    result["repeats"] = after["repeats"] - before["repeats"]
    result["repeats_by_kind"] = {
        kind: n - before["repeats_by_kind"].get(kind, 0)
        for kind, n in after["repeats_by_kind"].items()
        if n > before["repeats_by_kind"].get(kind, 0)
    }
    return result


def _kill_and_time(stack: Any, server: SlotServer, engine: Any, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        token, holder, rounds = _round_claim(engine, job_id)
        worker = _worker_holding(stack, holder) if token is not None and rounds >= 3 else None
        if worker is None:
            time.sleep(0.05)
            continue
        at_kill = server.stats()
        in_flight = at_kill["serving"] + at_kill["waiting"]  # served, or queued at the server
        stack.kill_worker(worker)
        killed_at = time.monotonic()
        if _round_claim(engine, job_id)[::2] != (token, rounds):  # it landed first: again
            stack.start_worker()
            continue
        while _round_claim(engine, job_id)[2] == rounds:
            time.sleep(0.2)
            if time.monotonic() - killed_at > 900:
                raise RuntimeError("the job did not move within 15 minutes of the kill")
        return {"moved_after_s": time.monotonic() - killed_at, "in_flight_at_kill": in_flight}
    raise RuntimeError("never saw a round in flight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--instructions", type=int, default=300)
    parser.add_argument("--slots", type=int, default=32)
    parser.add_argument("--latency", type=float, default=1.0)
    args = parser.parse_args()
    server = SlotServer(args.slots, args.latency)
    try:
        baseline = run_once(server, args.instructions, kill=False, seed=5)
        print(f"without a kill: {baseline}", flush=True)
        trials = []
        for number in range(args.trials):
            trial = run_once(server, args.instructions, kill=True, seed=6 + number)
            print(f"with a kill: {trial}", flush=True)
            trials.append(trial)
    finally:
        server.stop()
    print(f"\nC = {args.slots}, L = {args.latency:g} s, {args.instructions} instructions, "
          f"{args.trials} kills; repeats without a kill: {baseline['repeats']}")  # fmt: skip
    print("\n| trial | moved again after | requests in flight at the kill | repeats | "
          "repeats by kind | status |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for n, t in enumerate(trials, 1):
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(t["repeats_by_kind"].items()))
        print(f"| {n} | {t['moved_after_s']:.1f} s | {t['in_flight_at_kill']} | "
              f"{t['repeats']} | {kinds or '-'} | {t['status']}, {t['accepted']} accepted |")  # fmt: skip
    moved = statistics.median(t["moved_after_s"] for t in trials)
    print(
        f"\nmedian: moved again {moved:.1f} s after the kill; "
        f"median repeats {statistics.median(t['repeats'] for t in trials)}"
    )


if __name__ == "__main__":
    main()
