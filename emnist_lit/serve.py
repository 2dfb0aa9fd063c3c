"""A local demo page: write a character on a canvas or upload an image and see the checkpoint's top-3 as you go.

One Starlette app with one static page (inline CSS and JS, nothing fetched from anywhere) and two JSON endpoints;
images go through the same preparation as `predict`, so a drawn character is read like a test-set sample."""

from __future__ import annotations

import base64
import contextlib
import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from emnist_lit.checkpoints import load_model_of_kind
from emnist_lit.errors import EMNISTConfigError
from emnist_lit.images import IMAGE_FORMATS, prepare_image, to_grayscale
from emnist_lit.line_files import collate_line_images, prepare_line
from emnist_lit.line_module import LineRecognizer
from emnist_lit.module import EMNISTClassifier
from emnist_lit.prediction import LineWriter
from emnist_lit.segment import segment_line
from emnist_lit.vin import Reading

MAX_BODY_BYTES = 8 * 1024 * 1024
"""Largest upload accepted; a phone photo of a VIN fits, a stray video does not."""

MAX_IMAGE_PIXELS = 40_000_000
"""Largest image decoded (checked from the header, before decoding): below PIL's own decompression-bomb limit,
because a small compressed file can still decode to gigabytes of float pixels here."""

TOP_K = 3

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
"""The browser itself refuses to fetch anything but this server, so the page works, and leaks nothing, offline."""

LineReader = Callable[[torch.Tensor], dict[str, Any]]
"""Reads a whole string from a grey (H, W) image in [0, 1]; see `create_app` for the dict it returns."""


class DemoInputError(Exception):
    """An upload the demo cannot read; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def load_demo_model(ckpt_path: str | Path) -> tuple[EMNISTClassifier, dict[str, Any]]:
    """The model of a checkpoint, read as data (`weights_only`), in eval mode on the CPU, and what the page shows
    about it: file name, charset, backbone, and the accuracies the checkpoint stores."""
    wanted = "the demo page reads single characters with a character model (EMNISTClassifier): pass a character "
    model, checkpoint = load_model_of_kind(ckpt_path, EMNISTClassifier, wanted + "model's checkpoint")
    return model, checkpoint_info(Path(ckpt_path).name, checkpoint)


def checkpoint_info(name: str, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """What the page's header says about a checkpoint. `test_acc` is `checkpoint["metrics"]["test/acc"]` when the
    run stored it there, else None ("not stored"); the best monitored validation score comes from Lightning's own
    ModelCheckpoint state, which every checkpoint written by `fit` carries."""
    hparams = checkpoint.get("hyper_parameters", {})
    metrics = checkpoint.get("metrics", {})
    test_acc = metrics.get("test/acc") if isinstance(metrics, dict) else None
    monitor, best = None, None
    for key, state in checkpoint.get("callbacks", {}).items():
        if str(key).startswith("ModelCheckpoint") and isinstance(state, dict) and state.get("monitor"):
            monitor, best = state["monitor"], state.get("best_model_score")
            break
    return {
        "checkpoint": name,
        "classes": hparams.get("classes"),
        "backbone": hparams.get("backbone"),
        "epoch": checkpoint.get("epoch"),
        "test_acc": float(test_acc) if test_acc is not None else None,
        "monitor": monitor,
        "best_score": float(best) if best is not None else None,
    }


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused as soon as its declared or received size passes `limit`, so a huge upload is
    never held in memory. (Starlette's own body limit answers in plain text; the page needs a JSON message.)"""
    declared = request.headers.get("content-length", "")
    too_large = DemoInputError(f"upload too large: the limit is {limit / 2**20:g} MiB", status=413)
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def read_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> torch.Tensor:
    """Decode an uploaded image into a grey (H, W) tensor in [0, 1], refusing non-images and oversized images with
    a message a person can act on."""
    if not data:
        raise DemoInputError("empty upload: send the bytes of a PNG, JPEG, BMP, TIFF or WebP image")
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise DemoInputError(
                    f"image too large: {width}x{height} pixels, the limit is {max_pixels:,} pixels", status=413
                )
            image.load()
            return to_grayscale(image)
    except UnidentifiedImageError as err:
        raise DemoInputError(f"not an image: expected one of {', '.join(IMAGE_FORMATS)}") from err
    except Image.DecompressionBombError as err:
        raise DemoInputError(f"image too large: {err}", status=413) from err
    except (OSError, SyntaxError, ValueError) as err:
        raise DemoInputError(f"cannot decode the image: {err}") from err


