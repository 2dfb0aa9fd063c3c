"""The test report on a hand-made, asymmetric confusion matrix, where precision differs from recall and A is taken
for B more often than B for A, so a swapped axis or a wrong column shows: the per-class table, the most confused
pairs, `TestReport` printing both, and the most confident mistakes in order."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from emnist_lit.callbacks import TestReport
from emnist_lit.module import metric_suite
from emnist_lit.reports import MostConfidentMistakes, confused_pairs, per_class_table

CLASSES = "ABC"
CONFUSION = torch.tensor([[5, 3, 0], [1, 4, 0], [0, 2, 6]])
"""Rows: true class, columns: predicted class."""
EXPECTED = {  # char: (precision, recall, f1, support), worked out by hand from CONFUSION
    "A": (5 / 6, 5 / 8, 2 * (5 / 6) * (5 / 8) / (5 / 6 + 5 / 8), 8),
    "B": (4 / 9, 4 / 5, 2 * (4 / 9) * (4 / 5) / (4 / 9 + 4 / 5), 5),
    "C": (1.0, 6 / 8, 2 * 1.0 * (6 / 8) / (1.0 + 6 / 8), 8),
}


def samples(confusion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Labels, logits and images realising `confusion`: each prediction has its own confidence (0.5 to 0.95), and
    each image holds its sample number, so the mistakes can be told apart."""
    pairs = [(t, p) for t in range(len(confusion)) for p in range(len(confusion)) for _ in range(confusion[t, p])]
    labels = torch.tensor([t for t, _ in pairs])
    confidence = torch.linspace(0.5, 0.95, len(pairs))
    probs = ((1 - confidence) / (len(confusion) - 1)).unsqueeze(1).repeat(1, len(confusion))
    probs[torch.arange(len(pairs)), torch.tensor([p for _, p in pairs])] = confidence
    images = torch.arange(len(pairs), dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 28, 28).clone()
    return labels, probs.log(), images


def table_rows(table: str) -> dict[str, tuple[float, float, float, int]]:
    rows = [line.split() for line in table.splitlines()[1:]]
    return {row[0]: (float(row[1]), float(row[2]), float(row[3]), int(row[4])) for row in rows}


def assert_rows_match(rows: dict, expected: dict) -> None:
    assert rows.keys() == expected.keys()
    for char, (p, r, f, n) in expected.items():
        assert rows[char][:3] == pytest.approx((p, r, f), abs=1e-4), char
        assert rows[char][3] == n, char


def test_per_class_table_from_torchmetrics_on_an_asymmetric_matrix() -> None:
    labels, logits, _ = samples(CONFUSION)
    per_class = {name: value for name, value in metric_suite(3, per_class=True)(logits, labels).items()}
    table = per_class_table(CLASSES, per_class, CONFUSION)
    assert table.splitlines()[0].split() == ["char", "precision", "recall", "f1", "support"]
    assert_rows_match(table_rows(table), EXPECTED)


def test_confused_pairs_are_true_to_predicted_most_frequent_first() -> None:
    assert confused_pairs(CLASSES, CONFUSION).splitlines() == [
        "most confused (true -> predicted: count)",
        "  A -> B: 3",
        "  C -> B: 2",
        "  B -> A: 1",
    ]
    assert confused_pairs(CLASSES, CONFUSION, top=2).splitlines()[1:] == ["  A -> B: 3", "  C -> B: 2"]
    assert confused_pairs(CLASSES, torch.diag(torch.tensor([3, 4, 5]))).splitlines()[1:] == [], "no mistakes"


def test_test_report_prints_the_table_and_pairs_of_what_it_was_fed(capsys) -> None:
    report = TestReport(mistakes_to_show=4, confused_pairs=2)
    trainer = SimpleNamespace(is_global_zero=True, logger=None)
    model = SimpleNamespace(classes=CLASSES, device=torch.device("cpu"))
    labels, logits, images = samples(CONFUSION)
    report.on_test_start(trainer, model)
    for batch in torch.arange(len(labels)).split(8):  # several batches, as a test loop feeds them
        report.on_test_batch_end(trainer, model, logits[batch], (images[batch], labels[batch]), 0)
    report.on_test_epoch_end(trainer, model)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + 3 + 1 + 2
    assert_rows_match(table_rows("\n".join(lines[:4])), EXPECTED)
    assert lines[4:] == ["most confused (true -> predicted: count)", "  A -> B: 3", "  C -> B: 2"]


def test_most_confident_mistakes_keeps_the_k_most_confident_across_batches_in_order() -> None:
    labels, logits, images = samples(CONFUSION)
    wrong = logits.argmax(dim=1) != labels
    confidence = logits.softmax(dim=1).amax(dim=1)
    expected = confidence.masked_fill(~wrong, -1).topk(4).indices  # sample numbers, most confident first
    assert wrong.sum() == 6 and not torch.equal(expected, expected.sort().values), "order must matter"

    mistakes = MostConfidentMistakes(k=4)
    for batches in (torch.arange(len(labels)).split(5), reversed(torch.arange(len(labels)).split(5))):
        mistakes.reset()
        for batch in batches:  # the most confident mistakes come last, then first
            mistakes.update(images[batch], logits[batch], labels[batch])
        assert mistakes.images[:, 0, 0, 0].long().tolist() == expected.tolist()
    torch.testing.assert_close(mistakes.confidence, confidence[expected])
    assert mistakes.true.tolist() == labels[expected].tolist()
    assert mistakes.predicted.tolist() == logits[expected].argmax(dim=1).tolist()
    figure = mistakes.figure(CLASSES)
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert titles == [
        f"{CLASSES[t]}->{CLASSES[p]} {c:.2f}"
        for t, p, c in zip(labels[expected], logits[expected].argmax(dim=1), confidence[expected], strict=True)
    ]
    mistakes.reset()
    assert len(mistakes.confidence) == 0
