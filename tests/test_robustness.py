"""Bad input everywhere ends in one `error:` line naming the file or value; checkpoints are read as untrusted data;
the same seed gives the same run."""

from __future__ import annotations

import csv
import gzip
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import parser_error, smoke_args
from PIL import Image

from emnist_lit.cli import main


def cli_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI expecting it to fail; return what the user sees on stderr, which must be one line."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    code = exit_info.value.code
    assert code not in (0, None)
    message = code if isinstance(code, str) else capsys.readouterr().err.strip().splitlines()[-1]
    assert "\n" not in message and "Traceback" not in message
    return message


class Evil:
    """Pickles to a call of `open(path, 'w')`: unpickling it without weights_only would create the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (str(self.path), "w"))


def bad_checkpoint(kind: str, good: Path, folder: Path) -> Path:
    path = folder / f"{kind}.ckpt"
    if kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("model: lenet\n")
    elif kind == "pickle":
        path.write_bytes(pickle.dumps(Evil(folder / "pwned"), protocol=2))
    elif kind == "state_dict_only":
        torch.save({"weight": torch.zeros(2)}, path)
    return path


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("truncated", "truncated or not a PyTorch checkpoint"),
        ("empty", "empty file"),
        ("text", "truncated or not a PyTorch checkpoint"),
        ("pickle", "truncated or not a PyTorch checkpoint"),
        ("state_dict_only", "not a Lightning checkpoint"),
        ("missing", "no such file"),
    ],
)
def test_bad_checkpoint_is_one_line_naming_the_file(
    kind: str, reason: str, trained_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    path = bad_checkpoint(kind, trained_checkpoint, tmp_path)
    message = cli_error(["predict", f"--ckpt_path={path}", f"--data.predict_dir={tmp_path}"], capsys)
    assert message.startswith(f"error: checkpoint {path}: {reason}")
    assert not (tmp_path / "pwned").exists(), "weights_only must refuse to run code from a checkpoint"


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_truncated_checkpoint_is_refused_by_validate_and_test(
    subcommand: str, trained_checkpoint: Path, emnist_root: Path, tmp_path: Path, capsys
) -> None:
    path = bad_checkpoint("truncated", trained_checkpoint, tmp_path)
    message = cli_error([subcommand, *smoke_args(emnist_root, tmp_path), f"--ckpt_path={path}"], capsys)
    assert message.startswith(f"error: checkpoint {path}: truncated or not a PyTorch checkpoint")


@pytest.mark.parametrize(
    ("yaml_text", "error"),
    [
        ("data:\n  charst: vin33\n", "error: Option 'data.charst' is not accepted by emnist_lit.data.EMNISTDataModule"),
        (
            "data:\n  batch_size: lots\n",
            "error: Parser key \"data.batch_size\":\n  Expected a <class 'int'>. Got value: lots",
        ),
    ],
)
def test_config_file_with_unknown_key_or_wrong_type_names_the_key(
    yaml_text: str, error: str, emnist_root: Path, tmp_path: Path, capsys
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *smoke_args(emnist_root, tmp_path), f"--config={config}"])
    assert exit_info.value.code != 0
    assert parser_error(capsys.readouterr().err).startswith(error)


def damage(root: Path, how: str) -> str:
    """Break one file of a synthetic EMNIST copy; return the file name the error must mention."""
    if how == "wrong_magic":
        name = "emnist-balanced-train-labels-idx1-ubyte.gz"
        (root / name).write_bytes(gzip.compress(b"PK\x03\x04" + bytes(100)))
    elif how == "truncated_body":
        name = "emnist-balanced-train-images-idx3-ubyte.gz"
        data = gzip.decompress((root / name).read_bytes())
        (root / name).write_bytes(gzip.compress(data[:-1000]))
    else:
        name = "emnist-balanced-mapping.txt"
        (root / name).write_text("".join(f"{i} {65 + i}\n" for i in range(47)))
    return name


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("wrong_magic", "not an IDX file (bad magic number"),
        ("truncated_body", "(truncated or corrupt)"),
        ("mapping", "not EMNIST Balanced's"),
    ],
)
def test_damaged_data_files_fail_fit_with_one_line(
    how: str, reason: str, fresh_emnist_root: Path, tmp_path: Path, capsys
) -> None:
    name = damage(fresh_emnist_root, how)
    message = cli_error(["fit", *smoke_args(fresh_emnist_root, tmp_path / "logs")], capsys)
    assert message.startswith("error: ") and name in message and reason in message


def test_missing_data_root_names_the_folder(tmp_path: Path, capsys) -> None:
    root = tmp_path / "nowhere"
    offline = "--data.download_url=http://127.0.0.1:9/gzip.zip"  # nothing listens on the discard port
    message = cli_error(["fit", *smoke_args(root, tmp_path / "logs"), offline], capsys)
    assert message.startswith(f"error: EMNIST Balanced not found under {root}, and its download failed")
    assert "emnist-balanced-train-images-idx3-ubyte.gz" in message
    assert not root.exists()
    message = cli_error(["fit", *smoke_args(root, tmp_path / "logs"), "--data.download=false"], capsys)
    assert message.startswith(f"error: EMNIST Balanced not found under {root} (download is off)")


def test_charset_with_a_character_emnist_lacks_names_it(emnist_root: Path, tmp_path: Path, capsys) -> None:
    message = cli_error(["fit", *smoke_args(emnist_root, tmp_path), "--data.charset=AB@"], capsys)
    assert message == (
        "error: charset 'AB@': characters not in EMNIST Balanced: '@'; use one of ['balanced47', 'vin33'] or a "
        "string of characters from '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghnqrt'"
    )


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(path: Path, side: int = 20000) -> None:
    """A valid 1-bit `side` x `side` PNG, a few tens of KB on disk, streamed so it never exists in memory."""
    row = bytes(1 + (side + 7) // 8)
    compressor, parts = zlib.compressobj(9), []
    for _ in range(side):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    chunks = png_chunk(b"IHDR", header) + png_chunk(b"IDAT", b"".join(parts)) + png_chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)


def test_predict_survives_hostile_files_and_writes_a_csv_that_round_trips(
    trained_checkpoint: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # predict's logger and config.yaml land in the working folder
    scans = tmp_path / "scans"
    scans.mkdir()
    glyph = np.zeros((40, 40), dtype=np.uint8)
    glyph[10:30, 18:22] = 255
    good = [scans / "a plain.png", scans / 'b, "quoted", Ünïcödé ñ 字.png']
    for path in good:
        Image.fromarray(glyph).save(path)
    (scans / "c_empty.png").write_bytes(b"")
    (scans / "d_loop_a").symlink_to(scans / "d_loop_b")
    (scans / "d_loop_b").symlink_to(scans / "d_loop_a")
    huge_png(scans / "e_bomb.png")
    assert (scans / "e_bomb.png").stat().st_size < 100_000
    output = tmp_path / "out" / "predictions.csv"

    with pytest.raises(SystemExit) as exit_info:
        main(["predict", f"--ckpt_path={trained_checkpoint}", f"--data.predict_dir={scans}", f"--output={output}"])
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    bad = ["c_empty.png", "d_loop_a", "d_loop_b", "e_bomb.png"]
    assert sorted(Path(line.split(": ")[1]).name for line in errors) == bad
    assert any("decompression bomb" in line for line in errors if "e_bomb" in line)
    assert any("Too many levels of symbolic links" in line for line in errors if "d_loop_a" in line)
    assert "4 of 6 files failed" in captured.err

    with output.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["path", "char", "ascii", "confidence", "top3"]
    assert [row[0] for row in rows[1:]] == [str(path) for path in good]
    assert all(chr(int(row[2])) == row[1] for row in rows[1:])
    assert sorted(p.name for p in output.parent.iterdir()) == ["predictions.csv"], "no temporary files left"


def run_smoke(root: Path, logs: Path) -> dict[str, float]:
    args = smoke_args(root, logs, "--trainer.max_epochs=1", "--trainer.limit_train_batches=3", "--test_after_fit=false")
    quick = ["--data.batch_size=32", "--trainer.num_sanity_val_steps=0"]
    cli = main(["fit", *args, *quick, f"--checkpoint.dirpath={logs}"])
    weights = torch.load(logs / "last.ckpt", weights_only=True)["state_dict"]
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    return {**metrics, "weight_sum": float(sum(w.double().sum() for w in weights.values()))}


def test_same_seed_gives_identical_metrics_and_weights(emnist_root: Path, tmp_path: Path) -> None:
    first = run_smoke(emnist_root, tmp_path / "a")
    second = run_smoke(emnist_root, tmp_path / "b")
    assert "val/acc" in first and "train/loss_epoch" in first
    assert first == second


def test_checkpoint_of_another_charset_predicts_as_is_and_is_refused_by_test(
    emnist_root: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    quick = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--trainer.num_sanity_val_steps=0"]
    args = smoke_args(emnist_root, tmp_path / "logs", *quick, "--test_after_fit=false", "--data.charset=vin33")
    checkpoint = Path(main(["fit", *args]).trainer.checkpoint_callback.last_model_path)
    scans = tmp_path / "scans"
    scans.mkdir()
    Image.fromarray(np.eye(40, dtype=np.uint8) * 255).save(scans / "x.png")
    main(["predict", f"--ckpt_path={checkpoint}", f"--data.predict_dir={scans}"])
    assert capsys.readouterr().out.strip().endswith(f", {scans / 'x.png'}")
    message = cli_error(["test", *smoke_args(emnist_root, tmp_path / "logs"), f"--ckpt_path={checkpoint}"], capsys)
    assert message == (
        f"error: checkpoint {checkpoint}: trained on the 33 classes '0123456789ABCDEFGHJKLMNPRSTUVWXYZ', but "
        "data.charset is 'balanced47'; pass --data.charset=0123456789ABCDEFGHJKLMNPRSTUVWXYZ (or the config it was "
        "trained with)"
    )
