"""The line model: CTC decoding on hand-made frame probabilities, the rendered line sets, training and testing it
through the CLI, starting it from a character model, and `read` with its checkpoint."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import smoke_args, upright_samples
from test_read import KNOWN_VIN, ODD_PHOTOS, line_photo, write_odd_photos

from emnist_lit.charsets import BALANCED47_CHARSET, VIN_CHARSET
from emnist_lit.cli import main
from emnist_lit.ctc import align, best_path, spans_of, tables_of
from emnist_lit.data.lines import LineDataModule, RenderedLines, render_all
from emnist_lit.errors import CheckpointError, EMNISTConfigError
from emnist_lit.line_ink import TEXT_HEIGHT
from emnist_lit.line_module import LineRecognizer
from emnist_lit.line_photos import GlyphBank
from emnist_lit.prediction import LineWriter
from emnist_lit.vin import is_valid_vin

CLASSES = "ABL1"


def frames_spelling(spans: list[tuple[str, int]], classes: str = CLASSES, sure: float = 0.96) -> np.ndarray:
    """Frame probabilities (T, classes + 1): each (character or '-' for blank, frames) span held with `sure`, the
    rest spread evenly."""
    rows = []
    for char, count in spans:
        row = np.full(len(classes) + 1, (1 - sure) / len(classes))
        row[0 if char == "-" else classes.index(char) + 1] = sure
        rows += [row] * count
    return np.array(rows)


def test_best_path_merges_repeated_frames_and_drops_blanks() -> None:
    probs = frames_spelling([("A", 2), ("-", 1), ("A", 1), ("B", 3), ("-", 2), ("L", 1)])
    characters, confidences = best_path(probs)
    assert "".join(CLASSES[i] for i in characters) == "AABL"
    assert confidences == pytest.approx([0.96] * 4)


def character_tables(probs: np.ndarray, length: int) -> np.ndarray | None:
    """The per-character tables of the best alignment with `length` characters, as `read` takes them."""
    owner = align(probs, length)
    return None if owner is None else tables_of(probs, owner, length)


def test_character_tables_put_each_character_where_its_frames_are() -> None:
    probs = frames_spelling([("-", 2), ("A", 2), ("-", 1), ("B", 2), ("-", 1), ("L", 2), ("-", 2)])
    probs[9] = [0.02, 0.02, 0.02, 0.56, 0.38]  # the third character's second frame: L or 1?
    tables = character_tables(probs, 3)
    assert tables.shape == (3, 4)
    assert tables.argmax(1).tolist() == [0, 1, 2]
    both_frames = probs[8, 1:] + probs[9, 1:]  # a character's table weighs all of its frames
    np.testing.assert_allclose(tables[2], both_frames / both_frames.sum())
    assert character_tables(probs, 20) is None, "more characters than frames"


def test_character_tables_find_a_character_the_best_path_merged_away() -> None:
    """Two A's with no blank between them are one A on the best path; asked for two characters, the alignment
    splits the run rather than inventing one from blank frames."""
    probs = frames_spelling([("-", 3), ("A", 4), ("-", 3)])
    assert len(best_path(probs)[0]) == 1
    tables = character_tables(probs, 2)
    assert tables.argmax(1).tolist() == [0, 0]


def test_alignment_spans_cover_each_characters_frames() -> None:
    probs = frames_spelling([("-", 2), ("A", 2), ("-", 1), ("B", 3), ("-", 1), ("L", 1), ("-", 2)])
    owner = align(probs, 3)
    assert owner.tolist() == [-1, -1, 0, 0, -1, 1, 1, 1, -1, 2, -1, -1]
    assert spans_of(owner, 3) == [(2, 3), (5, 7), (9, 9)]
    assert align(probs, 13) is None


def vin_frames(vin: str, doubtful: dict[int, tuple[str, float]] | None = None) -> np.ndarray:
    """Frames spelling `vin` over VIN_CHARSET, a blank between characters; `doubtful` puts a second class beside
    a position's own."""
    spans = [("-", 1)]
    for char in vin:
        spans += [(char, 2), ("-", 2)]
    probs = frames_spelling(spans, VIN_CHARSET)
    for position, (other, share) in (doubtful or {}).items():
        frame = 1 + 4 * position
        for row in (frame, frame + 1):
            probs[row, 1:] *= 1 - share
            probs[row, VIN_CHARSET.index(other) + 1] += share * probs[row, 1:].sum() / (1 - share)
    return probs


