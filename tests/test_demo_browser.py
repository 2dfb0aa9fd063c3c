"""The demo page in a real headless Chromium: characters drawn with the mouse and uploaded are read right, bad
input shows a message, and the page fetches nothing from anywhere but the local server. `make test-browser`
installs Chromium and Playwright first; elsewhere these tests skip and say why."""

from __future__ import annotations

import base64
import importlib.util
import io
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import class_templates, render
from PIL import Image

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None,
        reason="Playwright is not installed; `make test-browser` installs it (pip install -e '.[browser]')",
    ),
    pytest.mark.skipif(
        not Path(CHROMIUM).is_file(),
        reason=f"no Chromium at {CHROMIUM}; `make test-browser` installs it (apt-get install chromium) or set CHROMIUM",
    ),
]

GLYPHS = class_templates()
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def server_url(trained_checkpoint: Path) -> Iterator[str]:
    from emnist_lit.serve import create_app, load_demo_model, serve_in_thread

    model, info = load_demo_model(trained_checkpoint)
    with serve_in_thread(create_app(model, info)) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)  # a busy CI machine can take longer than the 5 s default
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server_url: str) -> Iterator:
    """A fresh page on the demo that records every request and every console error."""
    page = browser.new_page(viewport={"width": 1100, "height": 760})
    page.set_default_timeout(TIMEOUT_MS)
    page.requests, page.errors = [], []
    page.on("request", lambda request: page.requests.append(request.url))
    page.on("console", lambda message: message.type == "error" and console_error(page, message.text))
    page.on("pageerror", lambda err: page.errors.append(str(err)))
    page.goto(server_url)
    yield page
    page.close()


def console_error(page, text: str) -> None:
    """Record a console error, except Chromium's note on each 4xx or 501 answer, which the tests cause on purpose."""
    if not re.match(r"Failed to load resource: the server responded with a status of (4\d\d|501)\b", text):
        page.errors.append(text)


def draw_glyph(page, glyph: np.ndarray) -> None:
    """Write a 5x5 block glyph on the canvas as a person would: one mouse stroke per run of filled cells in each row,
    with cells as tall as the page's pen is wide, so the strokes fill the blocks."""
    canvas = page.locator("#canvas")
    box = canvas.bounding_box()
    size, pen = page.evaluate("(c => [c.width, c.getContext('2d').lineWidth])(document.getElementById('canvas'))")
    scale = box["width"] / size
    origin = (size - pen * glyph.shape[1]) / 2

    def at(row: float, col: float) -> tuple[float, float]:
        return box["x"] + (origin + (col + 0.5) * pen) * scale, box["y"] + (origin + (row + 0.5) * pen) * scale

    for row, cells in enumerate(glyph):
        col = 0
        while col < len(cells):
            if not cells[col]:
                col += 1
                continue
            end = col
            while end + 1 < len(cells) and cells[end + 1]:
                end += 1
            page.mouse.move(*at(row, col))
            page.mouse.down()
            page.mouse.move(*at(row, end), steps=max(2, 4 * (end - col)))
            page.mouse.up()
            col = end + 1


def settled(page, panel: str) -> None:
    """Wait until the panel's last request has been answered and shown."""
    from playwright.sync_api import expect

    expect(page.locator(f"#{panel}-panel")).to_have_attribute("data-pending", "false")


def glyph_png(path: Path, label: int) -> Path:
    """A glyph as a dark-on-white scan, like a person's upload."""
    paper = (1.0 - render(GLYPHS[label], cell=10, margin=20)) * 255
    Image.fromarray(paper.astype(np.uint8), mode="L").save(path)
    return path


