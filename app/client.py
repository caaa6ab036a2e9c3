"""A small synchronous client for the selfinstruct HTTP API (used by the CLI and the demo)."""

from __future__ import annotations

import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import httpx


class APIError(Exception):
    """The API answered with an error; str() is one line naming what was wrong."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code


class APIClient:
    def __init__(
        self, base_url: str, *, api_key: str | None = None, timeout_s: float = 30.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s, headers=headers)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> APIClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise APIError(0, f"cannot reach the API at {self.base_url}: {exc}") from exc
        if response.status_code >= 400:
            raise APIError(response.status_code, _error_message(response))
        return response

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/healthz").json()

    def upload_seed_set(
        self, path: Path, *, name: str | None = None, seed_format: str | None = None
    ) -> dict[str, Any]:
        with path.open("rb") as fh:
            files = {"file": (path.name, fh, "application/x-ndjson")}
            data = {"name": name} if name else {}
            if seed_format:
                data["format"] = seed_format
            return self._request("POST", "/v1/seed-sets", files=files, data=data).json()

    def create_job(
        self,
        *,
        num_instructions: int,
        seed_set_id: str | None = None,
        seed_tasks: list[dict[str, Any]] | None = None,
        options: dict[str, Any] | None = None,
        from_preview: str | None = None,
        preview_instructions: int | None = None,
    ) -> dict[str, Any]:
        """Start a job, or with `preview_instructions` a preview of it (POST /v1/jobs/preview)."""
        body: dict[str, Any] = {"num_instructions": num_instructions, "options": options or {}}
        if seed_set_id is not None:
            body["seed_set_id"] = seed_set_id
        if seed_tasks is not None:
            body["seed_tasks"] = seed_tasks
        if from_preview is not None:
            body["from_preview"] = from_preview
        if preview_instructions is None:
            return self._request("POST", "/v1/jobs", json=body).json()
        body["preview_instructions"] = preview_instructions
        return self._request("POST", "/v1/jobs/preview", json=body).json()

    def items(self, job_id: str, *, limit: int = 50) -> dict[str, Any]:
        return self._request("GET", f"/v1/jobs/{job_id}/items", params={"limit": limit}).json()

    def job(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/jobs/{job_id}").json()

    def jobs(self, *, limit: int = 20, offset: int = 0) -> dict[str, Any]:
        return self._request("GET", "/v1/jobs", params={"limit": limit, "offset": offset}).json()

    def report(self, job_id: str, *, sample: int = 2000) -> dict[str, Any]:
        return self._request("GET", f"/v1/jobs/{job_id}/report", params={"sample": sample}).json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._request("POST", f"/v1/jobs/{job_id}/cancel").json()

    def rerun(self, job_id: str) -> dict[str, Any]:
        return self._request("POST", f"/v1/jobs/{job_id}/rerun").json()

    def extend(self, job_id: str, *, num_instructions: int) -> dict[str, Any]:
        body = {"num_instructions": num_instructions}
        return self._request("POST", f"/v1/jobs/{job_id}/extend", json=body).json()

    def iter_examples(self, job_id: str, *, include_rejected: bool = False) -> Iterator[bytes]:
        params = {"include": "rejected"} if include_rejected else None
        return self._stream(f"/v1/jobs/{job_id}/examples.jsonl", params)

    def iter_export(self, job_id: str, params: dict[str, str]) -> Iterator[bytes]:
        return self._stream(f"/v1/jobs/{job_id}/export", params)

    def _stream(self, url: str, params: dict[str, str] | None) -> Iterator[bytes]:
        try:
            with self._http.stream("GET", url, params=params) as response:
                if response.status_code >= 400:
                    response.read()
                    raise APIError(response.status_code, _error_message(response))
                yield from response.iter_bytes()
        except httpx.HTTPError as exc:
            raise APIError(0, f"cannot reach the API at {self.base_url}: {exc}") from exc

    def download(
        self,
        job_id: str,
        path: Path | None,
        *,
        include_rejected: bool = False,
        export: dict[str, str] | None = None,
    ) -> int:
        """Write the job's examples to `path` (atomically), or to stdout when `path` is None;
        returns the number of records (not lines: a Parquet file has none to count).

        `export` selects a training format (the /export endpoint's query parameters)."""
        container = (export or {}).get("container", "jsonl")
        chunks = (
            self.iter_export(job_id, export)
            if export
            else self.iter_examples(job_id, include_rejected=include_rejected)
        )
        if path is None:
            records = write_counting_records(chunks, sys.stdout.buffer, container)
            sys.stdout.buffer.flush()
            return records
        tmp = path.with_name(path.name + ".part")
        with tmp.open("wb") as fh:
            records = write_counting_records(chunks, fh, container)
        tmp.replace(path)
        return records

    def download_dataset(
        self, job_id: str, directory: Path, params: dict[str, str] | None = None
    ) -> list[str]:
        """Unpack the job's dataset folder (GET /v1/jobs/{id}/dataset.zip) into `directory`,
        which must not exist or be empty; returns the files written. The zip is spooled to disk
        first, so a failed download leaves no half-written folder."""
        if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
            raise APIError(0, f"{directory} exists and is not an empty directory")
        chunks = self._stream(f"/v1/jobs/{job_id}/dataset.zip", params)
        with tempfile.TemporaryFile() as spool:
            for chunk in chunks:
                spool.write(chunk)
            spool.seek(0)
            with zipfile.ZipFile(spool) as archive:
                names = archive.namelist()
                directory.mkdir(parents=True, exist_ok=True)
                archive.extractall(directory)  # extractall drops absolute paths and ".."
        return names


def write_counting_records(chunks: Iterable[bytes], sink: IO[bytes], container: str) -> int:
    """Copy an export to `sink` and count its records. JSONL and the JSON array hold one record
    per line (the array's brackets on lines of their own); Parquet says how many rows it has in
    its footer, so it is spooled first and copied once counted."""
    if container == "parquet":
        import pyarrow.parquet as pq

        with tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024) as spool:
            for chunk in chunks:
                spool.write(chunk)
            spool.seek(0)
            rows = pq.ParquetFile(spool).metadata.num_rows
            spool.seek(0)
            shutil.copyfileobj(spool, sink)
        return rows
    records, partial = 0, b""
    for chunk in chunks:
        sink.write(chunk)
        *complete, partial = (partial + chunk).split(b"\n")
        records += sum(_holds_a_record(line) for line in complete)
    return records + _holds_a_record(partial)


def _holds_a_record(line: bytes) -> bool:
    return line.strip() not in (b"", b"[", b"]")


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        detail = body.get("detail") if isinstance(body, dict) else None
    except ValueError:
        detail = None
    return f"HTTP {response.status_code}: {detail or response.text[:300] or response.reason_phrase}"
