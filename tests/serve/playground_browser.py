"""The browser of the playground tests: Debian's Chromium (``/usr/bin/chromium``, which ``.ci/run`` installs),
driven headless by Playwright for Python. Playwright's own browser download is never used: ``launch`` is given
the system executable. Also what makes the README's screenshot (``test_playground.py``'s slow screenshot test).

Why Playwright rather than Selenium: one pip package and no driver binary whose version must match the browser's
(Selenium needs Debian's chromium-driver beside it), waits built into every assertion (so no sleeps), and it sees
every request the page makes, which is how the tests check that the page fetches nothing from another origin."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# quiet, offline, and able to run as root in a container: no sandbox (root), no GPU, no background traffic
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def chromium_path() -> str | None:
    found = shutil.which("chromium")
    if found:
        return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def unavailable() -> str | None:
    """Why no browser test can run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -e '.[test]')"
    if chromium_path() is None:
        return "Debian's chromium is not installed and could not be (.ci/run: apt-get install -y chromium)"
    return None


@contextmanager
def chromium() -> Iterator:
    """A headless Chromium (a Playwright ``Browser``), closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
