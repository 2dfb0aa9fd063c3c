"""What a test run shows a person: per-class tables, confused pairs and figures, drawn from computed metrics."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure


def per_class_table(classes: str, per_class: dict[str, torch.Tensor], confusion: torch.Tensor) -> str:
    """Precision, recall, F1 and support per character, like scikit-learn's classification report."""
    support = confusion.sum(dim=1).tolist()
    lines = [f"{'char':>6} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}"]
    for i, char in enumerate(classes):
        p, r, f = (per_class[k][i].item() for k in ("precision", "recall", "f1"))
        lines.append(f"{char:>6} {p:9.4f} {r:9.4f} {f:9.4f} {support[i]:8d}")
    return "\n".join(lines)


def confused_pairs(classes: str, confusion: torch.Tensor, top: int = 10) -> str:
    """The `top` most frequent (true, predicted) mistakes, from the confusion matrix."""
    errors = confusion.clone()
    errors.fill_diagonal_(0)
    counts, flat = errors.flatten().topk(min(top, errors.numel()))
    n = len(classes)
    lines = ["most confused (true -> predicted: count)"]
    lines += [
        f"  {classes[i // n]} -> {classes[i % n]}: {c}"
        for c, i in zip(counts.tolist(), flat.tolist(), strict=True)
        if c > 0
    ]
    return "\n".join(lines)


def per_class_figure(classes: str, per_class: dict[str, torch.Tensor]) -> Figure:
    """Per-character accuracy as a bar chart, worst classes easy to spot."""
    fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * len(classes)), 3))
    ax.bar(range(len(classes)), per_class["acc"].tolist())
    ax.set_xticks(range(len(classes)), list(classes))
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    fig.tight_layout()
    return fig


class MostConfidentMistakes:
    """Keeps the `k` test images the model got wrong with the highest confidence, across batches."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.reset()

    def reset(self) -> None:
        self.images = torch.empty(0, 1, 28, 28)
        self.confidence = torch.empty(0)
        self.true = torch.empty(0, dtype=torch.long)
        self.predicted = torch.empty(0, dtype=torch.long)

    def update(self, images: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        confidence, predicted = logits.detach().softmax(dim=1).max(dim=1)
        wrong = predicted != labels
        self.images = torch.cat([self.images, images[wrong].detach().float().cpu()])
        self.confidence = torch.cat([self.confidence, confidence[wrong].float().cpu()])
        self.true = torch.cat([self.true, labels[wrong].cpu()])
        self.predicted = torch.cat([self.predicted, predicted[wrong].cpu()])
        keep = self.confidence.topk(min(self.k, len(self.confidence))).indices
        self.images, self.confidence = self.images[keep], self.confidence[keep]
        self.true, self.predicted = self.true[keep], self.predicted[keep]

    def figure(self, classes: str) -> Figure:
        """A grid of the mistakes, each titled `true->predicted confidence`."""
        cols = 8
        rows = max(1, -(-len(self.confidence) // cols))
        fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.2, rows * 1.4), squeeze=False)
        for i, ax in enumerate(axes.flat):
            ax.axis("off")
            if i < len(self.confidence):
                ax.imshow(self.images[i, 0], cmap="gray", vmin=0, vmax=1)
                t, p = classes[self.true[i]], classes[self.predicted[i]]
                ax.set_title(f"{t}->{p} {self.confidence[i]:.2f}", fontsize=8)
        fig.tight_layout()
        return fig
