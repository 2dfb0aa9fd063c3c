"""NIST's EMNIST files: finding them in the forms people have, downloading them safely, and reading them upright."""

from __future__ import annotations

import gzip
import math
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.datasets import EMNIST
from torchvision.datasets.mnist import SN3_PASCALVINCENT_TYPEMAP, read_sn3_pascalvincent_tensor
from torchvision.datasets.utils import download_url

from emnist_lit.charsets import BALANCED47_CHARSET
from emnist_lit.errors import EMNISTDataError

SPLIT_FILES = {
    "train_images": "emnist-balanced-train-images-idx3-ubyte",
    "train_labels": "emnist-balanced-train-labels-idx1-ubyte",
    "test_images": "emnist-balanced-test-images-idx3-ubyte",
    "test_labels": "emnist-balanced-test-labels-idx1-ubyte",
}
MAPPING_FILE = "emnist-balanced-mapping.txt"
NIST_ARCHIVE = "gzip.zip"


def fix_orientation(images: torch.Tensor) -> torch.Tensor:
    """NIST stores every EMNIST image transposed; swap the last two axes of the whole (N, H, W) tensor at once."""
    return images.transpose(-1, -2).contiguous()


@dataclass(frozen=True)
class FileSource:
    """Where one NIST file lives: a plain or gzip'd file, or a gzip'd member of NIST's `gzip.zip`."""

    path: Path
    member: str | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.member}" if self.member else str(self.path)

    @property
    def is_plain_file(self) -> bool:
        return self.member is None and self.path.suffix != ".gz"

    def read_bytes(self) -> bytes:
        try:
            if self.member is not None:
                with zipfile.ZipFile(self.path) as archive:
                    member = archive.read(self.member)
                return gzip.decompress(member) if self.member.endswith(".gz") else member  # NIST's mapping: plain
            data = self.path.read_bytes()
            return gzip.decompress(data) if self.path.suffix == ".gz" else data
        except (OSError, EOFError, zipfile.BadZipFile, KeyError) as err:
            raise EMNISTDataError(f"{self}: cannot read ({err})") from err


def check_idx_header(data: bytes, name: str) -> None:
    """Check the IDX header against the body's length, so that a truncated or foreign file fails here, by name,
    rather than as an assertion inside torchvision or a shape error deep in training."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in SN3_PASCALVINCENT_TYPEMAP:
        raise EMNISTDataError(f"{name}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if not 1 <= ndim <= 3 or len(data) < header:
        raise EMNISTDataError(f"{name}: IDX header truncated or has {ndim} dimensions")
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = math.prod(shape) * SN3_PASCALVINCENT_TYPEMAP[data[2]].itemsize
    if len(data) - header != expected:
        raise EMNISTDataError(
            f"{name}: IDX body has {len(data) - header} bytes, header {shape} needs {expected} (truncated or corrupt)"
        )


def read_idx(source: FileSource) -> torch.Tensor:
    """Decode one IDX file with torchvision's reader. It opens a path or a file descriptor only, so gzip'd files
    and zip members are decompressed into an anonymous temporary file first."""
    data = source.read_bytes()
    check_idx_header(data, str(source))
    if source.is_plain_file:
        return read_sn3_pascalvincent_tensor(str(source.path))
    with tempfile.TemporaryFile() as handle:
        handle.write(data)
        handle.flush()
        handle.seek(0)
        return read_sn3_pascalvincent_tensor(os.dup(handle.fileno()))  # type: ignore[arg-type]


def find_emnist_files(root: str | Path) -> dict[str, FileSource] | None:
    """Find EMNIST Balanced under `root` in the forms people have: torchvision's extracted `EMNIST/raw/`, the gzip'd
    IDX files (in `root` or `EMNIST/raw/`), or NIST's `gzip.zip`. Returns None when a split file is missing."""
    root = Path(root)
    folders = [root / "EMNIST" / "raw", root]
    found: dict[str, FileSource] = {}
    archives = [f / NIST_ARCHIVE for f in folders if (f / NIST_ARCHIVE).is_file()]
    for key, name in [*SPLIT_FILES.items(), ("mapping", MAPPING_FILE)]:
        candidates = [f / n for f in folders for n in (name, f"{name}.gz")]
        path = next((p for p in candidates if p.is_file()), None)
        if path is not None:
            found[key] = FileSource(path)
            continue
        for archive in archives:
            try:
                with zipfile.ZipFile(archive) as z:
                    members = [m for m in z.namelist() if Path(m).name in (name, f"{name}.gz")]
            except (OSError, zipfile.BadZipFile) as err:
                raise EMNISTDataError(f"{archive}: not a readable zip archive ({err}); delete it and retry") from err
            if members:
                found[key] = FileSource(archive, members[0])
                break
    return found if all(k in found for k in SPLIT_FILES) else None