def test_decode_frames_lets_the_check_digit_overturn_a_doubtful_character() -> None:
    vin = "1M8GDM9AXKP042788"
    assert is_valid_vin(vin)
    writer = LineWriter(format="vin", min_confidence=0.5)
    doubtful = vin_frames(vin, {3: ("6", 0.55)})  # the G more likely a 6 to the model: not a valid VIN
    probs = torch.from_numpy(np.stack([vin_frames(vin), doubtful])).float()
    frames = torch.tensor([len(vin_frames(vin))] * 2)
    readings, counts = writer.decode_frames(probs, frames, VIN_CHARSET)
    assert counts == [17, 17]
    assert (readings[0].text, readings[0].status) == (vin, "valid")
    assert (readings[1].text, readings[1].status) == (vin, "corrected")


def test_decode_frames_leaves_a_line_of_16_characters_unverified() -> None:
    short = vin_frames("1M8GDM9AXKP04278")
    readings, counts = LineWriter(format="vin").decode_frames(
        torch.from_numpy(short[None]).float(), torch.tensor([len(short)]), VIN_CHARSET
    )
    assert counts == [16]
    assert readings[0].status == "unverified" and readings[0].confidence == 0.0
    text = LineWriter(format="text", min_confidence=0.1).decode_frames(
        torch.from_numpy(short[None]).float(), torch.tensor([len(short)]), VIN_CHARSET
    )[0][0]
    assert (text.text, text.status) == ("1M8GDM9AXKP04278", "read")


@pytest.fixture(scope="module")
def glyph_bank() -> GlyphBank:
    images, labels = upright_samples(per_class=4, seed=5)
    keep = np.isin(np.array(list(BALANCED47_CHARSET))[labels], list(VIN_CHARSET))
    vin_labels = np.array([VIN_CHARSET.index(BALANCED47_CHARSET[label]) for label in labels[keep]])
    return GlyphBank(images[keep], vin_labels, VIN_CHARSET)


def test_rendered_lines_are_the_same_for_a_seed_whatever_the_workers(glyph_bank: GlyphBank) -> None:
    lines = RenderedLines(
        glyph_bank, 6, seed=3, styles=["free", "tight", "boxed"], vin_fraction=0.5, text_lengths=(3, 9)
    )
    one, texts_one = render_all(lines, workers=0)
    two, texts_two = render_all(lines, workers=2)
    assert texts_one == texts_two and all(np.array_equal(a, b) for a, b in zip(one, two, strict=True))
    assert all(image.shape[0] == 28 and image.dtype == np.uint8 for image in one)
    assert any(is_valid_vin(text) for text in texts_one) and any(len(text) < 17 for text in texts_one)
    other, _ = render_all(RenderedLines(glyph_bank, 6, 4, ["free"], 0.5, (3, 9)), workers=0)
    assert not all(np.array_equal(a, b) for a, b in zip(one, other, strict=False))


def line_args(root: Path, logs: Path, *extra: str) -> list[str]:
    """A few quiet CPU steps of the line config on synthetic EMNIST: a narrow model, a handful of lines."""
    shrunk = ["--trainer.max_epochs=2", "--time_budget.minutes=null", "--trainer.max_time=null", "--model.width=8"]
    shrunk += ["--model.hidden=16", "--data.batch_size=8", "--data.train_lines=24", "--data.val_lines=8"]
    shrunk += ["--data.test_lines=8", "--data.render_workers=0"]
    return smoke_args(root, logs, *shrunk, *extra, config="line_reader.yaml")


