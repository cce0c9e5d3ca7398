"""A real headless Chromium for tests: Debian's ``/usr/bin/chromium`` driven by Playwright for Python.

Import the fixture into a test module::

    from tests.support.browser import browser  # noqa: F401

    def test_x(browser: Browser) -> None:
        page = browser.open(url)        # fails the test on any console error or uncaught exception
        assert_charts_rendered(page)    # every Bokeh canvas drawn (pixels read back)

Playwright's own browser downloads are never used: the system Chromium (``$CHROMIUM_BIN`` or
``/usr/bin/chromium``, Debian package ``chromium``; pip ``playwright``) is launched with a fresh user-data-dir
and no background networking. Where Chromium or playwright is missing the fixture skips, except under CI
(``CI=true``), where it fails so that nothing skips silently.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.services import service_binary

DEFAULT_BINARY = "/usr/bin/chromium"
ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
VIEWPORT = {"width": 1280, "height": 900}
RENDER_TIMEOUT_MS = 30_000

# Count the drawn pixels of every canvas on the page, looking inside shadow roots (Bokeh 3 draws there).
# A pixel is "drawn" when it is neither transparent nor white (Bokeh paints a white background first).
COUNT_DRAWN_PIXELS_JS = """() => {
  const canvases = [];
  const walk = (root) => {
    for (const el of root.querySelectorAll('*')) {
      if (el.tagName === 'CANVAS') canvases.push(el);
      if (el.shadowRoot) walk(el.shadowRoot);
    }
  };
  walk(document);
  return canvases.filter(c => c.width > 0 && c.height > 0).map(c => {
    const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let drawn = 0;
    for (let i = 0; i < data.length; i += 4) {
      if (data[i + 3] !== 0 && !(data[i] === 255 && data[i + 1] === 255 && data[i + 2] === 255)) drawn++;
    }
    return drawn;
  });
}"""


def chromium_binary() -> str | None:
    """Return the Chromium executable to drive, or None when it is not installed."""
    return service_binary("CHROMIUM_BIN", DEFAULT_BINARY, "chromium")


@dataclass
class Browser:
    """A headless Chromium context; `open` gives a page that records console errors and uncaught exceptions."""

    context: Any
    errors: list[str] = field(default_factory=list)
    """Console errors and page errors of every page opened so far ("page URL: message")."""
    pages: list[Any] = field(default_factory=list)

    def close_pages(self) -> None:
        """Close every page opened (do it before stopping a server that a page still polls)."""
        for page in self.pages:
            page.close()
        self.pages.clear()

    def open(self, url: str) -> Any:
        """Open `url` in a new page, wait for the load event, and return the page."""
        page = self.context.new_page()
        page.on("console", lambda m: m.type == "error" and self.errors.append(f"{page.url}: console: {m.text}"))
        page.on("pageerror", lambda e: self.errors.append(f"{page.url}: uncaught: {e}"))
        self.pages.append(page)
        response = page.goto(url, wait_until="load")
        assert response is not None and response.status == 200, f"{url}: HTTP {response and response.status}"
        return page


def chart_count(page: Any) -> int:
    """Return how many Bokeh figures the page embeds (one root div each)."""
    return int(page.evaluate("() => document.querySelectorAll('[data-root-id]').length"))


def assert_charts_rendered(page: Any, expected: int | None = None) -> list[int]:
    """Wait until every embedded Bokeh chart has drawn on its canvas; return the drawn-pixel counts."""
    roots = chart_count(page) if expected is None else expected
    assert roots > 0, f"{page.url}: no Bokeh chart on the page"
    # Each figure has one canvas with pixels once drawn; poll (Bokeh renders asynchronously after load).
    page.wait_for_function(
        f"() => ({COUNT_DRAWN_PIXELS_JS})().filter(n => n > 500).length >= {roots}", timeout=RENDER_TIMEOUT_MS
    )
    drawn = [n for n in page.evaluate(COUNT_DRAWN_PIXELS_JS) if n > 500]
    assert len(drawn) >= roots, f"{page.url}: {len(drawn)} drawn canvases for {roots} charts"
    return drawn


def screenshot(page: Any, path: Path, *, full_page: bool = True) -> Path:
    """Write a PNG of the page to `path`, print where it is (the test's artifact), and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=full_page)
    print(f"screenshot: {path}")
    return path


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require_browser() -> str:
    """Return the Chromium binary; skip the test when Chromium or playwright is missing (fail under CI)."""
    binary = chromium_binary()
    reason = None
    if binary is None:
        reason = f"chromium not found ({DEFAULT_BINARY}); install the Debian package 'chromium'"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "playwright is not installed; pip install 'ai-trading[dev]'"
    if reason is not None:
        if _in_ci():
            pytest.fail(f"{reason} (CI=true: integration services must not be skipped)")
        pytest.skip(reason)
    assert binary is not None
    return binary


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    """Yield a headless system Chromium with a fresh profile; fail the test on any page's console error."""
    binary = require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=binary,
            headless=True,
            args=list(ARGS),
            viewport=VIEWPORT,
        )
        session = Browser(context)
        try:
            yield session
        finally:
            context.close()
    assert session.errors == [], "\n".join(session.errors)
