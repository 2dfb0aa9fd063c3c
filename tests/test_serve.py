"""The demo server through its HTTP API (no browser): top-3 of an upload, bad input answered with a JSON message
while the server keeps serving, and a page that references nothing outside the server."""

from __future__ import annotations

import base64
import io
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import class_templates, render
from PIL import Image
from starlette.testclient import TestClient

from emnist_lit.serve import checkpoint_info, create_app, load_demo_model

GLYPHS = class_templates()


def glyph_png(label: int, cell: int = 12) -> bytes:
    """A synthetic glyph the way a person would scan it: dark ink on white paper, larger than 28x28."""
    paper = (1.0 - render(GLYPHS[label], cell=cell, margin=2 * cell)) * 255
    buffer = io.BytesIO()
    Image.fromarray(paper.astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A small PNG whose header claims `width` x `height`: the few bytes of a decompression bomb's header."""
    data = bytearray(glyph_png(0))
    ihdr = data[12:16] + struct.pack(">II", width, height) + data[24:29]
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    return bytes(data)


@pytest.fixture(scope="module")
def demo(trained_checkpoint: Path) -> tuple[TestClient, str]:
    model, info = load_demo_model(trained_checkpoint)
    return TestClient(create_app(model, info, max_body_bytes=200_000, max_pixels=4_000_000)), model.classes


def test_upload_of_a_glyph_gives_its_character_first(demo: tuple[TestClient, str]) -> None:
    client, classes = demo
    for label in (0, 11, 30, 46):
        response = client.post("/api/predict", content=glyph_png(label))
        assert response.status_code == 200, response.text
        result = response.json()
        chars, probs = zip(*result["top"], strict=True)
        assert chars[0] == classes[label]
        assert len(chars) == 3 and len(set(chars)) == 3
        assert list(probs) == sorted(probs, reverse=True) and probs[0] > 0.5 and sum(probs) <= 1 + 1e-5
        prepared = Image.open(io.BytesIO(base64.b64decode(result["prepared"].removeprefix("data:image/png;base64,"))))
        assert prepared.size == (28, 28)
        assert np.asarray(prepared)[0].max() < 50, "the model sees light ink on dark, as in EMNIST"


def test_non_image_is_a_json_error_and_the_server_keeps_serving(demo: tuple[TestClient, str]) -> None:
    client, classes = demo
    for body, status, message in (
        (b"%PDF-1.4 not an image", 400, "not an image"),
        (b"", 400, "empty upload"),
        (glyph_png(3)[:120], 400, "cannot decode the image"),
    ):
        response = client.post("/api/predict", content=body)
        assert response.status_code == status
        assert message in response.json()["error"]
    assert client.post("/api/predict", content=glyph_png(5)).json()["top"][0][0] == classes[5]


def test_oversized_body_is_refused_with_413(demo: tuple[TestClient, str]) -> None:
    client, classes = demo
    big = glyph_png(7) + b"\0" * 250_000
    response = client.post("/api/predict", content=big)
    assert response.status_code == 413
    assert "upload too large" in response.json()["error"]
    chunked = client.post("/api/predict", content=(big[i : i + 50_000] for i in range(0, len(big), 50_000)))
    assert chunked.status_code == 413, "a body without Content-Length is cut off as it arrives"
    assert client.post("/api/predict", content=glyph_png(7)).json()["top"][0][0] == classes[7]


@pytest.mark.parametrize(
    ("width", "height"),
    [(3000, 3000), (20_000, 20_000)],
    ids=["over-the-demo-limit", "over-PIL-bomb-limit"],
)
def test_huge_pixel_count_is_refused_before_decoding(demo: tuple[TestClient, str], width: int, height: int) -> None:
    client, classes = demo
    response = client.post("/api/predict", content=png_claiming_size(width, height))
    assert response.status_code == 413
    assert "image too large" in response.json()["error"]
    assert client.post("/api/predict", content=glyph_png(9)).json()["top"][0][0] == classes[9]


def test_blank_canvas_gets_a_message(demo: tuple[TestClient, str]) -> None:
    client, _ = demo
    buffer = io.BytesIO()
    Image.new("RGBA", (280, 280), (255, 255, 255, 255)).save(buffer, format="PNG")
    response = client.post("/api/predict", content=buffer.getvalue())
    assert response.status_code == 422
    assert "no ink found" in response.json()["error"]


def test_line_mode_waits_for_a_reader_and_passes_its_answer_on(
    demo: tuple[TestClient, str], trained_checkpoint: Path
) -> None:
    client, _ = demo
    response = client.post("/api/predict?mode=line", content=glyph_png(1))
    assert response.status_code == 501 and "not available yet" in response.json()["error"]
    assert client.post("/api/predict?mode=word", content=glyph_png(1)).status_code == 400

    answer = {"text": "1H", "status": "unverified", "confidence": 0.5, "alternatives": [[["1", 0.9]], [["H", 0.5]]]}
    seen = []
    model, info = load_demo_model(trained_checkpoint)
    with_reader = TestClient(create_app(model, info, line_reader=lambda gray: seen.append(gray.shape) or answer))
    assert with_reader.get("/api/info").json()["line_mode"] is True
    assert with_reader.post("/api/predict?mode=line", content=glyph_png(1)).json() == answer
    assert seen == [(9 * 12, 9 * 12)], "the reader gets the grey image at full size"


def test_page_is_served_and_references_nothing_outside(demo: tuple[TestClient, str]) -> None:
    client, _ = demo
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert '<canvas id="canvas"' in page and 'id="file"' in page and 'id="clear"' in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//|@import|url\(\s*["']?(https?:)?//""", page), (
        "the page must load nothing from elsewhere"
    )
    assert not re.search(r"https?://", page)
    assert "default-src 'none'" in response.headers["content-security-policy"]