@pytest.fixture(scope="module")
def line_checkpoint(emnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cli = main(["fit", *line_args(emnist_root, tmp_path_factory.mktemp("line_fit"))])
    assert isinstance(cli.model, LineRecognizer) and isinstance(cli.datamodule, LineDataModule)
    for key in ("test/cer", "test/exact"):
        assert key in cli.trainer.callback_metrics, key
    return Path(cli.trainer.checkpoint_callback.best_model_path)


def test_a_line_config_trains_tests_and_checkpoints_a_line_model(line_checkpoint: Path) -> None:
    checkpoint = torch.load(line_checkpoint, weights_only=True)
    assert checkpoint["hyper_parameters"]["_class_path"] == "emnist_lit.line_module.LineRecognizer"
    assert checkpoint["hyper_parameters"]["classes"] == VIN_CHARSET
    assert line_checkpoint.name.startswith("epoch") and "-cer" in line_checkpoint.name


def test_read_with_a_line_checkpoint_marks_odd_photos_unverified_names_unreadable_ones_and_reads_the_rest(
    line_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    photos = write_odd_photos(tmp_path / "photos")
    output = tmp_path / "read.csv"
    with pytest.raises(SystemExit) as exit_info:
        main(["read", f"--ckpt_path={line_checkpoint}", f"--data.predict_dir={photos}", f"--output={output}"])
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {photos / 'h_truncated.png'}: ")
    readable = sorted(p.name for p in photos.iterdir() if p.name != "h_truncated.png")
    assert [Path(line.rsplit(", ", 1)[1]).name for line in captured.out.splitlines()] == readable
    with output.open(newline="") as handle:
        rows = {Path(row["path"]).name: row for row in csv.DictReader(handle)}
    assert sorted(rows) == readable
    for name in ODD_PHOTOS:
        assert rows[name]["status"] == "unverified" and float(rows[name]["confidence"]) < 0.9, name
    assert rows["b_blank.png"]["text"] == ""


def test_init_from_a_character_checkpoint_starts_the_convolutions(emnist_root: Path, tmp_path: Path) -> None:
    cnn = ["--model.backbone=cnn", "--model.width=8", "--trainer.max_epochs=1", "--test_after_fit=false"]
    character = main(["fit", *smoke_args(emnist_root, tmp_path / "chars", *cnn)])
    path = character.trainer.checkpoint_callback.best_model_path
    weights = torch.load(path, weights_only=True)["state_dict"]["net.features.0.weight"]
    lines = main(
        ["fit", *line_args(emnist_root, tmp_path / "lines", f"--model.init_from={path}", "--trainer.max_steps=0")]
    )
    assert torch.equal(lines.model.net.features[0].weight.detach(), weights)

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *line_args(emnist_root, tmp_path / "wide", f"--model.init_from={path}", "--model.width=16")])
    assert str(exit_info.value).startswith(f"error: checkpoint {path}: its weights do not fit")


def test_init_from_a_line_checkpoint_starts_the_whole_network_from_it(
    line_checkpoint: Path, emnist_root: Path, tmp_path: Path
) -> None:
    """A second run on a trained line model (a longer training in two budgets) takes its LSTM and output layer too,
    not only the convolutions a character model can give."""
    saved = torch.load(line_checkpoint, weights_only=True)["state_dict"]
    again = main(
        ["fit", *line_args(emnist_root, tmp_path, f"--model.init_from={line_checkpoint}", "--trainer.max_steps=0")]
    )
    state = again.model.net.state_dict()
    for key in ("features.0.weight", "context.weight_hh_l0", "classifier.weight", "classifier.bias"):
        assert torch.equal(state[key], saved[f"net.{key}"]), key

    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                *line_args(emnist_root, tmp_path / "big", f"--model.init_from={line_checkpoint}", "--model.hidden=32"),
            ]
        )
    assert str(exit_info.value).startswith(f"error: checkpoint {line_checkpoint}: its weights do not fit")
    assert "a line checkpoint of the same classes, width and hidden size" in str(exit_info.value)


def test_the_demo_page_refuses_a_line_checkpoint_by_name(line_checkpoint: Path) -> None:
    from emnist_lit.serve import load_demo_model

    with pytest.raises(CheckpointError, match=f"checkpoint {line_checkpoint}: holds a LineRecognizer"):
        load_demo_model(line_checkpoint)