def missing_files_message(root: str | Path, download_error: str | None = None) -> str:
    """What to put where, and why nothing was found: the files are absent, or absent and the download failed."""
    names = ", ".join(f"{n}.gz" for n in SPLIT_FILES.values())
    if download_error is None:
        why = f"EMNIST Balanced not found under {Path(root).resolve()} (download is off)"
    else:
        why = f"EMNIST Balanced not found under {Path(root).resolve()}, and its download failed ({download_error})"
    return (
        f"{why}. Put NIST's gzip'd files ({names}) in that folder or in its EMNIST/raw/, or NIST's {NIST_ARCHIVE} "
        f"there, or run with download: true (the default) on a machine that reaches {EMNIST.url}"
    )


def download_emnist(root: str | Path, url: str = EMNIST.url, md5: str | None = EMNIST.md5) -> Path:
    """Download NIST's archive (with torchvision's progress bar) into a temporary file next to its destination,
    check its md5 and that it opens as a zip, then move it into place, so an interrupted or corrupt download never
    leaves anything that a later run mistakes for data; a failed one leaves no new folders either."""
    raw = Path(root) / "EMNIST" / "raw"
    created = [folder for folder in (raw.parent.parent, raw.parent, raw) if not folder.exists()]
    raw.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=raw, prefix=".download-") as tmp:
            download_url(url, tmp, filename=NIST_ARCHIVE, md5=md5)
            with zipfile.ZipFile(Path(tmp) / NIST_ARCHIVE):
                pass  # a cut-short zip lacks its central directory: caught here even without an md5
            os.replace(Path(tmp) / NIST_ARCHIVE, raw / NIST_ARCHIVE)
    except Exception as err:  # urllib, socket, md5 and zip failures all mean the same to a user
        for folder in reversed(created):
            folder.rmdir()
        raise EMNISTDataError(missing_files_message(root, f"{url}: {err}")) from err
    return raw / NIST_ARCHIVE


def read_mapping(source: FileSource) -> str:
    """Read NIST's `label ascii-code` mapping into the characters it lists, in label order."""
    lines = source.read_bytes().decode("ascii", errors="replace").split()
    try:
        pairs = sorted((int(label), chr(int(code))) for label, code in zip(lines[::2], lines[1::2], strict=True))
    except ValueError as err:
        raise EMNISTDataError(f"{source}: not a 'label ascii-code' mapping ({err})") from err
    return "".join(char for _, char in pairs)


def load_split(files: dict[str, FileSource], split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split as upright uint8 images (N, 28, 28) and int64 labels, checked against each other."""
    images = read_idx(files[f"{split}_images"])
    labels = read_idx(files[f"{split}_labels"])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise EMNISTDataError(
            f"{files[f'{split}_images']} and {files[f'{split}_labels']}: shapes {list(images.shape)} and "
            f"{list(labels.shape)} do not make a labelled image set"
        )
    labels = labels.long()
    if len(labels) and (labels.min() < 0 or labels.max() >= len(BALANCED47_CHARSET)):
        raise EMNISTDataError(
            f"{files[f'{split}_labels']}: labels {labels.min().item()}..{labels.max().item()} outside EMNIST "
            f"Balanced's 0..{len(BALANCED47_CHARSET) - 1}"
        )
    return fix_orientation(images), labels
