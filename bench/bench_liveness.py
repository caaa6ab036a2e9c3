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
- repeats at the server: bodies served twice, both times during this job (an instruction that
  recurs in another run gets the same classification prompt: not work this job paid twice),
  against a run without a kill on the same settings, and where each repeat's first request
  stood at the kill (answered before it and lost, in flight, or sent after it);
- the requests unanswered at the server at the moment of the kill, being served or queued (the
  most a kill should lose).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import Counter
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
    # Only a body first served during this job is work this job paid twice: instructions recur
    # across runs (the same text gets the same classification prompt), and those are not repeats.
    after = server.stats()
    started = before["now"]
    new = after["repeat_times"][len(before["repeat_times"]) :]
    mine = [r for r in new if r[1] >= started]
    result["repeats"] = len(mine)
    result["repeats_of_earlier_runs"] = len(new) - len(mine)
    result["repeats_by_kind"] = dict(Counter(kind for kind, *_ in mine))
    if kill:
        result["repeats_by_first_send"] = repeats_by_first_send(mine, result["killed_at"])
    return result


def repeats_by_first_send(repeats: list[list[Any]], killed_at: float) -> dict[str, Any]:
    """Where each repeat's first request stood at the kill (server clock): answered before it
    (the answer was lost before it was stored), at the server (in flight), or sent after it;
    for the first kind, by kind and how long before the kill the answer went out."""
    where: dict[str, Any] = {"answered before": 0, "in flight": 0, "sent after": 0}
    ages: dict[str, list[float]] = {}
    for kind, arrived, answered, _again in repeats:
        if answered < killed_at:
            where["answered before"] += 1
            ages.setdefault(kind, []).append(round(killed_at - answered, 2))
        elif arrived < killed_at:
            where["in flight"] += 1
        else:
            where["sent after"] += 1
    where["answered before, s before the kill"] = {k: sorted(v) for k, v in ages.items()}
    return where


def _kill_and_time(stack: Any, server: SlotServer, engine: Any, job_id: str) -> dict[str, Any]:
    """Kill the worker holding the job's round claim once it has stored three rounds, and time
    until the job stores another. One kill per job: a kill that lands just after a round was
    stored is still a kill mid-job, and killing again (the replacement) would add the second
    kill's losses to the first's."""
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
        stored = _round_claim(engine, job_id)[2]  # the dead worker stores nothing more
        while _round_claim(engine, job_id)[2] == stored:
            time.sleep(0.2)
            if time.monotonic() - killed_at > 900:
                raise RuntimeError("the job did not move within 15 minutes of the kill")
        return {"moved_after_s": time.monotonic() - killed_at, "in_flight_at_kill": in_flight,
                "killed_at": at_kill["now"]}  # fmt: skip
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
          "repeats by kind | first request: answered before the kill / in flight / sent after "
          "| status |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for n, t in enumerate(trials, 1):
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(t["repeats_by_kind"].items()))
        first = t["repeats_by_first_send"]
        where = f"{first['answered before']} / {first['in flight']} / {first['sent after']}"
        print(f"| {n} | {t['moved_after_s']:.1f} s | {t['in_flight_at_kill']} | "
              f"{t['repeats']} | {kinds or '-'} | {where} | "
              f"{t['status']}, {t['accepted']} accepted |")  # fmt: skip
    moved = statistics.median(t["moved_after_s"] for t in trials)
    print(
        f"\nmedian: moved again {moved:.1f} s after the kill; "
        f"median repeats {statistics.median(t['repeats'] for t in trials)}"
    )


if __name__ == "__main__":
    main()