@pytest.mark.parametrize("subcommand", ["predict", "export"])
def test_predict_and_export_refuse_a_line_checkpoint_in_one_line(
    subcommand: str, line_checkpoint: Path, tmp_path: Path
) -> None:
    line_photo(KNOWN_VIN).save(tmp_path / "line.png")
    args = [f"--data.predict_files=[{tmp_path / 'line.png'}]"] if subcommand == "predict" else []
    if subcommand == "export":
        args = [f"--export_dir={tmp_path / 'bundle'}"]
    with pytest.raises(SystemExit) as exit_info:
        main([subcommand, f"--ckpt_path={line_checkpoint}", *args])
    assert str(exit_info.value) == (
        f"error: {subcommand} works on single characters, but the checkpoint holds a LineRecognizer, which reads "
        "whole lines: use `read` with it"
    )
    assert not (tmp_path / "bundle").exists()


class SureReader(torch.nn.Module):
    """A stand-in character model that reads every piece as the character at its position in `text` (all of them
    asked about, or none), counting the pieces it is shown."""

    def __init__(self, text: str, classes: str = VIN_CHARSET) -> None:
        super().__init__()
        self.table = torch.nn.functional.one_hot(torch.tensor([classes.index(c) for c in text]), len(classes)) * 0.98
        self.table += 0.02 / len(classes)
        self.pieces_read = 0

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def predict_step(self, batch: tuple[torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.pieces_read += len(batch[0])
        return self.table.repeat(len(batch[0]) // len(self.table), 1)


def test_a_second_opinion_settles_what_the_line_model_doubts() -> None:
    """The line model is torn between G and 6 at position 4: the check digit prefers the G, but the doubts the line
    model leaves elsewhere keep that below the threshold to vouch for it. A character model that sees the G settles
    it: the reading is valid and vouched for."""
    vin = "1M8GDM9AXKP042788"
    doubtful = vin_frames(vin, {3: ("6", 0.5)})
    probs, frames = torch.from_numpy(doubtful[None]).float(), torch.tensor([len(doubtful)])
    crop = np.ones((TEXT_HEIGHT, 2 * len(doubtful)), np.float32)
    alone = LineWriter(format="vin", min_confidence=0.95)
    with_opinion = LineWriter(format="vin", min_confidence=0.95)
    with_opinion.character_reader = SureReader(vin)  # type: ignore[assignment]
    first = alone.decode_frames(probs, frames, VIN_CHARSET, crops=[crop])[0][0]
    second = with_opinion.decode_frames(probs, frames, VIN_CHARSET, crops=[crop])[0][0]
    assert first.confidence < 0.95 and first.status == "unverified"
    assert (second.text, second.status) == (vin, "valid") and second.confidence > 0.95
    assert with_opinion.character_reader.pieces_read == 17
    weighed = with_opinion.decode_frames(probs, frames, VIN_CHARSET, crops=[None])[0][0]
    assert weighed == first, "a photo without its crop is read by the line model alone"
    trusting = LineWriter(format="vin", min_confidence=0.95, character_below=0.4)
    trusting.character_reader = SureReader(vin)  # type: ignore[assignment]
    assert trusting.decode_frames(probs, frames, VIN_CHARSET, crops=[crop])[0][0] == first
    assert trusting.character_reader.pieces_read == 0, "characters the line model is sure of are not read again"


@pytest.fixture(scope="module")
def vin_character_checkpoint(emnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cnn = ["--model.backbone=cnn", "--model.width=8", "--trainer.max_epochs=1", "--test_after_fit=false"]
    logs = tmp_path_factory.mktemp("vin_chars")
    fit = main(["fit", *smoke_args(emnist_root, logs, *cnn, "--data.charset=vin33")])
    return Path(fit.trainer.checkpoint_callback.best_model_path)


def test_read_with_a_second_opinion_reads_every_photo(
    line_checkpoint: Path, vin_character_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    photos = write_odd_photos(tmp_path / "photos")
    (photos / "h_truncated.png").unlink()
    line_photo(KNOWN_VIN).save(photos / "vin.png")
    output = tmp_path / "read.csv"
    args = [f"--ckpt_path={line_checkpoint}", f"--data.predict_dir={photos}", f"--output={output}"]
    main(["read", *args, f"--reading.character_ckpt={vin_character_checkpoint}"])
    captured = capsys.readouterr()
    assert captured.err == ""
    names = sorted(p.name for p in photos.iterdir())
    assert [Path(line.rsplit(", ", 1)[1]).name for line in captured.out.splitlines()] == names
    with output.open(newline="") as handle:
        rows = {Path(row["path"]).name: row for row in csv.DictReader(handle)}
    assert sorted(rows) == names and len(rows["vin.png"]["text"]) == 17


def test_read_refuses_a_wrong_second_opinion_by_name(
    line_checkpoint: Path, trained_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    line_photo(KNOWN_VIN).save(tmp_path / "vin.png")
    photo = f"--data.predict_files=[{tmp_path / 'vin.png'}]"
    missing = tmp_path / "missing.ckpt"
    cases = {
        (line_checkpoint, missing): f"error: checkpoint {missing}: no such file",
        (line_checkpoint, line_checkpoint): f"error: checkpoint {line_checkpoint}: holds a LineRecognizer, but",
        (line_checkpoint, trained_checkpoint): f"error: checkpoint {trained_checkpoint}: reads the classes",
        (trained_checkpoint, trained_checkpoint): f"error: reading.character_ckpt {trained_checkpoint}: a second",
    }
    for (ckpt, opinion), message in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            main(["read", f"--ckpt_path={ckpt}", photo, f"--reading.character_ckpt={opinion}"])
        assert str(exit_info.value).startswith(message), str(exit_info.value)
        assert capsys.readouterr().out == "", "refused before any photo is read"


def test_the_demo_page_reads_lines_with_a_line_model_as_read_does(
    line_checkpoint: Path,
    vin_character_checkpoint: Path,
    trained_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
) -> None:
    """`serve --line_ckpt`: the page's line mode reads an upload with the line model and the served character
    model's second opinion, and answers what `read` prints for the same photo with both."""
    import uvicorn
    from starlette.testclient import TestClient

    from emnist_lit.serve import serve

    photo = tmp_path / "vin.png"
    line_photo(KNOWN_VIN).save(photo)

    def read_csv_row(*extra: str) -> dict[str, str]:
        output = tmp_path / "read.csv"
        main(
            ["read", f"--ckpt_path={line_checkpoint}", f"--data.predict_files=[{photo}]", f"--output={output}", *extra]
        )
        capsys.readouterr()
        with output.open(newline="") as handle:
            return next(csv.DictReader(handle))

    alone = read_csv_row()
    both = read_csv_row(f"--reading.character_ckpt={vin_character_checkpoint}")
    assert both["top3_per_character"] != alone["top3_per_character"], "the second opinion changes the tables"

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: apps.append(app))
    serve(str(vin_character_checkpoint), line_ckpt=str(line_checkpoint))
    answer = TestClient(apps[0]).post("/api/predict?mode=line", content=photo.read_bytes()).json()
    assert (answer["text"], answer["status"]) == (both["text"], both["status"])
    shown = " | ".join(" ".join(f"{c}:{p:.4f}" for c, p in position) for position in answer["alternatives"])
    assert shown == both["top3_per_character"]

    assert (
        f"lines read by {line_checkpoint.name}, {vin_character_checkpoint.name} second opinion"
        in capsys.readouterr().out
    )

    with pytest.raises(CheckpointError, match=f"checkpoint {vin_character_checkpoint}: holds a EMNISTClassifier"):
        serve(str(vin_character_checkpoint), line_ckpt=str(vin_character_checkpoint))
    asked = LineWriter(character_ckpt=str(vin_character_checkpoint))
    with pytest.raises(EMNISTConfigError, match=r"reading\.character_ckpt .*: a second opinion for a line model"):
        serve(str(vin_character_checkpoint), reading=asked)
    serve(str(trained_checkpoint), reading=asked, line_ckpt=str(line_checkpoint))  # a character model of 47 classes
    answer = TestClient(apps[-1]).post("/api/predict?mode=line", content=photo.read_bytes()).json()
    assert (
        answer["alternatives"]
        == TestClient(apps[0]).post("/api/predict?mode=line", content=photo.read_bytes()).json()["alternatives"]
    ), "--reading.character_ckpt gives the second opinion"
