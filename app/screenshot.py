"""Screenshot of the demo after one generation, taken with Chromium driven by Playwright.

    python app/screenshot.py --model cifar10-llamagen --out docs/app.png

Uses the distribution's Chromium (``.ci/install-browser``); Playwright's own browser download is not
needed. tests/test_app.py calls :func:`screenshot` on a tiny model.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str | None:
    """The path of a Chromium-family browser on PATH, or ``None``."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(url: str, out: str | Path, executable: str | None = None, timeout_s: float = 60.0,
               width: int = 1400, height: int = 1000) -> Path:
    """Open ``url``, click Generate, wait for the acceptance map and save a full-page PNG to ``out``."""
    from playwright.sync_api import expect, sync_playwright

    executable = executable or find_browser()
    if executable is None:
        raise FileNotFoundError("no Chromium found; run .ci/install-browser (apt-get install chromium)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url, timeout=timeout_s * 1000)
            page.get_by_role("button", name="Generate").click(timeout=timeout_s * 1000)
            amap = page.locator("#acceptance-map img")
            expect(amap).to_be_visible(timeout=timeout_s * 1000)
            expect(page.locator("#accelerated img").first).to_be_visible(timeout=timeout_s * 1000)
            page.wait_for_timeout(500)  # let the last images paint
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()
    return out


def _choose(page, label: str, value: str, timeout_ms: float) -> None:
    """Pick ``value`` in the dropdown labelled ``label`` (typing it and pressing Enter, as a user would)."""
    box = page.get_by_label(label, exact=True)
    box.click(timeout=timeout_ms)
    box.fill(value)
    box.press("Enter")


def run_in_browser(url: str, model: str, sampler: str, more_options: str = "", executable: str | None = None,
                   timeout_s: float = 120.0) -> int:
    """Choose a model and a sampler in the page, click Generate and wait for the accelerated sampler's
    images; returns how many appeared."""
    from playwright.sync_api import expect, sync_playwright

    executable = executable or find_browser()
    if executable is None:
        raise FileNotFoundError("no Chromium found; run .ci/install-browser (apt-get install chromium)")
    ms = timeout_s * 1000
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url, timeout=ms)
            _choose(page, "model", model, ms)
            page.wait_for_timeout(1500)  # the model loads; the sampler list follows it
            _choose(page, "sampler", sampler, ms)
            page.wait_for_timeout(500)
            if more_options:
                page.locator("#more-options textarea").fill(more_options, timeout=ms)
            page.get_by_role("button", name="Generate").click(timeout=ms)
            images = page.locator("#accelerated img")
            expect(images.first).to_be_visible(timeout=ms)
            return images.count()
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python app/screenshot.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="zoo name or folder with pipeline.json")
    p.add_argument("--out", default="docs/app.png")
    p.add_argument("--port", type=int, default=7869)
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from app import build_app

    demo = build_app(models=[args.model])
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=args.port, quiet=True)
    try:
        print(f"wrote {screenshot(url, args.out)}")
    finally:
        demo.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
