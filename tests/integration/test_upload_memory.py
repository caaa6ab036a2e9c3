"""A 190 MB dataset upload to the real API process must not need more than about 100 MB above the
idle process (it once took the API from 251 MB to 1,262 MB): the upload is spooled to disk and
parsed and stored line by line, in a worker thread, while the event loop keeps answering."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.stack import ServiceStack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

UPLOAD_BYTES = 190 * 1000 * 1000
MAX_GROWTH_KB = 100 * 1024


@pytest.fixture(scope="module")
def upload_stack(
    pg_url: str, broker_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceStack]:
    tmp = tmp_path_factory.mktemp("upload")
    env = {
        "DATABASE_URL": pg_url,
        "CELERY_BROKER_URL": broker_url,
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "SELFINSTRUCT_DATA_DIR": str(tmp / "data"),
    }
    with ServiceStack(env, tmp / "logs") as running:
        running.start_api()
        yield running


def write_dataset(path: Path, size: int) -> tuple[int, str]:
    """JSONL instructions of about 1 KB each, up to `size` bytes; (records, content hash)."""
    digest = hashlib.sha256()
    filler = "lorem ipsum dolor sit amet " * 30
    count = 0
    with path.open("wb") as out:
        while out.tell() < size:
            record = {"instruction": f"Task {count}: summarise.", "input": filler, "output": "ok"}
            out.write(json.dumps(record).encode() + b"\n")
            digest.update(json.dumps(record, sort_keys=True, ensure_ascii=False).encode() + b"\n")
            count += 1
    return count, digest.hexdigest()


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


def reset_peak(pid: int) -> bool:
    """Reset VmHWM (Linux: clear_refs 5), so it measures the upload alone; False if refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class Watcher(threading.Thread):
    """Samples the API's RSS and times /healthz while the upload runs."""

    def __init__(self, pid: int, url: str) -> None:
        super().__init__(daemon=True)
        self.pid, self.url = pid, url
        self.peak_kb = 0
        self.slowest_health_s = 0.0
        self.done = threading.Event()

    def run(self) -> None:
        last_health = 0.0
        while not self.done.is_set():
            self.peak_kb = max(self.peak_kb, status_kb(self.pid, "VmRSS"))
            if time.monotonic() - last_health > 0.5:
                started = last_health = time.monotonic()
                httpx.get(f"{self.url}/healthz", timeout=30)
                self.slowest_health_s = max(self.slowest_health_s, time.monotonic() - started)
            time.sleep(0.02)


def test_a_190_mb_dataset_upload_stays_within_100_mb(
    upload_stack: ServiceStack, tmp_path: Path
) -> None:
    assert upload_stack.api is not None
    pid = upload_stack.api.pid
    path = tmp_path / "big.jsonl"
    records, content_hash = write_dataset(path, UPLOAD_BYTES)
    with upload_stack.client(upload_stack.create_key("upload")) as api:
        # Warm up (imports, connection pool, caches) so the baseline is the idle process.
        warm = api.post(
            "/v1/datasets", files={"file": ("w.jsonl", b"warm\n")}, data={"kind": "text"}
        )
        assert warm.status_code == 201, warm.text
        idle_kb = status_kb(pid, "VmRSS")
        peak_reset = reset_peak(pid)
        watcher = Watcher(pid, upload_stack.url)
        watcher.start()
        try:
            with path.open("rb") as fh:
                response = api.post(
                    "/v1/datasets",
                    files={"file": ("big.jsonl", fh, "application/x-ndjson")},
                    data={"kind": "instructions", "name": "big"},
                    timeout=900,
                )
        finally:
            watcher.done.set()
            watcher.join()
    assert response.status_code == 201, response.text
    assert response.json()["record_count"] == records
    assert response.json()["content_hash"] == content_hash
    peak_kb = max(watcher.peak_kb, status_kb(pid, "VmHWM") if peak_reset else 0)
    growth_kb = peak_kb - idle_kb
    print(f"idle {idle_kb // 1024} MB, peak {peak_kb // 1024} MB, growth {growth_kb // 1024} MB")
    assert growth_kb < MAX_GROWTH_KB, f"the upload took {growth_kb // 1024} MB above idle"
    assert watcher.slowest_health_s < 5, watcher.slowest_health_s
