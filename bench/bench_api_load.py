"""Many clients polling the API while jobs run: requests/s, p50 and p99, errors, /healthz latency.

    eval "$(bash scripts/test-services.sh)"
    python bench/bench_api_load.py [--clients 10,100,500,1000] [--api-processes 1,2] [--seconds 20]

The real stack (PostgreSQL, Redis, the API under uvicorn with API keys required, two Celery
workers) runs jobs against a slow OpenAI-compatible server, so the jobs stay running while the
load lasts. The load comes from wrk (Debian's `wrk`, in C: on two cores the load generator must
cost far less than the server it measures): each connection is a client that, in a closed loop,
reads the status of a random running job (89 % of the clients), lists jobs (10 %, at least one)
or downloads a running job's examples (1 %, at least one). Each kind runs in a wrk process of its
own, so each has its own latency figures. A probe in this process reads /healthz every 100 ms on a
connection of its own. A second probe reads a control server at the same time: an idle uvicorn
process of its own answering 200 to everything, so the difference between the two /healthz
figures is what the API adds to what the loaded machine costs any Python server.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
BENCH_REDIS_DB = 14  # tests use db 1 + their xdist worker number, bench_throughput 15
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

LUA = r"""
local paths = {}
local kind = "status"
init = function(args)
  wrk.headers["Authorization"] = "Bearer " .. args[1]
  kind = args[2]
  for i = 3, #args do
    paths[#paths + 1] = "/v1/jobs/" .. args[i]
  end
end
request = function()
  local job = paths[math.random(#paths)]
  if kind == "status" then
    return wrk.format("GET", job)
  elseif kind == "list" then
    return wrk.format("GET", "/v1/jobs?limit=20")
  else
    return wrk.format("GET", job .. "/examples.jsonl")
  end
end
"""
KINDS = ("status", "list", "download")


class HealthProbe(threading.Thread):
    """GET /healthz every 100 ms on its own connection; latencies in ms, failures counted."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.latencies_ms: list[float] = []
        self.failures = 0
        self._halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._halt.is_set():
                started = time.perf_counter()
                try:
                    ok = client.get(f"{self.url}/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.latencies_ms.append((time.perf_counter() - started) * 1000)
                self.failures += 0 if ok else 1
                self._halt.wait(0.1)

    def stop(self) -> dict[str, float]:
        self._halt.set()
        self.join(15)
        lat = sorted(self.latencies_ms)
        return {
            "healthz_p99_ms": lat[int(0.99 * (len(lat) - 1))] if lat else float("nan"),
            "healthz_max_ms": lat[-1] if lat else float("nan"),
            "healthz_failures": self.failures,
        }


async def control_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The control server: the least an ASGI app under uvicorn can do, for every request."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


class ControlServer:
    """`control_app` under uvicorn in a process of its own, with the API's loop and parser."""

    def __init__(self) -> None:
        from app.apiserver import free_port

        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        command = [
            sys.executable, "-m", "uvicorn", "bench_api_load:control_app", "--app-dir",
            str(ROOT / "bench"), "--port", str(port), "--loop", "asyncio", "--log-level", "warning",
        ]  # fmt: skip
        self.process = subprocess.Popen(command)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url, timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the control server did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def parse_wrk(output: str) -> dict[str, Any]:
    """Requests/s, p50/p99 and the error counts from `wrk --latency` output."""
    result: dict[str, Any] = {"non_2xx": 0, "socket_errors": 0, "timeouts": 0}
    for pct in ("50", "99"):
        match = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M)
        result[f"p{pct}_ms"] = _ms(*match.groups()) if match else float("nan")
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    result["rps"] = float(match.group(1)) if match else 0.0
    match = re.search(r"(\d+) requests in", output)
    result["requests"] = int(match.group(1)) if match else 0
    match = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if match:
        result["non_2xx"] = int(match.group(1))
    match = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if match:
        connect, read, write, timeout = map(int, match.groups())
        result["socket_errors"] = connect + read + write
        result["timeouts"] = timeout
    return result


def split_clients(clients: int, mix: tuple[float, float]) -> dict[str, int]:
    """Connections per kind: lists and downloads get at least one each, status reads the rest."""
    lists = max(1, round(clients * mix[1]))
    downloads = max(1, round(clients * (1 - mix[0] - mix[1])))
    return {"status": clients - lists - downloads, "list": lists, "download": downloads}


def run_wrk(
    url: str, clients: int, seconds: int, token: str, job_ids: list[str], mix: tuple[float, float]
) -> dict[str, Any]:
    """One wrk process per kind of request, all at once; their figures by kind and in total."""
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(LUA)
    runs = {}
    for kind, connections in split_clients(clients, mix).items():
        command = [
            "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s", "--latency",
            "-s", str(script), url, "--", token, kind, *job_ids,
        ]  # fmt: skip
        runs[kind] = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    result: dict[str, Any] = {"rps": 0.0, "non_2xx": 0, "socket_errors": 0, "timeouts": 0}
    for kind, proc in runs.items():
        output, _ = proc.communicate()
        figures = parse_wrk(output)
        for total in ("rps", "non_2xx", "socket_errors", "timeouts"):
            result[total] += figures[total]
        result |= {f"{kind}_{name}": figures[name] for name in ("rps", "p50_ms", "p99_ms")}
    script.unlink()
    return result


def _stack_env(pg_url: str, redis_url: str, llm_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": pg_url,
        "CELERY_BROKER_URL": redis_url,
        "OPENAI_BASE_URL": llm_url,
        "OPENAI_API_KEY": "x",
        "SELFINSTRUCT_AUTH": "required",
        "SELFINSTRUCT_MAX_JOBS_PER_MINUTE_PER_KEY": "1000",
    }


def bench(
    clients: list[int],
    api_processes: list[int],
    seconds: int,
    jobs: int,
    mix: tuple[float, float] = (0.89, 0.10),
) -> None:
    import redis
    from bench_throughput import LatencyServer

    from app.migrate import upgrade_database
    from tests.support import services
    from tests.support.stack import ServiceStack

    admin, redis_url = services.postgres_admin_url(), services.redis_url(BENCH_REDIS_DB)
    if admin is None or redis_url is None:
        sys.exit(
            'needs TEST_DATABASE_URL and TEST_REDIS_URL: eval "$(bash scripts/test-services.sh)"'
        )
    if shutil.which("wrk") is None:
        sys.exit("needs wrk: apt-get install wrk")
    rows: list[dict[str, Any]] = []
    control = ControlServer()
    llm = LatencyServer(2.0)  # slow answers: the jobs keep running while the load lasts
    try:
        for processes in api_processes:
            name = services.unique_db_name("si_bench_api")
            url = services.create_database(admin, name)
            redis.Redis.from_url(redis_url).flushdb()
            upgrade_database(url)
            env = _stack_env(url, redis_url, llm.base_url)
            with ServiceStack(env, Path(tempfile.mkdtemp()) / "logs") as stack:
                stack.start_api("--workers", str(processes))
                stack.start_worker(concurrency=2)
                token = stack.create_key("bench")
                job_ids = _start_jobs(stack, token, jobs)
                for n in clients:
                    probe, control_probe = HealthProbe(stack.url), HealthProbe(control.url)
                    probe.start()
                    control_probe.start()
                    result = run_wrk(stack.url, n, seconds, token, job_ids, mix)
                    result |= probe.stop()
                    result |= {f"control_{k}": v for k, v in control_probe.stop().items()}
                    result |= {"clients": n, "api_processes": processes}
                    rows.append(result)
                    print(json.dumps(result), flush=True)
                    time.sleep(2)
                running = _statuses(stack, token, job_ids)
                print(f"job statuses after the load: {running}", flush=True)
            services.drop_database(admin, name)
    finally:
        llm.stop()
        control.stop()
    _print_table(rows, seconds)


def _start_jobs(stack: Any, token: str, jobs: int) -> list[str]:
    seeds = ROOT / "app" / "data" / "seed_tasks.jsonl"
    with stack.client(token) as api, seeds.open("rb") as fh:
        seed_set = api.post("/v1/seed-sets", files={"file": ("s.jsonl", fh)}).json()
        ids = []
        for n in range(jobs):
            body = {"seed_set_id": seed_set["id"], "num_instructions": 5000, "options": {"seed": n}}
            response = api.post("/v1/jobs", json=body)
            response.raise_for_status()
            ids.append(response.json()["id"])
    time.sleep(10)  # the first rounds land, so status reads have rows to count
    return ids


def _statuses(stack: Any, token: str, job_ids: list[str]) -> list[str]:
    with stack.client(token) as api:
        return [api.get(f"/v1/jobs/{i}").json()["status"] for i in job_ids]


def _print_table(rows: list[dict[str, Any]], seconds: int) -> None:
    print(f"\n{seconds} s per level; closed loop; one wrk -t1 per kind; p50/p99 per kind")
    print(
        "| API processes | clients | requests/s | status reads/s | status p50 | status p99 | "
        "list p50 | list p99 | download p50 | download p99 | non-2xx | socket errors | "
        "timeouts | /healthz p99 | /healthz max | control p99 | control max |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['api_processes']} | {r['clients']} | {r['rps']:.0f} | {r['status_rps']:.0f} | "
            f"{r['status_p50_ms']:.0f} ms | {r['status_p99_ms']:.0f} ms | "
            f"{r['list_p50_ms']:.0f} ms | {r['list_p99_ms']:.0f} ms | "
            f"{r['download_p50_ms']:.0f} ms | {r['download_p99_ms']:.0f} ms | "
            f"{r['non_2xx']} | {r['socket_errors']} | {r['timeouts']} | "
            f"{r['healthz_p99_ms']:.0f} ms | {r['healthz_max_ms']:.0f} ms | "
            f"{r['control_healthz_p99_ms']:.0f} ms | {r['control_healthz_max_ms']:.0f} ms |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="10,100,500,1000")
    parser.add_argument("--api-processes", default="1,2")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument(
        "--mix",
        default="0.89,0.10",
        help="shares of the clients reading status and listing (the rest: downloads)",
    )
    args = parser.parse_args()
    status_share, list_share = (float(x) for x in args.mix.split(","))
    bench(
        [int(c) for c in args.clients.split(",")],
        [int(p) for p in args.api_processes.split(",")],
        args.seconds,
        args.jobs,
        (status_share, list_share),
    )


if __name__ == "__main__":
    os.environ.setdefault("SELFINSTRUCT_LOG_FORMAT", "text")
    main()
