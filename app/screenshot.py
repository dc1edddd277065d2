"""Drive the app in Chromium (Playwright): click Generate as a person would, check what appears, take a screenshot.

    python app/screenshot.py --out docs/app.png       # the shipped demos, cifar10-llamagen first

Uses the distribution's Chromium (``.ci/install-browser``); Playwright's own browser download is not needed.
tests/test_app.py calls :func:`generate_in_browser` on tiny models.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
SCREEN = {"width": 1280, "height": 800}  # a laptop's first screen: Generate must be on it


def find_browser() -> str | None:
    """The path of a Chromium-family browser on PATH, or ``None``."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def _choose(page, label: str, value: str, timeout_ms: float) -> None:
    """Pick ``value`` in the dropdown labelled ``label`` (typing it and pressing Enter, as a user would)."""
    box = page.get_by_label(label, exact=True)
    box.click(timeout=timeout_ms)
    box.fill(value)
    box.press("Enter")


def generate_in_browser(url: str, model: str | None = None, sampler: str | None = None, more_options: str = "",
                        out: str | Path | None = None, timeout_s: float = 120.0) -> dict:
    """Open the app at 1280x800, note whether Generate is visible without scrolling, optionally pick a model and a
    sampler, click Generate once and wait for both results. Returns ``generate_in_view``, the number of
    ``baseline`` and ``accelerated`` images, the ``table`` and ``verdict`` texts; saves a screenshot to ``out``."""
    from playwright.sync_api import expect, sync_playwright

    executable = find_browser()
    if executable is None:
        raise FileNotFoundError("no Chromium found; run .ci/install-browser (apt-get install chromium)")
    ms = timeout_s * 1000
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport=SCREEN)
            page.goto(url, timeout=ms)
            button = page.get_by_role("button", name="Generate", exact=True)
            expect(button).to_be_visible(timeout=ms)
            box = button.bounding_box()
            in_view = page.evaluate("window.scrollY") == 0 and box["y"] >= 0 and box["y"] + box["height"] <= SCREEN["height"]
            if model:
                _choose(page, "model", model, ms)
                page.wait_for_timeout(1500)  # the model loads; the form follows it
            if sampler:
                _choose(page, "sampler", sampler, ms)
                page.wait_for_timeout(500)
            if more_options:
                page.locator("#advanced").get_by_text("Advanced").first.click()
                page.locator("#more-options textarea").fill(more_options, timeout=ms)
            button.click(timeout=ms)
            expect(page.locator("#accelerated img").first).to_be_visible(timeout=ms)
            expect(page.locator("#stats-table table")).to_be_visible(timeout=ms)
            page.wait_for_timeout(500)  # let the last images paint
            result = {"generate_in_view": in_view, "baseline": page.locator("#baseline img").count(),
                      "accelerated": page.locator("#accelerated img").count(),
                      "acceptance_map": page.locator("#acceptance-map img").count(),
                      "table": page.locator("#stats-table").inner_text(), "verdict": page.locator("#verdict").inner_text()}
            if out is not None:
                Path(out).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(out), full_page=True)
            return result
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python app/screenshot.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", default=[], help="a model to list first (default: the demos)")
    p.add_argument("--out", default="docs/app.png", help="the PNG to write (default docs/app.png)")
    p.add_argument("--port", type=int, default=7869, help="port of the app while the screenshot is taken")
    args = p.parse_args(argv)
    from vargen.app import build_app

    demo = build_app(models=args.model)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=args.port, quiet=True)
    try:
        result = generate_in_browser(url, out=args.out)
        print(f"wrote {args.out}; Generate on the first screen: {result['generate_in_view']}")
    finally:
        demo.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
