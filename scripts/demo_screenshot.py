"""Screenshot of the demo page with a character drawn by mouse strokes in headless Chromium, for the README:
`python scripts/demo_screenshot.py --ckpt-path BEST.ckpt --char A --output docs/demo.png`."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from emnist_lit.atomic import write_atomically
from emnist_lit.serve import create_app, load_demo_model, serve_in_thread

STROKES = {
    "A": [[(0.30, 0.82), (0.50, 0.18)], [(0.50, 0.18), (0.70, 0.82)], [(0.38, 0.58), (0.62, 0.58)]],
    "H": [[(0.32, 0.18), (0.32, 0.82)], [(0.68, 0.18), (0.68, 0.82)], [(0.32, 0.50), (0.68, 0.50)]],
    "7": [[(0.30, 0.20), (0.70, 0.20), (0.45, 0.82)]],
    "4": [[(0.58, 0.82), (0.58, 0.18), (0.28, 0.62), (0.74, 0.62)]],
}
"""Each character as pen strokes, each stroke a polyline in canvas units (0..1, y down)."""


def draw(page, strokes: list[list[tuple[float, float]]]) -> None:
    box = page.locator("#canvas").bounding_box()
    for stroke in strokes:
        points = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in stroke]
        page.mouse.move(*points[0])
        page.mouse.down()
        for point in points[1:]:
            page.mouse.move(*point, steps=12)
        page.mouse.up()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ckpt-path", required=True)
    parser.add_argument("--char", default="A", choices=sorted(STROKES))
    parser.add_argument("--output", type=Path, default=Path("docs/demo.png"))
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()

    expect.set_options(timeout=20_000)
    model, info = load_demo_model(args.ckpt_path)
    with serve_in_thread(create_app(model, info)) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium)
        page = browser.new_page(viewport={"width": 980, "height": 640})
        page.goto(url)
        expect(page.locator("#info")).to_contain_text("classes")
        draw(page, STROKES[args.char])
        expect(page.locator("#draw-panel")).to_have_attribute("data-pending", "false")
        expect(page.locator("#draw-top li")).to_have_count(3)
        top = [
            (li.get_attribute("data-char"), float(li.get_attribute("data-prob")))
            for li in page.locator("#draw-top li").all()
        ]
        screenshot = page.screenshot(full_page=True)
        browser.close()
    write_atomically(args.output, lambda tmp: tmp.write_bytes(screenshot))
    print(f"drew {args.char!r}, the page shows {top}; screenshot {args.output} ({args.output.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
