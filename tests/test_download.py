"""`download_emnist` against a local HTTP server: a good archive lands where `find_emnist_files` finds it; a corrupt or
cut-short one is refused and leaves nothing that looks like data."""

from __future__ import annotations

import hashlib
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import smoke_args, write_emnist

from emnist_lit.cli import main
from emnist_lit.data import NIST_ARCHIVE, download_emnist, find_emnist_files, load_split
from emnist_lit.errors import EMNISTDataError


def fake_archive(folder: Path) -> bytes:
    """NIST's `gzip.zip` layout (`gzip/emnist-balanced-*`) around small synthetic files."""
    files = write_emnist(folder / "files", train_per_class=2, test_per_class=1)
    archive = folder / NIST_ARCHIVE
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(files.iterdir()):
            z.write(path, f"gzip/{path.name}")
    return archive.read_bytes()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, bytes]]:
    """Serves the fake archive at /gzip.zip, and at /short/gzip.zip its first half under the full Content-Length,
    then closes the connection, as a dropped transfer looks."""
    body = fake_archive(tmp_path_factory.mktemp("archive"))
    routes = {f"/{NIST_ARCHIVE}": body, f"/short/{NIST_ARCHIVE}": body[: len(body) // 2]}

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.send_response(200 if self.path in routes else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()

        def do_GET(self) -> None:
            if self.path not in routes:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(routes[self.path])
            self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", body
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if not p.is_dir()]


def test_good_download_is_found_as_data(server: tuple[str, bytes], tmp_path: Path) -> None:
    url, body = server
    path = download_emnist(tmp_path, f"{url}/{NIST_ARCHIVE}", hashlib.md5(body).hexdigest())
    assert path == tmp_path / "EMNIST" / "raw" / NIST_ARCHIVE
    assert leftovers(tmp_path) == [path], "the temporary download folder is gone"
    images, labels = load_split(find_emnist_files(tmp_path), "test")
    assert images.shape == (47, 28, 28) and sorted(labels.tolist()) == list(range(47))


@pytest.mark.parametrize(
    ("route", "md5", "reason"),
    [
        ("", "0" * 32, "File not found or corrupted"),
        ("/short", None, "not a zip file"),
        ("/short", "0" * 32, "File not found or corrupted"),
        ("/missing", None, "HTTP Error 404"),
    ],
)
def test_bad_download_is_refused_and_leaves_no_data(
    server: tuple[str, bytes], tmp_path: Path, route: str, md5: str | None, reason: str
) -> None:
    url = f"{server[0]}{route}/{NIST_ARCHIVE}"
    with pytest.raises(EMNISTDataError, match="its download failed") as err:
        download_emnist(tmp_path, url, md5)
    assert f"({url}: " in str(err.value)
    assert reason in str(err.value)
    assert leftovers(tmp_path) == []
    assert find_emnist_files(tmp_path) is None


def test_cli_downloads_from_a_mirror_when_asked(server: tuple[str, bytes], tmp_path: Path, capsys) -> None:
    url, body = server
    root, logs = tmp_path / "data", tmp_path / "logs"
    mirror = [f"--data.download_url={url}/{NIST_ARCHIVE}", f"--data.download_md5={hashlib.md5(body).hexdigest()}"]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *smoke_args(root, logs), "--data.download=true", f"--data.download_url={url}/short/gzip.zip"])
    assert f"its download failed ({url}/short/{NIST_ARCHIVE}: " in str(exit_info.value.code)
    assert find_emnist_files(root) is None
    cli = main(["fit", *smoke_args(root, logs), "--data.download=true", *mirror, "--trainer.max_epochs=1"])
    assert cli.trainer.global_step == 1  # 94 training images: one batch
    assert (root / "EMNIST" / "raw" / NIST_ARCHIVE).read_bytes() == body