def prepared_png(prepared: torch.Tensor) -> str:
    """The 28x28 the model sees, as a data URL, so the page can show whether a drawing looks like EMNIST."""
    pixels = (prepared[0] * 255).round().to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def top_characters(model: EMNISTClassifier, gray: torch.Tensor, k: int = TOP_K) -> dict[str, Any]:
    """Prepare one character image like `predict` does and return its top-k `[[char, prob], ...]` and the prepared
    28x28 as a data URL."""
    try:
        prepared = prepare_image(gray)
    except ValueError as err:  # a blank canvas or a white page
        raise DemoInputError(f"{err}: draw or upload a dark character on a light background", status=422) from err
    with torch.inference_mode():
        probs = model.predict_step((prepared[None], ["upload"]), 0)[0].float()
    top = probs.topk(min(k, probs.numel()))
    classes = model.classes
    return {
        "top": [[classes[i], round(p, 6)] for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)],
        "prepared": prepared_png(prepared),
    }


def error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(
    model: EMNISTClassifier,
    info: dict[str, Any] | None = None,
    line_reader: LineReader | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> Starlette:
    """The demo app: `GET /` the page, `GET /api/info` the checkpoint's description, `POST /api/predict?mode=...`
    with the raw image bytes as the body (no multipart parsing needed).

    `mode=char` (default) answers `{"top": [[char, prob], ...], "prepared": DATA_URL}`. `mode=line` reads a whole
    string with `line_reader` and answers its dict, which must be
    `{"text": str, "status": "valid" | "corrected" | "unverified", "confidence": float,
    "alternatives": [[[char, prob], ...], ...]}` (one list of candidates per character of `text`); the reader
    raises `DemoInputError` for an image it cannot read. Without a reader it answers 501. Bad input answers a
    4xx `{"error": message}`; the server keeps serving."""
    model = model.eval()
    page = (files("emnist_lit") / "static" / "index.html").read_text(encoding="utf-8")
    description = {
        **(info or {"checkpoint": None, "classes": model.classes}),
        "max_body_bytes": max_body_bytes,
        "max_pixels": max_pixels,
        "line_mode": line_reader is not None,
    }
    headers = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff"}

    async def index(request: Request) -> Response:
        return HTMLResponse(page, headers=headers)

    async def api_info(request: Request) -> Response:
        return JSONResponse(description)

    async def api_predict(request: Request) -> Response:
        mode = request.query_params.get("mode", "char")
        if mode not in ("char", "line"):
            return error(f"mode {mode!r}: use mode=char (one character) or mode=line (a whole string)", 400)
        if mode == "line" and line_reader is None:
            return error("reading a whole string is not available yet: upload one character", 501)
        try:
            data = await read_body(request, max_body_bytes)
            gray = await run_in_threadpool(read_image, data, max_pixels)
            if mode == "line":
                return JSONResponse(await run_in_threadpool(line_reader, gray))
            return JSONResponse(await run_in_threadpool(top_characters, model, gray))
        except DemoInputError as err:
            return error(str(err), err.status)

    routes = [
        Route("/", index),
        Route("/api/info", api_info),
        Route("/api/predict", api_predict, methods=["POST"]),
    ]
    return Starlette(routes=routes)


@contextlib.contextmanager
def serve_in_thread(app: Starlette, host: str = "127.0.0.1", timeout: float = 30.0) -> Iterator[str]:
    """Run `app` with uvicorn in a background thread on a free port of `host` and yield its URL; for browser tests
    and screenshots, which need a real server but must start and stop it themselves."""
    import uvicorn

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((host, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the demo server did not start on {host} within {timeout:g} s")
            thread.join(timeout=0.02)  # poll; returns at once if the server thread died
        yield f"http://{host}:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=timeout)
        listener.close()


def line_reader(model: EMNISTClassifier, reading: LineWriter) -> LineReader:
    """The page's line mode reads as `read` does: cut the photo into characters, classify them in one batch, and
    decode them with `reading`'s rules (a VIN with its check digit, or free text)."""

    def read_line(gray: torch.Tensor) -> dict[str, Any]:
        image = Image.fromarray((gray.clamp(0, 1) * 255).round().to(torch.uint8).numpy(), mode="L")
        segmentation = segment_line(image, expected_count=reading.expected_count)
        with torch.inference_mode():
            probs = model.predict_step((segmentation.characters,), 0)
        return answer(reading.decode(probs, [len(segmentation)], model.classes, [segmentation.several_lines])[0])

    return read_line


def answer(result: Reading) -> dict[str, Any]:
    """A reading as the page's line mode shows it."""
    alternatives = [[[char, prob] for char, prob in position] for position in result.alternatives]
    return {"text": result.text, "status": result.status, "confidence": result.confidence, "alternatives": alternatives}


def whole_line_reader(line_model: LineRecognizer, reading: LineWriter) -> LineReader:
    """The page's line mode with a line model, as `read` reads with one: the photo prepared as `read`'s workers
    prepare it, the whole line read at once, decoded with `reading`'s rules and, when `reading` holds a character
    reader, its second opinion."""

    def read_line(gray: torch.Tensor) -> dict[str, Any]:
        image = Image.fromarray((gray.clamp(0, 1) * 255).round().to(torch.uint8).numpy(), mode="L")
        line, note, crop = prepare_line(image, keep_crop=reading.character_reader is not None)
        images, frames, _, _, several, crops = collate_line_images([(line, "upload", note, crop)])
        with torch.inference_mode():
            probs, frames = line_model.predict_step((images, frames), 0)
        return answer(reading.decode_frames(probs, frames, line_model.classes, several, crops)[0][0])

    return read_line


def load_line_model(ckpt_path: str | Path) -> LineRecognizer:
    """A line model's checkpoint for the page's line mode, read as data, refused by name if it holds another kind."""
    wanted = "--line_ckpt takes a line model (LineRecognizer, configs/line_reader.yaml)"
    return load_model_of_kind(ckpt_path, LineRecognizer, wanted)[0]


def serve(
    ckpt_path: str,
    host: str = "127.0.0.1",
    port: int = 7860,
    reading: LineWriter | None = None,
    line_ckpt: str | None = None,
) -> None:
    """Serve the demo page for a checkpoint at http://HOST:PORT/ until Ctrl-C.

    Args:
        ckpt_path: a checkpoint written by `fit` (read with `weights_only`, so no code in it runs).
        host: the interface to listen on; the default keeps the page on this machine.
        port: the TCP port.
        reading: how uploaded lines are decoded (format, check digit, confidence threshold); a VIN by default.
        line_ckpt: a line model for the page's line mode; it takes its second opinion from `reading.character_ckpt`
            when set, else from the served character model when both read the same classes.
    """
    import uvicorn

    model, info = load_demo_model(ckpt_path)
    reading = reading or LineWriter()
    if reading.character_ckpt and not line_ckpt:
        raise EMNISTConfigError(
            f"reading.character_ckpt {reading.character_ckpt}: a second opinion for a line model, and serve has none "
            "(pass --line_ckpt; the served character model then gives the second opinion itself)"
        )
    lines = "lines cut into characters"
    if line_ckpt:
        line_model = load_line_model(line_ckpt)
        if reading.character_ckpt:
            reading.load_character_reader(line_model.classes)
        elif line_model.classes == model.classes:
            reading.character_reader = model
        opinion = Path(reading.character_ckpt or ckpt_path).name if reading.character_reader else "no"
        lines = f"lines read by {Path(line_ckpt).name}, {opinion} second opinion"
        reader = whole_line_reader(line_model, reading)
    else:
        reader = line_reader(model, reading)
    app = create_app(model, info, line_reader=reader)
    served = f"{info['checkpoint']} ({len(model.classes)} classes; {lines})"
    print(f"serving {served} at http://{host}:{port}/", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