def test_drawn_characters_are_read_as_they_are_drawn(page, server_url: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    classes = page.evaluate("fetch('/api/info').then(r => r.json()).then(i => i.classes)")
    expect(page.locator("#info")).to_contain_text(f"{len(classes)} classes")
    expect(page.locator("#info")).to_contain_text("test accuracy: not stored")
    for label in (4, 17, 40):
        draw_glyph(page, GLYPHS[label])
        settled(page, "draw")
        top = page.locator("#draw-top li")
        expect(top).to_have_count(3)
        assert top.first.get_attribute("data-char") == classes[label]
        assert float(top.first.get_attribute("data-prob")) > 0.5
        expect(page.locator("#draw-prepared")).to_have_attribute("src", re.compile(r"^data:image/png;base64,"))
        if label == 40:
            shot = tmp_path / "demo.png"
            page.screenshot(path=shot, full_page=True)
        page.click("#clear")
        expect(page.locator("#draw-top li")).to_have_count(0)
        expect(page.locator("#draw-message")).to_contain_text("empty")

    with Image.open(shot) as image:
        assert image.format == "PNG" and image.width >= 600 and image.height >= 400
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
    assert pixels.std() > 20, "the screenshot shows the page, not a blank window"
    assert shot.stat().st_size > 20_000
    assert page.requests and all(url.startswith(server_url + "/") for url in page.requests), page.requests
    assert page.errors == []


def stroke_width(image: np.ndarray) -> float:
    """Mean stroke width in pixels: ink area over half its boundary length (EMNIST sample test set: median 3.2,
    quartiles 2.7 and 3.7)."""
    ink = image > 127
    padded = np.pad(ink, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return ink.sum() / ((ink & ~interior).sum() / 2)


def test_pen_draws_emnist_wide_strokes(page) -> None:
    """An A filling about two thirds of the box reaches the model with strokes as wide as EMNIST's (between the
    quartiles of the EMNIST sample's test set)."""
    from playwright.sync_api import expect

    box = page.locator("#canvas").bounding_box()
    for stroke in ([(0.3, 0.82), (0.5, 0.18)], [(0.5, 0.18), (0.7, 0.82)], [(0.38, 0.58), (0.62, 0.58)]):
        (x0, y0), (x1, y1) = ((box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in stroke)
        page.mouse.move(x0, y0)
        page.mouse.down()
        page.mouse.move(x1, y1, steps=10)
        page.mouse.up()
    settled(page, "draw")
    expect(page.locator("#draw-prepared")).to_have_attribute("src", re.compile(r"^data:image/png;base64,"))
    data_url = page.locator("#draw-prepared").get_attribute("src")
    with Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))) as prepared:
        assert 2.7 <= stroke_width(np.asarray(prepared)) <= 3.7


def test_uploads_are_read_and_bad_files_get_a_message(page, server_url: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    classes = page.evaluate("fetch('/api/info').then(r => r.json()).then(i => i.classes)")
    page.set_input_files("#file", glyph_png(tmp_path / "glyph.png", 22))
    settled(page, "upload")
    expect(page.locator("#upload-top li")).to_have_count(3)
    assert page.locator("#upload-top li").first.get_attribute("data-char") == classes[22]
    expect(page.locator("#upload-preview")).to_have_attribute("src", re.compile(r"^data:image/png;base64,"))

    fake = tmp_path / "notes.png"
    fake.write_text("not a picture at all")
    page.set_input_files("#file", fake)
    settled(page, "upload")
    expect(page.locator("#upload-message")).to_contain_text("not an image")
    expect(page.locator("#upload-top li")).to_have_count(0)

    blank = tmp_path / "blank.png"
    Image.new("L", (200, 200), 255).save(blank)
    page.set_input_files("#file", blank)
    settled(page, "upload")
    expect(page.locator("#upload-message")).to_contain_text("no ink found")

    page.set_input_files("#file", glyph_png(tmp_path / "line.png", 3))
    page.check("input[name=mode][value=line]")
    settled(page, "upload")
    expect(page.locator("#upload-message")).to_contain_text("not available yet")

    huge = tmp_path / "huge.png"
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (3000, 3000), dtype=np.uint8)).save(buffer, "PNG")
    huge.write_bytes(buffer.getvalue())
    page.check("input[name=mode][value=char]")
    page.set_input_files("#file", huge)
    expect(page.locator("#upload-message")).to_contain_text("the limit is")

    page.set_input_files("#file", glyph_png(tmp_path / "again.png", 8))
    settled(page, "upload")
    assert page.locator("#upload-top li").first.get_attribute("data-char") == classes[8], "still serving"
    assert all(url.startswith(server_url + "/") for url in page.requests), page.requests
    assert page.errors == []


def test_string_reader_answer_is_shown(browser, trained_checkpoint: Path, tmp_path: Path) -> None:
    """Once a string reader is plugged in, an upload in "whole string" mode shows its text, status and the
    alternatives for each character."""
    from playwright.sync_api import expect

    from emnist_lit.serve import create_app, load_demo_model, serve_in_thread

    answer = {
        "text": "1HG",
        "status": "corrected",
        "confidence": 0.42,
        "alternatives": [[["1", 0.9], ["7", 0.05]], [["H", 0.8], ["N", 0.1]], [["G", 0.6], ["6", 0.3]]],
    }
    model, info = load_demo_model(trained_checkpoint)
    with serve_in_thread(create_app(model, info, line_reader=lambda gray: answer)) as url:
        page = browser.new_page()
        page.goto(url)
        expect(page.locator("#line-note")).to_have_text("")
        page.check("input[name=mode][value=line]")
        page.set_input_files("#file", glyph_png(tmp_path / "vin.png", 1))
        settled(page, "upload")
        expect(page.locator("#upload-line .line-text")).to_have_text("1HG")
        expect(page.locator("#upload-line .status")).to_have_text("corrected")
        expect(page.locator("#upload-line")).to_contain_text("confidence 42.0%")
        rows = page.locator("#upload-line table.alternatives tr")
        expect(rows).to_have_count(2)
        expect(rows.nth(1).locator("td")).to_have_text(["7 5%", "N 10%", "6 30%"])
        page.close()
