"""Drive `simrec app` in headless Debian chromium (Playwright): what a person sees, checked.

Used by the browser test and by `scripts/screenshots.py` (the README's pictures). Playwright is
a development dependency and is imported only when a browser is started.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Every <img> the page shows that the browser could not (or not yet) decode.
_BROKEN_IMAGES_JS = """() => Array.from(document.images)
  .filter(img => {
    const box = img.getBoundingClientRect();
    return box.width > 0 && box.height > 0;
  })
  .filter(img => !(img.complete && img.naturalWidth > 0))
  .map(img => img.currentSrc || img.src)"""
_VISIBLE_IMAGES_JS = """() => Array.from(document.images)
  .filter(img => {
    const box = img.getBoundingClientRect();
    return box.width > 0 && box.height > 0;
  })
  .length"""

# Streamlit shows its "running" icon while a script run is in progress.
_IDLE_JS = """() => !document.querySelector(
  "[data-testid='stStatusWidgetRunningIcon'], [data-testid='stStatusWidgetRunningManIcon']")"""


class BrowserMissingError(RuntimeError):
    """No chromium or no Playwright: the browser check cannot run (and must not pass)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_app(env: dict[str, str], log_file: Path, timeout_s: float) -> Iterator[str]:
    """`simrec app` on a free port of 127.0.0.1 until the block ends; yields its URL."""
    port = free_port()
    with open(log_file, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "simrec.cli", "app", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"simrec app exited: {log_file.read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/_stcore/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"simrec app did not start in {timeout_s:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


@contextmanager
def chromium_page(viewport: tuple[int, int]) -> Iterator:
    """A fresh page in headless Debian chromium; BrowserMissingError says what is missing."""
    if not CHROMIUM.exists():
        raise BrowserMissingError(
            f"no {CHROMIUM}: `scripts/install.sh --browser` installs Debian's chromium"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        raise BrowserMissingError(
            f"playwright is not installed ({error}): pip install -r requirements/dev.txt"
        ) from error
    with sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            width, height = viewport
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


@dataclass
class ResponseWatch:
    """Every 4xx/5xx response the page received (pictures, scripts, the websocket's upgrade)."""

    failed: list[str] = field(default_factory=list)

    def attach(self, page) -> ResponseWatch:
        page.on("response", self._seen)
        return self

    def _seen(self, response) -> None:
        if response.status >= 400:
            self.failed.append(f"{response.status} {response.url}")


def wait_for_images(page, minimum: int, timeout_ms: float, settle_ms: float = 750) -> list[str]:
    """Wait until the script run has finished, at least `minimum` images are visible and every
    one has loaded, and it stays so for `settle_ms` (a Streamlit rerun swaps images in).
    Returns the sources of visible images that did not load by the deadline (empty: all did)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    condition = (
        f"() => ({_IDLE_JS})() && ({_VISIBLE_IMAGES_JS})() >= {minimum}"
        f" && ({_BROKEN_IMAGES_JS})().length === 0"
    )
    deadline = time.monotonic() + timeout_ms / 1000
    while time.monotonic() < deadline:
        left_ms = max(1.0, (deadline - time.monotonic()) * 1000)
        # On a timeout, report what is broken rather than the timeout.
        with contextlib.suppress(PlaywrightTimeout):
            page.wait_for_function(condition, timeout=left_ms)
            page.wait_for_timeout(settle_ms)
            if page.evaluate(condition):
                return []
    broken = page.evaluate(_BROKEN_IMAGES_JS)
    visible = page.evaluate(_VISIBLE_IMAGES_JS)
    if not page.evaluate(_IDLE_JS):
        broken.append("the app was still running")
    if visible < minimum:
        broken.append(f"only {visible} visible images, expected at least {minimum}")
    return broken


def visible_image_count(page) -> int:
    return page.evaluate(_VISIBLE_IMAGES_JS)


# -- the steps a person takes -----------------------------------------------------------------
def pick_first_sample(page, results_heading: str, timeout_ms: float) -> None:
    """Click the first sample's "Pick" and wait for the results heading."""
    page.get_by_role("button", name="Pick").first.click(timeout=timeout_ms)
    page.get_by_text(results_heading, exact=True).first.wait_for(timeout=timeout_ms)


def upload_file(page, path: Path, timeout_ms: float) -> None:
    """Choose `path` in the page's file chooser (the real <input type=file>)."""
    chooser = page.locator("[data-testid='stFileUploaderDropzoneInput']").first
    chooser.set_input_files(str(path), timeout=timeout_ms)
    page.get_by_text(path.name).first.wait_for(timeout=timeout_ms)


def open_page(page, name: str, timeout_ms: float) -> None:
    """Switch the sidebar's page radio to `name`."""
    page.get_by_test_id("stSidebar").get_by_text(name, exact=True).click(timeout=timeout_ms)
    page.get_by_role("heading", name=name, exact=False).first.wait_for(timeout=timeout_ms)


def choose_categories(page, categories: list[str], timeout_ms: float) -> None:
    """Pick each of `categories` in the page's (only) multiselect."""
    field = page.get_by_test_id("stMultiSelect").first.locator("input")
    for category in categories:
        field.click(timeout=timeout_ms)
        field.fill(category, timeout=timeout_ms)
        page.get_by_role("option", name=category, exact=True).wait_for(timeout=timeout_ms)
        page.keyboard.press("Enter")
        chosen = page.get_by_test_id("stMultiSelect").first.get_by_text(category, exact=True)
        chosen.first.wait_for(timeout=timeout_ms)
    page.keyboard.press("Escape")


def result_count(page) -> int:
    """How many results the page lists (their captions start with "#rank ")."""
    return page.get_by_text(re.compile(r"^#\d+ ")).count()
