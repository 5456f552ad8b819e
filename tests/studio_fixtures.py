"""The studio's browser fixtures: Debian's chromium driven by Playwright (async API, the tests'
own event loop), and a screenshot helper.

The browser is `/usr/bin/chromium` (or `TTS_CHROMIUM`); `make test` installs it with apt when it
is missing. A missing browser is a fixture error, never a skip: the page must be tested.
Screenshots go to the test's tmp folder; `STUDIO_SCREENSHOTS=docs/studio` writes the committed
ones instead (`scripts/studio_screenshots.sh`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("TTS_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run",
               "--autoplay-policy=no-user-gesture-required"]
WAIT_MS = 60_000


@pytest.fixture
async def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium); "
                    "the studio's browser tests never skip")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
def screenshot(tmp_path):
    """`await screenshot(page, "books")`: a full-page PNG of the view."""
    folder = Path(os.environ.get("STUDIO_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)

    async def take(page, name: str) -> Path:
        path = folder / f"{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        return path

    return take