def test_info_shows_the_checkpoint(demo: tuple[TestClient, str], trained_checkpoint: Path) -> None:
    client, classes = demo
    info = client.get("/api/info").json()
    assert info["classes"] == classes and len(classes) == 47
    assert info["checkpoint"] == trained_checkpoint.name
    assert info["backbone"] == "lenet"
    assert info["test_acc"] is None, "fit does not store test/acc in the checkpoint (yet)"
    assert info["monitor"] == "val/acc" and info["best_score"] == pytest.approx(1.0)
    assert info["line_mode"] is False


def test_checkpoint_info_reads_a_stored_test_accuracy() -> None:
    info = checkpoint_info("x.ckpt", {"hyper_parameters": {"classes": "AB"}, "metrics": {"test/acc": 0.93}})
    assert info["test_acc"] == pytest.approx(0.93) and info["classes"] == "AB" and info["best_score"] is None


def test_serve_runs_the_app_of_a_checkpoint_on_loopback(
    trained_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import uvicorn

    from emnist_lit.serve import serve

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append((app, kwargs)))
    serve(str(trained_checkpoint), port=7999)
    ((app, kwargs),) = calls
    assert kwargs["host"] == "127.0.0.1" and kwargs["port"] == 7999
    assert TestClient(app).get("/api/info").json()["checkpoint"] == trained_checkpoint.name

    not_a_checkpoint = tmp_path / "notes.ckpt"
    not_a_checkpoint.write_text("hello")
    with pytest.raises(ValueError, match=re.escape(str(not_a_checkpoint))):
        serve(str(not_a_checkpoint))


def test_line_mode_of_serve_reads_a_vin_photo_as_read_does(trained_checkpoint: Path) -> None:
    from test_read import KNOWN_VIN, line_photo

    from emnist_lit.prediction import LineWriter
    from emnist_lit.serve import line_reader

    model, info = load_demo_model(trained_checkpoint)
    client = TestClient(create_app(model, info, line_reader=line_reader(model, LineWriter())))
    buffer = io.BytesIO()
    line_photo(KNOWN_VIN).save(buffer, format="PNG")
    response = client.post("/api/predict?mode=line", content=buffer.getvalue())
    assert response.status_code == 200
    answer = response.json()
    assert (answer["text"], answer["status"]) == (KNOWN_VIN, "valid")
    assert answer["confidence"] >= 0.9
    assert [position[0][0] for position in answer["alternatives"]] == list(KNOWN_VIN)
