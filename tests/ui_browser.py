"""Headless Chromium for the UI tests: Debian's /usr/bin/chromium driven by Playwright (never a
browser that Playwright downloads), a page per test that fails the test on a JavaScript error,
and screenshots saved under test-artifacts/ui/ for people to look at."""
import os
import re
from pathlib import Path

import pytest

from hosts import real_part_missing

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "ui"
LAPTOP = {"width": 1366, "height": 800}
PHONE = {"width": 390, "height": 844}


# Module scope: Playwright's sync API keeps an event loop running in the main thread while it
# is open, and later tests (asyncio.run in the worker's own tests) need it gone.
@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        real_part_missing(f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        real_part_missing("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    """A fresh browser context at laptop size; uncaught JavaScript errors fail the test, and
    confirm() dialogs are accepted (the test clicked the button on purpose)."""
    context = browser.new_context(viewport=LAPTOP)
    p = context.new_page()
    p.errors = []
    p.on("pageerror", lambda exc: p.errors.append(str(exc)))
    p.on("dialog", lambda dialog: dialog.accept())
    p.set_default_timeout(15_000)
    try:
        yield p
        assert not p.errors, f"JavaScript errors: {p.errors}"
    finally:
        context.close()


@pytest.fixture
def shots(request):
    """shots(page, name): a full-page PNG under test-artifacts/ui/<test id>/."""
    folder = ARTIFACTS / re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)
    folder.mkdir(parents=True, exist_ok=True)

    def shoot(page, name):
        path = folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path
    return shoot
