"""The README's pictures of the demo app, taken from a real run in headless Debian chromium.

    SIMREC_CONFIG=conf/simrec.yaml[:overlay.yaml] .venv/bin/python scripts/screenshots.py \\
        [--out docs/screenshots] [--categories table sofa]

Starts `simrec app` on a free port against the configured lakehouse and registered models (what
`make demo` builds), picks the first Fashion-MNIST sample, then on the furniture page two target
categories and the first catalog item, and saves each results page as a small PNG. It fails,
writing nothing, if any picture on the page did not load or any response was 4xx/5xx.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
from pathlib import Path

from PIL import Image

from simrec.app import browser
from simrec.config import load_settings

REPO = Path(__file__).resolve().parents[1]
VIEWPORT = (1280, 2600)  # tall: Streamlit scrolls inside the page, so show it all
STEP_MS = 180_000
MAX_WIDTH = 1000  # README pictures: readable on GitHub, a few hundred kB at most
COLOURS = 128


def small_png(screenshot: bytes) -> bytes:
    """The screenshot at most MAX_WIDTH wide, as a palette PNG (screenshots have few colours)."""
    image = Image.open(io.BytesIO(screenshot)).convert("RGB")
    if image.width > MAX_WIDTH:
        height = round(image.height * MAX_WIDTH / image.width)
        image = image.resize((MAX_WIDTH, height), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.quantize(COLOURS, method=Image.Quantize.MEDIANCUT).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def _checked(page, watch: browser.ResponseWatch, minimum: int, step: str) -> bytes:
    broken = browser.wait_for_images(page, minimum, STEP_MS)
    if broken or watch.failed:
        raise SystemExit(f"{step}: images not loaded {broken}, error responses {watch.failed}")
    return page.get_by_test_id("stMainBlockContainer").screenshot()


def take(out: Path, categories: list[str]) -> dict[str, Path]:
    settings = load_settings()
    k, grid = settings.recommend.k, settings.app.sample_grid
    shots: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as scratch:
        env = {name: value for name, value in os.environ.items() if name != "SIMREC_API_URL"}
        with (
            browser.running_app(env, Path(scratch) / "app.log", timeout_s=120) as url,
            browser.chromium_page(VIEWPORT) as page,
        ):
            watch = browser.ResponseWatch().attach(page)
            page.goto(url)
            browser.pick_first_sample(page, f"{k} most similar items", STEP_MS)
            shots["fashion"] = _checked(page, watch, grid + 1 + k, "fashion")
            browser.open_page(page, "Furniture", STEP_MS)
            browser.choose_categories(page, categories, STEP_MS)
            browser.pick_first_sample(page, categories[0], STEP_MS)
            page.get_by_role("heading", name=categories[-1]).wait_for(timeout=STEP_MS)
            # A small catalog may hold fewer than n items of a category: count what is listed.
            shots["furniture"] = _checked(
                page, watch, grid + 1 + browser.result_count(page), "furniture"
            )
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, screenshot in shots.items():
        written[name] = out / f"{name}.png"
        written[name].write_bytes(small_png(screenshot))
    return written


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--categories", nargs=2, default=["table", "sofa"])
    args = parser.parse_args(argv)
    try:
        written = take(args.out, args.categories)
    except browser.BrowserMissingError as error:
        print(f"screenshots: {error}", file=sys.stderr)
        return 1
    for name, path in written.items():
        print(f"{name}: {path} ({path.stat().st_size // 1024} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
