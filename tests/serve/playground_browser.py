"""The browser of the playground tests: Debian's Chromium (``/usr/bin/chromium``, which ``.ci/run`` installs),
driven headless by Playwright for Python. Playwright's own browser download is never used: ``launch`` is given
the system executable. Also what makes the README's screenshot (``test_playground.py``'s slow screenshot test).

Why Playwright rather than Selenium: one pip package and no driver binary whose version must match the browser's
(Selenium needs Debian's chromium-driver beside it), waits built into every assertion (so no sleeps), and it sees
every request the page makes, which is how the tests check that the page fetches nothing from another origin."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from serve_helpers import metric_values

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


def wait_idle(url: str, timeout: float = 10) -> None:
    """Until the server runs and queues nothing, for any of its models (a cancelled stream frees its slot a
    moment after it closes)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, timeout=5) as client:
        while True:
            gauges = ("spikegpt:num_requests_running", "spikegpt:num_requests_waiting")  # of every model
            if not any(value for key, value in metric_values(client).items() if key[0] in gauges):
                return
            assert time.monotonic() < deadline, "the server stayed busy"
            time.sleep(0.02)


class Page:
    """A fresh page on the playground (``path``: or another of its pages), with the API ``key`` entered if given,
    recording every request it makes and every script error."""

    def __init__(self, browser, url: str, width: int = 1280, key: str | None = None, path: str = "/"):
        self.url = url
        self.context = browser.new_context(viewport={"width": width, "height": 900})
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.problems: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.problems.append(f"script error: {e}"))
        self.page.on("console", self._console)
        self.page.goto(url + path)
        if key is not None:
            self.expect("#key-row").to_be_visible()
            self.page.fill("#api-key", key)
            self.page.dispatch_event("#api-key", "change")
        if path == "/":
            self.expect("#model-layers").not_to_have_text("…")

    def _console(self, message) -> None:
        # a refused request is logged by the browser itself ("Failed to load resource"): expected here
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.problems.append(f"console: {message.text}")

    def expect(self, selector: str):
        from playwright.sync_api import expect

        return expect(self.page.locator(selector))

    def generate(self, **fields: object) -> None:
        for name, value in fields.items():
            self.page.fill(f"#{name}", str(value))
        wait_idle(self.url)
        self.page.click("#send")

    def wait_done(self) -> None:
        self.expect("#status").to_have_text(re.compile(r"^Done: \d+ tokens"), timeout=30_000)

    def evaluate(self, script: str):
        return self.page.evaluate(script)

    def close(self) -> None:
        self.context.close()
        assert not self.problems, self.problems
        origin = self.url + "/"
        assert all(u.startswith(origin) or u.startswith("data:") for u in self.requests), self.requests
