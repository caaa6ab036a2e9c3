"""Pages the API serves itself work without internet access: every asset they reference is a
URL of this API, and it is there."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import get_settings
from app.main import create_app

REFERENCE = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|url:\s*'([^']+)'""")


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    for name in ("DATABASE_URL", "CELERY_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SELFINSTRUCT_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    yield TestClient(create_app())  # no lifespan: these pages need no database
    get_settings.cache_clear()


def referenced_urls(html: str) -> list[str]:
    return [first or second for first, second in REFERENCE.findall(html)]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_documentation_pages_load_only_local_assets(client: TestClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200
    html = response.text
    assert "cdn." not in html
    assert "http://" not in html and "https://" not in html
    urls = referenced_urls(html)
    assert any(url.endswith(".js") for url in urls), urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        assert client.get(url).status_code == 200, url


def test_swagger_ui_gets_its_script_and_styles(client: TestClient) -> None:
    urls = referenced_urls(client.get("/docs").text)
    script = next(url for url in urls if url.endswith("swagger-ui-bundle.js"))
    styles = next(url for url in urls if url.endswith("swagger-ui.css"))
    assert "SwaggerUIBundle" in client.get(script).text
    assert ".swagger-ui" in client.get(styles).text
    assert "/openapi.json" in urls


def test_documentation_pages_are_not_api_operations(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not [path for path in paths if path.startswith(("/docs", "/redoc"))]


def test_favicon_is_served_at_the_address_browsers_ask(client: TestClient) -> None:
    response = client.get("/favicon.ico")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("image/svg+xml")
    assert response.text.lstrip().startswith("<svg")
    assert "/favicon.ico" not in client.get("/openapi.json").json()["paths"]


def test_dashboard_links_its_icon(client: TestClient) -> None:
    html = client.get("/ui/").text
    icons = re.findall(r'<link rel="icon" href="([^"]+)"', html)
    assert icons
    assert all(client.get(f"/ui/{icon}").status_code == 200 for icon in icons)
